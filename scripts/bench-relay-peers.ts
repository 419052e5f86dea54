// Client processes for scripts/bench-relay.ts: the senders and receivers of
// the relay benchmark, each run as its own `bun` process so that sender,
// forwarder and receiver each have an event loop (as a real deployment would).
//
//   bun scripts/bench-relay-peers.ts ROLE key=value ...
//
// Roles (proto chooses what the socket speaks; the pumping and counting code
// is shared, so the smts relay and its reference get the same client effort):
//   stream-send proto=smts|raw port to frames bodyBytes  sends `frames` send-frames
//   stream-recv proto=smts|raw port frames bodyBytes     counts them, reports time and checks
//   rate-pub    proto=smts|nats port to bodyBytes        publishes until told STOP
//   rate-sub    proto=smts|nats port bodyBytes warmupMs durationMs  counts msgs in a window
// proto=smts joins an `--open` smts relay; proto=raw writes/reads the same
// smts frames over plain TCP (the socat reference: the sender dials socat,
// the receiver listens and socat dials it); proto=nats speaks NATS core.
//
// Talk with the parent on stdio, one line each:
//   stdout: `READY {json}`, `RESULT {json}`, `ERROR text`
//   stdin:  `GO`, `STOP`, `FROM <id>` (the sender ID a receiver should expect);
//           end of stdin means the parent is done (or died): exit at once.
import type { Socket } from "bun";
import { msgFrameHeader } from "../lib/relay/protocol.ts";
import { decodePayload, encodeFrame, FrameDecoder } from "../lib/wire/frame.ts";

type Sock = Socket<Conn>;

const NATS_SUBJECT = "bench";
/** Every sample-th frame is fully checked (decoded, sequence number, body bytes). */
const STREAM_SAMPLE_EVERY = 64;
const RATE_SAMPLE_EVERY = 1024;
/** Frames (or NATS messages) per prebuilt write buffer. */
const STREAM_BATCH_FRAMES = 16; // 16 × 64 KiB = 1 MiB per write
const RATE_BATCH_FRAMES = 1024; // ~230 KiB per write
/** Give timers and stdin a turn after this many bytes written without a short write. */
const YIELD_AFTER_BYTES = 8 * 1024 * 1024;
const RAW_TO = "00000000"; // `to` of the frames sent through socat (nobody reads it)

// ---- stdio with the parent ---------------------------------------------------

function say(kind: "READY" | "RESULT", value: unknown): void {
  process.stdout.write(`${kind} ${JSON.stringify(value)}\n`);
}

function die(message: string): never {
  process.stdout.write(`ERROR ${message.replace(/\n/g, " ")}\n`);
  process.exit(1);
}

const commandWaiters = new Map<string, (arg: string) => void>();
let stdinBuffer = "";
process.stdin.on("data", (d: Buffer) => {
  stdinBuffer += d.toString();
  let nl: number;
  while ((nl = stdinBuffer.indexOf("\n")) >= 0) {
    const [cmd = "", arg = ""] = stdinBuffer.slice(0, nl).trim().split(" ");
    stdinBuffer = stdinBuffer.slice(nl + 1);
    const waiter = commandWaiters.get(cmd);
    commandWaiters.delete(cmd);
    waiter?.(arg);
  }
});
process.stdin.on("end", () => process.exit(0));

function command(name: string): Promise<string> {
  return new Promise((resolve) => commandWaiters.set(name, resolve));
}

const now = () => performance.now();
/** Wall-clock milliseconds with sub-ms precision, comparable across processes. */
const wallMs = () => performance.timeOrigin + performance.now();

// ---- sockets -----------------------------------------------------------------

/**
 * One TCP connection. The roles swap the `onData` handler as they go (join,
 * then counting); while it is null, received chunks are kept and handed to
 * the next handler, so nothing is lost between two phases. All writes go
 * through `out`.
 */
class Conn {
  socket!: Sock;
  readonly out = new Writer(this);
  onClose: () => void = () => {};
  private handler: ((chunk: Buffer) => void) | null = null;
  private early: Buffer[] = [];

  set onData(fn: ((chunk: Buffer) => void) | null) {
    this.handler = fn;
    while (fn && this.early.length && this.handler === fn) fn(this.early.shift()!);
  }

  deliver(chunk: Buffer): void {
    if (this.handler) this.handler(chunk);
    else this.early.push(chunk);
  }
}

const handlers = {
  open(s: Sock) {
    s.setNoDelay(true);
  },
  data(s: Sock, chunk: Buffer) {
    s.data.deliver(chunk);
  },
  drain(s: Sock) {
    s.data.out.onDrain();
  },
  close(s: Sock) {
    s.data.onClose();
  },
  error(_s: Sock, err: Error) {
    process.stderr.write(`socket error: ${err.message}\n`);
  },
};

async function dial(port: number): Promise<Conn> {
  const conn = new Conn();
  const deadline = now() + 5000;
  for (;;) {
    try {
      conn.socket = await Bun.connect<Conn>({ hostname: "127.0.0.1", port, data: conn, socket: handlers });
      return conn;
    } catch (err) {
      if (now() > deadline) die(`cannot connect to 127.0.0.1:${port}: ${(err as Error).message}`);
      await Bun.sleep(10);
    }
  }
}

/** Listens on an ephemeral port; `conn` resolves with the first connection. */
function listenOnce(): { port: number; conn: Promise<Conn> } {
  let accept!: (c: Conn) => void;
  const conn = new Promise<Conn>((r) => (accept = r));
  const listener = Bun.listen<Conn>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      ...handlers,
      open(s) {
        s.data = new Conn();
        s.data.socket = s;
        s.setNoDelay(true);
        listener.stop(); // one connection only
        accept(s.data);
      },
    },
  });
  return { port: listener.port, conn };
}

/** Joins an open smts relay with a minimal client; resolves with our ID. */
function joinSmts(conn: Conn): Promise<string> {
  return new Promise((resolve) => {
    const decoder = new FrameDecoder(64 * 1024);
    conn.onClose = () => die("relay closed the connection during join");
    conn.onData = (chunk) => {
      for (const payload of decoder.push(chunk)) {
        const f = decodePayload(payload);
        if (f.t === "challenge") {
          if (f.open !== true) die("relay is not open (start it with --open)");
          conn.out.control(encodeFrame({ t: "join", v: 1, proof: new Uint8Array(32), nonce: crypto.getRandomValues(new Uint8Array(32)), watch: false }));
        } else if (f.t === "welcome" && typeof f.id === "string") {
          if (decoder.buffered > 0) die("unexpected bytes after welcome");
          conn.onData = null;
          conn.onClose = () => {};
          resolve(f.id);
        } else die(`unexpected frame during join: ${JSON.stringify(f)}`);
      }
    };
  });
}

/** NATS: CONNECT (+ SUB), then PING; resolves at the PONG, when the server has processed it all. */
function handshakeNats(conn: Conn, subscribe: boolean): Promise<void> {
  return new Promise((resolve) => {
    let text = "";
    conn.onClose = () => die("nats-server closed the connection during the handshake");
    conn.onData = (chunk) => {
      text += chunk.toString("latin1");
      let nl: number;
      while ((nl = text.indexOf("\r\n")) >= 0) {
        const line = text.slice(0, nl);
        text = text.slice(nl + 2);
        if (line.startsWith("-ERR")) die(`nats-server: ${line}`);
        if (line === "PING") conn.out.control(PONG);
        if (line === "PONG") {
          if (text.length) die("unexpected bytes after PONG");
          conn.onData = null;
          conn.onClose = () => {};
          resolve();
        }
      }
    };
    const sub = subscribe ? `SUB ${NATS_SUBJECT} 1\r\n` : "";
    conn.out.control(new TextEncoder().encode(`CONNECT {"verbose":false,"pedantic":false}\r\n${sub}PING\r\n`));
  });
}

/** After the handshake a NATS publisher still answers PING and reports -ERR. */
function natsControlReader(conn: Conn): { errors: string[] } {
  const seen = { errors: [] as string[] };
  let text = "";
  conn.onData = (chunk) => {
    text += chunk.toString("latin1");
    let nl: number;
    while ((nl = text.indexOf("\r\n")) >= 0) {
      const line = text.slice(0, nl);
      text = text.slice(nl + 2);
      if (line === "PING") conn.out.control(PONG);
      else if (line.startsWith("-ERR") && seen.errors.length < 10) seen.errors.push(line);
    }
  };
  return seen;
}

/** After joining, a sender still reads what the relay says (error frames, pings). */
function smtsControlReader(conn: Conn): { errors: string[] } {
  const decoder = new FrameDecoder(1024 * 1024);
  const seen = { errors: [] as string[] };
  conn.onData = (chunk) => {
    for (const payload of decoder.push(chunk)) {
      const f = decodePayload(payload);
      if (f.t === "ping") conn.out.control(encodeFrame({ t: "pong" }));
      else if (f.t === "error" && seen.errors.length < 10) seen.errors.push(`${String(f.code)}: ${String(f.message)}`);
    }
  };
  return seen;
}

// ---- bodies and prebuilt frames ------------------------------------------------

/** Body i: 4-byte big-endian sequence number, then a fixed pattern. */
function bodyTemplate(bytes: number): Uint8Array {
  const body = new Uint8Array(bytes);
  for (let i = 4; i < bytes; i++) body[i] = (i * 31 + 7) & 0xff;
  return body;
}

interface Unit {
  bytes: Uint8Array; // one complete frame / NATS PUB
  bodyOffset: number; // where the body starts inside it
}

function sendUnit(proto: string, to: string, bodyBytes: number): Unit {
  const body = bodyTemplate(bodyBytes);
  if (proto === "nats") {
    const head = new TextEncoder().encode(`PUB ${NATS_SUBJECT} ${bodyBytes}\r\n`);
    const bytes = new Uint8Array(head.length + bodyBytes + 2);
    bytes.set(head);
    bytes.set(body, head.length);
    bytes.set([13, 10], head.length + bodyBytes);
    return { bytes, bodyOffset: head.length };
  }
  const bytes = encodeFrame({ t: "send", to, body });
  return { bytes, bodyOffset: bytes.length - bodyBytes };
}

/** A buffer of `count` copies of `unit`, with `stamp` to write sequence numbers into it. */
function batchOf(unit: Unit, count: number) {
  const size = unit.bytes.length;
  const buf = new Uint8Array(size * count);
  for (let i = 0; i < count; i++) buf.set(unit.bytes, i * size);
  const view = new DataView(buf.buffer);
  return {
    buf,
    size,
    /** Numbers the first `n` units firstSeq, firstSeq+1, ...; returns the bytes to write. */
    stamp(firstSeq: number, n: number): Uint8Array {
      for (let i = 0; i < n; i++) view.setUint32(i * size + unit.bodyOffset, (firstSeq + i) >>> 0);
      return n === count ? buf : buf.subarray(0, n * size);
    },
  };
}

const PONG = new TextEncoder().encode("PONG\r\n");

/**
 * The write side of a connection. Bun's write() takes what the kernel
 * accepts and keeps nothing, so the unsent tail stays here and goes out from
 * the `drain` callback. Two sources, never interleaved mid-buffer:
 *   - control(bytes): small protocol replies (join, CONNECT, PONG), sent next;
 *   - pump(next): bulk buffers from `next()` until it returns null. A buffer
 *     is asked for (and may be overwritten by `next`) only once the previous
 *     one is fully accepted.
 */
class Writer {
  private cur: Uint8Array | null = null;
  private off = 0;
  private readonly controls: Uint8Array[] = [];
  private source: (() => Uint8Array | null) | null = null;
  private finished: (() => void) | null = null;
  private scheduled = false;

  constructor(private readonly conn: Conn) {}

  control(bytes: Uint8Array): void {
    this.controls.push(bytes);
    if (!this.cur && !this.scheduled) this.run();
  }

  pump(next: () => Uint8Array | null): Promise<void> {
    return new Promise((resolve) => {
      this.source = next;
      this.finished = resolve;
      if (!this.cur && !this.scheduled) this.run();
    });
  }

  onDrain(): void {
    if (!this.scheduled) this.run();
  }

  private run(): void {
    this.scheduled = false;
    let written = 0;
    for (;;) {
      if (!this.cur) {
        this.off = 0;
        this.cur = this.controls.shift() ?? (this.source ? this.source() : null);
        if (!this.cur) {
          if (this.source) {
            this.source = null;
            this.finished?.();
          }
          return;
        }
      }
      const n = this.conn.socket.write(this.off === 0 ? this.cur : this.cur.subarray(this.off));
      if (n < 0) die("socket closed while sending");
      this.off += n;
      written += n;
      if (this.off < this.cur.length) return; // short write: the rest goes from drain
      this.cur = null;
      if (written >= YIELD_AFTER_BYTES) {
        this.scheduled = true;
        setImmediate(() => this.run()); // let stdin (STOP) and incoming data be handled
        return;
      }
    }
  }
}

// ---- counting received frames ---------------------------------------------------

/**
 * The rest of a payload that continues in later reads: how many bytes are
 * still to come, and a copy of them when the payload was picked for checking.
 */
class Rest {
  left = 0;
  capture: Uint8Array | null = null;
  private fill = 0;

  start(len: number, keep: boolean): void {
    this.left = len;
    this.capture = keep ? new Uint8Array(len) : null;
    this.fill = 0;
  }

  /** Takes what it can of chunk[pos..end); returns the new position. */
  take(chunk: Uint8Array, pos: number, end: number): number {
    const n = Math.min(this.left, end - pos);
    if (this.capture) this.capture.set(chunk.subarray(pos, pos + n), this.fill), (this.fill += n);
    this.left -= n;
    return pos + n;
  }
}

/**
 * Counts length-prefixed smts frames by walking the 4-byte prefixes only.
 * Every frame's length must be `frameLen - 4`; every `sampleEvery`-th frame is
 * assembled (a view if it sits in one chunk, else copied) and given to `check`.
 */
class FrameCounter {
  frames = 0;
  bytes = 0;
  chunks = 0;
  badLength = 0;
  private rest = new Rest();
  private header = new Uint8Array(4);
  private headerFill = 0;

  constructor(
    private readonly payloadLen: number,
    private readonly sampleEvery: number,
    private readonly check: (payload: Uint8Array, index: number) => void,
  ) {}

  push(chunk: Buffer): void {
    this.bytes += chunk.length;
    this.chunks++;
    const end = chunk.length;
    let pos = 0;
    while (pos < end) {
      if (this.rest.left > 0) {
        pos = this.rest.take(chunk, pos, end);
        if (this.rest.left === 0) this.frameDone();
        continue;
      }
      let len: number;
      if (this.headerFill === 0 && end - pos >= 4) {
        len = ((chunk[pos]! << 24) | (chunk[pos + 1]! << 16) | (chunk[pos + 2]! << 8) | chunk[pos + 3]!) >>> 0;
        pos += 4;
      } else {
        const take = Math.min(4 - this.headerFill, end - pos);
        this.header.set(chunk.subarray(pos, pos + take), this.headerFill);
        this.headerFill += take;
        pos += take;
        if (this.headerFill < 4) break;
        this.headerFill = 0;
        const h = this.header;
        len = ((h[0]! << 24) | (h[1]! << 16) | (h[2]! << 8) | h[3]!) >>> 0;
      }
      if (len !== this.payloadLen) this.badLength++;
      const sample = this.frames % this.sampleEvery === 0;
      if (end - pos >= len) {
        if (sample) this.check(chunk.subarray(pos, pos + len), this.frames);
        pos += len;
        this.frames++;
      } else {
        this.rest.start(len, sample);
      }
    }
  }

  private frameDone(): void {
    if (this.rest.capture) this.check(this.rest.capture, this.frames);
    this.frames++;
  }
}

/**
 * Counts NATS `MSG` deliveries: finds each control line (`\n`), reads the
 * payload size from the end of a MSG line and skips payload + CRLF without
 * looking at it. Answers PING; records -ERR. Every `sampleEvery`-th message
 * has its line and payload checked by `check`.
 */
class NatsCounter {
  frames = 0;
  bytes = 0;
  errors: string[] = [];
  private rest = new Rest(); // payload + CRLF of the current MSG
  private carry: Uint8Array | null = null; // an incomplete control line
  private captureLine = "";

  constructor(
    private readonly conn: Conn,
    private readonly sampleEvery: number,
    private readonly check: (line: string, payloadWithCrlf: Uint8Array, index: number) => void,
  ) {}

  push(chunk: Buffer): void {
    this.bytes += chunk.length;
    const end = chunk.length;
    let pos = 0;
    if (this.carry) {
      const nl = chunk.indexOf(10);
      if (nl < 0) {
        this.carry = concat(this.carry, chunk);
        if (this.carry.length > 64 * 1024) die("NATS control line too long");
        return;
      }
      const line = concat(this.carry, chunk.subarray(0, nl + 1));
      this.carry = null;
      pos = this.afterLine(chunk, nl + 1, this.line(line, 0, line.length - 1));
    }
    while (pos < end) {
      if (this.rest.left > 0) {
        pos = this.rest.take(chunk, pos, end);
        if (this.rest.left === 0) this.messageDone();
        continue;
      }
      const nl = chunk.indexOf(10, pos);
      if (nl < 0) {
        this.carry = chunk.slice(pos);
        break;
      }
      pos = this.afterLine(chunk, nl + 1, this.line(chunk, pos, nl));
    }
  }

  /** Handles the payload (if any) that follows a control line; returns the new position. */
  private afterLine(chunk: Buffer, pos: number, size: number): number {
    if (size < 0) return pos;
    const need = size + 2;
    const sample = this.frames % this.sampleEvery === 0;
    if (chunk.length - pos >= need) {
      if (sample) this.check(this.captureLine, chunk.subarray(pos, pos + need), this.frames);
      this.frames++;
      return pos + need;
    }
    this.rest.start(need, sample);
    return pos;
  }

  /** Parses the control line buf[start..nl] (nl is the index of \n); returns the MSG payload size or -1. */
  private line(buf: Uint8Array, start: number, nl: number): number {
    const stop = nl > start && buf[nl - 1] === 13 ? nl - 1 : nl; // drop \r
    if (buf[start] === 77 && buf[start + 1] === 83 && buf[start + 2] === 71 && buf[start + 3] === 32) {
      // "MSG <subject> <sid> [reply] <size>": the size is the digits before \r
      let size = 0;
      let mul = 1;
      let i = stop - 1;
      for (; i > start && buf[i]! >= 48 && buf[i]! <= 57; i--, mul *= 10) size += (buf[i]! - 48) * mul;
      if (this.frames % this.sampleEvery === 0) this.captureLine = Buffer.from(buf.subarray(start, stop)).toString("latin1");
      return size;
    }
    const text = Buffer.from(buf.subarray(start, stop)).toString("latin1");
    if (text === "PING") this.conn.out.control(PONG);
    else if (text.startsWith("-ERR") && this.errors.length < 10) this.errors.push(text);
    else if (text.startsWith("HMSG")) die("unexpected HMSG");
    return -1; // INFO, PONG, +OK, -ERR
  }

  private messageDone(): void {
    if (this.rest.capture) this.check(this.captureLine, this.rest.capture, this.frames);
    this.frames++;
  }
}

function concat(a: Uint8Array, b: Uint8Array): Uint8Array {
  const out = new Uint8Array(a.length + b.length);
  out.set(a);
  out.set(b, a.length);
  return out;
}

/** Checks sampled frames/messages: type, sender, body length, sequence number, body bytes. */
class Checker {
  checked = 0;
  failures: string[] = [];
  expectFrom: string | null = null;
  private template: Uint8Array;

  constructor(
    private readonly proto: string,
    private readonly bodyBytes: number,
  ) {
    this.template = bodyTemplate(bodyBytes);
  }

  private fail(msg: string): void {
    if (this.failures.length < 10) this.failures.push(msg);
  }

  private body(body: unknown, index: number): void {
    if (!(body instanceof Uint8Array) || body.length !== this.bodyBytes) return this.fail(`#${index}: body is not ${this.bodyBytes} bytes`);
    const seq = ((body[0]! << 24) | (body[1]! << 16) | (body[2]! << 8) | body[3]!) >>> 0;
    if (seq !== index >>> 0) return this.fail(`#${index}: sequence number ${seq} (lost, duplicated or reordered frames)`);
    if (Buffer.compare(body.subarray(4), this.template.subarray(4)) !== 0) this.fail(`#${index}: body bytes differ`);
  }

  frame = (payload: Uint8Array, index: number): void => {
    this.checked++;
    const f = decodePayload(payload);
    if (this.proto === "smts") {
      if (f.t !== "msg") return this.fail(`#${index}: t=${String(f.t)}, expected msg`);
      if (this.expectFrom && f.src !== this.expectFrom) return this.fail(`#${index}: src=${String(f.src)}, expected ${this.expectFrom}`);
    } else if (f.t !== "send" || f.to !== RAW_TO) return this.fail(`#${index}: expected the sender's own send frame`);
    this.body(f.body, index);
  };

  nats = (line: string, payload: Uint8Array, index: number): void => {
    this.checked++;
    if (line !== `MSG ${NATS_SUBJECT} 1 ${this.bodyBytes}`) return this.fail(`#${index}: line ${JSON.stringify(line)}`);
    if (payload[payload.length - 2] !== 13 || payload[payload.length - 1] !== 10) return this.fail(`#${index}: payload not followed by CRLF`);
    this.body(payload.subarray(0, payload.length - 2), index);
  };
}

/** Payload length of every frame the receiver should see. */
function receivedPayloadLen(proto: string, bodyBytes: number): number {
  if (proto === "smts") return msgFrameHeader("00000000", bodyBytes).length - 4 + bodyBytes; // IDs are 8 chars
  return sendUnit("raw", RAW_TO, bodyBytes).bytes.length - 4;
}

// ---- roles ---------------------------------------------------------------------------

async function connectFor(proto: string, port: number, subscribe = false): Promise<{ conn: Conn; id: string }> {
  const conn = await dial(port);
  if (proto === "smts") return { conn, id: await joinSmts(conn) };
  if (proto === "nats") await handshakeNats(conn, subscribe);
  return { conn, id: "" };
}

async function streamSend(a: Args): Promise<void> {
  const { conn, id } = await connectFor(a.proto, a.int("port"));
  const relay = a.proto === "smts" ? smtsControlReader(conn) : null;
  say("READY", { id });
  await command("GO");
  const total = a.int("frames");
  const batch = batchOf(sendUnit(a.proto, a.proto === "smts" ? a.str("to") : RAW_TO, a.int("bodyBytes")), STREAM_BATCH_FRAMES);
  let seq = 0;
  const startedAt = wallMs();
  await conn.out.pump(() => {
    if (seq >= total) return null;
    const n = Math.min(STREAM_BATCH_FRAMES, total - seq);
    const bytes = batch.stamp(seq, n);
    seq += n;
    return bytes;
  });
  say("RESULT", { startedAt, acceptedAt: wallMs(), frames: seq, bytes: seq * batch.size, relayErrors: relay?.errors ?? [] });
}

async function streamRecv(a: Args): Promise<void> {
  const total = a.int("frames");
  const bodyBytes = a.int("bodyBytes");
  const checker = new Checker(a.proto, bodyBytes);
  void command("FROM").then((id) => (checker.expectFrom = id));
  let conn: Conn;
  if (a.proto === "smts") {
    const joined = await connectFor("smts", a.int("port"));
    conn = joined.conn;
    say("READY", { id: joined.id });
  } else {
    const l = listenOnce();
    say("READY", { port: l.port });
    conn = await l.conn;
  }
  const payloadLen = receivedPayloadLen(a.proto, bodyBytes);
  const counter = new FrameCounter(payloadLen, STREAM_SAMPLE_EVERY, checker.frame);
  let firstAt = 0;
  let done = false;
  const report = (why: string) => {
    if (done) return;
    done = true;
    say("RESULT", {
      why,
      firstAt,
      doneAt: wallMs(),
      frames: counter.frames,
      bytes: counter.bytes,
      reads: counter.chunks,
      expectedBytes: total * (payloadLen + 4),
      badLength: counter.badLength,
      checked: checker.checked,
      failures: checker.failures,
    });
  };
  conn.onData = (chunk) => {
    if (firstAt === 0) firstAt = wallMs();
    counter.push(chunk);
    if (counter.frames >= total) report("complete");
  };
  conn.onClose = () => report("connection closed early");
}

async function ratePub(a: Args): Promise<void> {
  const { conn, id } = await connectFor(a.proto, a.int("port"));
  const relay = a.proto === "smts" ? smtsControlReader(conn) : a.proto === "nats" ? natsControlReader(conn) : null;
  say("READY", { id });
  await command("GO");
  let stop = false;
  const stopped = command("STOP").then(() => (stop = true));
  const batch = batchOf(sendUnit(a.proto, a.str("to", ""), a.int("bodyBytes")), RATE_BATCH_FRAMES);
  let seq = 0;
  const done = conn.out.pump(() => {
    if (stop) return null;
    const bytes = batch.stamp(seq, RATE_BATCH_FRAMES);
    seq += RATE_BATCH_FRAMES;
    return bytes;
  });
  // A publisher held back by TCP sits in `drain`; STOP must end it all the same.
  await Promise.race([done, stopped]);
  stop = true;
  say("RESULT", { accepted: seq, relayErrors: relay?.errors ?? [] });
}

async function rateSub(a: Args): Promise<void> {
  const bodyBytes = a.int("bodyBytes");
  const warmupMs = a.int("warmupMs");
  const durationMs = a.int("durationMs");
  const checker = new Checker(a.proto, bodyBytes);
  const { conn, id } = await connectFor(a.proto, a.int("port"), true);
  say("READY", { id });
  void command("FROM").then((from) => (checker.expectFrom = from));
  const counter =
    a.proto === "nats"
      ? new NatsCounter(conn, RATE_SAMPLE_EVERY, checker.nats)
      : new FrameCounter(receivedPayloadLen(a.proto, bodyBytes), RATE_SAMPLE_EVERY, checker.frame);
  let started = false;
  let closedEarly = false;
  const perSecond: number[] = [];
  conn.onClose = () => (closedEarly = true);
  conn.onData = (chunk) => {
    counter.push(chunk);
    if (started) return;
    started = true;
    // The window starts `warmupMs` after the first delivery and lasts `durationMs`.
    setTimeout(() => {
      const t0 = now();
      const c0 = counter.frames;
      let last = c0;
      const tick = setInterval(() => {
        perSecond.push(counter.frames - last);
        last = counter.frames;
      }, 1000);
      setTimeout(() => {
        clearInterval(tick);
        const elapsedMs = now() - t0;
        const messages = counter.frames - c0;
        say("RESULT", {
          messages,
          elapsedMs,
          rate: (messages / elapsedMs) * 1000,
          perSecond,
          totalReceived: counter.frames,
          bytes: counter.bytes,
          closedEarly,
          serverErrors: counter instanceof NatsCounter ? counter.errors : [],
          badLength: counter instanceof FrameCounter ? counter.badLength : 0,
          checked: checker.checked,
          failures: checker.failures,
        });
      }, durationMs);
    }, warmupMs);
  };
}

// ---- main ------------------------------------------------------------------------------

class Args {
  private map = new Map<string, string>();
  constructor(list: string[]) {
    for (const kv of list) {
      const eq = kv.indexOf("=");
      this.map.set(kv.slice(0, eq), kv.slice(eq + 1));
    }
  }
  get proto(): string {
    return this.str("proto");
  }
  str(key: string, fallback?: string): string {
    const v = this.map.get(key) ?? fallback;
    if (v === undefined) die(`missing ${key}=`);
    return v;
  }
  int(key: string): number {
    const n = Number(this.str(key));
    if (!Number.isSafeInteger(n) || n < 0) die(`bad ${key}=`);
    return n;
  }
}

const roles: Record<string, (a: Args) => Promise<void>> = {
  "stream-send": streamSend,
  "stream-recv": streamRecv,
  "rate-pub": ratePub,
  "rate-sub": rateSub,
};

const [role = "", ...rest] = process.argv.slice(2);
const run = roles[role];
if (!run) die(`unknown role ${JSON.stringify(role)}; one of ${Object.keys(roles).join(", ")}`);
run(new Args(rest)).catch((err: Error) => die(err.stack ?? err.message));
