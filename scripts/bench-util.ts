// Shared pieces of the benchmark scripts: the machine description, random
// test files, a relay process to measure against, percentiles, writing one section of
// docs/BENCHMARKS.md without disturbing the others, and the summary table of
// the brief's targets at the top of it (fed by every script's recordTargets,
// kept between runs in docs/benchmarks.json so one script can be re-run alone).
import { createCipheriv, randomBytes } from "node:crypto";
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, unlinkSync, writeFileSync, writeSync } from "node:fs";
import { cpus, release, totalmem } from "node:os";

export const ROOT = new URL("..", import.meta.url).pathname;
const MIB = 1024 * 1024;
const REPORT = `${ROOT}docs/BENCHMARKS.md`;

export function machine(): string {
  const cpu = cpus();
  return `${cpu[0]?.model.trim() ?? "unknown CPU"}, ${cpu.length} cores, ${Math.round(totalmem() / 2 ** 30)} GiB RAM, Linux ${release()}, Bun ${Bun.version}`;
}

/** Streams `size` bytes of AES-256-CTR keystream (pseudo-random) into `path`; returns its SHA-256. */
export function writeRandomFile(path: string, size: number): string {
  const ctr = createCipheriv("aes-256-ctr", randomBytes(32), randomBytes(16));
  const zeros = Buffer.alloc(MIB);
  const hash = new Bun.CryptoHasher("sha256");
  const fd = openSync(path, "w", 0o600);
  try {
    for (let left = size; left > 0; ) {
      const block = ctr.update(left >= MIB ? zeros : zeros.subarray(0, left));
      for (let at = 0; at < block.length; ) at += writeSync(fd, block, at);
      hash.update(block);
      left -= block.length;
    }
  } finally {
    closeSync(fd);
  }
  return hash.digest("hex");
}

/** Median of unsorted numbers (the mean of the two middle ones for an even count). */
export function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const mid = s.length >> 1;
  return s.length % 2 ? s[mid]! : (s[mid - 1]! + s[mid]!) / 2;
}

/** p-th percentile of an ascending array. */
export function percentile(sorted: number[], p: number): number {
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/**
 * `smts relay --open` as its own process on an ephemeral loopback port; from
 * another checkout with `root` (a path ending in "/"), with `env` instead of PATH only.
 */
export async function spawnBenchRelay(extra: string[] = [], opts: { root?: string; env?: Record<string, string | undefined> } = {}) {
  const proc = Bun.spawn([process.execPath, `${opts.root ?? ROOT}cmd/smts.ts`, "relay", "--host", "127.0.0.1", "--port", "0", "--open", ...extra], {
    stdout: "ignore",
    stderr: "pipe",
    env: opts.env ?? { PATH: process.env.PATH ?? "" },
  });
  let text = "";
  const reader = proc.stderr.getReader();
  for (;;) {
    const m = /listening on [^\s]+:(\d+)/.exec(text);
    if (m) {
      reader.releaseLock();
      return { proc, port: Number(m[1]) };
    }
    const { value, done } = await reader.read();
    if (done) throw new Error(`relay exited: ${text}`);
    text += new TextDecoder().decode(value);
  }
}

/** VmRSS and VmHWM of a running process, in MiB, from /proc/PID/status. */
export function procMemMiB(pid: number): { rss: number; hwm: number } {
  const s = readFileSync(`/proc/${pid}/status`, "utf8");
  const kb = (k: string) => Number(new RegExp(`^${k}:\\s+(\\d+) kB`, "m").exec(s)?.[1] ?? NaN);
  return { rss: kb("VmRSS") / 1024, hwm: kb("VmHWM") / 1024 };
}

const CLK_TCK = Number(Bun.spawnSync(["getconf", "CLK_TCK"]).stdout.toString().trim()) || 100;

/** User and system CPU seconds (all threads) a running process has used, from /proc/PID/stat. */
export function procCpu(pid: number): { user: number; sys: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  const f = stat.slice(stat.lastIndexOf(")") + 2).split(" ");
  return { user: Number(f[11]) / CLK_TCK, sys: Number(f[12]) / CLK_TCK }; // utime, stime
}

/** Minor page faults (all threads) of a running process so far, from /proc/PID/stat. */
export function procMinorFaults(pid: number): number {
  const stat = readFileSync(`/proc/${pid}/stat`, "utf8");
  return Number(stat.slice(stat.lastIndexOf(")") + 2).split(" ")[7]); // minflt
}

export function procCpuSeconds(pid: number): number {
  const { user, sys } = procCpu(pid);
  return user + sys;
}

/** Now, as "2026-11-27 01:43 UTC". */
export const utcMinute = () => `${new Date().toISOString().slice(0, 16).replace("T", " ")} UTC`;

/** The commit measured, and whether lib/ or cmd/ had uncommitted changes. */
export function codeVersion(): string {
  const git = (...args: string[]) => Bun.spawnSync(["git", ...args], { cwd: ROOT }).stdout.toString().trim();
  return `${git("rev-parse", "--short", "HEAD")}${git("status", "--porcelain", "lib", "cmd") ? " + uncommitted changes" : ""}`;
}

/** One row of the summary: a target of the brief (§6) or of an issue, as one benchmark measured it. */
export interface TargetRow {
  /** Fixes the row's place in the summary (SUMMARY_ORDER). */
  id: string;
  what: string;
  measured: string;
  /** The reference measured in the same run ("–" for an absolute target). */
  reference: string;
  ratio: string;
  target: string;
  /** null: reported, no target. */
  met: boolean | null;
}

interface BenchRecord {
  command: string;
  at: string;
  commit: string;
  machine: string;
  rows: TargetRow[];
}

const RESULTS = `${ROOT}docs/benchmarks.json`;
const SUMMARY_TITLE = "Summary: the targets of the brief";
/** The brief's §6 table order, then the issue-7 rows. */
const SUMMARY_ORDER = ["connect", "file-10mib", "file-10mib-openssl", "file-10mib-floor", "file-10mib-b2b", "file-rss-sender", "file-rss-relay", "file-rss-receiver", "broadcast-upload", "e2e-msgs", "relay-msgs", "relay-bulk", "idle-10k", "help", "load-delivered", "load-latency", "load-e2e", "fuzz"];

/** Stores `rows` as the latest results of `bench` and rewrites the summary table. */
export function recordTargets(bench: string, command: string, rows: TargetRow[]): void {
  const all = readResults();
  all[bench] = { command, at: utcMinute(), commit: codeVersion(), machine: machine(), rows };
  writeFileSync(RESULTS, `${JSON.stringify(all, null, 2)}\n`);
  writeSummary();
}

function readResults(): Record<string, BenchRecord> {
  return existsSync(RESULTS) ? (JSON.parse(readFileSync(RESULTS, "utf8")) as Record<string, BenchRecord>) : {};
}

/** The summary section, always first in docs/BENCHMARKS.md; `run` describes a whole scripts/bench.ts run. */
export function writeSummary(run?: string): void {
  const all = readResults();
  const benches = Object.entries(all);
  const rank = (id: string) => (SUMMARY_ORDER.includes(id) ? SUMMARY_ORDER.indexOf(id) : SUMMARY_ORDER.length);
  const rows = benches.flatMap(([name, b]) => b.rows.map((r) => ({ ...r, name }))).sort((x, y) => rank(x.id) - rank(y.id));
  const machines = [...new Set(benches.map(([, b]) => b.machine))];
  const verdict = (met: boolean | null) => (met === null ? "–" : met ? "yes" : "**no**");
  const body = [
    run ?? "",
    `Machine: ${machines.join("; ")}. Loopback only; relay and clients are separate processes on this one machine. Every reference (OpenSSL, socat, NATS) is measured in the same run as the value it is compared with.`,
    "",
    "| what | measured | reference (same run) | ratio | target | met | by |",
    "|---|---|---|---|---|---|---|",
    ...rows.map((r) => `| ${r.what} | ${r.measured} | ${r.reference} | ${r.ratio} | ${r.target} | ${verdict(r.met)} | \`${r.name}\` |`),
    "",
    "When each script last ran: " + benches.map(([name, b]) => `\`${b.command}\` ${b.at} (commit ${b.commit})`).join("; ") + ". Details, runs and notes are in the sections below.",
  ].join("\n");
  writeSection(SUMMARY_TITLE, body, true);
}

/** Hand-written notes after this line in a section survive the script's rewrites of it. */
const NOTES = "<!-- notes -->";

/** Replaces (or adds; `first`: as the first section) the `## title` section of docs/BENCHMARKS.md. */
export function writeSection(title: string, body: string, first = false): void {
  const heading = `## ${title}`;
  let doc = existsSync(REPORT) ? readFileSync(REPORT, "utf8") : "# Benchmarks\n";
  const start = doc.indexOf(`${heading}\n`);
  const firstSection = doc.indexOf("\n## ");
  if (start < 0) {
    const block = `${heading}\n\n${body.trim()}\n`;
    if (first && firstSection >= 0) doc = `${doc.slice(0, firstSection + 1)}${block}\n${doc.slice(firstSection + 1)}`;
    else doc = `${doc.trimEnd()}\n\n${block}`;
  } else {
    const next = doc.indexOf("\n## ", start + heading.length);
    const old = doc.slice(start, next < 0 ? undefined : next);
    const notes = old.includes(NOTES) ? `\n\n${old.slice(old.indexOf(NOTES)).trim()}` : "";
    doc = `${doc.slice(0, start)}${heading}\n\n${body.trim()}${notes}\n${next < 0 ? "" : doc.slice(next)}`;
  }
  writeFileSync(REPORT, doc.endsWith("\n") ? doc : `${doc}\n`);
}

export interface TcpSocketInfo {
  local: string;
  peer: string;
  /** The process holding the socket (null if `ss` could not tell). */
  pid: number | null;
  /** Payload bytes this socket has sent (tcpi_bytes_sent: retransmissions included, TCP/IP headers not). */
  bytesSent: number;
  /** Of bytesSent, those sent again (tcpi_bytes_retrans). */
  bytesRetrans: number;
  /** Payload bytes this socket has received (tcpi_bytes_received). */
  bytesReceived: number;
}

/**
 * The kernel's own byte counters (Linux tcp_info, read with iproute2's `ss -ti`)
 * for every established TCP connection with `port` at either end. These count
 * what actually went through the sockets, not what the application meant to send.
 */
export function tcpSockets(port: number): TcpSocketInfo[] {
  const r = Bun.spawnSync(["ss", "-tinpH", "state", "established", `( sport = :${port} or dport = :${port} )`]);
  if (r.exitCode !== 0) throw new Error(`ss failed: ${r.stderr.toString().trim()}`);
  const out: TcpSocketInfo[] = [];
  let cur: TcpSocketInfo | null = null;
  for (const line of r.stdout.toString().split("\n")) {
    if (!line.trim()) continue;
    if (!/^\s/.test(line)) {
      // Recv-Q Send-Q Local Peer [users:(("bun",pid=123,fd=7))]
      const cols = line.trim().split(/\s+/);
      cur = { local: cols[2]!, peer: cols[3]!, pid: Number(/pid=(\d+)/.exec(line)?.[1] ?? NaN) || null, bytesSent: 0, bytesRetrans: 0, bytesReceived: 0 };
      out.push(cur);
    } else if (cur) {
      cur.bytesSent += Number(/\bbytes_sent:(\d+)/.exec(line)?.[1] ?? 0);
      cur.bytesRetrans += Number(/\bbytes_retrans:(\d+)/.exec(line)?.[1] ?? 0);
      cur.bytesReceived += Number(/\bbytes_received:(\d+)/.exec(line)?.[1] ?? 0);
    }
  }
  return out;
}

/** Reads a child's stdout as lines: `next()` resolves with the next one (fails after `timeoutMs`, or once the child has exited). */
export function lineReader(stream: ReadableStream<Uint8Array>) {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  const lines: string[] = [];
  let buf = "";
  let ended = false;
  void (async () => {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return void (ended = true);
      buf += decoder.decode(value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) lines.push(buf.slice(0, nl)), (buf = buf.slice(nl + 1));
    }
  })();
  return {
    async next(timeoutMs = 30_000): Promise<string> {
      const deadline = performance.now() + timeoutMs;
      while (!lines.length) {
        if (ended) throw new Error("child process exited");
        if (performance.now() > deadline) throw new Error("child process said nothing");
        await Bun.sleep(1);
      }
      return lines.shift()!;
    },
  };
}

export type FileRig = Awaited<ReturnType<typeof startFileRig>>;

/**
 * Three processes moving one file over and over: `smts relay --open`, and a
 * receiver and a sender client (bench-files.ts's `--peer` mode) of the
 * checkout at `root`, connected to each other. `once()` sends `src` and checks
 * what the receiver saved against `srcSha`, then removes it.
 */
export async function startFileRig(o: { root: string; tag: string; downloads: string; src: string; srcSha: string; env?: Record<string, string>; relayArgs?: string[] }) {
  const env = { ...process.env, ...o.env };
  mkdirSync(o.downloads);
  const { proc: relay, port } = await spawnBenchRelay(o.relayArgs ?? [], { root: o.root, env });
  const peer = (role: "sender" | "receiver") => {
    const proc = Bun.spawn([process.execPath, `${o.root}scripts/bench-files.ts`, "--peer", role, "127.0.0.1", String(port), o.downloads, "default"], { stdin: "pipe", stdout: "pipe", stderr: "inherit", env });
    const lines = lineReader(proc.stdout);
    return {
      proc,
      next: async (timeoutMs = 60_000) => JSON.parse(await lines.next(timeoutMs)) as Record<string, any>,
      send: (m: object) => void (proc.stdin.write(`${JSON.stringify(m)}\n`), proc.stdin.flush()),
    };
  };
  const receiver = peer("receiver");
  const sender = peer("sender");
  let receiverId: string;
  try {
    receiverId = (await receiver.next()).id as string;
    await sender.next();
    sender.send({ op: "connect", peer: receiverId });
    if (!(await sender.next()).ok) throw new Error(`${o.tag}: connect failed`);
  } catch (err) {
    for (const p of [sender.proc, receiver.proc, relay]) p.kill(); // nothing left running when setting up fails
    throw err;
  }
  const pids = [sender.proc.pid, relay.pid, receiver.proc.pid];
  const size = Bun.file(o.src).size;
  return {
    /** sender, relay, receiver */
    pids,
    /** One transfer: wall ms, and CPU ms and minor page faults per MiB of [sender, relay, receiver]. */
    async once(): Promise<{ ms: number; cpu: number[]; faults: number[] }> {
      const c0 = pids.map(procCpu);
      const f0 = pids.map(procMinorFaults);
      sender.send({ op: "send", peer: receiverId, path: o.src });
      const r = await sender.next();
      if (!r.ok) throw new Error(`${o.tag}: ${r.error}`);
      const file = await receiver.next();
      // The receiver's own hash of what it saved (an experimental side may report a different `delivered` hash).
      if (file.event !== "file" || file.sha256 !== o.srcSha) throw new Error(`${o.tag}: receiver reported ${JSON.stringify(file)}`);
      unlinkSync(file.path);
      const c1 = pids.map(procCpu);
      const f1 = pids.map(procMinorFaults);
      const mib = size / MIB;
      return { ms: r.ms, cpu: c1.map((c, i) => ((c.user + c.sys - c0[i]!.user - c0[i]!.sys) * 1000) / mib), faults: f1.map((f, i) => (f - f0[i]!) / mib) };
    },
    async stop() {
      sender.send({ op: "exit" });
      receiver.send({ op: "exit" });
      await Promise.race([Promise.all([sender.proc.exited, receiver.proc.exited]), Bun.sleep(3000)]);
      for (const p of [sender.proc, receiver.proc, relay]) p.kill();
    },
  };
}
