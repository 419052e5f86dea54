// Runs every benchmark, one after the other, and leaves docs/BENCHMARKS.md
// with a freshly measured summary table of the brief's targets at the top
// (each script writes its own section and its rows of that table).
//   bun scripts/bench.ts [--quick]        (also: npm run bench)
// --quick passes --quick on (shorter runs, rougher numbers; the 1 GiB and
// 10,000-client measurements shrink, so their targets are not tested).
// The machine is shared and has 2 cores: nothing else should run meanwhile.
import { codeVersion, ROOT, utcMinute, writeSummary } from "./bench-util.ts";

const quick = process.argv.includes("--quick");
const q = quick ? ["--quick"] : [];
const steps: string[][] = [
  ["bench-startup.ts", ...(quick ? ["--runs", "10"] : [])],
  ["bench-relay.ts", ...q],
  ["bench-chat.ts", ...q],
  ["bench-files.ts", ...q],
  ["bench-broadcast.ts", ...q],
  ["load.ts", ...q],
  ["load-e2e.ts", ...q],
  ["fuzz.ts", "--seconds", quick ? "10" : "60", "--seed", "1", "--record"],
];

const started = utcMinute();
const t0 = performance.now();
const failed: string[] = [];
for (const [script, ...args] of steps) {
  const line = `bun scripts/${script} ${args.join(" ")}`.trim();
  console.log(`\n=== ${line}`);
  const proc = Bun.spawn([process.execPath, `${ROOT}scripts/${script}`, ...args], { cwd: ROOT, stdio: ["ignore", "inherit", "inherit"] });
  if ((await proc.exited) !== 0) {
    failed.push(line);
    console.error(`=== FAILED (exit ${proc.exitCode}): ${line}`);
  }
}

const minutes = ((performance.now() - t0) / 60_000).toFixed(0);
writeSummary(
  `Complete run: \`bun scripts/bench.ts${quick ? " --quick" : ""}\` from ${started} to ${utcMinute()} (${minutes} min), code ${codeVersion()}; ` +
    (failed.length ? `**${failed.length} script(s) failed**, their rows below are from an earlier run: ${failed.map((f) => `\`${f}\``).join(", ")}.` : `all ${steps.length} scripts succeeded.`),
);
console.log(`\nsummary written to docs/BENCHMARKS.md${failed.length ? `; failed: ${failed.join("; ")}` : ""}`);
process.exit(failed.length ? 1 : 0);
