// Smoke test of the compiled executable (issue 6): the binary, not the
// TypeScript sources, is what users run. Builds this machine's binary exactly
// as scripts/release.ts builds release binaries (same function, same options),
// then runs a relay and two scripted chat clients from it and exchanges a
// message and a file. A broken --compile build can still exit 0 (bytecode
// without --format=esm, a worker left out of the executable), so only running
// it proves anything.
import { afterAll, beforeAll, expect, test } from "bun:test";
import type { Subprocess } from "bun";
import { createHash, randomBytes } from "node:crypto";
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { chatCommand } from "../cmd/chat.ts";
import { relayCommand } from "../cmd/relay.ts";
import { binaryContains, buildBinary, checkRuns, ROOT, runnerFor, TARGETS, VERSION_LINE } from "../scripts/release.ts";
import { waitFor } from "./helpers.ts";

const SECRET = "binary smoke test secret, 32+ chars";
let dir: string;
let bin: string;
const running: Subprocess[] = [];

beforeAll(async () => {
  dir = mkdtempSync(join(tmpdir(), "smts-binary-"));
  bin = join(dir, process.platform === "win32" ? "smts.exe" : "smts");
  const r = await buildBinary(bin, null);
  if (!r.ok) throw new Error(`bun build --compile failed:\n${r.log}`);
  expect(r.bytecode).toBe(true);
}, 120_000);

afterAll(() => {
  for (const p of running) p.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

// No NO_COLOR here: piped output must be plain by itself (cmd/plain-output.ts), and these tests check it.
const baseEnv = () => ({ PATH: process.env.PATH ?? "", HOME: dir });

function run(args: string[], opts: { cwd?: string; env?: Record<string, string> } = {}) {
  const r = Bun.spawnSync([bin, ...args], { cwd: opts.cwd ?? dir, env: { ...baseEnv(), ...opts.env }, stdout: "pipe", stderr: "pipe" });
  return { code: r.exitCode, out: r.stdout.toString(), err: r.stderr.toString() };
}

/** A process from the binary (or from `exe`, a command prefix and binary) whose stdout/stderr are collected as they arrive. */
function spawn(args: string[], opts: { cwd?: string; stdin?: "pipe" | "ignore"; exe?: string[] } = {}) {
  const proc = Bun.spawn([...(opts.exe ?? [bin]), ...args], {
    cwd: opts.cwd ?? dir,
    env: { ...baseEnv(), SMTS_SECRET: SECRET },
    stdin: opts.stdin ?? "ignore",
    stdout: "pipe",
    stderr: "pipe",
  });
  running.push(proc);
  const out = { text: "", err: "" };
  (async () => {
    for await (const c of proc.stdout) out.text += new TextDecoder().decode(c);
  })();
  (async () => {
    for await (const c of proc.stderr) out.err += new TextDecoder().decode(c);
  })();
  const events = () =>
    out.text
      .split("\n")
      .filter((l) => l.startsWith("{"))
      .map((l) => JSON.parse(l) as Record<string, unknown>);
  return { proc, out, events };
}

test("--version prints the package and protocol version; --help lists both commands", () => {
  const v = run(["--version"]);
  expect(v).toMatchObject({ code: 0, out: `${VERSION_LINE}\n` });
  expect(VERSION_LINE).toMatch(/^smts \d+\.\d+\.\d+\S* \(protocol \d+\)$/);

  const h = run(["--help"]);
  expect(h.code).toBe(0);
  // cmd/smts.ts keeps its own copy of each description so --help needs no subcommand code.
  expect(h.out).toContain(String(relayCommand.meta && "description" in relayCommand.meta ? relayCommand.meta.description : "?"));
  expect(h.out).toContain(String(chatCommand.meta && "description" in chatCommand.meta ? chatCommand.meta.description : "?"));

  const r = run(["relay", "--help"]);
  expect(r.code).toBe(0);
  expect(r.out).toContain("--secret-file");
  const bad = run(["relay", "--prot", "1"]);
  expect(bad.code).toBe(2);
  expect(bad.err).toContain("unknown option --prot");
  expect(bad.err).toContain("USAGE smts relay [OPTIONS]");
  // Usage errors found at the top level (cmd/smts.ts loads cmd/usage.ts only for them) and by citty.
  const none = run([]);
  expect(none.code).toBe(2);
  expect(none.err).toEndWith("\nsmts: no command given\n");
  const missing = run(["chat"]);
  expect(missing.code).toBe(2);
  expect(missing.err).toContain("USAGE smts chat [OPTIONS] <RELAY>");
  for (const text of [h.out, r.out, bad.err, none.err, missing.err]) expect(text).not.toContain("\x1b["); // piped: no colour codes
});

test("carries no path of the build machine (nothing is loaded from the build checkout)", async () => {
  // e.g. msgpackr-extract's __dirname, from which it would load a native .node file
  expect(await binaryContains(bin, ROOT.replace(/\/$/, ""))).toBe(false);
});

test("ignores .env and bunfig.toml in the working directory", () => {
  const cwd = join(dir, "hostile-cwd");
  mkdirSync(cwd);
  // A bunfig.toml preload would run arbitrary code inside smts; a .env would supply a secret.
  writeFileSync(join(cwd, "bunfig.toml"), 'preload = ["./preload.js"]\n');
  writeFileSync(join(cwd, "preload.js"), `require("fs").writeFileSync(${JSON.stringify(join(cwd, "PRELOADED"))}, "x");\n`);
  writeFileSync(join(cwd, ".env"), "SMTS_SECRET=from-dotenv-file-0123456789\n");
  const v = run(["--version"], { cwd });
  expect(v.code).toBe(0);
  expect(existsSync(join(cwd, "PRELOADED"))).toBe(false);
  const r = run(["relay", "--host", "127.0.0.1", "--port", "0"], { cwd });
  expect(r.code).toBe(1);
  expect(r.err).toContain("no join secret");
  expect(existsSync(join(cwd, "PRELOADED"))).toBe(false);
});

test("relay + two chat clients from the binary: message and file, with SHA-256", async () => {
  // The relay, on an ephemeral port it reports on stderr.
  const relay = spawn(["relay", "--host", "127.0.0.1", "--port", "0"]);
  const port = Number((await waitFor(() => /listening on [^\s]+:(\d+)/.exec(relay.out.err), `relay start (stderr: ${relay.out.err})`, 15_000))[1]);
  expect(port).toBeGreaterThan(0);
  const addr = `127.0.0.1:${port}`;
  if (process.platform === "linux") {
    // It started again with the allocator setting (lib/runtime/allocator.ts), as the same process, with the same arguments.
    const procFile = (name: string) => readFileSync(`/proc/${relay.proc.pid}/${name}`, "utf8").split("\0");
    expect(procFile("environ")).toContain("MIMALLOC_PURGE_HOLES=0");
    expect(procFile("cmdline").slice(0, -1)).toEqual([bin, "relay", "--host", "127.0.0.1", "--port", "0"]);
  }

  // The receiver keeps stdin open until we are done.
  const inbox = join(dir, "inbox");
  mkdirSync(inbox);
  const bob = spawn(["chat", addr, "--json", "--download-dir", inbox], { stdin: "pipe" });
  const ready = await waitFor(() => bob.events().find((e) => e.event === "ready"), "receiver ready", 15_000);
  const bobId = String(ready.id);

  // The sender pipes its commands and ends its input; it exits once the file is delivered.
  const outbox = join(dir, "outbox");
  mkdirSync(outbox);
  const payload = randomBytes(300_000 + 123); // two 128 KiB chunks and a partial one
  writeFileSync(join(outbox, "payload.bin"), payload);
  const sha256 = createHash("sha256").update(payload).digest("hex");
  const text = "hello from the compiled binary ✓";
  const alice = spawn(["chat", addr, "--json", "--timeout", "20"], { cwd: outbox, stdin: "pipe" });
  const aliceStdin = alice.proc.stdin as import("bun").FileSink;
  aliceStdin.write(`/connect ${bobId}\n/msg ${bobId} ${text}\n/send ${bobId} payload.bin\n`);
  await aliceStdin.end();
  const aliceCode = await Promise.race([alice.proc.exited, Bun.sleep(45_000).then(() => "timeout")]);
  expect({ code: aliceCode, stderr: alice.out.err }).toMatchObject({ code: 0 });
  const aliceEvents = alice.events();
  expect(aliceEvents.find((e) => e.event === "session")).toMatchObject({ peer: bobId, state: "established" });
  expect(aliceEvents.find((e) => e.event === "delivered")).toMatchObject({ to: bobId, name: "payload.bin", size: payload.length, sha256 });

  // The receiver got the text and the file, saved under its name, byte for byte.
  const msg = await waitFor(() => bob.events().find((e) => e.event === "message"), "message event", 10_000);
  expect(msg).toMatchObject({ text, broadcast: false });
  const file = await waitFor(() => bob.events().find((e) => e.event === "file"), "file event", 10_000);
  expect(file).toMatchObject({ name: "payload.bin", size: payload.length, sha256, path: join(inbox, "payload.bin") });
  const saved = readFileSync(join(inbox, "payload.bin"));
  expect(saved.equals(payload)).toBe(true);
  expect(createHash("sha256").update(saved).digest("hex")).toBe(sha256);
  // Both sides saw the same session fingerprint.
  expect(bob.events().find((e) => e.event === "session")?.fingerprint).toBe(aliceEvents.find((e) => e.event === "session")?.fingerprint);

  // End of the receiver's input: it exits 0; the relay stops cleanly on SIGTERM.
  const bobStdin = bob.proc.stdin as import("bun").FileSink;
  await bobStdin.end();
  expect(await Promise.race([bob.proc.exited, Bun.sleep(15_000).then(() => "timeout")])).toBe(0);
  relay.proc.kill("SIGTERM");
  expect(await Promise.race([relay.proc.exited, Bun.sleep(15_000).then(() => "timeout")])).toBe(0);
}, 90_000);

// The other Linux architecture's binary, where this machine can run it under
// qemu user-mode emulation (scripts/release.ts runnerFor; .ci/run installs
// qemu-user-static and the cross C library when it runs as root).
const other = TARGETS.find((t) => t.os === "linux" && t.libc === "glibc" && t.arch !== (process.arch === "arm64" ? "arm64" : "x64"))!;
const emulated = process.platform === "linux" ? runnerFor(other) : null;
if (!emulated) console.warn(`SKIP ${other.name} binary test: no qemu user-mode emulator and ${other.arch} C library here`);

test.skipIf(!emulated)(`the ${other.name} binary, emulated: --version, --help, then relay and receiving client for this machine's binary (message and file, SHA-256)`, async () => {
  const cross = join(dir, `smts-${other.name}`);
  const built = await buildBinary(cross, other);
  if (!built.ok) throw new Error(`bun build --compile for ${other.name} failed:\n${built.log}`);
  expect(built.bytecode).toBe(true);
  expect(checkRuns(cross, emulated!)).toBeNull();
  const exe = [...emulated!, cross];

  const relay = spawn(["relay", "--host", "127.0.0.1", "--port", "0"], { exe });
  const port = Number((await waitFor(() => /listening on [^\s]+:(\d+)/.exec(relay.out.err), `relay start (stderr: ${relay.out.err})`, 30_000))[1]);
  const addr = `127.0.0.1:${port}`;
  const inbox = join(dir, "cross-inbox");
  mkdirSync(inbox);
  const bob = spawn(["chat", addr, "--json", "--download-dir", inbox], { exe, stdin: "pipe" });
  const bobId = String((await waitFor(() => bob.events().find((e) => e.event === "ready"), "emulated receiver ready", 30_000)).id);

  const payload = randomBytes(200_000);
  writeFileSync(join(dir, "cross.bin"), payload);
  const sha256 = createHash("sha256").update(payload).digest("hex");
  const alice = spawn(["chat", addr, "--json", "--timeout", "60"], { stdin: "pipe" });
  const aliceStdin = alice.proc.stdin as import("bun").FileSink;
  aliceStdin.write(`/connect ${bobId}\n/msg ${bobId} across architectures\n/send ${bobId} ${join(dir, "cross.bin")}\n`);
  await aliceStdin.end();
  expect(await Promise.race([alice.proc.exited, Bun.sleep(90_000).then(() => "timeout")])).toBe(0);
  expect(alice.events().find((e) => e.event === "delivered")).toMatchObject({ to: bobId, size: payload.length, sha256 });
  expect(await waitFor(() => bob.events().find((e) => e.event === "message"), "message event", 15_000)).toMatchObject({ text: "across architectures" });
  expect(await waitFor(() => bob.events().find((e) => e.event === "file"), "file event", 15_000)).toMatchObject({ size: payload.length, sha256 });
  expect(readFileSync(join(inbox, "cross.bin")).equals(payload)).toBe(true);
  expect(bob.events().find((e) => e.event === "session")?.fingerprint).toBe(alice.events().find((e) => e.event === "session")?.fingerprint);

  await (bob.proc.stdin as import("bun").FileSink).end();
  expect(await Promise.race([bob.proc.exited, Bun.sleep(30_000).then(() => "timeout")])).toBe(0);
  relay.proc.kill("SIGTERM");
  expect(await Promise.race([relay.proc.exited, Bun.sleep(30_000).then(() => "timeout")])).toBe(0);
}, 240_000);
