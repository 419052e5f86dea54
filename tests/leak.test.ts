// Issue 7, "nothing stored, nothing leaked": a real relay process and two real
// `smts chat --json` processes exchange private messages, a broadcast and two
// files over loopback, while
//   - strace records every file-system call of the relay (all its threads), and
//     a sampler reads the relay's open descriptors from /proc: the relay must
//     never open a file for writing, nor create, rename, link or remove one;
//   - tcpdump records the relay's port: no message text, file name, file
//     content, fingerprint or the join secret may appear in any reassembled
//     TCP stream (nor anywhere in the raw capture).
// Each check carries positive controls (the trace saw the relay's own bind and
// accepts; the capture holds the whole file's worth of frames and the IDs the
// relay sends in clear), so none can pass by watching nothing. Where strace or
// tcpdump is missing or not permitted, that check is skipped with a message.
import { afterAll, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import type { Subprocess } from "bun";
import { randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { decodePayload, FrameDecoder } from "../lib/wire/frame.ts";
import { spawnChat, killChats, type ChatProcess } from "./chat-process.ts";
import { ROOT, SECRET_TEXT, sha256Hex, waitFor } from "./helpers.ts";
import {
  buildPcap,
  FileWindows,
  findLeaks,
  parsePcap,
  readStrace,
  reassemble,
  sampleFds,
  TCP_FIN,
  TCP_SYN,
  type FdSample,
  type Secret,
  type StraceReport,
  type TcpStream,
} from "./leak-helpers.ts";

setDefaultTimeout(60_000);
const LONG = 30_000;
const MiB = 1024 * 1024;
const LINUX = process.platform === "linux";

/**
 * Write-opens excused in the strace check. Only /dev/null: it stores nothing,
 * and a runtime may open it read-write to stand in for a closed stdio
 * descriptor. Nothing else, not even under /proc or /tmp. (Bun's runtime
 * transpiler cache, which writes transpiled copies of our *source files* under
 * ~/.bun/install/cache when they change, is switched off for the relay with
 * BUN_RUNTIME_TRANSPILER_CACHE_PATH=0 instead of being allowed: it is a
 * feature of running from source, not something the relay does, and a
 * compiled release binary loads no source files.)
 */
const allowWrite = (path: string) => path === "/dev/null";
/** strace's classes are portable across architectures (aarch64 has no plain `open`). */
const TRACE = "trace=%file,bind,listen,accept,accept4";

const hex = (n: number) => randomBytes(n).toString("hex");
const text = (s: string) => new TextEncoder().encode(s);
const fdFlags = (fd: number) => parseInt(/^flags:\s+([0-7]+)/m.exec(readFileSync(`/proc/self/fdinfo/${fd}`, "utf8"))![1]!, 8);
const oneLine = (s: string) => s.trim().replace(/\s*\n\s*/g, "; ");
const childrenOf = (pid: number) => {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim().split(/\s+/).filter(Boolean).map(Number);
  } catch {
    return [];
  }
};
const killQuietly = (pid: number) => {
  try {
    process.kill(pid, "SIGKILL");
  } catch {} // already gone
};

// ---- Processes -------------------------------------------------------------------------

interface Proc {
  proc: Subprocess<"ignore" | "pipe", "ignore" | "pipe", "pipe">;
  stderr(): string;
  /** All stderr read after the process exited. */
  done: Promise<void>;
}

function spawn(argv: string[], opts: { cwd?: string; env?: Record<string, string> } = {}): Proc {
  const proc = Bun.spawn(argv, { cwd: opts.cwd, env: opts.env, stdin: "ignore", stdout: "ignore", stderr: "pipe" });
  let err = "";
  const done = (async () => {
    const dec = new TextDecoder();
    for await (const chunk of proc.stderr) err += dec.decode(chunk, { stream: true });
  })();
  const p = { proc, stderr: () => err, done };
  spawned.push(p);
  return p;
}


// ---- The run ------------------------------------------------------------------------------

const secretEnv = { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT };
let home = "";
let relay: Proc | undefined;
let relayPid = 0;
let relayPort = 0;
let tcpdump: Proc | undefined;
const spawned: Proc[] = [];
let sampler: ReturnType<typeof setInterval> | undefined;

// What cannot run here, decided before any test so that those tests are
// reported as skipped (never as passed). Once a probe succeeded, a failure in
// the real run is an error, not a skip.
const probeFails = (argv: string[], okExit: number) => {
  const r = Bun.spawnSync(argv, { stdout: "ignore", stderr: "pipe" });
  return r.exitCode === okExit ? undefined : oneLine(r.stderr.toString()) || `exit ${r.exitCode}`;
};
const why: { strace?: string; capture?: string; proc?: string } = {
  strace: !LINUX ? "not Linux" : !Bun.which("strace") ? "strace is not installed (Debian/Ubuntu: apt-get install strace)" : probeFails(["strace", "-f", "-o", "/dev/null", "true"], 0),
  // tcpdump captures until `timeout` stops it (exit 124) if it may capture at all.
  capture: !LINUX ? "not Linux" : !Bun.which("tcpdump") ? "tcpdump is not installed (Debian/Ubuntu: apt-get install tcpdump)" : probeFails(["timeout", "1", "tcpdump", "-i", "lo", "-w", "/dev/null"], 124),
  proc: existsSync("/proc/self/fd") ? undefined : "no /proc file system here",
};
for (const [check, reason] of Object.entries(why)) if (reason) console.warn(`SKIPPED the ${check} checks: ${reason}`);
const MARKERS = ["msg", "bmsg", "reply", "note", "bigName", "noteName"] as const;
/** Unique per run: message texts, a line inside the text file, and both file names. */
const markers = {} as Record<(typeof MARKERS)[number], string>;
let big: { path: string; bytes: Uint8Array };
let notes: { path: string; bytes: Uint8Array };
let a: ChatProcess, b: ChatProcess;
let longFingerprint = "";
let shortFingerprint = "";
const fdSamples: FdSample[] = [];
let fdWhileConnected: FdSample | null = null;
let strace: StraceReport | undefined;
let pcapBytes: Uint8Array | undefined;
let tcpdumpStats = "";

/** A chat process in `cwd` against our relay (tests/chat-process.ts). */
const startChat = (cwd: string, extra: string[] = []) => spawnChat(relayPort, extra, { cwd, timeoutMs: LONG });

/** Starts the relay, under strace when possible; sets relay, relayPid, relayPort. */
async function startRelay(traceDir: string): Promise<void> {
  const argv = [process.execPath, `${ROOT}cmd/smts.ts`, "relay", "--host", "127.0.0.1", "--port", "0"];
  const env = { ...secretEnv, HOME: home, BUN_RUNTIME_TRANSPILER_CACHE_PATH: "0" };
  const listening = (p: Proc) => Number(/listening on [^\s]+:(\d+)/.exec(p.stderr())?.[1]);
  if (!why.strace) {
    // -ff: one log per thread, so calls are never interleaved; --seccomp-bpf: stop only on the
    // traced calls; -s: whole argv strings in the execve line.
    const traced = spawn(["strace", "-f", "-ff", "--seccomp-bpf", "-s", "4096", "-e", TRACE, "-o", join(traceDir, "trace"), ...argv], { env });
    const port = await waitFor(() => listening(traced) || (traced.proc.exitCode !== null ? -1 : 0), "traced relay to listen", LONG);
    if (port > 0) {
      // The relay is strace's only child; make sure it is the command we meant.
      const [child, ...more] = childrenOf(traced.proc.pid);
      expect(more).toEqual([]);
      expect(readFileSync(`/proc/${child}/cmdline`, "utf8").split("\0").filter(Boolean)).toEqual(argv);
      relay = traced;
      relayPid = child!;
      relayPort = port;
      return;
    }
    await traced.done;
    throw new Error(`strace could not run the relay (${oneLine(traced.stderr())})`);
  }
  relay = spawn(argv, { env });
  relayPort = await waitFor(() => listening(relay!) || (relay!.proc.exitCode !== null ? -1 : 0), "relay to listen", LONG);
  if (relayPort < 0) throw new Error(`relay did not start: ${relay.stderr()}`);
  relayPid = relay.proc.pid;
}

/** Starts tcpdump on the relay's port, or records why it cannot run here. */
async function startCapture(pcapPath: string): Promise<void> {
  if (why.capture) return;
  // -U: write each packet as it is processed; -s 0: whole packets; -B: a 16 MiB
  // kernel buffer so a fast transfer is not dropped; -Z root (as root only):
  // do not switch to the tcpdump user, who may not write in our temp directory.
  const asRoot = process.getuid?.() === 0 ? ["-Z", "root"] : [];
  const p = spawn(["tcpdump", "-i", "lo", "-n", "-U", "-s", "0", "-B", "16384", ...asRoot, "-w", pcapPath, `tcp port ${relayPort}`]);
  const started = await waitFor(() => /listening on/.test(p.stderr()) || p.proc.exitCode !== null, "tcpdump to start", LONG);
  if (started && p.proc.exitCode === null) return void (tcpdump = p);
  await p.done;
  throw new Error(`tcpdump could not capture on lo (${oneLine(p.stderr())})`);
}

function sampleRelay(): FdSample | null {
  const s = sampleFds(relayPid);
  if (s) fdSamples.push(s);
  return s;
}

beforeAll(async () => {
  home = realpathSync(mkdtempSync(join(tmpdir(), "smts-leak-")));
  const dirs = { trace: join(home, "trace"), a: join(home, "a"), b: join(home, "b"), dl: join(home, "b", "incoming") };
  for (const d of Object.values(dirs)) mkdirSync(d, { recursive: true });
  for (const k of MARKERS) markers[k] = `smts-leak-${k}-${hex(12)}`;
  big = { path: join(dirs.a, `${markers.bigName}.bin`), bytes: new Uint8Array(randomBytes(2 * MiB + 333)) };
  notes = { path: join(dirs.a, `${markers.noteName}.txt`), bytes: text(`meeting notes\n${markers.note}\nend of notes\n`.repeat(3)) };
  writeFileSync(big.path, big.bytes);
  writeFileSync(notes.path, notes.bytes);

  await startRelay(dirs.trace);
  if (!why.proc) sampler = setInterval(sampleRelay, 25);
  await startCapture(join(home, "capture.pcap"));

  b = await startChat(dirs.b, ["--download-dir", dirs.dl]);
  a = await startChat(dirs.a);
  try {
    a.send(`/connect ${b.id}`);
    a.send(`/msg ${b.id} ${markers.msg}`); // waits for the session (scripted mode)
    a.send(`/bmsg ${markers.bmsg}`);
    a.send(`/send ${b.id} ${big.path}`);
    a.send(`/send ${b.id} ${notes.path}`);
    a.send(`/fingerprint ${b.id}`);
    b.send(`/msg ${a.id} ${markers.reply}`);
    await b.event((e) => e.event === "file" && e.name === `${markers.bigName}.bin`, "the big file at b");
    await b.event((e) => e.event === "file" && e.name === `${markers.noteName}.txt`, "the notes at b");
    await b.event((e) => e.event === "message" && e.broadcast === true, "the broadcast at b");
    await a.event((e) => e.event === "message", "the reply at a");
    await waitFor(() => a.events.filter((e) => e.event === "delivered").length === 2, "both files delivered", LONG);
  } catch (err) {
    const tail = (c: ChatProcess) => `stderr: ${c.stderr().trim().slice(-500)}; events: ${c.events.filter((e) => e.event !== "progress").map((e) => JSON.stringify(e)).join(" ").slice(-1500)}`;
    throw new Error(`${(err as Error).message}\n  a (${a.id}) ${tail(a)}\n  b (${b.id}) ${tail(b)}`);
  }
  longFingerprint = String(a.events.find((e) => e.event === "fingerprint")?.fingerprint ?? "");
  shortFingerprint = String(a.events.find((e) => e.event === "session")?.fingerprint ?? "");
  if (!why.proc) fdWhileConnected = sampleRelay(); // both clients still connected

  a.end();
  b.end();
  expect(await a.exited()).toBe(0);
  expect(await b.exited()).toBe(0);

  if (tcpdump) {
    // Stop only once every stream's FIN is in the file: the capture is complete, not cut off.
    const path = join(home, "capture.pcap");
    const complete = () => {
      try {
        const streams = reassemble(parsePcap(readFileSync(path)).segments);
        return streams.length >= 4 && streams.every((s) => s.fin);
      } catch {
        return false; // not even the file header written yet
      }
    };
    // (If it never completes, the completeness test below says so.)
    for (const deadline = performance.now() + LONG; !complete() && performance.now() < deadline; ) await Bun.sleep(100);
    tcpdump.proc.kill("SIGINT");
    await tcpdump.proc.exited;
    await tcpdump.done;
    tcpdumpStats = tcpdump.stderr();
    pcapBytes = readFileSync(path);
  }
  clearInterval(sampler);
  // SIGINT: the relay shuts down cleanly and exits, so the trace covers its whole life.
  process.kill(relayPid, "SIGINT");
  expect(await relay!.proc.exited).toBe(0);
  await relay!.done;
  if (!why.strace) strace = readStrace(dirs.trace, "trace", relayPid, allowWrite);
}, 90_000);

afterAll(() => {
  clearInterval(sampler);
  killChats();
  for (const p of spawned) {
    if (p.proc.exitCode !== null) continue;
    // strace's child (the relay) first: it may outlive a killed strace.
    for (const child of childrenOf(p.proc.pid)) killQuietly(child);
    p.proc.kill("SIGKILL");
  }
  if (home) rmSync(home, { recursive: true, force: true });
});

/** Everything that must never cross the wire in the clear. */
function secrets(): Secret[] {
  const list: Secret[] = Object.entries(markers).map(([k, v]) => ({ name: `marker ${k}`, bytes: text(v) }));
  list.push({ name: "join secret", bytes: text(SECRET_TEXT) });
  list.push({ name: "short fingerprint", bytes: text(shortFingerprint) });
  list.push({ name: "long fingerprint (text)", bytes: text(longFingerprint) });
  list.push({ name: "fingerprint (raw bytes)", bytes: Buffer.from(longFingerprint.replace(/ /g, ""), "hex") });
  return list;
}

// ---- Tests -----------------------------------------------------------------------------------

test("the run really carried the data: messages both ways, a broadcast, and both files saved with matching SHA-256", () => {
  const texts = (c: ChatProcess) => c.events.filter((e) => e.event === "message").map((e) => [e.from, e.text, e.broadcast]);
  expect(texts(b)).toEqual([
    [a.id, markers.msg, false],
    [a.id, markers.bmsg, true],
  ]);
  expect(texts(a)).toEqual([[b.id, markers.reply, false]]);
  // The two transfers run side by side, so either may finish first.
  const files = b.events.filter((e) => e.event === "file").sort((x, y) => String(x.name).localeCompare(String(y.name)));
  const sent = [
    { name: `${markers.bigName}.bin`, ...big },
    { name: `${markers.noteName}.txt`, ...notes },
  ].sort((x, y) => x.name.localeCompare(y.name));
  expect(files.map((f) => [f.name, f.size, f.sha256])).toEqual(sent.map((s) => [s.name, s.bytes.length, sha256Hex(s.bytes)]));
  for (const f of files) expect(sha256Hex(readFileSync(String(f.path)))).toBe(String(f.sha256));
  expect(shortFingerprint).toMatch(/^[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$/);
  expect(longFingerprint.replace(/ /g, "")).toMatch(/^[0-9a-f]{64}$/);
  expect(longFingerprint.replace(/ /g, "").startsWith(shortFingerprint.replace(/-/g, ""))).toBe(true);
});

test.skipIf(!!why.strace)("strace: the relay (all its threads) opened no file for writing and created, renamed, linked or removed nothing", () => {
  const r = strace!;
  // Positive controls: the log is the relay's, covers its whole life, and sees file opens at all.
  expect(r.main[0]).toStartWith(`execve("${process.execPath}", ["${process.execPath}", "${ROOT}cmd/smts.ts", "relay"`);
  expect(r.main.at(-1)).toBe("+++ exited with 0 +++");
  expect(r.opens).toContain(`${ROOT}lib/relay/server.ts read`);
  expect(r.binds).toEqual([expect.stringContaining('sin_addr=inet_addr("127.0.0.1")')]);
  expect(r.listens).toBe(1);
  expect(r.accepts).toBe(2); // the two chat clients
  // The check itself.
  expect(r.violations).toEqual([]);
});

test.skipIf(!!why.proc)("/proc: no regular file was ever open for writing in the relay (sampled through the run)", () => {
  // Positive control: a sample taken while both clients were connected sees the listener and both sockets.
  expect(fdWhileConnected?.sockets).toBeGreaterThanOrEqual(3);
  expect([...new Set(fdSamples.flatMap((s) => s.writable))]).toEqual([]);
});

test.skipIf(!!why.capture)("capture: complete, and it holds the relay-visible cleartext and the whole file's worth of frames", () => {
  const cap = parsePcap(pcapBytes!);
  expect({ truncated: cap.truncated, trailing: cap.trailing }).toEqual({ truncated: 0, trailing: 0 });
  expect(Number(/(\d+) packets? captured/.exec(tcpdumpStats)?.[1])).toBe(cap.packets);
  expect(Number(/(\d+) packets? dropped by kernel/.exec(tcpdumpStats)?.[1])).toBe(0);
  const streams = reassemble(cap.segments);
  // Two connections, both directions, each seen from its SYN to its FIN with no gap.
  expect(streams.map((s) => ({ syn: s.syn, fin: s.fin, holes: s.holes, conflicts: s.conflicts }))).toEqual(
    Array(4).fill({ syn: true, fin: true, holes: 0, conflicts: 0 }),
  );
  // Every stream decodes as whole smts frames: the reassembly is byte-exact.
  const frames = new Map<TcpStream, Record<string, unknown>[]>();
  for (const s of streams) {
    const decoder = new FrameDecoder(64 * MiB);
    frames.set(s, decoder.push(s.data).map(decodePayload));
    expect(decoder.buffered).toBe(0);
  }
  // The relay's welcome frames carry the IDs in clear: the capture shows what the relay sees.
  const welcomes = [...frames.values()].flat().filter((f) => f.t === "welcome").map((f) => f.id);
  expect(welcomes.sort()).toEqual([a.id, b.id].sort());
  for (const id of [a.id, b.id]) expect(streams.some((s) => s.data.includes(id))).toBe(true);
  // The file crossed the wire twice (a → relay, relay → b), in bodies at least as large as the file.
  const toRelay = streams.filter((s) => s.dport === relayPort);
  const fromRelay = streams.filter((s) => s.sport === relayPort);
  const bodyBytes = (list: TcpStream[]) => list.map((s) => frames.get(s)!.reduce((n, f) => n + ((f.body as Uint8Array | undefined)?.length ?? 0), 0));
  expect(Math.max(...bodyBytes(toRelay))).toBeGreaterThan(big.bytes.length);
  expect(Math.max(...bodyBytes(fromRelay))).toBeGreaterThan(big.bytes.length);
});

test.skipIf(!!why.capture)("capture: no message text, file name, file content, fingerprint or join secret in any TCP stream or in the raw capture", () => {
  const files = [new FileWindows("the big file", big.bytes), new FileWindows("the notes file", notes.bytes)];
  const streams = reassemble(parsePcap(pcapBytes!).segments);
  expect(streams.length).toBe(4);
  const found = streams.flatMap((s) => findLeaks(`stream ${s.key}`, s.data, secrets(), files));
  found.push(...findLeaks("the raw capture", pcapBytes!, secrets(), files));
  expect(found).toEqual([]);
});

test("scanner control: a synthetic capture with the same secrets split across out-of-order, retransmitted segments is caught", () => {
  const secret = text(markers.msg);
  const cut = 7;
  const run = big.bytes.subarray(1001, 1001 + 47); // the shortest run FileWindows promises to find, at an odd offset
  const shortRun = big.bytes.subarray(5001, 5001 + 31); // too short to contain any whole window
  const stream = Buffer.concat([text("prefix "), secret, text(" middle "), run, text(" tail "), shortRun]);
  const split = [0, 7 + cut, 7 + secret.length + 20, stream.length];
  const seg = (from: number, to: number, isn: number) => ({ src: "127.0.0.1", sport: 40000, dst: "127.0.0.1", dport: 5555, seq: (isn + 1 + from) >>> 0, flags: 0x18, payload: stream.subarray(from, to) });
  const isn = 0xfffffff0; // sequence numbers wrap inside the stream
  const pcap = buildPcap([
    { ...seg(0, 0, isn), seq: isn, flags: TCP_SYN },
    seg(split[2]!, split[3]!, isn), // out of order
    seg(split[0]!, split[1]!, isn),
    seg(split[1]!, split[2]!, isn),
    seg(split[0]!, split[1]!, isn), // retransmitted
    { ...seg(split[3]!, split[3]!, isn), flags: TCP_FIN },
  ]);
  const streams = reassemble(parsePcap(pcap).segments);
  expect(streams.map((s) => [s.data.equals(stream), s.syn, s.fin, s.holes, s.conflicts])).toEqual([[true, true, true, 0, 0]]);
  // The secret is split between two packets, so the raw file does not contain it; the stream does.
  expect(Buffer.from(pcap).includes(secret)).toBe(false);
  const files = [new FileWindows("the big file", big.bytes)];
  expect(findLeaks("synthetic stream", streams[0]!.data, [{ name: "marker msg", bytes: secret }], files)).toEqual([
    "marker msg at byte 7 of synthetic stream",
    `bytes 1008..1040 of the big file at byte ${7 + secret.length + 8 + 7} of synthetic stream`,
  ]);
  // And nothing where there is nothing: a 31-byte run of the file, among other bytes, is below the promise.
  expect(findLeaks("short run", Buffer.concat([text("prefix "), shortRun, text(" tail")]), [{ name: "marker msg", bytes: secret }], files)).toEqual([]);
  expect(new FileWindows("the big file", big.bytes).windows).toBe(Math.floor((big.bytes.length - 32) / 16) + 1);
});

test("strace reader control: write-opens, creations, renames and removals are reported; read-only opens and /dev/null are not", () => {
  const dir = join(home, "strace-control");
  mkdirSync(dir, { recursive: true });
  writeFileSync(
    join(dir, "t.100"),
    [
      'execve("/bin/x", ["x"], 0x0 /* 1 var */) = 0',
      'openat(AT_FDCWD, "/etc/O_CREAT-looking name", O_RDONLY|O_CLOEXEC) = 3',
      'openat(AT_FDCWD, "/dev/null", O_RDWR|O_CLOEXEC) = 4',
      'openat(AT_FDCWD, "/tmp/a", O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC, 0644) = 5',
      'open("/tmp/b", O_RDONLY|O_APPEND) = -1 EACCES (Permission denied)',
      'openat2(AT_FDCWD, "/tmp/c", {flags=O_RDWR|O_CLOEXEC, resolve=0}, 24) = 6',
      'renameat2(AT_FDCWD, "/tmp/a", AT_FDCWD, "/tmp/d", 0) = 0',
      'unlinkat(AT_FDCWD, "/tmp/d", 0) = 0',
      'accept4(3, {sa_family=AF_INET, sin_port=htons(1), sin_addr=inet_addr("127.0.0.1")}, [16], SOCK_CLOEXEC) = 7',
      "accept4(3, 0x7ffc, [128], SOCK_CLOEXEC) = -1 EAGAIN (Resource temporarily unavailable)",
      "+++ exited with 0 +++",
    ].join("\n"),
  );
  writeFileSync(join(dir, "t.101"), 'mkdirat(AT_FDCWD, "/tmp/e", 0755) = -1 EEXIST (File exists)\n');
  const r = readStrace(dir, "t", 100, allowWrite);
  expect(r.threads).toBe(2);
  expect(r.main).toHaveLength(11);
  expect(r.accepts).toBe(1);
  expect(r.opens).toEqual(["/etc/O_CREAT-looking name read", "/dev/null WRITE", "/tmp/a WRITE", "/tmp/b WRITE", "/tmp/c WRITE"]);
  expect(r.violations.map((l) => /"([^"]+)"/.exec(l)?.[1])).toEqual(["/tmp/a", "/tmp/b", "/tmp/c", "/tmp/a", "/tmp/d", "/tmp/e"]);
});

test.skipIf(!!why.proc)("/proc sampler control: a regular file this process holds open for writing is reported, a read-only one is not", () => {
  const path = join(home, "sampler-control.bin");
  const w = openSync(path, "w");
  const r = openSync(path, "r");
  try {
    const s = sampleFds(process.pid)!;
    const ours = (list: string[]) => list.filter((l) => l.includes(` -> ${path} `));
    expect(ours(s.writable)).toEqual([`${w} -> ${path} (flags 0${fdFlags(w).toString(8)})`]);
    expect(ours(s.readOnly)).toEqual([`${r} -> ${path} (flags 0${fdFlags(r).toString(8)})`]);
  } finally {
    closeSync(w);
    closeSync(r);
  }
});
