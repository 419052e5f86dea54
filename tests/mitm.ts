// Test-only man in the middle: a TCP proxy between clients and a real relay
// that decodes the frame stream in both directions and lets a test pass,
// modify, drop, duplicate, reorder and inject frames. It plays the relay
// operator / network adversary of brief §4. Join traffic is forwarded like
// everything else (the proxy is transport-level), so clients still join the
// real relay and its proof checks out.
//
// A tap sees every decoded frame in one direction, with the Pipe (one client
// connection) it travels on, and returns a verdict:
//   undefined → forward the original bytes unchanged
//   null      → drop it
//   Frame     → forward this frame instead
//   Frame[]   → forward these frames instead (in order; [] drops)
//
// The full Diffie-Hellman man in the middle (installDhMitm) runs its own
// handshakes with each victim, using lib/session/handshake.ts and its own
// DhEngine, and re-encrypts records between the two sessions.
import type { Socket, TCPSocketListener } from "bun";
import { Packr } from "msgpackr";
import type { DhEngine } from "../lib/crypto/dh.ts";
import {
  initiatorConfirm,
  initiatorFinish,
  parseHello,
  respond,
  responderFinish,
  startInitiator,
  type InitiatorState,
  type PendingConfirm,
  type ResponderState,
  type SessionKeys,
} from "../lib/session/handshake.ts";
import { ReceiveChain, SendChain } from "../lib/session/records.ts";
import { Outbox } from "../lib/wire/outbox.ts";
import { decodePayload, encodeFrame, FrameDecoder, LENGTH_PREFIX, writeU32, type Frame } from "../lib/wire/frame.ts";

export type Verdict = undefined | null | Frame | Frame[];
export type Tap = (f: Frame, pipe: Pipe) => Verdict | void;

const packr = new Packr({ useRecords: false, variableMapSize: true });

/** msgpack of an end-to-end message, as a client puts it in a `send` body. */
export const pack = (m: Frame): Uint8Array => new Uint8Array(packr.pack(m));

/** The end-to-end message inside a relay `msg` frame, or null. */
export function e2eOf(f: Frame): Frame | null {
  if (f.t !== "msg" || !(f.body instanceof Uint8Array)) return null;
  try {
    return decodePayload(f.body);
  } catch {
    return null;
  }
}

/** True if `f` is a relay `msg` whose end-to-end message has type `t` (and, if given, comes from `from`). */
export function isE2E(f: Frame, t: string, from?: string): boolean {
  return f.t === "msg" && (from === undefined || f.src === from) && e2eOf(f)?.t === t;
}

/** A relay `msg` frame as the relay would forward it. */
export function msgFrame(from: string, inner: Frame): Frame {
  return { t: "msg", src: from, body: pack(inner) };
}

/** A copy of `bytes` with bit 0 of byte `i` flipped. */
export function flipBit(bytes: Uint8Array, i: number): Uint8Array {
  const out = new Uint8Array(bytes);
  out[i]! ^= 1;
  return out;
}

/** Write queue of one socket (lib/wire/outbox.ts); bytes written before the socket is attached wait for it. */
class Sink {
  closed = false;
  private socket: Socket<unknown> | null = null;
  private readonly outbox = new Outbox({ write: (bytes) => (this.socket ? this.socket.write(bytes) : 0) });
  attach(socket: Socket<unknown>): void {
    this.socket = socket;
    this.flush();
  }
  write(bytes: Uint8Array): void {
    if (this.closed) return;
    this.outbox.push(bytes);
    this.flush();
  }
  flush(): void {
    this.outbox.flush();
  }
  /** Bytes not yet taken by the socket. */
  get bytes(): number {
    return this.outbox.bytes;
  }
}

export class Pipe {
  /** The client's relay ID, once the relay's `welcome` passed through. */
  id = "";
  /** Every frame the relay sent towards the client, as sent (before any tampering). */
  readonly fromRelay: Frame[] = [];
  /** Every frame the client sent towards the relay, as sent. */
  readonly fromClient: Frame[] = [];
  closed = false;
  readonly toClient = new Sink();
  readonly toRelay = new Sink();
  clientSocket!: Socket<Pipe>;
  relaySocket: Socket<unknown> | null = null;
  readonly downDecoder = new FrameDecoder(16 * 1024 * 1024);
  readonly upDecoder = new FrameDecoder(16 * 1024 * 1024);

  /** Sends `frames` to the client as if the relay had sent them, in one write. */
  injectToClient(...frames: Frame[]): void {
    this.toClient.write(concatFrames(frames.map(encodeFrame)));
  }
  /** Sends `frames` to the relay as if the client had sent them. */
  injectToRelay(...frames: Frame[]): void {
    this.toRelay.write(concatFrames(frames.map(encodeFrame)));
  }
  close(): void {
    if (this.closed) return;
    this.closed = true;
    this.toClient.closed = this.toRelay.closed = true;
    this.clientSocket?.end();
    this.relaySocket?.end();
  }
}

function concatFrames(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), (at += p.length);
  return out;
}

function framed(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(LENGTH_PREFIX + payload.length);
  writeU32(out, 0, payload.length);
  out.set(payload, LENGTH_PREFIX);
  return out;
}

/** Runs `tap` on each payload and returns the bytes to forward. */
function filter(payloads: Uint8Array[], log: Frame[], tap: Tap | null, pipe: Pipe, onWelcome: (f: Frame) => void): Uint8Array {
  const out: Uint8Array[] = [];
  for (const payload of payloads) {
    const f = decodePayload(payload);
    log.push(f);
    onWelcome(f);
    const v = tap ? tap(f, pipe) : undefined;
    if (v === undefined) out.push(framed(payload));
    else if (v === null) continue;
    else if (Array.isArray(v)) for (const g of v) out.push(encodeFrame(g));
    else out.push(encodeFrame(v));
  }
  return concatFrames(out);
}

export interface Mitm {
  readonly port: number;
  readonly pipes: Pipe[];
  /** Tap on frames travelling relay → client. */
  toClient: Tap | null;
  /** Tap on frames travelling client → relay. */
  toRelay: Tap | null;
  /** Exceptions from taps or undecodable streams (the pipe is closed). */
  readonly errors: unknown[];
  /** The pipe of the client with relay ID `id`. */
  pipe(id: string): Pipe;
  stop(): void;
}

export function startMitm(relayPort: number): Mitm {
  const pipes: Pipe[] = [];
  const mitm: Mitm = {
    port: 0,
    pipes,
    errors: [],
    toClient: null,
    toRelay: null,
    pipe(id) {
      const p = pipes.find((x) => x.id === id);
      if (!p) throw new Error(`no pipe for ${id}`);
      return p;
    },
    stop() {
      for (const p of pipes) p.close();
      listener.stop(true);
    },
  };
  const listener: TCPSocketListener<Pipe> = Bun.listen<Pipe>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        const pipe = new Pipe();
        pipe.clientSocket = client;
        client.data = pipe;
        pipe.toClient.attach(client as Socket<unknown>);
        pipes.push(pipe);
        Bun.connect({
          hostname: "127.0.0.1",
          port: relayPort,
          socket: {
            open(upstream) {
              pipe.relaySocket = upstream;
              pipe.toRelay.attach(upstream);
              if (pipe.closed) upstream.end();
            },
            data(_s, chunk) {
              if (pipe.closed) return;
              let bytes: Uint8Array;
              try {
                bytes = filter(pipe.downDecoder.push(chunk), pipe.fromRelay, mitm.toClient, pipe, (f) => {
                  if (f.t === "welcome" && typeof f.id === "string") pipe.id = f.id;
                });
              } catch (err) {
                mitm.errors.push(err);
                return pipe.close();
              }
              if (bytes.length) pipe.toClient.write(bytes);
            },
            drain() {
              pipe.toRelay.flush();
            },
            close() {
              pipe.close();
            },
            error() {},
          },
        }).catch(() => pipe.close());
      },
      data(client, chunk) {
        const pipe = client.data;
        if (pipe.closed) return;
        let bytes: Uint8Array;
        try {
          bytes = filter(pipe.upDecoder.push(chunk), pipe.fromClient, mitm.toRelay, pipe, () => {});
        } catch (err) {
          mitm.errors.push(err);
          return pipe.close();
        }
        if (bytes.length) pipe.toRelay.write(bytes);
      },
      drain(client) {
        client.data.toClient.flush();
      },
      close(client) {
        client.data.close();
      },
      error() {},
    },
  });
  (mitm as { port: number }).port = listener.port;
  return mitm;
}

// ---- The full Diffie-Hellman man in the middle ------------------------------

export interface DhMitm {
  /** The MITM's session keys with each victim (as that victim's fake peer). */
  keysWith: Map<string, SessionKeys>;
  /** Plaintexts of records the MITM decrypted on their way through. */
  read: { from: string; to: string; plaintext: Uint8Array }[];
  errors: unknown[];
}

/**
 * Splits the key exchange between victims `a` and `b` (either may initiate):
 * the MITM answers each victim's handshake messages itself, as the other
 * victim, with its own Diffie-Hellman values, and then decrypts and
 * re-encrypts every record between the two sessions.
 */
export function installDhMitm(mitm: Mitm, dh: DhEngine, a: string, b: string): DhMitm {
  const state: DhMitm = { keysWith: new Map(), read: [], errors: [] };
  // Per victim: the MITM's responder state (victim initiated) or initiator state (MITM initiated to victim).
  const asResponder = new Map<string, ResponderState>();
  const asInitiator = new Map<string, InitiatorState>();
  const pendingConfirm = new Map<string, PendingConfirm>();
  const chains = new Map<string, { send: SendChain; receive: ReceiveChain }>();
  const run = (work: () => Promise<void>) => void work().catch((err) => state.errors.push(err));

  const previous = mitm.toClient;
  mitm.toClient = (f, pipe) => {
    const from = f.src as string;
    const to = pipe.id;
    if (f.t !== "msg" || !((from === a && to === b) || (from === b && to === a))) return previous ? previous(f, pipe) : undefined;
    const m = e2eOf(f);
    if (!m) return null;
    const toFrom = mitm.pipe(from); // frames back to the sender come "from" `to`
    switch (m.t) {
      case "hello": // `from` starts a key exchange with `to`: answer it, and start our own with `to`
        run(async () => {
          const r = await respond(dh, to, from, parseHello(m));
          asResponder.set(from, r.state);
          toFrom.injectToClient(msgFrame(to, r.reply));
          const i = await startInitiator(dh, from, to);
          asInitiator.set(to, i.state);
          pipe.injectToClient(msgFrame(from, i.hello));
        });
        return null;
      case "reveal": // `from` finishes its exchange with us (as `to`)
        run(async () => {
          const { keys, confirm } = await responderFinish(dh, asResponder.get(from)!, m);
          established(from, keys);
          toFrom.injectToClient(msgFrame(to, confirm));
        });
        return null;
      case "reply": // `from` answers the hello we sent it (as `to`)
        run(async () => {
          const { reveal, pending } = await initiatorFinish(dh, asInitiator.get(from)!, m);
          pendingConfirm.set(from, pending);
          toFrom.injectToClient(msgFrame(to, reveal));
        });
        return null;
      case "confirm":
        established(from, initiatorConfirm(pendingConfirm.get(from)!, m));
        return null;
      case "rec": {
        const inbound = chains.get(from);
        const outbound = chains.get(to);
        if (!inbound || !outbound) return null;
        const r = inbound.receive.open(m);
        if (!r.ok) return null;
        state.read.push({ from, to, plaintext: r.plaintext });
        return msgFrame(from, outbound.send.seal(r.plaintext));
      }
    }
    return undefined;
  };
  function established(victim: string, keys: SessionKeys): void {
    state.keysWith.set(victim, keys);
    chains.set(victim, { send: new SendChain(keys.sendChain), receive: new ReceiveChain(keys.receiveChain) });
  }
  return state;
}
