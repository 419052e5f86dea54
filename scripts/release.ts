#!/usr/bin/env bun
// Release build (issue 6): one self-contained `smts` executable per platform,
// made with `bun build --compile`, in dist/, plus dist/SHA256SUMS.
//
//   npm run release                                  # every target
//   npm run release -- --only linux-x64,windows-x64  # some of them
//
// Cross targets need the Bun runtime for that platform; `bun build` fetches it
// from the npm registry on first use and caches it (~/.bun/install/cache).
//
// Options, and why (measured, ../shared/notes/bun-1.4-facts.md §6):
// - `--bytecode --format=esm` halves start-up. `--bytecode` without
//   `--format=esm` prints "Failed to generate bytecode" and still exits 0,
//   leaving a binary that dies at start, so both are always passed, the build
//   log is checked for that message, and a target whose bytecode fails is
//   rebuilt without bytecode (the summary says so).
// - `--splitting`: each `import()` in cmd/smts.ts becomes its own embedded
//   chunk, so `smts --help` loads neither the relay nor the chat code (with
//   the lazy imports, about 25 ms → 11 ms here: docs/BENCHMARKS.md,
//   "Start-up (issue 6)", `bun scripts/bench-startup.ts`).
// - The DH worker (lib/crypto/dh-worker.ts) is a second entry point: Bun does
//   not follow `new Worker(url)` by itself. In a compiled binary every
//   module's import.meta.url is the executable's entry, so lib/crypto/dh.ts
//   finds the worker by the name SMTS_DH_WORKER defined here.
// - `--no-compile-autoload-dotenv --no-compile-autoload-bunfig`: by default a
//   compiled binary reads `.env` and `bunfig.toml` from the directory it is
//   started in, and a bunfig.toml `preload` runs any script in the process
//   (checked: tests/binary.smoke.test.ts). smts reads its secret from
//   SMTS_SECRET or --secret-file only.
// - msgpackr's optional native string decoder (msgpackr-extract) is left out:
//   bundled, it looks for its `.node` file under this machine's absolute
//   node_modules path, baked into the binary. On a user's machine that path
//   normally does not exist; where it does (a build in /tmp, say), whoever can
//   write there could have smts load their native code. It is switched off at
//   build time, so no build-machine path is left in the binary and builds are
//   byte-identical from any checkout (the pure-JS decoder is what runs anyway).
// After building, the binary for this machine is run (`--version`, `--help`)
// because a broken build can still exit 0, and so is a Linux binary for the
// other architecture where qemu user-mode emulation is installed (runnerFor);
// every binary is checked to embed the worker under the expected name.
import { existsSync, mkdirSync, readdirSync, rmSync, statSync, writeFileSync } from "node:fs";
import { join, relative } from "node:path";
import pkg from "../package.json" with { type: "json" };
import { RELAY_PROTOCOL_VERSION } from "../lib/relay/protocol.ts";

export const ROOT = new URL("..", import.meta.url).pathname;
export const ENTRY = join(ROOT, "cmd/smts.ts");
export const WORKER = join(ROOT, "lib/crypto/dh-worker.ts");
/** The worker's name inside the executable: its path below --root, with .ts → .js. */
export const WORKER_NAME = relative(ROOT, WORKER).replace(/\.ts$/, ".js");
export const VERSION: string = pkg.version;
/** What `smts --version` must print. */
export const VERSION_LINE = `smts ${VERSION} (protocol ${RELAY_PROTOCOL_VERSION})`;

export interface Target {
  /** Used in the file name: smts-VERSION-NAME[.exe]. */
  name: string;
  /** Bun's --target. */
  bun: string;
  os: "linux" | "darwin" | "windows" | "android";
  arch: "x64" | "arm64";
  libc?: "glibc" | "musl";
}

export const TARGETS: Target[] = [
  { name: "linux-x64", bun: "bun-linux-x64", os: "linux", arch: "x64", libc: "glibc" },
  { name: "linux-arm64", bun: "bun-linux-arm64", os: "linux", arch: "arm64", libc: "glibc" },
  { name: "linux-x64-musl", bun: "bun-linux-x64-musl", os: "linux", arch: "x64", libc: "musl" },
  { name: "linux-arm64-musl", bun: "bun-linux-arm64-musl", os: "linux", arch: "arm64", libc: "musl" },
  { name: "darwin-x64", bun: "bun-darwin-x64", os: "darwin", arch: "x64" },
  { name: "darwin-arm64", bun: "bun-darwin-arm64", os: "darwin", arch: "arm64" },
  { name: "windows-x64", bun: "bun-windows-x64", os: "windows", arch: "x64" },
  { name: "android-arm64", bun: "bun-linux-arm64-android", os: "android", arch: "arm64" },
];

export const fileName = (t: Target) => `smts-${VERSION}-${t.name}${t.os === "windows" ? ".exe" : ""}`;

/** The target this machine runs, or null (then no built binary can be run here). */
export function hostTarget(): Target | null {
  const arch = process.arch === "x64" ? "x64" : process.arch === "arm64" ? "arm64" : null;
  if (!arch) return null;
  if (process.platform === "linux") {
    // The C library the running Bun uses. Not the presence of the musl loader: a glibc
    // system may have it too (Debian's `musl` package), and cannot run a musl build.
    const report = process.report?.getReport() as { header?: { glibcVersionRuntime?: string } } | undefined;
    const libc = report?.header?.glibcVersionRuntime ? "glibc" : "musl";
    return TARGETS.find((t) => t.os === "linux" && t.arch === arch && t.libc === libc) ?? null;
  }
  const os = process.platform === "win32" ? "windows" : process.platform;
  return TARGETS.find((t) => t.os === os && t.arch === arch) ?? null;
}

export interface BuildResult {
  ok: boolean;
  bytecode: boolean;
  /** bun build's output (and, on failure, why). */
  log: string;
  seconds: number;
}

async function runBuild(outfile: string, target: string | null, bytecode: boolean, entry: string): Promise<{ code: number; log: string }> {
  const cmd = [
    process.execPath,
    "build",
    "--compile",
    ...(target ? [`--target=${target}`] : []),
    "--minify",
    ...(bytecode ? ["--bytecode"] : []),
    "--format=esm",
    "--splitting",
    "--no-compile-autoload-dotenv",
    "--no-compile-autoload-bunfig",
    "--no-compile-autoload-tsconfig",
    "--no-compile-autoload-package-json",
    `--root=${ROOT}`,
    `--define=SMTS_DH_WORKER=${JSON.stringify(`./${WORKER_NAME}`)}`,
    `--define=process.env.MSGPACKR_NATIVE_ACCELERATION_DISABLED=${JSON.stringify("true")}`,
    "--external=msgpackr-extract",
    entry,
    WORKER,
    `--outfile=${outfile}`,
  ];
  // cwd: Bun writes a temporary file next to the output while compiling.
  const proc = Bun.spawn(cmd, { cwd: ROOT, stdout: "pipe", stderr: "pipe", env: { ...process.env, NO_COLOR: "1" } });
  const [out, err] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  return { code: await proc.exited, log: `${out}${err}` };
}

/** The embedded worker's path as the binary spells it (Windows uses a B:/~BUN/ root). */
const embeddedWorker = (os: Target["os"] | null) => `${os === "windows" ? "B:/~BUN/root/" : "/$bunfs/root/"}${WORKER_NAME}`;

export async function binaryContains(path: string, needle: string): Promise<boolean> {
  const want = Buffer.from(needle);
  let tail = Buffer.alloc(0);
  for await (const chunk of Bun.file(path).stream()) {
    const buf = Buffer.concat([tail, chunk]);
    if (buf.includes(want)) return true;
    tail = buf.subarray(Math.max(0, buf.length - want.length));
  }
  return false;
}

/**
 * Compiles cmd/smts.ts (+ the DH worker) into `outfile` for `target` (a
 * Target, or null for this machine with the running Bun). Tries with bytecode
 * first; falls back to a build without it if Bun says bytecode failed.
 * `entry` is for benchmarks only (an entry file below ROOT).
 */
export async function buildBinary(outfile: string, target: Target | null, entry = ENTRY): Promise<BuildResult> {
  const started = performance.now();
  let bytecode = true;
  let { code, log } = await runBuild(outfile, target?.bun ?? null, true, entry);
  if (code === 0 && /failed to generate bytecode/i.test(log)) {
    bytecode = false;
    ({ code, log } = await runBuild(outfile, target?.bun ?? null, false, entry));
    log = `bytecode failed, rebuilt without --bytecode\n${log}`;
  }
  let ok = code === 0 && existsSync(outfile);
  if (!ok) log = `bun build exited ${code}\n${log}`;
  else if (!(await binaryContains(outfile, embeddedWorker(target?.os ?? (process.platform === "win32" ? "windows" : null))))) {
    ok = false;
    log = `the DH worker is not embedded as ${WORKER_NAME}\n${log}`;
  }
  return { ok, bytecode, log, seconds: (performance.now() - started) / 1000 };
}

/**
 * How this machine can run a binary built for `t`: directly (`[]`) if it is this
 * machine's target; under qemu user-mode emulation if it is Linux/glibc for the
 * other architecture and qemu plus that architecture's C library are installed
 * (Debian: qemu-user-static, libc6-arm64-cross or libc6-amd64-cross); else null.
 */
export function runnerFor(t: Target): string[] | null {
  const host = hostTarget();
  if (host && t.name === host.name) return [];
  if (process.platform !== "linux" || t.os !== "linux" || t.libc !== "glibc" || t.arch === process.arch) return null;
  const arch = t.arch === "arm64" ? "aarch64" : "x86_64";
  const qemu = Bun.which(`qemu-${arch}-static`) ?? Bun.which(`qemu-${arch}`);
  const sysroot = `/usr/${arch}-linux-gnu`;
  return qemu && existsSync(`${sysroot}/lib`) ? [qemu, "-L", sysroot] : null;
}

/** Runs a built binary (through `runner`, see runnerFor): `--version` must print VERSION_LINE and `--help` list both commands. */
export function checkRuns(path: string, runner: string[] = []): string | null {
  const v = Bun.spawnSync([...runner, path, "--version"], { stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "", NO_COLOR: "1" } });
  const version = v.stdout.toString().trim();
  if (v.exitCode !== 0 || version !== VERSION_LINE) return `--version: exit ${v.exitCode}, printed ${JSON.stringify(version)} ${v.stderr.toString().trim()}`;
  const h = Bun.spawnSync([...runner, path, "--help"], { stdout: "pipe", stderr: "pipe", env: { PATH: process.env.PATH ?? "", NO_COLOR: "1" } });
  const help = h.stdout.toString();
  if (h.exitCode !== 0 || !/\brelay\b/.test(help) || !/\bchat\b/.test(help)) return `--help: exit ${h.exitCode}, printed ${JSON.stringify(help.slice(0, 200))} ${h.stderr.toString().trim()}`;
  return null;
}

/**
 * Checks the embedded code signature of a Mach-O binary the way macOS does
 * before running it: the CodeDirectory must cover every byte up to the
 * signature and each page's SHA-256 must match. Apple Silicon refuses to run
 * a binary that fails this (SIGKILL at exec); we cannot run macOS here, so this
 * is the check we can make. Returns null when valid, else what is wrong.
 */
export async function checkMachOSignature(path: string): Promise<string | null> {
  const d = new Uint8Array(await Bun.file(path).arrayBuffer());
  const le = new DataView(d.buffer, d.byteOffset, d.byteLength);
  if (le.getUint32(0, true) !== 0xfeedfacf) return "not a 64-bit Mach-O file";
  const ncmds = le.getUint32(16, true);
  let sigOff = -1;
  let sigSize = 0;
  for (let i = 0, off = 32; i < ncmds; i++) {
    if (le.getUint32(off, true) === 0x1d) (sigOff = le.getUint32(off + 8, true)), (sigSize = le.getUint32(off + 12, true));
    off += le.getUint32(off + 4, true);
  }
  if (sigOff < 0) return "not signed (no LC_CODE_SIGNATURE)";
  const be = new DataView(d.buffer, d.byteOffset + sigOff, sigSize);
  if (be.getUint32(0) !== 0xfade0cc0) return "signature is not a SuperBlob";
  for (let i = 0; i < be.getUint32(8); i++) {
    const blob = be.getUint32(12 + 8 * i + 4);
    if (be.getUint32(blob) !== 0xfade0c02) continue; // not a CodeDirectory
    const hashOffset = be.getUint32(blob + 16);
    const nCode = be.getUint32(blob + 28);
    const codeLimit = be.getUint32(blob + 32);
    const hashSize = be.getUint8(blob + 36);
    const hashType = be.getUint8(blob + 37);
    const page = 2 ** be.getUint8(blob + 39);
    if (hashType !== 2 || hashSize !== 32) return `CodeDirectory hash type ${hashType} not checked here`;
    if (codeLimit !== sigOff) return `signature covers ${codeLimit} bytes, but the code runs to ${sigOff}`;
    if (nCode !== Math.ceil(codeLimit / page)) return `${nCode} page hashes for ${Math.ceil(codeLimit / page)} pages`;
    let bad = 0;
    for (let p = 0; p < nCode; p++) {
      const got = new Bun.CryptoHasher("sha256").update(d.subarray(p * page, Math.min((p + 1) * page, codeLimit))).digest();
      const at = sigOff + blob + hashOffset + p * 32;
      if (!got.equals(d.subarray(at, at + 32))) bad++;
    }
    return bad ? `${bad} of ${nCode} page hashes do not match` : null;
  }
  return "no CodeDirectory in the signature";
}

export async function sha256File(path: string): Promise<string> {
  const hasher = new Bun.CryptoHasher("sha256");
  for await (const chunk of Bun.file(path).stream()) hasher.update(chunk);
  return hasher.digest("hex");
}

const mib = (n: number) => `${(n / 2 ** 20).toFixed(1)} MiB`;

async function main(): Promise<number> {
  const args = process.argv.slice(2);
  let only: string[] | null = null;
  let outdir = join(ROOT, "dist");
  for (let i = 0; i < args.length; i++) {
    const a = args[i]!;
    const value = () => (a.includes("=") ? a.slice(a.indexOf("=") + 1) : args[++i]);
    if (a === "--only" || a.startsWith("--only=")) only = (value() ?? "").split(",").filter(Boolean);
    else if (a === "--outdir" || a.startsWith("--outdir=")) outdir = value() ?? outdir;
    else {
      process.stderr.write(`usage: bun scripts/release.ts [--only ${TARGETS.map((t) => t.name).join(",")}] [--outdir DIR]\nunknown argument ${a}\n`);
      return 2;
    }
  }
  const unknown = (only ?? []).filter((n) => !TARGETS.some((t) => t.name === n));
  if (unknown.length) {
    process.stderr.write(`unknown target(s) ${unknown.join(", ")}; known: ${TARGETS.map((t) => t.name).join(", ")}\n`);
    return 2;
  }
  const targets = only ? TARGETS.filter((t) => only!.includes(t.name)) : TARGETS;
  mkdirSync(outdir, { recursive: true });
  process.stderr.write(`smts ${VERSION}: building ${targets.length} target(s) with Bun ${Bun.version} into ${outdir}\n`);

  const rows: string[] = [];
  let failures = 0;
  for (const t of targets) {
    const out = join(outdir, fileName(t));
    rmSync(out, { force: true });
    const r = await buildBinary(out, t);
    let note = r.bytecode ? "" : "without bytecode (bytecode failed)";
    const runner = runnerFor(t);
    if (r.ok && runner) {
      const problem = checkRuns(out, runner);
      if (problem) (r.ok = false), (r.log = `${problem}\n${r.log}`);
      else note = [note, `ran --version and --help here${runner.length ? ` under ${runner[0]!.split("/").pop()}` : ""}`].filter(Boolean).join("; ");
    } else if (r.ok) note = [note, "not run (not this machine's platform, and no emulator for it here)"].filter(Boolean).join("; ");
    if (r.ok && t.os === "darwin") {
      // Not fatal: the fix is the user's `codesign --force --sign -` (README, "Install").
      const problem = await checkMachOSignature(out);
      if (problem) process.stderr.write(`WARNING ${t.name}: code signature invalid (${problem}); macOS may kill it at start until re-signed\n`);
      note = [note, problem ? "**code signature invalid**: re-sign on the Mac" : "ad-hoc code signature valid"].join("; ");
    }
    if (!r.ok) {
      failures++;
      rmSync(out, { force: true });
      process.stderr.write(`FAILED ${t.name}:\n${r.log.trim()}\n`);
      rows.push(`| ${t.name} | – | – | FAILED |`);
      continue;
    }
    const size = statSync(out).size;
    process.stderr.write(`  ${fileName(t).padEnd(36)} ${mib(size).padStart(10)}  ${r.seconds.toFixed(1)} s${note ? `  (${note})` : ""}\n`);
    rows.push(`| ${t.name} | \`${fileName(t)}\` | ${size.toLocaleString("en-US")} B (${mib(size)}) | ${note || "ok"} |`);
  }

  // SHA256SUMS covers every binary of this version in outdir, in `sha256sum` format.
  const prefix = `smts-${VERSION}-`;
  const files = readdirSync(outdir).filter((f) => f.startsWith(prefix)).sort();
  const sums: string[] = [];
  for (const f of files) sums.push(`${await sha256File(join(outdir, f))}  ${f}`);
  writeFileSync(join(outdir, "SHA256SUMS"), sums.length ? `${sums.join("\n")}\n` : "");
  process.stderr.write(`\n| target | file | size | notes |\n|---|---|---|---|\n${rows.join("\n")}\n\nwrote ${join(outdir, "SHA256SUMS")} (${files.length} file(s))\n`);
  if (failures) process.stderr.write(`${failures} target(s) failed\n`);
  return failures ? 1 : 0;
}

if (import.meta.main) process.exit(await main());
