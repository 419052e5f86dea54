// Seeded, bounded fuzzers shared by tests/fuzz.test.ts (short CI form) and
// scripts/fuzz.ts (longer runs by hand). Everything random comes from one
// mulberry32 PRNG seeded by the caller, so a failure report's seed replays the
// same inputs (timing-dependent interleavings aside).
//
//   relayFuzz:  many raw connections write random and mutated frames (join,
//               send to one/many, list, ping, pong) to one real relay; after
//               each batch the relay must still serve two honest clients,
//               have closed offenders with an `error` frame, keep its queues
//               bounded, and not grow the process's memory without bound.
//   clientFuzz: a raw joined link with a real session to a real chat client
//               sends it mutated E2E bodies (captured from a genuine exchange:
//               hello/reply/reveal/confirm/rec/brec/chunk, offers in records)
//               and random msgpack, plus mutated record contents sealed under
//               the real session keys; the client must never throw, never
//               show a `message` or `file` for garbage, and still complete an
//               exchange and a message with an honest peer afterwards.
import type { Socket } from "bun";
import { Packr } from "msgpackr";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startChat, type ChatClient, type ChatEvent } from "../lib/client/chat-client.ts";
import { startDhEngine, type DhEngine } from "../lib/crypto/dh.ts";
import { clientProof } from "../lib/relay/protocol.ts";
import type { Relay } from "../lib/relay/server.ts";
import { initiatorConfirm, initiatorFinish, startInitiator } from "../lib/session/handshake.ts";
import { ReceiveChain, SendChain } from "../lib/session/records.ts";
import { decodePayload, encodeFrame, FrameDecoder, writeU32, type Frame } from "../lib/wire/frame.ts";
import { Outbox } from "../lib/wire/outbox.ts";
import { joinTest, SECRET, startTestRelay, waitFor, type TestClient } from "./helpers.ts";

// ---- PRNG and generators ------------------------------------------------------

export type Rng = () => number; // [0, 1)

export function mulberry32(seed: number): Rng {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

const int = (r: Rng, n: number) => Math.floor(r() * n);
const pick = <T>(r: Rng, xs: readonly T[]): T => xs[int(r, xs.length)]!;
function bytes(r: Rng, n: number): Uint8Array {
  const out = new Uint8Array(n);
  for (let i = 0; i < n; i++) out[i] = int(r, 256);
  return out;
}

/** msgpack with a variable map header, so key orders other than the fast path occur too. */
const packr = new Packr({ useRecords: false, variableMapSize: true });
export const pack = (v: unknown): Uint8Array => new Uint8Array(packr.pack(v));

const KEYS = ["t", "v", "to", "body", "ref", "id", "ids", "proof", "nonce", "watch", "seq", "iv", "ct", "mac", "kid", "commit", "pub", "confirm", "name", "size", "key", "sha256", "bc", "items", "text", "last", "idx", "__proto__", "constructor"];
const TYPES = ["join", "send", "bulk", "list", "ping", "pong", "msg", "hello", "reply", "reveal", "confirm", "rec", "brec", "chunk", "offer", "accept", "decline", "cancel", "done", "skey", "batch", "text", "", "x".repeat(300)];

/** A random msgpack-able value, nested up to `depth`. */
export function randomValue(r: Rng, depth = 3): unknown {
  switch (int(r, depth > 0 ? 12 : 9)) {
    case 0: return null;
    case 1: return r() < 0.5;
    case 2: return pick(r, [0, -1, 1, 255, 256, 65535, 2 ** 31, 2 ** 32, 2 ** 53 - 1, -(2 ** 53), 2 ** 64, 1.5, NaN, Infinity, int(r, 1e9)]);
    case 3: return pick(r, TYPES);
    case 4: return bytes(r, pick(r, [0, 1, 8, 16, 32, 64, 256, 257, int(r, 3000)]));
    case 5: return String.fromCharCode(...bytes(r, int(r, 40)));
    case 6: return pick(r, ["0123abcd", "zzzzzzzz", "", "\u0000", "../../etc/passwd", "a".repeat(8)]);
    case 7: return -int(r, 1e6);
    case 8: return BigInt(int(r, 1e9)) * 10_000_000_000n;
    case 9: return Array.from({ length: int(r, 5) }, () => randomValue(r, depth - 1));
    default: return randomMap(r, depth - 1);
  }
}

export function randomMap(r: Rng, depth = 2): Record<string, unknown> {
  const m: Record<string, unknown> = {};
  if (r() < 0.8) m.t = pick(r, TYPES);
  for (let i = int(r, 6); i > 0; i--) setKey(m, pick(r, KEYS), randomValue(r, depth));
  return m;
}

/** A structural mutation of a decoded map: drop, retype or add fields. */
/** Sets an own property, even for "__proto__" (a plain assignment would change the prototype). */
function setKey(o: Record<string, unknown>, k: string, v: unknown): void {
  Object.defineProperty(o, k, { value: v, enumerable: true, configurable: true, writable: true });
}

export function mutateMap(r: Rng, m: Record<string, unknown>): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const k of Object.keys(m)) setKey(out, k, m[k]);
  for (let n = 1 + int(r, 3); n > 0; n--) {
    const keys = Object.keys(out);
    const op = int(r, 5);
    if (op === 0 && keys.length) delete out[pick(r, keys)];
    else if (op === 1 && keys.length) setKey(out, pick(r, keys), randomValue(r, 2));
    else if (op === 2) setKey(out, pick(r, KEYS), randomValue(r, 2));
    else if (op === 3 && keys.length) {
      const k = pick(r, keys);
      const v = out[k];
      if (v instanceof Uint8Array && v.length) setKey(out, k, mutateBytes(r, v));
      else if (typeof v === "number") setKey(out, k, pick(r, [v + 1, v - 1, -v, v * 2 ** 20, 0]));
    } else if (keys.length) {
      const k = pick(r, keys);
      const v = out[k];
      if (v instanceof Uint8Array) setKey(out, k, v.subarray(0, int(r, v.length + 1)));
    }
  }
  return out;
}

/** Byte-level mutation: flips, sets, truncation, insertion, duplication, splice. */
export function mutateBytes(r: Rng, input: Uint8Array, other?: Uint8Array): Uint8Array {
  let b: Uint8Array = new Uint8Array(input);
  for (let n = 1 + int(r, 4); n > 0; n--) {
    const at = int(r, b.length + 1);
    switch (int(r, 8)) {
      case 0: if (b.length) b[int(r, b.length)]! ^= 1 << int(r, 8); break;
      case 1: if (b.length) b[int(r, b.length)] = pick(r, [0, 0xff, 0x7f, 0x80, 0xc1, 0xc4, 0xc6, 0xd4, 0xdc, 0xdd, 0xde, 0xdf, 0x90, 0x80, int(r, 256)]); break;
      case 2: b = b.slice(0, at); break;
      case 3: b = concat(b.subarray(0, at), bytes(r, 1 + int(r, 16)), b.subarray(at)); break;
      case 4: { const len = int(r, 32); b = concat(b.subarray(0, at), b.subarray(at, at + len), b.subarray(at)); break; }
      case 5: if (other) b = concat(b.subarray(0, at), other.subarray(int(r, other.length + 1))); break;
      case 6: b = b.slice(int(r, Math.min(8, b.length + 1))); break;
      default: if (b.length >= 4) writeU32(b, int(r, b.length - 3), pick(r, [0, 1, 0x7fffffff, 0xffffffff, int(r, 2 ** 32)])); break;
    }
  }
  return b;
}

function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), (at += p.length);
  return out;
}

/** A frame (prefix + payload) with the given payload bytes. */
function framed(payload: Uint8Array): Uint8Array {
  const out = new Uint8Array(4 + payload.length);
  writeU32(out, 0, payload.length);
  out.set(payload, 4);
  return out;
}

/** Deeply nested msgpack arrays/maps (stack depth hostility). */
function nested(r: Rng, depth: number): Uint8Array {
  const open = r() < 0.5 ? 0x91 : 0x81;
  const parts: number[] = [];
  for (let i = 0; i < depth; i++) {
    if (open === 0x81) parts.push(0x81, 0xa1, 0x61);
    else parts.push(0x91);
  }
  parts.push(0xc0);
  return framed(concat(new Uint8Array([0x82, 0xa1, 0x74, 0xa4, ...new TextEncoder().encode("send"), 0xa1, 0x78]), new Uint8Array(parts)));
}

// ---- Raw connections -----------------------------------------------------------

/** A raw TCP connection that never blocks the event loop (the relay runs on it too). */
class RawConn {
  frames: Frame[] = [];
  badBytes = false;
  closed = false;
  closedByUs = false;
  sent = 0;
  private readonly outbox = new Outbox({ write: (bytes) => this.socket.write(bytes) });
  private decoder = new FrameDecoder(64 * 1024 * 1024);
  socket!: Socket<undefined>;

  static async connect(port: number): Promise<RawConn> {
    const c = new RawConn();
    c.socket = await Bun.connect({
      hostname: "127.0.0.1",
      port,
      socket: {
        data: (_s, chunk) => {
          if (c.badBytes) return;
          try {
            for (const p of c.decoder.push(chunk)) c.frames.push(decodePayload(p));
          } catch {
            c.badBytes = true;
          }
        },
        drain: () => c.flush(),
        close: () => void (c.closed = true),
        error: () => {},
      },
    });
    return c;
  }

  write(b: Uint8Array): void {
    if (this.closed) return;
    this.outbox.push(b);
    this.sent += b.length;
    this.flush();
  }

  private flush(): void {
    if (!this.closed) this.outbox.flush();
  }

  has(t: string): boolean {
    return this.frames.some((f) => f.t === t);
  }

  close(): void {
    if (!this.closed) this.closedByUs = true;
    this.socket.terminate();
  }
}

/** Joins a raw connection properly; returns its relay ID (or null if the relay refused). */
async function rawJoin(c: RawConn, watch: boolean): Promise<string | null> {
  const challenge = await waitFor(() => c.frames.find((f) => f.t === "challenge") ?? c.closed, "challenge", 5000);
  if (challenge === true) return null;
  const nonce = crypto.getRandomValues(new Uint8Array(32));
  c.write(encodeFrame({ t: "join", v: 1, proof: clientProof(SECRET, (challenge as Frame).nonce as Uint8Array, nonce), nonce, watch }));
  const welcome = await waitFor(() => c.frames.find((f) => f.t === "welcome") ?? c.closed, "welcome", 5000);
  return welcome === true ? null : ((welcome as Frame).id as string);
}

// ---- Common ---------------------------------------------------------------------

export interface FuzzResult {
  name: string;
  seed: number;
  iterations: number;
  batches: number;
  ms: number;
  notes: string[];
}

export class FuzzFailure extends Error {}

function check(ok: unknown, seed: number, what: string): asserts ok {
  if (!ok) throw new FuzzFailure(`${what} (seed ${seed})`);
}

/** Collects errors that escape to the process (a crash in a socket callback, a rejected promise). */
function trapEscapes(): { errors: unknown[]; dispose(): void } {
  const errors: unknown[] = [];
  const onErr = (e: unknown) => void errors.push(e);
  process.on("uncaughtException", onErr);
  process.on("unhandledRejection", onErr);
  return {
    errors,
    dispose() {
      process.off("uncaughtException", onErr);
      process.off("unhandledRejection", onErr);
    },
  };
}

async function honestExchange(relay: Relay, a: TestClient, b: TestClient, seed: number, tag: string): Promise<void> {
  const text = new TextEncoder().encode(`honest ${tag}`);
  a.link.send(b.link.id, text);
  const got = await b.next((f) => f.t === "msg" && f.src === a.link.id && f.body instanceof Uint8Array && Buffer.from(f.body).equals(Buffer.from(text)), `honest message ${tag}`, 5000).catch(() => null);
  check(got, seed, `honest clients could not exchange a message after batch ${tag}; relay stats ${JSON.stringify(relay.stats())}`);
}

// ---- Relay fuzzer ----------------------------------------------------------------

export interface FuzzOptions {
  seed: number;
  ms: number;
  log?: (line: string) => void;
}

export async function relayFuzz({ seed, ms, log = () => {} }: FuzzOptions): Promise<FuzzResult> {
  const r = mulberry32(seed);
  const MAX_FRAME = 64 * 1024;
  const relay = startTestRelay({ maxFrame: MAX_FRAME, joinTimeoutMs: 300, pingIntervalMs: 2_000, slowTimeoutMs: 2_000, queueHigh: 256 * 1024, queueLow: 64 * 1024, queuePause: 1024 * 1024, queueMax: 4 * 1024 * 1024, maxRecipients: 16 });
  const escapes = trapEscapes();
  const a = await joinTest(relay);
  const b = await joinTest(relay);
  const start = performance.now();
  let iterations = 0;
  let batches = 0;
  let rss0 = 0;
  let rssLast = 0;
  let maxQueued = 0;
  let errorClosed = 0;
  let silentlyClosed = 0;
  const notes: string[] = [];
  try {
    while (performance.now() - start < ms) {
      const conns: RawConn[] = [];
      const ids: string[] = [a.link.id, b.link.id];
      const n = 6 + int(r, 10);
      for (let i = 0; i < n; i++) conns.push(await RawConn.connect(relay.port));
      const joined: RawConn[] = [];
      // Two thirds join properly, so their garbage reaches the post-join state machine.
      await Promise.all(
        conns.map(async (c) => {
          if (r() < 0.33) return;
          const id = await rawJoin(c, r() < 0.5);
          if (id) ids.push(id), joined.push(c);
        }),
      );
      const validFrame = (): Frame => {
        switch (int(r, 8)) {
          case 0: return { t: r() < 0.5 ? "send" : "bulk", to: pick(r, ids), body: bytes(r, int(r, 300)) };
          case 1: return { t: r() < 0.5 ? "send" : "bulk", to: ids.slice(0, 1 + int(r, ids.length)), body: bytes(r, int(r, 100)), ref: int(r, 1000) };
          case 2: return { t: "list" };
          case 3: return { t: "ping" };
          case 4: return { t: "pong" };
          case 5: return { t: "send", to: "zzzzzzzz", body: bytes(r, 10) };
          case 6: return { t: "join", v: 1, proof: bytes(r, 32), nonce: bytes(r, 32) };
          default: return randomMap(r, 3);
        }
      };
      const encodeAny = (f: Frame): Uint8Array => {
        if (r() < 0.5) try { return encodeFrame(f); } catch {} // lib encoder refuses BigInt and the like
        return framed(pack(f));
      };
      const frameBytes = (): Uint8Array => {
        const base = encodeAny(validFrame());
        switch (int(r, 10)) {
          case 0: return base; // valid
          case 1: return framed(mutateBytes(r, base.subarray(4), encodeAny(validFrame()).subarray(4))); // payload mutation, correct prefix
          case 2: return mutateBytes(r, base, encodeAny(validFrame())); // anything, prefix included
          case 3: return framed(pack(mutateMap(r, validFrame())));
          case 4: { const h = new Uint8Array(4); writeU32(h, 0, pick(r, [0xffffffff, MAX_FRAME + 1, 2 ** 31, 1025])); return concat(h, bytes(r, int(r, 64))); } // huge prefix
          case 5: return framed(bytes(r, int(r, 64))); // random payload
          case 6: return nested(r, pick(r, [10, 1000, 100_000]));
          case 7: return framed(new Uint8Array(0));
          case 8: return base.subarray(0, int(r, base.length)); // truncated
          default: return framed(pack(randomValue(r, 4)));
        }
      };
      let frames = 0;
      for (const c of conns) {
        const k = 1 + int(r, 60);
        const out: Uint8Array[] = [];
        // Mostly valid then garbage, so a connection lives long enough to be interesting.
        for (let i = 0; i < k; i++) out.push(r() < 0.7 ? encodeAny(validFrame()) : frameBytes()), frames++;
        const all = concat(...out);
        // Write it in random splits: frames across reads, many frames in one read.
        for (let at = 0; at < all.length; ) {
          const len = 1 + int(r, r() < 0.3 ? 8 : all.length);
          c.write(all.subarray(at, at + len));
          at += len;
        }
      }
      iterations += frames;
      // Let the relay chew: each connection is either closed by the relay or answers a ping
      // (a connection stuck in a partial frame does neither; we hang up on it).
      for (const c of joined) c.write(encodeFrame({ t: "ping" }));
      const pongs = (c: RawConn) => c.frames.filter((f) => f.t === "pong").length;
      await waitFor(() => conns.every((c) => c.closed || (joined.includes(c) && pongs(c) > 0)), "batch to settle", 800).catch(() => {});
      maxQueued = Math.max(maxQueued, relay.stats().queuedBytes);
      for (const c of conns) {
        if (!c.closed) continue;
        if (c.badBytes) continue;
        // The relay ended it: an error frame must come first (a slow consumer is the documented exception).
        if (c.has("error")) errorClosed++;
        else if (relay.stats().counters.closed_slow_consumer) silentlyClosed++;
        else check(false, seed, `relay closed a connection without an error frame (batch ${batches}); frames seen: ${JSON.stringify(c.frames.map((f) => f.t))}`);
      }
      for (const c of conns) c.close();
      a.frames.length = 0;
      b.frames.length = 0;
      await honestExchange(relay, a, b, seed, `${batches}`);
      await honestExchange(relay, b, a, seed, `${batches}r`);
      const q = relay.stats().queuedBytes;
      check(q < 16 * 1024 * 1024, seed, `relay queues hold ${q} bytes after batch ${batches}`);
      batches++;
      if (batches === 3) Bun.gc(true), (rss0 = process.memoryUsage().rss);
      if (escapes.errors.length) throw new FuzzFailure(`uncaught error during relay fuzz (seed ${seed}): ${String(escapes.errors[0])}`);
    }
    await waitFor(() => relay.stats().pending === 0, "pending connections to clear", 3000).catch(() => {});
    Bun.gc(true);
    rssLast = process.memoryUsage().rss;
    if (rss0) check(rssLast - rss0 < 100 * 1024 * 1024, seed, `RSS grew from ${mib(rss0)} to ${mib(rssLast)} MiB`);
    const st = relay.stats();
    notes.push(`closed with error frame: ${errorClosed}, slow-consumer cuts: ${silentlyClosed}, max queued ${maxQueued} B, rss ${mib(rss0)}→${mib(rssLast)} MiB, relay counters ${JSON.stringify(st.counters)}`);
  } finally {
    escapes.dispose();
    a.link.close();
    b.link.close();
    await relay.stop();
  }
  const res = { name: "relay", seed, iterations, batches, ms: performance.now() - start, notes };
  log(`relay fuzz: ${iterations.toLocaleString("en")} frames in ${batches} batches, ${Math.round(res.ms)} ms, seed ${seed}`);
  return res;
}

const mib = (n: number) => (n / 1024 / 1024).toFixed(1);

// ---- Client fuzzer ------------------------------------------------------------------

export async function clientFuzz({ seed, ms, log = () => {} }: FuzzOptions): Promise<FuzzResult> {
  const r = mulberry32(seed);
  const relay = startTestRelay();
  const escapes = trapEscapes();
  const dir = mkdtempSync(join(tmpdir(), "smts-fuzz-"));
  const downloads = mkdtempSync(join(tmpdir(), "smts-fuzz-dl-"));
  const engines: DhEngine[] = [startDhEngine(), startDhEngine(), startDhEngine()];
  const chats: ChatClient[] = [];
  const cEvents: ChatEvent[] = [];
  const start = performance.now();
  let iterations = 0;
  let batches = 0;
  const notes: string[] = [];
  try {
    const c = await startChat({ host: "127.0.0.1", port: relay.port, secret: SECRET, dh: engines[0]!, downloadDir: downloads, onEvent: (e) => cEvents.push(e) });
    chats.push(c);
    // F: the fuzzer, a hand-driven peer with a genuine session to C.
    const f = await joinTest(relay, { watch: false });
    const corpus: Uint8Array[] = [];
    const sendBody = (body: Uint8Array) => f.link.send(c.id, body);
    // Everything C sends F, in order (never spliced, so the receive chain can open it in order).
    const cMsgs = () => f.frames.filter((x) => x.t === "msg" && x.src === c.id && x.body instanceof Uint8Array).map((x) => x.body as Uint8Array);
    let seen = 0;
    const fromC = async (t: string) => {
      const j = await waitFor(() => { const all = cMsgs(); for (let q = seen; q < all.length; q++) if (safeT(all[q]!) === t) return q + 1; return 0; }, `${t} from C`, 15_000);
      seen = j;
      return decodePayload(cMsgs()[j - 1]!);
    };
    const i = await startInitiator(engines[1]!, f.link.id, c.id);
    corpus.push(pack(i.hello));
    sendBody(pack(i.hello));
    const fin = await initiatorFinish(engines[1]!, i.state, await fromC("reply"));
    corpus.push(pack(fin.reveal));
    sendBody(pack(fin.reveal));
    const keys = initiatorConfirm(fin.pending, await fromC("confirm"));
    const send = new SendChain(keys.sendChain.slice());
    const receive = new ReceiveChain(keys.receiveChain.slice());
    const seal = (content: unknown) => pack(send.seal(pack(content)));
    await waitFor(() => c.hasSession(f.link.id), "C's session with F", 15_000);
    // Genuine records both ways, a broadcast (skey + brec) and a file offer + chunks from C.
    const genuineText = seal({ t: "text", text: "genuine from F" });
    corpus.push(genuineText);
    sendBody(genuineText);
    await waitFor(() => cEvents.some((e) => e.event === "message" && e.text === "genuine from F"), "genuine message on C", 5000);
    c.sendText(f.link.id, "genuine from C");
    await fromC("rec");
    c.verify(f.link.id); // F started the session: in C's broadcasts once verified
    c.broadcastText("broadcast from C");
    await fromC("brec");
    const file = join(dir, "f.bin");
    writeFileSync(file, new Uint8Array(70_000).fill(7));
    const sending = c.sendFile(f.link.id, file).catch(() => {});
    // Open C's records in order until the offer shows up.
    const opened: Frame[] = [];
    const flat = (x: Frame) => (x.t === "batch" && Array.isArray(x.items) ? (x.items as Frame[]) : [x]);
    let offerContent: Frame | undefined;
    let openedUpTo = 0;
    await waitFor(() => {
      const all = cMsgs();
      for (; openedUpTo < all.length; openedUpTo++) {
        const m = safeDecode(all[openedUpTo]!);
        if (m?.t !== "rec") continue;
        const o = receive.open(m);
        if (o.ok) opened.push(decodePayload(o.plaintext));
      }
      offerContent = opened.flatMap(flat).find((x) => x.t === "offer");
      return offerContent;
    }, "file offer from C", 15_000).catch(() => notes.push("no offer captured"));
    seen = openedUpTo;
    if (offerContent) {
      sendBody(seal({ t: "accept", id: offerContent.id }));
      await fromC("chunk");
    }
    c.cancel(""); // a file still streaming is cancelled; one sent in full waits for the receiver's answer:
    if (offerContent) sendBody(seal({ t: "failed", id: offerContent.id, reason: "enough" }));
    await sending;
    corpus.push(...cMsgs());
    const contents: Frame[] = [...opened.flatMap(flat), { t: "text", text: "x" }, { t: "accept", id: bytes(r, 16) }, { t: "decline", id: bytes(r, 16), reason: "no" }, { t: "cancel", id: bytes(r, 16) }, { t: "done", id: bytes(r, 16) }, { t: "batch", items: [{ t: "text", text: "y" }] }];
    const corpusMaps = corpus.map(safeDecode).filter((x): x is Frame => x !== null);
    const baseline = cEvents.length;

    const chunkId = () => (offerContent?.id as Uint8Array | undefined) ?? bytes(r, 16);
    const garbageBody = (): Uint8Array => {
      const base = pick(r, corpus);
      switch (int(r, 7)) {
        case 0: return mutateBytes(r, base, pick(r, corpus));
        case 1: return pack(mutateMap(r, pick(r, corpusMaps)));
        case 2: return pack(randomMap(r, 3));
        case 3: return bytes(r, int(r, 200));
        case 4: return base; // a replay of a genuine body: must be rejected (replayed / stale / wrong key)
        case 5: return pack({ t: "chunk", id: chunkId(), seq: int(r, 5), iv: bytes(r, 16), ct: bytes(r, int(r, 2000)), mac: bytes(r, 32), last: r() < 0.5 });
        default: return nested(r, pick(r, [10, 10_000])).subarray(4);
      }
    };
    // Record contents sealed under the real keys: exercise the content and file parsers.
    const garbageContent = (): unknown => {
      let x: unknown = r() < 0.6 ? mutateMap(r, pick(r, contents)) : r() < 0.5 ? randomMap(r, 3) : randomValue(r, 3);
      if (r() < 0.2) x = { t: "batch", items: Array.from({ length: 1 + int(r, 5) }, () => mutateMap(r, pick(r, contents))) };
      return defang(x);
    };
    const fuzzStart = performance.now(); // the budget is for fuzzing, not the DH worker's start-up
    while (performance.now() - fuzzStart < ms) {
      const k = 50 + int(r, 150);
      for (let j = 0; j < k; j++) {
        if (r() < 0.35) sendBody(seal(garbageContent()));
        else sendBody(garbageBody());
      }
      iterations += k;
      // Settle: a genuine sealed text after the garbage must arrive (so C processed everything before it).
      const tag = `sync ${batches}`;
      sendBody(seal({ t: "text", text: tag }));
      const ok = await waitFor(() => cEvents.some((e) => e.event === "message" && e.text === tag) || !c.hasSession(f.link.id), tag, 15_000).catch(() => false);
      check(ok, seed, `chat client stopped processing (batch ${batches})`);
      if (!c.hasSession(f.link.id)) {
        // A mutated hello/reveal may legitimately re-key or drop the session; the fuzzer cannot follow, so stop here.
        notes.push(`session with the fuzzer ended after batch ${batches}`);
        batches++;
        break;
      }
      batches++;
      if (escapes.errors.length) throw new FuzzFailure(`uncaught error during client fuzz (seed ${seed}): ${String((escapes.errors[0] as Error)?.stack ?? escapes.errors[0])}`);
    }
    // F is a legitimate broadcast recipient of C, so it holds C's sender key and may hand
    // it to C as its own (a mutated `skey` sealed under F's real session). C refuses its
    // current key (PROTOCOL §34.4), but one it has since replaced is no longer its own: C's
    // broadcast replayed by F then opens, attributed to F. That is F speaking, not garbage
    // getting through: it is counted, not failed.
    const reflected = cEvents.slice(baseline).filter((e) => e.event === "message" && e.broadcast && e.text === "broadcast from C").length;
    if (reflected) notes.push(`C's own broadcast reflected by F under a sender key F sent it: ${reflected}`);
    // Likewise F holds the key of the file C offered it and has C's chunks: a (mutated) offer
    // of that file sealed under F's session plus C's chunks replayed is F sending C's file back.
    const ownFile = new Bun.CryptoHasher("sha256").update(new Uint8Array(70_000).fill(7)).digest("hex");
    const reflectedFiles = cEvents.slice(baseline).filter((e) => e.event === "file" && e.sha256 === ownFile).length;
    if (reflectedFiles) notes.push(`C's own file reflected by F with the key C gave it: ${reflectedFiles}`);
    const bad = cEvents.slice(baseline).filter((e) => (e.event === "message" && !e.text.startsWith("sync ") && !(e.broadcast && e.text === "broadcast from C")) || (e.event === "file" && e.sha256 !== ownFile));
    check(bad.length === 0, seed, `chat client showed garbage as content: ${JSON.stringify(bad.slice(0, 3))}`);
    if (escapes.errors.length) throw new FuzzFailure(`uncaught error during client fuzz (seed ${seed}): ${String((escapes.errors[0] as Error)?.stack ?? escapes.errors[0])}`);
    // Afterwards: an honest peer completes a key exchange and messages both ways.
    const hEvents: ChatEvent[] = [];
    const h = await startChat({ host: "127.0.0.1", port: relay.port, secret: SECRET, dh: engines[2]!, downloadDir: downloads, onEvent: (e) => hEvents.push(e) });
    chats.push(h);
    await h.connect(c.id);
    await c.waitSession(h.id, 15_000);
    h.sendText(c.id, "honest after fuzz");
    c.sendText(h.id, "reply after fuzz");
    const okH = await waitFor(() => cEvents.some((e) => e.event === "message" && e.text === "honest after fuzz") && hEvents.some((e) => e.event === "message" && e.text === "reply after fuzz"), "honest exchange after fuzz", 15_000).catch(() => false);
    check(okH, seed, "honest peer could not exchange messages with the fuzzed client");
    const counts: Record<string, number> = {};
    for (const e of cEvents.slice(baseline)) {
      const key = e.event === "error" ? `error:${e.code}` : e.event === "transfer" ? `transfer:${e.state}` : e.event;
      counts[key] = (counts[key] ?? 0) + 1;
    }
    notes.push(`client events: ${JSON.stringify(counts)}`);
  } finally {
    escapes.dispose();
    for (const ch of chats) await ch.close().catch(() => {});
    await relay.stop();
    for (const e of engines) e.close();
    rmSync(dir, { recursive: true, force: true });
    rmSync(downloads, { recursive: true, force: true });
  }
  const res = { name: "client", seed, iterations, batches, ms: performance.now() - start, notes };
  log(`client fuzz: ${iterations.toLocaleString("en")} bodies in ${batches} batches, ${Math.round(res.ms)} ms (incl. setup), seed ${seed}`);
  return res;
}

function safeDecode(b: Uint8Array): Frame | null {
  try {
    return decodePayload(b);
  } catch {
    return null;
  }
}
function safeT(b: Uint8Array): unknown {
  return safeDecode(b)?.t;
}

/** Garbage sealed under real keys must not be a genuine text: rename any `text` content. */
function defang(x: unknown): unknown {
  if (Array.isArray(x)) return x.map(defang);
  if (x && typeof x === "object" && !(x instanceof Uint8Array)) {
    const o: Record<string, unknown> = {};
    for (const k of Object.keys(x)) setKey(o, k, (x as Record<string, unknown>)[k]);
    if (o.t === "text") o.t = "txet";
    if (Array.isArray(o.items)) o.items = o.items.map(defang);
    return o;
  }
  return x;
}
