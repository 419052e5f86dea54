// Runs the fuzzers of tests/fuzz-lib.ts for longer, by hand:
//   bun scripts/fuzz.ts [--seconds 60] [--seed N] [--only relay|client] [--record]
// Time is split between the relay and client fuzzers; each runs in rounds of
// at most 10 s with seeds seed, seed+1, ... so a failure names a seed that
// reproduces it: `bun scripts/fuzz.ts --seconds 10 --seed <that seed> --only <fuzzer>`.
// --record puts the totals in the summary of docs/BENCHMARKS.md (scripts/bench.ts uses it).
import { clientFuzz, relayFuzz, type FuzzResult } from "../tests/fuzz-lib.ts";
import { recordTargets } from "./bench-util.ts";

function arg(name: string): string | undefined {
  const i = process.argv.indexOf(`--${name}`);
  return i >= 0 ? process.argv[i + 1] : undefined;
}
const seconds = Number(arg("seconds") ?? 60);
const seed0 = Number(arg("seed") ?? Math.floor(Math.random() * 2 ** 31));
const only = arg("only");
if (!(seconds > 0) || !Number.isInteger(seed0)) {
  console.error("usage: bun scripts/fuzz.ts [--seconds N] [--seed N] [--only relay|client]");
  process.exit(2);
}
const fuzzers = [
  { name: "relay", run: relayFuzz, unit: "frames" },
  { name: "client", run: clientFuzz, unit: "bodies" },
].filter((f) => !only || f.name === only);
console.log(`fuzzing for ${seconds} s, starting seed ${seed0}`);
let failed = false;
const totals: string[] = [];
for (const fz of fuzzers) {
  const budget = (seconds * 1000) / fuzzers.length;
  const end = performance.now() + budget;
  let total = 0;
  let ms = 0;
  let seed = seed0;
  while (performance.now() < end - 500) {
    const slice = Math.min(10_000, end - performance.now());
    let res: FuzzResult;
    try {
      res = await fz.run({ seed, ms: slice });
    } catch (err) {
      console.error(`FAIL ${fz.name} fuzz, seed ${seed}: ${(err as Error).stack ?? err}`);
      console.error(`reproduce: bun scripts/fuzz.ts --seconds ${Math.ceil(slice / 1000) * (only ? 1 : 2)} --seed ${seed} --only ${fz.name}`);
      failed = true;
      break;
    }
    total += res.iterations;
    ms += res.ms;
    console.log(`${fz.name} seed ${seed}: ${res.iterations.toLocaleString("en")} ${fz.unit} in ${res.batches} batches, ${Math.round(res.ms)} ms`);
    for (const n of res.notes) console.log(`  ${n}`);
    seed++;
  }
  console.log(`${fz.name} fuzz total: ${total.toLocaleString("en")} ${fz.unit}, ${Math.round((total / ms) * 1000).toLocaleString("en")}/s`);
  totals.push(`${total.toLocaleString("en")} ${fz.name === "relay" ? "relay frames" : "client E2E/file bodies"}`);
}
if (process.argv.includes("--record")) {
  recordTargets("fuzz", `bun scripts/fuzz.ts --seconds ${seconds} --seed ${seed0}${only ? ` --only ${only}` : ""}`, [
    { id: "fuzz", what: `seeded fuzzing for ${seconds} s (tests/fuzz-lib.ts)`, measured: `${totals.join(", ")}; ${failed ? "**a failure** (see the run's output)" : "no crash, no hang, every offender closed with an error, honest clients unaffected"}`, reference: "–", ratio: "–", target: "no crash or leak (issue 7)", met: !failed },
  ]);
}
process.exit(failed ? 1 : 0);
