#!/usr/bin/env bun
// Relay forwarding benchmark (issue 2): how fast does the smts relay forward,
// compared with a plain TCP forwarder and a real message broker, and how much
// memory does it need while doing it?
//
//   bun scripts/bench-relay.ts [--quick] [--reps N] [--no-write]
//                              [--only bulk|rate] [--relay-cpu-prof DIR]
//
// --relay-cpu-prof DIR runs the relay under `bun --cpu-prof --cpu-prof-md` and
// leaves its profile in DIR (profiling slows it down: numbers are then not
// representative, so nothing is written to docs/ in that case).
//
// What it measures, all on loopback in one run (sender, forwarder and
// receiver are three separate processes; the clients are
// scripts/bench-relay-peers.ts, the same code for the smts case and its
// reference as far as the protocols allow):
//   1. Bulk: 64 KiB bodies, one sender → forwarder → one receiver, MB/s
//      (10^6 body bytes per second, from the sender's first write to the
//      receiver's last byte). 1 GiB per run (256 MiB with --quick).
//      Reference: `socat -b 131072 TCP-LISTEN:p1 TCP:127.0.0.1:p2` carrying
//      the very same byte stream (the sender's smts `send` frames).
//   2. Rate: 200-byte bodies, one publisher → forwarder → one subscriber,
//      messages per second received by the subscriber over a 5 s window (2 s
//      with --quick) that starts 0.5 s after the first delivery. The
//      publisher writes prebuilt batches of 1024 frames, respecting TCP
//      backpressure. Reference: nats-server, `PUB bench 200` → `SUB bench 1`.
//   3. Memory: the relay runs as its own process (`smts relay --open`);
//      VmRSS is sampled every 50 ms and VmHWM read after each phase (socat's
//      and nats-server's too, for comparison).
// Also, for interpretation: a "direct" bulk run (sender → receiver, no hop:
// the ceiling of these clients), and the CPU each process used during each
// run (from /proc/PID/stat), including what other processes on the machine
// used meanwhile. The benchmark waits (bounded) for a quiet machine before
// each run and marks the runs that shared it with busy processes.
// Every run is checked: all frames arrive, with the right lengths, and every
// 64th (bulk) / 1024th (rate) frame is decoded and its sequence number and
// body bytes compared. 3 runs of each (1 with --quick), alternating smts and
// reference; medians are reported.
//
// socat and nats-server are installed with apt-get when missing (as root); if
// they still cannot be found, that reference is skipped and the report says so.
// Results go to stdout and to docs/BENCHMARKS.md, section
// "## Relay forwarding (issue 2)" (other sections are kept).
import type { Subprocess } from "bun";
import { existsSync, readFileSync, writeFileSync } from "node:fs";
import os from "node:os";
import { median, recordTargets, type TargetRow } from "./bench-util.ts";

const ROOT = new URL("..", import.meta.url).pathname;
const PEERS = `${ROOT}scripts/bench-relay-peers.ts`;
const REPORT = `${ROOT}docs/BENCHMARKS.md`;
const SECTION = "## Relay forwarding (issue 2)";
const TARGET_RATIO = 0.5;
const BULK_BODY = 64 * 1024;
const RATE_BODY = 200;
const SOCAT_BUFFER = 131072;
/** Background CPU (% of one core) above which the machine counts as busy. */
const QUIET_LOAD = 15;

const argv = process.argv.slice(2);
const QUICK = argv.includes("--quick");
const flagValue = (name: string): string | null => {
  const i = argv.indexOf(name);
  return i >= 0 ? (argv[i + 1] ?? null) : null;
};
const REPS = flagValue("--reps");
const ONLY = flagValue("--only");
const RELAY_PROF_DIR = flagValue("--relay-cpu-prof");
const CONFIG = {
  quick: QUICK,
  reps: REPS !== null ? Math.max(1, Number(REPS) || 1) : QUICK ? 1 : 3,
  bulkFrames: QUICK ? 4096 : 16384, // 256 MiB or 1 GiB of 64 KiB bodies
  rateWarmupMs: QUICK ? 250 : 500,
  rateDurationMs: QUICK ? 2000 : 5000,
  bulk: ONLY !== "rate",
  rate: ONLY !== "bulk",
  write: !argv.includes("--no-write") && !ONLY && !RELAY_PROF_DIR,
};

// ---- child processes: tracked, and always killed --------------------------------------

const children = new Set<Subprocess>();

function spawnTracked(cmd: string[], opts: { stdin?: "pipe" | "ignore"; stdout?: "pipe" | "ignore" | "inherit"; stderr?: "pipe" | "inherit" }) {
  const proc = Bun.spawn(cmd, { stdin: opts.stdin ?? "ignore", stdout: opts.stdout ?? "ignore", stderr: opts.stderr ?? "inherit" });
  children.add(proc);
  void proc.exited.then(() => children.delete(proc));
  return proc;
}

function killAll(): void {
  for (const p of children) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
}

process.on("exit", killAll);
for (const sig of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
  process.on(sig, () => {
    process.stderr.write(`\n${sig}: stopping the benchmark\n`);
    killAll();
    process.exit(130);
  });
}

/** Stops a child: SIGTERM (or stdin EOF), then SIGKILL after `graceMs`. */
async function stopChild(proc: Subprocess, graceMs = 2000, signal: NodeJS.Signals | null = "SIGTERM"): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  if (signal) proc.kill(signal);
  const exited = await Promise.race([proc.exited.then(() => true), Bun.sleep(graceMs).then(() => false)]);
  if (!exited) proc.kill("SIGKILL");
  await proc.exited;
}

/** Splits a byte stream into lines and hands each to `onLine`. */
async function readLines(stream: ReadableStream<Uint8Array>, onLine: (line: string) => void): Promise<void> {
  const decoder = new TextDecoder();
  let buf = "";
  for await (const chunk of stream) {
    buf += decoder.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      onLine(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) onLine(buf);
}

/** Waits until `log` has a line matching `re` (checked as lines arrive). */
function waitForLine(lines: string[], re: RegExp, what: string, timeoutMs = 10_000): Promise<RegExpMatchArray> {
  const deadline = performance.now() + timeoutMs;
  return (async () => {
    for (;;) {
      for (const l of lines) {
        const m = l.match(re);
        if (m) return m;
      }
      if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}; its output:\n${lines.join("\n")}`);
      await Bun.sleep(10);
    }
  })();
}

/** A server-like child (relay, socat, nats-server) whose stderr we keep. */
interface Server {
  name: string;
  proc: Subprocess;
  log: string[];
  port: number;
}

async function startServer(name: string, cmd: string[], ready: RegExp, portFrom: (m: RegExpMatchArray) => number): Promise<Server> {
  const proc = spawnTracked(cmd, { stderr: "pipe", stdout: "ignore" });
  const log: string[] = [];
  void readLines(proc.stderr as ReadableStream<Uint8Array>, (l) => log.push(l.replace(/\x1b\[[0-9;]*m/g, "")));
  const m = await waitForLine(log, ready, `${name} to start`);
  return { name, proc, log, port: portFrom(m) };
}

/** A bench client (scripts/bench-relay-peers.ts ROLE ...), driven over stdio. */
class Peer {
  private lines: string[] = [];
  private ended = false;
  readonly proc: Subprocess<"pipe", "pipe", "inherit">;

  constructor(
    readonly role: string,
    args: Record<string, string | number>,
  ) {
    const kv = Object.entries(args).map(([k, v]) => `${k}=${v}`);
    this.proc = spawnTracked([process.execPath, PEERS, role, ...kv], { stdin: "pipe", stdout: "pipe", stderr: "inherit" }) as Subprocess<"pipe", "pipe", "inherit">;
    void readLines(this.proc.stdout, (l) => this.lines.push(l)).finally(() => (this.ended = true));
  }

  /** Next `READY`/`RESULT` line, parsed; an `ERROR` line or exit is an exception. */
  async expect<T = Record<string, unknown>>(kind: "READY" | "RESULT", timeoutMs: number): Promise<T> {
    const deadline = performance.now() + timeoutMs;
    for (;;) {
      const line = this.lines.shift();
      if (line !== undefined) {
        if (line.startsWith(`${kind} `)) return JSON.parse(line.slice(kind.length + 1)) as T;
        throw new Error(`${this.role}: expected ${kind}, got: ${line}`);
      }
      if (this.ended) throw new Error(`${this.role} exited (code ${this.proc.exitCode}) before ${kind}`);
      if (performance.now() > deadline) throw new Error(`${this.role}: no ${kind} within ${timeoutMs} ms`);
      await Bun.sleep(5);
    }
  }

  tell(line: string): void {
    this.proc.stdin.write(`${line}\n`);
    this.proc.stdin.flush();
  }

  /** Closing stdin tells the peer to exit. */
  async close(): Promise<void> {
    try {
      this.proc.stdin.end();
    } catch {}
    await stopChild(this.proc, 2000, null);
  }
}

// ---- memory of the forwarders ----------------------------------------------------------

function procStatusKiB(pid: number, field: "VmRSS" | "VmHWM"): number | null {
  try {
    const m = readFileSync(`/proc/${pid}/status`, "utf8").match(new RegExp(`^${field}:\\s+(\\d+) kB`, "m"));
    return m ? Number(m[1]) : null;
  } catch {
    return null; // exited
  }
}

/** CPU seconds (user, system) a process has used so far, from /proc/PID/stat. */
function cpuSeconds(pid: number): { user: number; sys: number } | null {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
    const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
    return { user: Number(f[11]) / 100, sys: Number(f[12]) / 100 }; // utime, stime in USER_HZ (100 on Linux)
  } catch {
    return null;
  }
}

/** CPU seconds used by the whole machine (all cores, everything but idle and iowait), from /proc/stat. */
function machineBusySeconds(): number {
  const f = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).slice(1).map(Number);
  const [user = 0, nice = 0, system = 0, , , irq = 0, softirq = 0, steal = 0] = f;
  return (user + nice + system + irq + softirq + steal) / 100;
}

/** This benchmark's own CPU seconds (the orchestrator process). */
const selfSeconds = () => {
  const u = process.cpuUsage();
  return (u.user + u.system) / 1e6;
};

/**
 * CPU use of some processes between start and stop(), as % of one core
 * (`NAME`), plus the kernel part of it (`NAME.sys`), and `others`: what the
 * rest of the machine used meanwhile (other people's jobs distort the numbers).
 */
function cpuMeter(pids: Record<string, number>) {
  const t0 = performance.now();
  const m0 = machineBusySeconds();
  const s0 = selfSeconds();
  const c0 = Object.fromEntries(Object.entries(pids).map(([k, pid]) => [k, cpuSeconds(pid)]));
  return {
    stop(): Record<string, number> {
      const wall = (performance.now() - t0) / 1000;
      const out: Record<string, number> = {};
      let ours = selfSeconds() - s0;
      for (const [k, pid] of Object.entries(pids)) {
        const a = c0[k];
        const b = cpuSeconds(pid);
        if (!a || !b) continue;
        ours += b.user + b.sys - a.user - a.sys;
        out[k] = (100 * (b.user + b.sys - a.user - a.sys)) / wall;
        out[`${k}.sys`] = (100 * (b.sys - a.sys)) / wall;
      }
      out.others = Math.max(0, (100 * (machineBusySeconds() - m0 - ours)) / wall);
      return out;
    },
  };
}

/** Busy CPU of the whole machine over `ms`, in % of one core. */
async function machineLoad(ms: number): Promise<number> {
  const m0 = machineBusySeconds();
  const s0 = selfSeconds();
  await Bun.sleep(ms);
  return (100 * (machineBusySeconds() - m0 - (selfSeconds() - s0))) / (ms / 1000);
}

/** Waits (up to `maxWaitMs`) for the machine to be quiet; returns the last background load seen. */
async function waitForQuiet(maxWaitMs: number, probeMs = 1000): Promise<number> {
  const deadline = performance.now() + maxWaitMs;
  let load = await machineLoad(probeMs);
  while (load > QUIET_LOAD && performance.now() < deadline) {
    console.log(`machine busy: other processes use ${load.toFixed(0)}% CPU; waiting for them to finish ...`);
    load = await machineLoad(2000);
  }
  if (load > QUIET_LOAD) console.log(`WARNING: other processes still use ${load.toFixed(0)}% CPU; numbers will be low and noisy`);
  return load;
}

/** Before each run: a short look at the machine, waiting a little if someone else is busy. */
const settle = () => waitForQuiet(QUICK ? 10_000 : 30_000, 300);

/** "sender 20%, forwarder 95% (kernel 60%), receiver 55%" */
function cpuLine(get: (k: string) => number | undefined, keys: string[]): string {
  return keys
    .filter((k) => !k.endsWith(".sys") && get(k) !== undefined)
    .map((k) => `${k === "others" ? "other processes" : k} ${get(k)!.toFixed(0)}%` + (k === "forwarder" ? ` (kernel ${(get(`${k}.sys`) ?? 0).toFixed(0)}%)` : ""))
    .join(", ");
}

const cpuText = (cpu: Record<string, number>) => cpuLine((k) => cpu[k], Object.keys(cpu));

/** Samples VmRSS of the watched processes every 50 ms; keeps the peak per label. */
class RssSampler {
  private watched = new Map<string, number>(); // label → pid
  readonly peakKiB = new Map<string, number>();
  private timer = setInterval(() => this.sample(), 50);

  watch(label: string, pid: number): void {
    this.watched.set(label, pid);
    this.sample();
  }
  unwatch(label: string): void {
    this.sample();
    this.watched.delete(label);
  }
  private sample(): void {
    for (const [label, pid] of this.watched) {
      const kib = procStatusKiB(pid, "VmRSS");
      if (kib !== null && kib > (this.peakKiB.get(label) ?? 0)) this.peakKiB.set(label, kib);
    }
  }
  stop(): void {
    clearInterval(this.timer);
  }
}

const sampler = new RssSampler();
const mb = (kib: number | null | undefined) => (kib == null ? "n/a" : `${(kib / 1024).toFixed(1)} MiB`);

// ---- the forwarders -----------------------------------------------------------------------

async function startRelay(): Promise<Server> {
  return startServer(
    "smts relay",
    [process.execPath, ...(RELAY_PROF_DIR ? ["--cpu-prof", "--cpu-prof-md", `--cpu-prof-dir=${RELAY_PROF_DIR}`] : []), `${ROOT}cmd/smts.ts`, "relay", "--host", "127.0.0.1", "--port", "0", "--open"],
    /smts relay listening on [\d.]+:(\d+)/,
    (m) => Number(m[1]),
  );
}

async function freePort(): Promise<number> {
  const l = Bun.listen({ hostname: "127.0.0.1", port: 0, socket: { data() {} } });
  const port = l.port;
  l.stop(true);
  return port;
}

async function startSocat(targetPort: number): Promise<Server> {
  const port = await freePort();
  const s = await startServer(
    "socat",
    ["socat", "-d", "-d", "-b", String(SOCAT_BUFFER), `TCP-LISTEN:${port},reuseaddr,bind=127.0.0.1`, `TCP:127.0.0.1:${targetPort}`],
    /listening on/,
    () => port,
  );
  return s;
}

async function startNats(): Promise<Server> {
  return startServer(
    "nats-server",
    ["nats-server", "-a", "127.0.0.1", "-p", "-1"],
    /Listening for client connections on [\d.]+:(\d+)/,
    (m) => Number(m[1]),
  );
}

// ---- tools -----------------------------------------------------------------------------------

interface Tool {
  name: string;
  found: boolean;
  version: string;
  note: string;
}

async function run(cmd: string[]): Promise<{ ok: boolean; out: string }> {
  const p = spawnTracked(cmd, { stdout: "pipe", stderr: "pipe" }) as Subprocess<"ignore", "pipe", "pipe">;
  const [out, err] = await Promise.all([new Response(p.stdout).text(), new Response(p.stderr).text()]);
  return { ok: (await p.exited) === 0, out: out + err };
}

async function toolVersion(name: string): Promise<string> {
  if (name === "socat") return ((await run(["socat", "-V"])).out.match(/socat version (\S+)/)?.[1] ?? "?").trim();
  return ((await run(["nats-server", "--version"])).out.match(/v?(\d+\.\d+\.\d+)/)?.[1] ?? "?").trim();
}

/** Finds socat and nats-server; installs the missing ones with apt-get (Debian packages) when root. */
async function ensureTools(): Promise<Record<string, Tool>> {
  const names = ["socat", "nats-server"];
  const missing = names.filter((n) => !Bun.which(n));
  const notes: Record<string, string> = {};
  if (missing.length) {
    if (process.getuid?.() !== 0) {
      for (const n of missing) notes[n] = "not installed, and not root to apt-get install it";
    } else {
      console.log(`installing ${missing.join(", ")} with apt-get ...`);
      const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" } as Record<string, string>;
      const apt = (args: string[]) => {
        const p = Bun.spawn(["apt-get", ...args], { env, stdout: "ignore", stderr: "pipe" });
        children.add(p);
        return p.exited.then((code) => code === 0);
      };
      if (!(await apt(["install", "-y", ...missing]))) {
        await apt(["update"]);
        await apt(["install", "-y", ...missing]);
      }
      for (const n of missing) notes[n] = Bun.which(n) ? "installed by this run with apt-get" : "apt-get install failed";
    }
  }
  const tools: Record<string, Tool> = {};
  for (const n of names) {
    const found = !!Bun.which(n);
    tools[n] = { name: n, found, version: found ? await toolVersion(n) : "", note: notes[n] ?? "" };
    if (!found) console.log(`WARNING: ${n} is not available (${notes[n]}); its reference measurement is skipped`);
  }
  return tools;
}

// ---- one bulk run, one rate run ---------------------------------------------------------------

interface BulkResult {
  mbPerS: number;
  seconds: number;
  ok: boolean;
  problems: string[];
  checked: number;
  /** socat's VmHWM, read just before it is stopped (null for the relay runs). */
  socatHwmKiB: number | null;
  /** CPU use during the run, % of one core: sender, forwarder, receiver. */
  cpu: Record<string, number>;
  /** Average size of the receiver's reads, in KiB. */
  readKiB: number;
}

interface RecvResult {
  why: string;
  firstAt: number;
  doneAt: number;
  frames: number;
  bytes: number;
  /** data callbacks the receiver got (bytes / reads = the average read). */
  reads: number;
  expectedBytes: number;
  badLength: number;
  checked: number;
  failures: string[];
}

const BULK_TIMEOUT_MS = 300_000;

/**
 * One bulk run: through the relay (`via` = its pid and port), through a fresh
 * socat (`"socat"`), or straight from sender to receiver (`"direct"`, the
 * ceiling the clients themselves reach).
 */
async function bulkRun(via: { pid: number; port: number } | "socat" | "direct"): Promise<BulkResult> {
  const relayPort = typeof via === "object" ? via.port : null;
  const proto = relayPort === null ? "raw" : "smts";
  const frames = CONFIG.bulkFrames;
  const peers: Peer[] = [];
  let socat: Server | null = null;
  try {
    const recv = new Peer("stream-recv", { proto, port: relayPort ?? 0, frames, bodyBytes: BULK_BODY });
    peers.push(recv);
    const rr = await recv.expect<{ id?: string; port?: number }>("READY", 10_000);
    let port = relayPort ?? rr.port!;
    let forwarderPid = typeof via === "object" ? via.pid : null;
    if (via === "socat") {
      socat = await startSocat(rr.port!);
      sampler.watch("socat", socat.proc.pid);
      port = socat.port;
      forwarderPid = socat.proc.pid;
    }
    const send = new Peer("stream-send", { proto, port, to: rr.id ?? "", frames, bodyBytes: BULK_BODY });
    peers.push(send);
    const sr = await send.expect<{ id: string }>("READY", 10_000);
    if (proto === "smts") recv.tell(`FROM ${sr.id}`);
    const meter = cpuMeter({ sender: send.proc.pid, ...(forwarderPid ? { forwarder: forwarderPid } : {}), receiver: recv.proc.pid });
    send.tell("GO");
    const sent = await send.expect<{ startedAt: number; relayErrors: string[] }>("RESULT", BULK_TIMEOUT_MS);
    const got = await recv.expect<RecvResult>("RESULT", BULK_TIMEOUT_MS);
    const cpu = meter.stop();
    const socatHwmKiB = socat ? procStatusKiB(socat.proc.pid, "VmHWM") : null;
    const seconds = (got.doneAt - sent.startedAt) / 1000;
    const problems = [...sent.relayErrors.map((e) => `relay told the sender: ${e}`), ...got.failures];
    if (got.why !== "complete") problems.push(`receiver: ${got.why} after ${got.frames}/${frames} frames`);
    if (got.bytes !== got.expectedBytes) problems.push(`receiver got ${got.bytes} bytes, expected ${got.expectedBytes}`);
    if (got.badLength) problems.push(`${got.badLength} frames with an unexpected length`);
    if (got.checked < 2) problems.push("too few frames sampled");
    return { mbPerS: (frames * BULK_BODY) / seconds / 1e6, seconds, ok: problems.length === 0, problems, checked: got.checked, socatHwmKiB, cpu, readKiB: got.bytes / Math.max(1, got.reads) / 1024 };
  } finally {
    await Promise.all(peers.map((p) => p.close()));
    if (socat) {
      sampler.unwatch("socat");
      await stopChild(socat.proc, 1000);
    }
  }
}

interface RateResult {
  rate: number;
  messages: number;
  perSecond: number[];
  ok: boolean;
  problems: string[];
  checked: number;
  cpu: Record<string, number>;
}

interface SubResult {
  messages: number;
  elapsedMs: number;
  rate: number;
  perSecond: number[];
  closedEarly: boolean;
  serverErrors: string[];
  badLength: number;
  checked: number;
  failures: string[];
}

async function rateRun(proto: "smts" | "nats", server: { pid: number; port: number }): Promise<RateResult> {
  const port = server.port;
  const peers: Peer[] = [];
  try {
    const sub = new Peer("rate-sub", { proto, port, bodyBytes: RATE_BODY, warmupMs: CONFIG.rateWarmupMs, durationMs: CONFIG.rateDurationMs });
    peers.push(sub);
    const subReady = await sub.expect<{ id: string }>("READY", 10_000);
    const pub = new Peer("rate-pub", { proto, port, to: subReady.id, bodyBytes: RATE_BODY });
    peers.push(pub);
    const pubReady = await pub.expect<{ id: string }>("READY", 10_000);
    if (proto === "smts") sub.tell(`FROM ${pubReady.id}`);
    pub.tell("GO");
    await Bun.sleep(CONFIG.rateWarmupMs); // measure CPU over (roughly) the counting window
    const meter = cpuMeter({ publisher: pub.proc.pid, forwarder: server.pid, subscriber: sub.proc.pid });
    const got = await sub.expect<SubResult>("RESULT", CONFIG.rateWarmupMs + CONFIG.rateDurationMs + 30_000);
    const cpu = meter.stop();
    pub.tell("STOP");
    const sent = await pub.expect<{ accepted: number; relayErrors: string[] }>("RESULT", 10_000);
    const problems = [...sent.relayErrors.map((e) => `${proto === "nats" ? "nats-server" : "relay"} told the publisher: ${e}`), ...got.serverErrors.map((e) => `server told the subscriber: ${e}`), ...got.failures];
    if (got.closedEarly) problems.push("subscriber connection closed during the window");
    if (got.badLength) problems.push(`${got.badLength} frames with an unexpected length`);
    if (got.checked < 2) problems.push("too few messages sampled");
    return { rate: got.rate, messages: got.messages, perSecond: got.perSecond, ok: problems.length === 0, problems, checked: got.checked, cpu };
  } finally {
    await Promise.all(peers.map((p) => p.close()));
  }
}

// ---- report ------------------------------------------------------------------------------------

function machine(): Record<string, string> {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const meminfo = readFileSync("/proc/meminfo", "utf8");
  const memKiB = Number(meminfo.match(/^MemTotal:\s+(\d+)/m)?.[1] ?? 0);
  return {
    cpu: cpuinfo.match(/^model name\s*:\s*(.+)$/m)?.[1]?.trim() ?? os.cpus()[0]?.model ?? "unknown",
    cores: String(os.availableParallelism?.() ?? os.cpus().length),
    ram: `${(memKiB / 1024 / 1024).toFixed(1)} GiB`,
    kernel: `${os.type()} ${os.release()}`,
    bun: Bun.version,
    date: new Date().toISOString().replace(/\.\d+Z$/, "Z"),
    code: codeVersion(),
  };
}

/** The commit measured, and whether lib/ or cmd/ had uncommitted changes at the time. */
function codeVersion(): string {
  const git = (...args: string[]) => Bun.spawnSync(["git", "-C", ROOT, ...args]).stdout.toString().trim();
  const head = git("rev-parse", "--short", "HEAD");
  if (!head) return "unknown (not a git checkout)";
  const dirty = git("status", "--porcelain", "--", "lib", "cmd");
  return dirty ? `commit ${head} plus uncommitted changes in lib/ or cmd/` : `commit ${head}`;
}

const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits });

interface Results {
  /** CPU % (of one core) used by other processes just before the runs. */
  backgroundLoad: number;
  tools: Record<string, Tool>;
  bulkSmts: BulkResult[];
  bulkSocat: BulkResult[];
  bulkDirect: BulkResult[];
  rateSmts: RateResult[];
  rateNats: RateResult[];
  relayIdleKiB: number | null;
  relayPeakBulkKiB: number | null;
  relayPeakRateKiB: number | null;
  relayHwmAfterBulkKiB: number | null;
  relayHwmKiB: number | null;
  socatHwmKiB: number | null;
  natsHwmKiB: number | null;
  relaySummary: string;
  problems: string[];
}

/** Median CPU use per process over some runs, as text. */
function cpuMedian(runs: { cpu: Record<string, number> }[]): string {
  if (!runs.length) return "–";
  return cpuLine((k) => median(runs.map((x) => x.cpu[k] ?? 0)), Object.keys(runs[0]!.cpu));
}

function ratioRow(what: string, smts: number[], ref: number[], refName: string, unit: string, digits: number): string {
  if (!smts.length) return `| ${what} | not run, or no run passed its checks | – | – | ≥ ${TARGET_RATIO.toFixed(2)} | – |`;
  const s = median(smts);
  if (!ref.length) return `| ${what} | ${fmt(s, digits)} ${unit} | ${refName}: not measured (not available) | – | ≥ ${TARGET_RATIO.toFixed(2)} | unknown |`;
  const r = median(ref);
  const ratio = s / r;
  return `| ${what} | ${fmt(s, digits)} ${unit} | ${refName}: ${fmt(r, digits)} ${unit} | **${ratio.toFixed(2)}** | ≥ ${TARGET_RATIO.toFixed(2)} | ${ratio >= TARGET_RATIO ? "yes" : "**no**"} |`;
}

/** The two forwarding targets, for the summary table (docs/BENCHMARKS.md). */
function summaryRows(r: Results): TargetRow[] {
  const passed = <T extends { ok: boolean }>(xs: T[]) => xs.filter((x) => x.ok);
  const row = (id: string, what: string, smts: number[], ref: number[], refName: string, unit: string): TargetRow => {
    const ratio = smts.length && ref.length ? median(smts) / median(ref) : null;
    return {
      id,
      what,
      measured: smts.length ? `${fmt(median(smts))} ${unit}` : "no run passed its checks",
      reference: ref.length ? `${refName}: ${fmt(median(ref))} ${unit}` : `${refName}: not available`,
      ratio: ratio === null ? "–" : `**${ratio.toFixed(2)}**`,
      target: `≥ ${TARGET_RATIO.toFixed(2)} of the reference`,
      met: ratio === null ? null : ratio >= TARGET_RATIO,
    };
  };
  return [
    row("relay-msgs", "relay-only forwarding, 200-byte messages, 1 publisher → 1 subscriber", passed(r.rateSmts).map((x) => x.rate), passed(r.rateNats).map((x) => x.rate), `nats-server ${r.tools["nats-server"]!.version}`, "msgs/s"),
    row("relay-bulk", "relay-only forwarding, 64 KiB bodies (issue 2)", passed(r.bulkSmts).map((x) => x.mbPerS), passed(r.bulkSocat).map((x) => x.mbPerS), `socat ${r.tools.socat!.version}`, "MB/s"),
  ];
}

function renderReport(r: Results, m: Record<string, string>): string {
  const { tools } = r;
  const socatName = tools.socat!.found ? `socat ${tools.socat!.version} \`-b ${SOCAT_BUFFER}\`` : "socat";
  const natsName = tools["nats-server"]!.found ? `nats-server ${tools["nats-server"]!.version}` : "nats-server";
  const runs = (xs: { ok: boolean }[], v: (x: never) => number, digits: number) =>
    xs.length ? xs.map((x) => fmt(v(x as never), digits) + (busy(x) ? "*" : "") + (x.ok ? "" : " (FAILED CHECKS)")).join(", ") : "–";
  const busy = (x: unknown) => ((x as { cpu: Record<string, number> }).cpu.others ?? 0) > QUIET_LOAD;
  const bulkGiB = (CONFIG.bulkFrames * BULK_BODY) / 2 ** 30;
  const allRuns = [...r.bulkSmts, ...r.bulkSocat, ...r.bulkDirect, ...r.rateSmts, ...r.rateNats];
  const othersDuring = allRuns.length ? median(allRuns.map((x) => x.cpu.others ?? 0)) : 0;
  const contended = allRuns.filter(busy).length;
  const quiet = <T extends { ok: boolean; cpu: Record<string, number> }>(xs: T[]) => xs.filter((x) => x.ok && !busy(x));
  const passed = <T extends { ok: boolean }>(xs: T[]) => xs.filter((x) => x.ok);
  const quietMedians = (what: string, a: number[], b: number[], refName: string, unit: string) =>
    a.length && b.length ? `${what}: smts ${fmt(median(a))} ${unit} vs ${refName} ${fmt(median(b))} ${unit}, ratio ${(median(a) / median(b)).toFixed(2)} (${a.length} + ${b.length} runs)` : `${what}: no quiet run on one side`;
  const lines = [
    SECTION,
    "",
    `Measured by \`bun scripts/bench-relay.ts${CONFIG.quick ? " --quick" : ""}\` on ${m.date}${CONFIG.quick ? " (**quick mode**: shorter runs, numbers are rougher)" : ""}; ` +
      `${CONFIG.reps} run(s) of each, alternating smts and reference; the table shows medians. Code measured: ${m.code}.`,
    "",
    `Machine: ${m.cpu}, ${m.cores} cores, ${m.ram} RAM, ${m.kernel}, Bun ${m.bun}` +
      `${tools.socat!.found ? `, socat ${tools.socat!.version}` : ""}${tools["nats-server"]!.found ? `, nats-server ${tools["nats-server"]!.version}` : ""}. ` +
      "Everything runs on this one machine over loopback; sender, forwarder and receiver are separate processes. " +
      `Background: other processes used ${r.backgroundLoad.toFixed(0)}% CPU just before the runs and a median ${othersDuring.toFixed(0)}% during them (of ${Number(m.cores) * 100}%).`,
    "",
    "Medians are over the runs that passed their checks (a failed run is listed below, marked FAILED CHECKS).",
    "",
    "| measurement | smts relay | reference (same run) | smts / reference | target | met |",
    "|---|---|---|---|---|---|",
    ratioRow(`64 KiB bodies, 1 sender → 1 receiver, ${fmt(bulkGiB, 2)} GiB per run`, passed(r.bulkSmts).map((x) => x.mbPerS), passed(r.bulkSocat).map((x) => x.mbPerS), socatName, "MB/s", 0),
    ratioRow(`200-byte bodies, 1 publisher → 1 subscriber, ${CONFIG.rateDurationMs / 1000} s window`, passed(r.rateSmts).map((x) => x.rate), passed(r.rateNats).map((x) => x.rate), natsName, "msgs/s", 0),
    `| forwarder peak RSS (VmHWM, or the 50 ms VmRSS peak if higher) | ${mb(r.relayHwmKiB)} | socat ${mb(r.socatHwmKiB)}, nats-server ${mb(r.natsHwmKiB)} | – | – | – |`,
    "",
    ...(contended
      ? [
          `${contended} of ${allRuns.length} runs shared the machine with other busy processes (marked * below). Medians of the quiet runs only:`,
          ...(r.bulkSmts.length ? [`- ${quietMedians("64 KiB", quiet(r.bulkSmts).map((x) => x.mbPerS), quiet(r.bulkSocat).map((x) => x.mbPerS), "socat", "MB/s")}`] : []),
          ...(r.rateSmts.length ? [`- ${quietMedians("200 B", quiet(r.rateSmts).map((x) => x.rate), quiet(r.rateNats).map((x) => x.rate), "NATS", "msgs/s")}`] : []),
          "",
        ]
      : []),
    "Individual runs (CPU is the median use during the run, in % of one core; the machine has " + m.cores + `; * marks a run during which other processes used more than ${QUIET_LOAD}% CPU):`,
    `- smts relay, 64 KiB bodies, MB/s: ${runs(r.bulkSmts, (x: BulkResult) => x.mbPerS, 0)}; CPU ${cpuMedian(r.bulkSmts)}`,
    `- socat, 64 KiB bodies, MB/s: ${tools.socat!.found ? `${runs(r.bulkSocat, (x: BulkResult) => x.mbPerS, 0)}; CPU ${cpuMedian(r.bulkSocat)}` : `skipped: ${tools.socat!.note || "socat not found"}`}`,
    `- direct, sender → receiver with no forwarder (the ceiling of these clients), MB/s: ${runs(r.bulkDirect, (x: BulkResult) => x.mbPerS, 0)}; CPU ${cpuMedian(r.bulkDirect)}`,
    `- smts relay, 200-byte bodies, msgs/s: ${runs(r.rateSmts, (x: RateResult) => x.rate, 0)}; CPU ${cpuMedian(r.rateSmts)}`,
    `- nats-server, 200-byte bodies, msgs/s: ${tools["nats-server"]!.found ? `${runs(r.rateNats, (x: RateResult) => x.rate, 0)}; CPU ${cpuMedian(r.rateNats)}` : `skipped: ${tools["nats-server"]!.note || "nats-server not found"}`}`,
    `- deliveries per second of the window, first run: smts ${r.rateSmts[0]?.perSecond.map((x) => fmt(x)).join(", ") || "–"}; NATS ${r.rateNats[0]?.perSecond.map((x) => fmt(x)).join(", ") || "–"}`,
    "",
    "Relay memory (the `smts relay --open` process; VmRSS sampled every 50 ms):",
    `- idle after start: ${mb(r.relayIdleKiB)}`,
    `- peak sampled VmRSS during the 64 KiB runs: ${mb(r.relayPeakBulkKiB)} (VmHWM after them: ${mb(r.relayHwmAfterBulkKiB)})`,
    `- peak sampled VmRSS during the 200-byte runs: ${mb(r.relayPeakRateKiB)}`,
    `- VmHWM at the end: ${mb(r.relayHwmKiB)}`,
    r.relaySummary ? `- relay's own summary at shutdown: "${r.relaySummary}"` : "",
    "",
    "Method:",
    "- MB/s is 10^6 body bytes per second, timed from the sender's first write to the receiver's last byte (one clock, shared by the processes).",
    `- socat gets the identical byte stream: the same sender writes the same smts \`send\` frames (batches of 16 × 64 KiB), and the same receiver walks the 4-byte length prefixes; socat listens on 127.0.0.1 only (\`bind=127.0.0.1\`).`,
    `- Rate: the publisher writes prebuilt batches of 1024 messages (sequence number stamped into each body) and waits for \`drain\` on a short write; the subscriber counts deliveries in a window starting ${CONFIG.rateWarmupMs} ms after the first one. NATS: \`PUB bench 200\` → subscriber with \`CONNECT {"verbose":false,"pedantic":false}\` and \`SUB bench 1\`; it counts \`MSG\` payloads by their size field and answers PING.`,
    `- Checks on every run: each received frame has the expected length, the total byte count is exact (bulk), and every ${64}th (bulk) / ${1024}th (rate) frame is decoded and its type, sender, sequence number and body bytes compared.`,
    "",
  ];
  const problems = [
    ...(contended || r.backgroundLoad > QUIET_LOAD
      ? [`the machine was not quiet: other processes used ${r.backgroundLoad.toFixed(0)}% CPU before the runs, and more than ${QUIET_LOAD}% during ${contended} of ${allRuns.length} runs; those numbers are lower and noisier than on an idle machine.`]
      : []),
    ...r.problems,
    ...Object.values(tools)
      .filter((t) => !t.found)
      .map((t) => `${t.name} was not available (${t.note || "not found"}): its reference was skipped.`),
  ];
  if (problems.length) lines.push("Problems in this run:", ...problems.map((p) => `- ${p}`), "");
  return lines.filter((l, i, a) => !(l === "" && a[i - 1] === "")).join("\n");
}

/** Replaces our section of docs/BENCHMARKS.md (up to the next `## `), keeping the rest. */
function writeReport(section: string): void {
  let doc = existsSync(REPORT) ? readFileSync(REPORT, "utf8") : "# Benchmarks\n\n";
  const start = doc.indexOf(SECTION);
  if (start >= 0) {
    const next = doc.indexOf("\n## ", start + SECTION.length);
    doc = doc.slice(0, start) + section.trimEnd() + "\n" + (next >= 0 ? doc.slice(next) : "");
  } else {
    doc = doc.trimEnd() + "\n\n" + section.trimEnd() + "\n";
  }
  writeFileSync(REPORT, doc);
}

// ---- main ----------------------------------------------------------------------------------------

async function main(): Promise<void> {
  console.log(`relay benchmark (${CONFIG.quick ? "quick" : "normal"} mode, ${CONFIG.reps} run(s) each)`);
  const tools = await ensureTools();
  const backgroundLoad = await waitForQuiet(QUICK ? 30_000 : 300_000);
  const r: Results = {
    backgroundLoad,
    tools,
    bulkSmts: [],
    bulkSocat: [],
    bulkDirect: [],
    rateSmts: [],
    rateNats: [],
    relayIdleKiB: null,
    relayPeakBulkKiB: null,
    relayPeakRateKiB: null,
    relayHwmAfterBulkKiB: null,
    relayHwmKiB: null,
    socatHwmKiB: null,
    natsHwmKiB: null,
    relaySummary: "",
    problems: [],
  };
  const note = (label: string, res: { ok: boolean; problems: string[] }) => {
    for (const p of res.problems) r.problems.push(`${label}: ${p}`);
  };

  const relay = await startRelay();
  let nats: Server | null = null;
  try {
    console.log(`smts relay pid ${relay.proc.pid} on 127.0.0.1:${relay.port}`);
    await Bun.sleep(300);
    r.relayIdleKiB = procStatusKiB(relay.proc.pid, "VmRSS");

    const relayAt = { pid: relay.proc.pid, port: relay.port };
    const show = (label: string, res: BulkResult | RateResult, i: number) => {
      note(`${label} run ${i}`, res);
      const value =
        "mbPerS" in res
          ? `${fmt(res.mbPerS)} MB/s (${res.seconds.toFixed(2)} s, receiver reads ${fmt(res.readKiB)} KiB on average`
          : `${fmt(res.rate)} msgs/s (${fmt(res.messages)} in window`;
      const problems = res.ok ? "" : ` PROBLEMS: ${res.problems.join("; ")}`;
      console.log(`${label.padEnd(24)} run ${i}: ${value}, ${res.checked} checked; CPU ${cpuText(res.cpu)})${problems}`);
    };

    // 1. bulk: relay and socat alternating, plus the clients' own ceiling (direct)
    sampler.watch("relay-bulk", relay.proc.pid);
    for (let i = 1; i <= (CONFIG.bulk ? CONFIG.reps : 0); i++) {
      await settle();
      const s = await bulkRun(relayAt);
      r.bulkSmts.push(s);
      show("64 KiB smts relay", s, i);
      if (tools.socat!.found) {
        await settle();
        const c = await bulkRun("socat");
        r.bulkSocat.push(c);
        show("64 KiB socat", c, i);
        r.socatHwmKiB = Math.max(r.socatHwmKiB ?? 0, c.socatHwmKiB ?? 0, sampler.peakKiB.get("socat") ?? 0);
      }
      await settle();
      const d = await bulkRun("direct");
      r.bulkDirect.push(d);
      show("64 KiB direct (no hop)", d, i);
    }
    sampler.unwatch("relay-bulk");
    r.relayPeakBulkKiB = sampler.peakKiB.get("relay-bulk") ?? null;
    r.relayHwmAfterBulkKiB = procStatusKiB(relay.proc.pid, "VmHWM");

    // 2. rate: relay and nats-server alternating
    if (tools["nats-server"]!.found && CONFIG.rate) {
      nats = await startNats();
      console.log(`nats-server pid ${nats.proc.pid} on 127.0.0.1:${nats.port}`);
    }
    sampler.watch("relay-rate", relay.proc.pid);
    for (let i = 1; i <= (CONFIG.rate ? CONFIG.reps : 0); i++) {
      await settle();
      const s = await rateRun("smts", relayAt);
      r.rateSmts.push(s);
      show("200 B smts relay", s, i);
      if (nats) {
        await settle();
        const n = await rateRun("nats", { pid: nats.proc.pid, port: nats.port });
        r.rateNats.push(n);
        show("200 B nats-server", n, i);
      }
    }
    sampler.unwatch("relay-rate");
    r.relayPeakRateKiB = sampler.peakKiB.get("relay-rate") ?? null;
    r.relayHwmKiB = Math.max(procStatusKiB(relay.proc.pid, "VmHWM") ?? 0, r.relayPeakBulkKiB ?? 0, r.relayPeakRateKiB ?? 0) || null;
    if (nats) r.natsHwmKiB = procStatusKiB(nats.proc.pid, "VmHWM");
  } finally {
    sampler.stop();
    if (nats) await stopChild(nats.proc, 2000);
    await stopChild(relay.proc, 3000);
    killAll();
  }
  r.relaySummary = relay.log.find((l) => l.includes("forwarded"))?.replace(/^\W+/, "") ?? "";
  for (const l of relay.log) if (/warn|error/i.test(l)) r.problems.push(`relay log: ${l}`);

  const section = renderReport(r, machine());
  console.log(`\n${section}`);
  if (CONFIG.write) {
    writeReport(section);
    recordTargets("bench-relay", `bun scripts/bench-relay.ts${CONFIG.quick ? " --quick" : ""}`, summaryRows(r));
    console.log(`written to ${REPORT}`);
  } else console.log(`(not written to ${REPORT}: --no-write, --only or --relay-cpu-prof)`);
  const failed = [...r.bulkSmts, ...r.bulkSocat, ...r.bulkDirect, ...r.rateSmts, ...r.rateNats].filter((x) => !x.ok).length;
  if (failed) {
    console.log(`${failed} run(s) failed their checks: see "Problems in this run"`);
    process.exitCode = 1;
  }
}

await main().catch((err: Error) => {
  console.error(`benchmark failed: ${err.stack ?? err.message}`);
  killAll();
  process.exit(1);
});
