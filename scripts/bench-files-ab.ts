// Paired A/B comparison of the 10 MiB file transfer of two checkouts (or of
// one checkout with and without an environment variable), for changes whose
// effect is smaller than this shared machine's drift: the speed of the same
// code moves by 10-20 % within minutes (docs/BENCHMARKS.md, "File transfer"),
// so two benchmark runs taken one after the other cannot show a 5 % change.
//
// Both rigs (relay, sender, receiver: three processes each, as in
// bench-files.ts, whose `--peer` mode this reuses) are started first and stay
// idle while the other one works; then transfers alternate A, B, B, A, ... so
// every pair sees the same machine. Per side: median and mean wall time
// (sendFile() → delivered) and the CPU of each process per MiB moved, read
// from /proc. Only prints; docs/BENCHMARKS.md is not touched.
//
// Usage: bun scripts/bench-files-ab.ts DIR_A DIR_B [--pairs N] [--env-a NAME=VALUE] [--relay-args "ARGS"]
//   DIR_A, DIR_B: checkouts (a `git worktree add` of the baseline, say), each
//   with node_modules; the same directory twice with --env-a compares an
//   environment variable (MIMALLOC_PURGE_DELAY=-1, GLIBC_TUNABLES=..., ...).
import { mkdirSync, mkdtempSync, rmSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { lineReader, machine, median, procCpu, spawnBenchRelay, writeRandomFile } from "./bench-util.ts";

const { positionals, values } = parseArgs({
  allowPositionals: true,
  options: { pairs: { type: "string", default: "16" }, "env-a": { type: "string" }, "relay-args": { type: "string", default: "" } },
});
if (positionals.length !== 2) {
  console.error('usage: bun scripts/bench-files-ab.ts DIR_A DIR_B [--pairs N] [--env-a NAME=VALUE] [--relay-args "ARGS"]');
  process.exit(2);
}
const pairs = Number(values.pairs);
const envA = values["env-a"] ? Object.fromEntries([values["env-a"].split(/=(.*)/s).slice(0, 2) as [string, string]]) : {};
const relayArgs = values["relay-args"]!.split(" ").filter(Boolean);
const MiB = 1024 * 1024;
const SIZE = 10 * MiB;
const WARM_UPS = 8;

const work = mkdtempSync(join(tmpdir(), "smts-bench-ab-"));
const src = join(work, "random-10MiB.bin");
const srcSha = writeRandomFile(src, SIZE);

type Rig = Awaited<ReturnType<typeof startRig>>;

async function startRig(dir: string, tag: string, extraEnv: Record<string, string>) {
  const root = `${resolve(dir)}/`;
  const env = { ...process.env, ...extraEnv };
  const downloads = join(work, `dl-${tag}`);
  mkdirSync(downloads);
  const { proc: relay, port } = await spawnBenchRelay(relayArgs, { root, env });
  const peer = (role: "sender" | "receiver") => {
    const proc = Bun.spawn([process.execPath, `${root}scripts/bench-files.ts`, "--peer", role, "127.0.0.1", String(port), downloads, "default"], { stdin: "pipe", stdout: "pipe", stderr: "inherit", env });
    const lines = lineReader(proc.stdout);
    return {
      proc,
      next: async (timeoutMs = 60_000) => JSON.parse(await lines.next(timeoutMs)) as Record<string, any>,
      send: (o: object) => void (proc.stdin.write(`${JSON.stringify(o)}\n`), proc.stdin.flush()),
    };
  };
  const receiver = peer("receiver");
  const receiverId = (await receiver.next()).id as string;
  const sender = peer("sender");
  await sender.next();
  sender.send({ op: "connect", peer: receiverId });
  if (!(await sender.next()).ok) throw new Error(`${tag}: connect failed`);
  const pids = [sender.proc.pid, relay.pid, receiver.proc.pid];
  return {
    /** One transfer: wall ms and CPU ms per MiB of [sender, relay, receiver]. */
    async once(): Promise<{ ms: number; cpu: number[] }> {
      const c0 = pids.map(procCpu);
      sender.send({ op: "send", peer: receiverId, path: src });
      const r = await sender.next();
      if (!r.ok) throw new Error(`${tag}: ${r.error}`);
      const file = await receiver.next();
      // The receiver's own hash of what it saved (an experimental side may report a different `delivered` hash).
      if (file.event !== "file" || file.sha256 !== srcSha) throw new Error(`${tag}: receiver reported ${JSON.stringify(file)}`);
      unlinkSync(file.path);
      const c1 = pids.map(procCpu);
      return { ms: r.ms, cpu: c1.map((c, i) => ((c.user + c.sys - c0[i]!.user - c0[i]!.sys) * 1000) / (SIZE / MiB)) };
    },
    async stop() {
      sender.send({ op: "exit" });
      receiver.send({ op: "exit" });
      await Promise.race([Promise.all([sender.proc.exited, receiver.proc.exited]), Bun.sleep(3000)]);
      for (const p of [sender.proc, receiver.proc, relay]) p.kill();
    },
  };
}

const results = { a: [] as { ms: number; cpu: number[] }[], b: [] as { ms: number; cpu: number[] }[] };
let rigs: { a: Rig; b: Rig } | undefined;
try {
  rigs = { a: await startRig(positionals[0]!, "a", envA), b: await startRig(positionals[1]!, "b", {}) };
  await Bun.sleep(1500); // the DH workers finish their start-up
  for (let i = 0; i < WARM_UPS; i++) await rigs.a.once(), await rigs.b.once(); // until the JIT settles (bench-files.ts)
  for (let i = 0; i < pairs; i++) {
    for (const side of i % 2 ? (["a", "b"] as const) : (["b", "a"] as const)) results[side].push(await rigs[side].once());
  }
} finally {
  await rigs?.a.stop();
  await rigs?.b.stop();
  rmSync(work, { recursive: true, force: true });
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
console.log(`${machine()}; ${pairs} pairs of 10 MiB transfers after ${WARM_UPS} warm-ups each`);
for (const side of ["a", "b"] as const) {
  const runs = results[side];
  const cpu = [0, 1, 2].map((j) => mean(runs.map((r) => r.cpu[j]!)));
  const label = side === "a" ? `A ${positionals[0]}${values["env-a"] ? ` with ${values["env-a"]}` : ""}` : `B ${positionals[1]}`;
  console.log(`${label}: median ${median(runs.map((r) => r.ms)).toFixed(1)} ms, mean ${mean(runs.map((r) => r.ms)).toFixed(1)} ms; CPU ms/MiB: sender ${cpu[0]!.toFixed(2)}, relay ${cpu[1]!.toFixed(2)}, receiver ${cpu[2]!.toFixed(2)}, total ${(cpu[0]! + cpu[1]! + cpu[2]!).toFixed(2)}`);
}
console.log(`A was faster in ${results.a.filter((r, i) => r.ms < results.b[i]!.ms).length} of ${pairs} pairs`);
