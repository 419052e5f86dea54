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
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { type FileRig, machine, median, startFileRig, writeRandomFile } from "./bench-util.ts";

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

const results: Record<"a" | "b", Awaited<ReturnType<FileRig["once"]>>[]> = { a: [], b: [] };
let rigs: { a: FileRig; b: FileRig } | undefined;
try {
  const rig = (dir: string, tag: string, env: Record<string, string>) => startFileRig({ root: `${resolve(dir)}/`, tag, downloads: join(work, `dl-${tag}`), src, srcSha, env, relayArgs });
  rigs = { a: await rig(positionals[0]!, "a", envA), b: await rig(positionals[1]!, "b", {}) };
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
