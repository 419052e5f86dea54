#!/usr/bin/env bun
// Start-up benchmark (issue 6): wall time of `smts --help` (and `--version`)
// for the compiled binary of this machine, built exactly as scripts/release.ts
// builds it, against `bun cmd/smts.ts --help` from source. Each process is
// started RUNS times, interleaved round-robin so that background load hits
// every command alike; the report gives the median and the spread.
//
// Usage: bun scripts/bench-startup.ts [--runs N] [--binary PATH] [--no-write]
//   --binary: measure an existing binary instead of building one
//   --no-write: print the section instead of writing docs/BENCHMARKS.md
import { mkdirSync, mkdtempSync, rmSync, statSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { machine, percentile, recordTargets, ROOT, utcMinute, writeSection } from "./bench-util.ts";
import { buildBinary, checkRuns, hostTarget } from "./release.ts";

const args = process.argv.slice(2);
const opt = (name: string) => {
  const i = args.indexOf(name);
  return i >= 0 ? args[i + 1] : undefined;
};
const RUNS = Number(opt("--runs") ?? 30);
const TARGET_MS = 50;

let binary = opt("--binary");
let dir: string | null = null;
let buildNote = `built by \`buildBinary()\` from scripts/release.ts (${hostTarget()?.name ?? "host"})`;
if (!binary) {
  dir = mkdtempSync(join(tmpdir(), "smts-bench-startup-"));
  binary = join(dir, "smts");
  const r = await buildBinary(binary, null);
  if (!r.ok) throw new Error(`build failed:\n${r.log}`);
  if (!r.bytecode) buildNote += ", **without bytecode** (bytecode failed)";
} else buildNote = `\`${binary}\``;
const problem = checkRuns(binary);
if (problem) throw new Error(`the binary does not run: ${problem}`);

// For comparison, the start-up cmd/smts.ts had before issue 6: both
// subcommands (and through them the relay, the chat client and msgpackr)
// imported up front. An entry in .bench/ (git-ignored) imports them, then runs
// cmd/smts.ts, and is built the same way.
const eagerDir = join(ROOT, ".bench");
const eagerEntry = join(eagerDir, `startup-eager-${process.pid}.ts`);
mkdirSync(eagerDir, { recursive: true });
writeFileSync(eagerEntry, `import "../cmd/chat.ts";\nimport "../cmd/relay.ts";\nimport "../lib/relay/protocol.ts";\nawait import("../cmd/smts.ts");\n`);
const eagerBinary = join(dir ?? mkdtempSync(join(tmpdir(), "smts-bench-startup-")), "smts-eager");
const eagerBuild = await buildBinary(eagerBinary, null, eagerEntry);
if (!eagerBuild.ok) throw new Error(`eager build failed:\n${eagerBuild.log}`);
// The floor: an executable built the same way from an empty module.
const emptyEntry = join(eagerDir, `startup-empty-${process.pid}.ts`);
writeFileSync(emptyEntry, "export {};\n");
const emptyBinary = `${eagerBinary}-empty`;
const emptyBuild = await buildBinary(emptyBinary, null, emptyEntry);
if (!emptyBuild.ok) throw new Error(`empty build failed:\n${emptyBuild.log}`);

const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/", NO_COLOR: "1" };
const commands: { label: string; argv: string[] }[] = [
  { label: "compiled binary: `smts --help`", argv: [binary, "--help"] },
  { label: "compiled binary: `smts --version`", argv: [binary, "--version"] },
  { label: "from source: `bun cmd/smts.ts --help`", argv: [process.execPath, join(ROOT, "cmd/smts.ts"), "--help"] },
  { label: "before issue 6 (all subcommands imported up front), compiled: `--help`", argv: [eagerBinary, "--help"] },
  { label: "before issue 6, from source: `--help`", argv: [process.execPath, eagerEntry, "--help"] },
  { label: "floor: an executable built the same way from an empty module", argv: [emptyBinary] },
];

function once(argv: string[]): number {
  const t0 = performance.now();
  const r = Bun.spawnSync(argv, { stdout: "ignore", stderr: "ignore", env, cwd: tmpdir() });
  const ms = performance.now() - t0;
  if (r.exitCode !== 0) throw new Error(`${argv.join(" ")} exited ${r.exitCode}`);
  return ms;
}

for (const c of commands) for (let i = 0; i < 3; i++) once(c.argv); // warm the page cache
const times = commands.map(() => [] as number[]);
for (let i = 0; i < RUNS; i++) commands.forEach((c, k) => times[k]!.push(once(c.argv)));
if (dir) rmSync(dir, { recursive: true, force: true });
for (const f of [eagerEntry, eagerBinary, emptyEntry, emptyBinary]) rmSync(f, { force: true });

const fmt = (n: number) => n.toFixed(1);
const rows = commands.map((c, k) => {
  const s = [...times[k]!].sort((a, b) => a - b);
  return { label: c.label, median: percentile(s, 50), min: s[0]!, p90: percentile(s, 90), max: s[s.length - 1]! };
});
const help = rows[0]!;
const section = [
  `Measured ${utcMinute()} by \`bun scripts/bench-startup.ts\` on ${machine()}. ` +
    `Binary: ${buildNote}${dir ? "" : ` (${statSync(binary).size.toLocaleString("en-US")} B)`}; options \`--compile --minify --bytecode --format=esm --splitting\`.`,
  "",
  `Wall time from spawn to exit, ${RUNS} runs of each, interleaved; stdout and stderr discarded.`,
  "",
  "| command | median | min | p90 | max |",
  "|---|---|---|---|---|",
  ...rows.map((r) => `| ${r.label} | **${fmt(r.median)} ms** | ${fmt(r.min)} ms | ${fmt(r.p90)} ms | ${fmt(r.max)} ms |`),
  "",
  `Target: \`smts --help\` ≤ ${TARGET_MS} ms median — **${help.median <= TARGET_MS ? "met" : "NOT met"}** (${fmt(help.median)} ms).`,
  "",
  "How start-up is kept short:",
  "- `--bytecode --format=esm`: the binary carries precompiled bytecode, so nothing is parsed at start (about half the start-up of a plain `--compile` build, notes §6). Without `--format=esm` bytecode silently fails, so scripts/release.ts always passes both and runs the result.",
  "- cmd/smts.ts imports only the subcommand being run (`import()` inside it), and `--splitting` makes each of those a separate chunk inside the executable. `smts --help` loads citty and the command descriptions only: not the relay, the chat client, msgpackr, or the DH worker (which only `smts chat` starts, after its arguments are checked). `smts --version` also loads the relay protocol module (and with it msgpackr) for the protocol version.",
  "- The binary does not look for `.env` or `bunfig.toml` in the working directory (`--no-compile-autoload-*`), which is also a security fix (see scripts/release.ts).",
].join("\n");

if (args.includes("--no-write")) console.log(section);
else {
  writeSection("Start-up (issue 6)", section);
  const fromSource = rows.find((r) => r.label.includes("from source"));
  recordTargets("bench-startup", "bun scripts/bench-startup.ts", [
    { id: "help", what: "`smts --help` of the compiled binary (linux-x64), median of " + RUNS, measured: `**${fmt(help.median)} ms**`, reference: fromSource ? `\`bun cmd/smts.ts --help\` from source: ${fmt(fromSource.median)} ms` : "–", ratio: "–", target: `≤ ${TARGET_MS} ms`, met: help.median <= TARGET_MS },
  ]);
  console.log(section);
}
