// Helpers for tests/broadcast.test.ts: a "world" (one relay of its own, a
// MITM in front of it, real chat clients, raw peers (tests/raw-peer.ts) that
// keep the broadcast keys they are given, temp dirs) cleaned up in one call;
// and a byte-counting TCP proxy that measures what one client actually writes
// to its socket.
import type { Socket, TCPSocketListener } from "bun";
import { readdirSync } from "node:fs";
import type { ChatClient } from "../lib/client/chat-client.ts";
import type { DhEngine } from "../lib/crypto/dh.ts";
import type { Link } from "../lib/link/relay-link.ts";
import type { Relay, RelayOptions } from "../lib/relay/server.ts";
import { decodePayload, FrameDecoder, type Frame } from "../lib/wire/frame.ts";
import { Outbox } from "../lib/wire/outbox.ts";
import { startParty, startTestRelay, tempDirs, waitFor, writeTestFile, type Party as BaseParty } from "./helpers.ts";
import { startMitm, type Mitm } from "./mitm.ts";
import { startRawPeer, type RawPeer } from "./raw-peer.ts";

export const LONG = 30_000;
export const MiB = 1024 * 1024;

export const hex = (b: unknown) => Buffer.from(b as Uint8Array).toString("hex");

/** Rejection of a promise, as a value (fails the test if it resolves). */
export async function rejection(p: Promise<unknown>): Promise<{ code?: string; message: string; peer?: string }> {
  try {
    await p;
  } catch (err) {
    return err as { code?: string; message: string };
  }
  throw new Error("expected the promise to reject");
}

export interface Party extends BaseParty {
  texts(): string[];
}

export interface World {
  relay: Relay;
  mitm: Mitm;
  /** A real chat client; via the MITM unless `direct` (or an explicit `port`). */
  party(opts?: { direct?: boolean; port?: number; maxFileSize?: number; dir?: string }): Promise<Party>;
  /** A hand-driven peer that runs the key exchange (as initiator) with `victim`. */
  rawPeer(victim: Party, opts?: { viaMitm?: boolean }): Promise<RawPeer>;
  tempDir(prefix?: string): string;
  makeFile(name: string, size: number): { path: string; bytes: Uint8Array; sha256: string; size: number };
  counting(): CountingProxy;
  close(): Promise<void>;
}

export async function startWorld(engines: DhEngine[], relayOpts: Partial<RelayOptions> = {}): Promise<World> {
  const relay = startTestRelay(relayOpts);
  const mitm = startMitm(relay.port);
  const chats: ChatClient[] = [];
  const links: Link[] = [];
  const temp = tempDirs("smts-bc-");
  const proxies: CountingProxy[] = [];
  let nextEngine = 0;

  const world: World = {
    relay,
    mitm,
    tempDir: temp.make,
    async party(opts = {}) {
      const port = opts.port ?? (opts.direct ? relay.port : mitm.port);
      const p = await startParty({ port, dh: engines[nextEngine++ % engines.length]!, dir: opts.dir ?? temp.make("smts-bc-dl-"), maxFileSize: opts.maxFileSize });
      chats.push(p.chat);
      if (port === mitm.port) await waitFor(() => mitm.pipes.some((m) => m.id === p.id), "the client's MITM pipe", LONG);
      return { ...p, texts: () => p.of("message").map((m) => m.text) };
    },
    rawPeer(victim, opts = {}) {
      return startRawPeer(victim, { port: opts.viaMitm ? mitm.port : relay.port, dh: engines[0]!, track: links });
    },
    makeFile: (name, size) => writeTestFile(temp.make("smts-bc-src-"), name, size),
    counting() {
      const p = startCountingProxy(relay.port);
      proxies.push(p);
      return p;
    },
    async close() {
      for (const c of chats) await c.close().catch(() => {});
      for (const l of links) l.close();
      for (const p of proxies) p.stop();
      mitm.stop();
      await relay.stop();
      temp.removeAll();
    },
  };
  return world;
}

/** Texts of a decrypted broadcast record (a single text or a batch of them). */
export function textsOf(plaintext: Uint8Array): string[] {
  const inner = decodePayload(plaintext);
  return (inner.t === "batch" ? (inner.items as Frame[]) : [inner]).map((i) => i.text as string);
}

/** Temporary `.smts-part` files in `dir` (they must never linger). */
export const partFiles = (dir: string) => readdirSync(dir).filter((n) => n.endsWith(".smts-part"));
export const listing = (dir: string) => readdirSync(dir).sort();

// ---- A byte-counting proxy --------------------------------------------------

export interface SentFrame {
  /** The `to` of the client's `send` frame (an ID or a list). */
  to: string | string[];
  /** Type of the end-to-end message in its body (rec, brec, chunk, hello, ...). */
  type: string;
  /** The end-to-end message, decoded. */
  inner: Frame;
}

export interface CountingProxy {
  readonly port: number;
  /** Bytes the client wrote to its socket (client → relay), counted as they arrive. */
  readonly up: number;
  /** Bytes the relay wrote towards the client. */
  readonly down: number;
  /** The client's `send` frames, decoded. */
  readonly sends: SentFrame[];
  stop(): void;
}

/** A plain TCP proxy to the relay that counts the bytes of each direction (one client). */
export function startCountingProxy(relayPort: number): CountingProxy {
  const state = { port: 0, up: 0, down: 0, sends: [] as SentFrame[], stop() {} };
  const decoder = new FrameDecoder(16 * 1024 * 1024);
  const sockets: Socket<unknown>[] = [];

  /** Write queue (lib/wire/outbox.ts) that pauses `source` while more than 1 MiB waits, until it is down to 256 KiB. */
  function sink(source: () => Socket<unknown> | null) {
    let target: Socket<unknown> | null = null;
    const outbox = new Outbox({ write: (bytes) => (target ? target.write(bytes) : 0) });
    const flush = () => {
      const drained = outbox.flush();
      if ((drained || !target) && outbox.bytes < 256 * 1024) source()?.resume();
    };
    return {
      attach(s: Socket<unknown>) {
        target = s;
        flush();
      },
      write(bytes: Uint8Array) {
        outbox.push(bytes);
        flush();
        if (outbox.bytes > 1024 * 1024) source()?.pause();
      },
      flush,
    };
  }

  const listener: TCPSocketListener<{ up: ReturnType<typeof sink>; down: ReturnType<typeof sink> }> = Bun.listen({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        sockets.push(client as Socket<unknown>);
        let upstream: Socket<unknown> | null = null;
        const up = sink(() => client as Socket<unknown>);
        const down = sink(() => upstream);
        client.data = { up, down };
        down.attach(client as Socket<unknown>);
        Bun.connect({
          hostname: "127.0.0.1",
          port: relayPort,
          socket: {
            open(s) {
              upstream = s;
              sockets.push(s);
              up.attach(s);
            },
            data(_s, chunk) {
              state.down += chunk.length;
              down.write(new Uint8Array(chunk));
            },
            drain() {
              up.flush();
            },
            close() {
              client.end();
            },
            error() {},
          },
        }).catch(() => client.end());
      },
      data(client, chunk) {
        state.up += chunk.length;
        const copy = new Uint8Array(chunk);
        for (const payload of decoder.push(copy)) {
          const f = decodePayload(payload);
          if ((f.t !== "send" && f.t !== "bulk") || !(f.body instanceof Uint8Array)) continue; // bulk: file chunks (PROTOCOL §5.4)
          const inner = decodePayload(f.body);
          state.sends.push({ to: f.to as string | string[], type: String(inner.t), inner });
        }
        client.data.up.write(copy);
      },
      drain(client) {
        client.data.down.flush();
      },
      close() {
        for (const s of sockets) s.end();
      },
      error() {},
    },
  });
  state.port = listener.port;
  state.stop = () => {
    for (const s of sockets) s.end();
    listener.stop(true);
  };
  return state;
}
