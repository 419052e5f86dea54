// How much an idle pause before a transfer costs, for smts and for the runtime
// floor (scripts/floor-pipeline.ts): the 10 MiB transfer after 0, 50, 100,
// 150, 200 and 400 ms with nothing to do. bench-files.ts's target row takes
// its transfers after about 100 ms of idle time (its runs alternate with the
// floor's), and Bun's allocator hands freed memory back to the system about
// that long after its last use; the next transfer then faults its buffers in
// again. This shows where that starts, and that the floor pays it too.
//
// Each rig (relay, sender, receiver: three processes) runs alone in blocks: a
// transfer to settle, then PER transfers each after the block's pause, so the
// pause before a measured transfer is exactly that; blocks of the two rigs
// and of all the pauses alternate over ROUNDS rounds. Per pause and rig:
// median wall time, and minor page faults and CPU per MiB of each process.
// Only prints; docs/BENCHMARKS.md is not touched.
//
// Usage: bun scripts/bench-idle.ts [--rounds N] [--per N] [--pauses 0,50,100,...]
import { mkdirSync, mkdtempSync, readdirSync, rmSync, unlinkSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { machine, median, procCpu, procMinorFaults, ROOT, startFileRig, writeRandomFile } from "./bench-util.ts";
import { startFloorRig } from "./floor-pipeline.ts";

const { values } = parseArgs({ options: { rounds: { type: "string", default: "4" }, per: { type: "string", default: "4" }, pauses: { type: "string", default: "0,50,100,150,200,400" } } });
const rounds = Number(values.rounds);
const per = Number(values.per);
const pauses = values.pauses!.split(",").map(Number);
if (!(rounds > 0 && per > 0 && pauses.every((p) => p >= 0))) {
  console.error("usage: bun scripts/bench-idle.ts [--rounds N] [--per N] [--pauses 0,50,100,...]");
  process.exit(2);
}
const MiB = 1024 * 1024;
const SIZE = 10 * MiB;
const WARM_UPS = 8;

const work = mkdtempSync(join(tmpdir(), "smts-bench-idle-"));
const src = join(work, "random-10MiB.bin");
const srcSha = writeRandomFile(src, SIZE);
const floorDir = join(work, "floor");
mkdirSync(floorDir);

type Run = { ms: number; cpu: number[]; faults: number[] };
interface Rig {
  once(): Promise<Run>;
  stop(): Promise<void>;
}

/** The floor pipeline, measured the way startFileRig measures smts. */
async function floorRig(): Promise<Rig> {
  const rig = await startFloorRig(floorDir);
  return {
    async once() {
      const c0 = rig.pids.map(procCpu);
      const f0 = rig.pids.map(procMinorFaults);
      const r = await rig.send(src, true);
      const c1 = rig.pids.map(procCpu);
      const f1 = rig.pids.map(procMinorFaults);
      if (r.sha256 !== srcSha) throw new Error(`floor pipeline: SHA-256 ${r.sha256} differs from the source's ${srcSha}`);
      for (const f of readdirSync(floorDir)) unlinkSync(join(floorDir, f));
      return { ms: r.ms, cpu: c1.map((c, i) => ((c.user + c.sys - c0[i]!.user - c0[i]!.sys) * 1000) / (SIZE / MiB)), faults: f1.map((f, i) => (f - f0[i]!) / (SIZE / MiB)) };
    },
    stop: () => rig.stop(),
  };
}

const results = new Map<string, Run[]>();
const rigs: Record<string, Rig> = {};
try {
  rigs.smts = await startFileRig({ root: ROOT, tag: "smts", downloads: join(work, "dl"), src, srcSha });
  rigs.floor = await floorRig();
  await Bun.sleep(1500); // the DH workers finish their start-up
  for (let i = 0; i < WARM_UPS; i++) for (const rig of Object.values(rigs)) await rig.once();
  for (let round = 0; round < rounds; round++) {
    for (const pause of pauses) {
      for (const name of round % 2 ? ["floor", "smts"] : ["smts", "floor"]) {
        const runs = results.get(`${name} ${pause}`) ?? [];
        results.set(`${name} ${pause}`, runs);
        await rigs[name]!.once(); // from whatever came before, to a known state: just busy
        for (let i = 0; i < per; i++) {
          await Bun.sleep(pause);
          runs.push(await rigs[name]!.once());
        }
      }
    }
  }
} finally {
  for (const rig of Object.values(rigs)) await rig.stop();
  rmSync(work, { recursive: true, force: true });
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;
const each = (runs: Run[], key: "cpu" | "faults", digits: number) => [0, 1, 2].map((j) => mean(runs.map((r) => r[key][j]!)).toFixed(digits)).join(" / ");
console.log(`${machine()}; 10 MiB transfers, ${rounds} rounds × ${per} per pause and rig, after ${WARM_UPS} warm-ups each`);
console.log("| pause | smts median | floor median | smts / floor | smts faults per MiB (sender / relay / receiver) | floor faults per MiB | smts CPU ms per MiB | floor CPU ms per MiB |");
console.log("|---|---|---|---|---|---|---|---|");
for (const pause of pauses) {
  const s = results.get(`smts ${pause}`)!;
  const f = results.get(`floor ${pause}`)!;
  const sm = median(s.map((r) => r.ms));
  const fm = median(f.map((r) => r.ms));
  console.log(`| ${pause} ms | ${sm.toFixed(1)} ms | ${fm.toFixed(1)} ms | ${(fm / sm).toFixed(2)} | ${each(s, "faults", 0)} | ${each(f, "faults", 0)} | ${each(s, "cpu", 2)} | ${each(f, "cpu", 2)} |`);
}
