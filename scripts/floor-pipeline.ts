// The runtime floor of a file transfer: the least a Bun program can spend to
// move a file sender → relay → receiver with the crypto smts's design needs,
// measured beside smts by bench-files.ts so that the gap between the two is
// what smts's protocol costs, and the gap to the brief's target is what Bun on
// this machine costs.
//
// Three processes, as with smts, doing per chunk (CHUNK_BYTES, as smts) only this:
//   sender:   read; SHA-256 of the file (unless told not to); AES-256-CBC with a
//             random IV and PKCS#7 (a new cipher per chunk, as lib/transfer/chunks.ts);
//             HMAC-SHA256 over n ‖ last ‖ iv ‖ ct; one frame, written through
//             lib/wire/outbox.ts, reading on only while under 1 MiB is queued;
//   relay:    forwards the bytes of each connection to the other one, pausing a
//             sender whose receiver has 1 MiB queued (one route, no framing,
//             no IDs: the least any relay does);
//   receiver: lib/wire/frame.ts's FrameDecoder; HMAC check (constant time)
//             before decrypting; write to a temporary file; SHA-256; rename
//             after the last chunk; a `done` frame with the hash back to the sender.
// Frame payload: u32be n ‖ u8 last ‖ iv (16) ‖ 39 zero bytes ‖ ct ‖ mac (32). Fixed keys: this
// is a benchmark, not a protocol. What smts adds on top (sessions and records,
// msgpack, relay routing and IDs, offers, progress, limits, failure handling)
// is exactly what this leaves out. The runtime is set up as smts's is (the
// allocator setting of lib/runtime/allocator.ts).
//
// Processes: bun scripts/floor-pipeline.ts relay | receiver PORT DIR | sender PORT
// The sender reads commands on stdin, one per line: PATH [nohash]; it answers
// {"ms": wall time from the command to the receiver's `done`, "sha256": ...}.
import { createCipheriv, createDecipheriv, randomBytes, timingSafeEqual } from "node:crypto";
import { closeSync, openSync, readSync, renameSync, writeSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import { FrameDecoder, readU32, writeU32 } from "../lib/wire/frame.ts";
import { Outbox } from "../lib/wire/outbox.ts";
import { CHUNK_BYTES } from "../lib/transfer/chunks.ts";
import { restartWithAllocatorSettings } from "../lib/runtime/allocator.ts";
import { lineReader } from "./bench-util.ts";

const ENC_KEY = Buffer.alloc(32, 1);
const MAC_KEY = Buffer.alloc(32, 2);
const HIGH = 1024 * 1024;
// n, last, iv, then zeros up to 60, so that the ciphertext starts 64 bytes into
// the frame buffer: at offset 25 its copy (destination 1-31 bytes past the
// source's alignment) took glibc's slow `rep movsb` path on this CPU,
// 0.5 ms/MiB of the sender (docs/BENCHMARKS.md, "File transfer").
const HEAD = 60;

const macOf = (frame: Uint8Array, from: number, to: number) => new Bun.CryptoHasher("sha256", MAC_KEY).update(frame.subarray(from, to)).digest();

function relay(): void {
  type End = { socket: Socket<End>; outbox: Outbox; peer?: End };
  const ends: End[] = [];
  const server = Bun.listen<End>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(socket) {
        const end: End = { socket, outbox: new Outbox(socket) };
        socket.data = end;
        ends.push(end);
        if (ends.length === 2) [ends[0]!.peer, ends[1]!.peer] = [ends[1], ends[0]];
      },
      data(socket, bytes) {
        const to = socket.data.peer;
        if (!to) return;
        to.outbox.push(bytes);
        to.outbox.flush();
        if (to.outbox.bytes > HIGH) socket.pause();
      },
      drain(socket) {
        const end = socket.data;
        if (end.outbox.flush()) end.peer?.socket.resume();
      },
    },
  });
  console.log(server.port);
}

async function receiver(port: number, dir: string): Promise<void> {
  const decoder = new FrameDecoder(CHUNK_BYTES + 1024);
  let file: { fd: number; temp: string; hash: Bun.CryptoHasher; next: number } | null = null;
  let outbox!: Outbox;
  let files = 0;
  const onFrame = (p: Uint8Array) => {
    file ??= { temp: join(dir, `floor-${process.pid}-${files}.part`), fd: -1, hash: new Bun.CryptoHasher("sha256"), next: 0 };
    if (file.fd < 0) file.fd = openSync(file.temp, "wx", 0o600);
    const n = readU32(p, 0);
    if (n !== file.next++ || !timingSafeEqual(macOf(p, 0, p.length - 32), p.subarray(p.length - 32))) throw new Error(`chunk ${n} failed verification`);
    const d = createDecipheriv("aes-256-cbc", ENC_KEY, p.subarray(5, 21));
    const a = d.update(p.subarray(HEAD, p.length - 32));
    const b = d.final();
    const plain = b.length ? Buffer.concat([a, b]) : a;
    for (let at = 0; at < plain.length; ) at += writeSync(file.fd, plain, at);
    file.hash.update(plain);
    if (p[4] !== 1) return;
    closeSync(file.fd);
    renameSync(file.temp, join(dir, `floor-${process.pid}-${files++}`));
    const done = new Uint8Array(4 + 32);
    writeU32(done, 0, 32);
    done.set(file.hash.digest(), 4);
    file = null;
    outbox.push(done);
    outbox.flush();
  };
  await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      open: (s) => void (outbox = new Outbox(s)),
      data: (_s, bytes) => void decoder.each(bytes, onFrame),
      drain: () => void outbox.flush(),
    },
  });
  console.log("ready");
}

async function sender(port: number): Promise<void> {
  let outbox!: Outbox;
  let drained: (() => void) | null = null;
  let done: ((hash: Uint8Array) => void) | null = null;
  const decoder = new FrameDecoder(64);
  await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      open: (s) => void (outbox = new Outbox(s)),
      data: (_s, bytes) => void decoder.each(bytes, (p) => void done?.(p)),
      drain() {
        outbox.flush();
        if (outbox.bytes < HIGH / 4) drained?.();
      },
    },
  });
  console.log("ready");
  const buf = Buffer.allocUnsafe(CHUNK_BYTES);
  const lines = lineReader(Bun.stdin.stream());
  for (;;) {
    const [path, flag] = (await lines.next(24 * 3600_000)).split(" ");
    const t0 = performance.now();
    const hash = flag === "nohash" ? null : new Bun.CryptoHasher("sha256");
    const receiverHash = new Promise<Uint8Array>((resolve) => (done = resolve));
    const fd = openSync(path!, "r");
    const size = Bun.file(path!).size;
    for (let n = 0, sent = 0; ; n++) {
      const got = readSync(fd, buf, 0, Math.min(CHUNK_BYTES, size - sent), null);
      sent += got;
      const plain = buf.subarray(0, got);
      hash?.update(plain);
      const iv = randomBytes(16);
      const c = createCipheriv("aes-256-cbc", ENC_KEY, iv);
      const a = c.update(plain);
      const b = c.final();
      const length = HEAD + a.length + b.length + 32;
      const frame = Buffer.allocUnsafe(4 + length);
      writeU32(frame, 0, length);
      writeU32(frame, 4, n);
      frame[8] = sent === size ? 1 : 0;
      frame.set(iv, 9);
      frame.fill(0, 25, 4 + HEAD);
      frame.set(a, 4 + HEAD);
      frame.set(b, 4 + HEAD + a.length);
      frame.set(macOf(frame, 4, 4 + length - 32), 4 + length - 32);
      outbox.push(frame);
      outbox.flush();
      if (sent === size) break;
      if (outbox.bytes > HIGH) await new Promise<void>((resolve) => (drained = resolve));
    }
    closeSync(fd);
    const theirs = Buffer.from(await receiverHash).toString("hex");
    const ours = hash?.digest("hex");
    if (ours !== undefined && ours !== theirs) throw new Error("the receiver's SHA-256 differs");
    console.log(JSON.stringify({ ms: performance.now() - t0, sha256: theirs }));
  }
}

/** The three processes, started; `send` moves one file and resolves with the sender's answer. */
export async function startFloorRig(downloadDir: string) {
  const spawn = (...args: string[]) => {
    const proc = Bun.spawn([process.execPath, import.meta.path, ...args], { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
    return { proc, lines: lineReader(proc.stdout) };
  };
  const relayProc = spawn("relay");
  const port = await relayProc.lines.next();
  const receiverProc = spawn("receiver", port, downloadDir);
  await receiverProc.lines.next();
  const senderProc = spawn("sender", port);
  await senderProc.lines.next();
  const procs = [senderProc.proc, relayProc.proc, receiverProc.proc];
  return {
    /** sender, relay, receiver */
    pids: procs.map((p) => p.pid),
    async send(path: string, hashAtSender: boolean): Promise<{ ms: number; sha256: string }> {
      senderProc.proc.stdin.write(`${path}${hashAtSender ? "" : " nohash"}\n`);
      senderProc.proc.stdin.flush();
      return JSON.parse(await senderProc.lines.next(120_000));
    },
    async stop() {
      for (const p of procs) p.kill();
      await Promise.all(procs.map((p) => p.exited));
    },
  };
}

if (import.meta.main) {
  restartWithAllocatorSettings(); // the same allocator setting as smts (lib/runtime/allocator.ts)
  const [role, port, dir] = process.argv.slice(2);
  if (role === "relay") relay();
  else if (role === "receiver") await receiver(Number(port), dir!);
  else if (role === "sender") await sender(Number(port));
  else {
    console.error("usage: bun scripts/floor-pipeline.ts relay | receiver PORT DIR | sender PORT");
    process.exit(2);
  }
}
