// lib/runtime/allocator.ts: `smts relay` and `smts chat` start again once,
// with the allocator setting in their environment, as the same process (PID),
// with the same arguments and the environment they were started with; a
// value the user set is kept; a process given a descriptor beyond its
// standard streams runs on as it is. Read from /proc (Linux), of real processes.
import { afterEach, expect, test } from "bun:test";
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join, relative } from "node:path";
import { killChats, spawnChat } from "./chat-process.ts";
import { ROOT, SECRET_TEXT, spawnRelay, type RelayProcess } from "./helpers.ts";

const procFile = (pid: number, name: string) => readFileSync(`/proc/${pid}/${name}`, "utf8").split("\0").slice(0, -1);

const relays: RelayProcess[] = [];
afterEach(() => {
  for (const r of relays.splice(0)) r.proc.kill();
  killChats();
});

test("the relay runs with MIMALLOC_PURGE_HOLES=0, as the same process with the same arguments and environment", async () => {
  const relay = await spawnRelay(["--open"], { SMTS_TEST_MARK: "kept" });
  relays.push(relay);
  const pid = relay.proc.pid; // the PID Bun.spawn started: still the relay's, which is listening
  const env = procFile(pid, "environ");
  expect(env).toContain("MIMALLOC_PURGE_HOLES=0");
  expect(env).toContain("SMTS_TEST_MARK=kept");
  expect(procFile(pid, "cmdline")).toEqual([process.execPath, `${ROOT}cmd/smts.ts`, "relay", "--host", "127.0.0.1", "--port", "0", "--open"]);
});

test("a value the user set is kept", async () => {
  const relay = await spawnRelay(["--open"], { MIMALLOC_PURGE_HOLES: "1" });
  relays.push(relay);
  const env = procFile(relay.proc.pid, "environ");
  expect(env).toContain("MIMALLOC_PURGE_HOLES=1");
  expect(env).not.toContain("MIMALLOC_PURGE_HOLES=0");
});

test("the chat client too; Bun's own options before the script are kept", async () => {
  const relay = await spawnRelay([], { SMTS_SECRET: SECRET_TEXT });
  relays.push(relay);
  const chat = await spawnChat(relay.port);
  expect(chat.id).not.toBe("");
  expect(procFile(chat.proc.pid, "environ")).toContain("MIMALLOC_PURGE_HOLES=0");

  // A run with Bun options (as the ./smts wrapper passes them): they stay in front of the script.
  const proc = Bun.spawn([process.execPath, "--no-env-file", `${ROOT}cmd/smts.ts`, "chat", `127.0.0.1:${relay.port}`, "--json"], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT },
  });
  try {
    const reader = proc.stdout.getReader();
    const first = new TextDecoder().decode((await reader.read()).value);
    expect(first).toContain('"event":"ready"');
    expect(procFile(proc.pid, "cmdline")).toEqual([process.execPath, "--no-env-file", `${ROOT}cmd/smts.ts`, "chat", `127.0.0.1:${relay.port}`, "--json"]);
    expect(procFile(proc.pid, "environ")).toContain("MIMALLOC_PURGE_HOLES=0");
  } finally {
    proc.kill();
  }
});

// Regression (found in review): Bun closes every descriptor above 2 on execve, so
// `--secret-file <(...)` (here /dev/fd/3) lost its file and the relay exited 1.
test("a relay given a descriptor beyond its standard streams keeps it: not started again", async () => {
  const dir = mkdtempSync(join(tmpdir(), "smts-alloc-"));
  try {
    writeFileSync(join(dir, "secret"), SECRET_TEXT, { mode: 0o600 });
    const withFd3 = (argv: string[]) => ["sh", "-c", `exec ${argv.map((a) => `'${a}'`).join(" ")} 3<secret`];
    const relay = await spawnRelay(["--secret-file", "/dev/fd/3"], {}, { cwd: dir, wrap: withFd3 });
    relays.push(relay);
    expect(procFile(relay.proc.pid, "environ").some((e) => e.startsWith("MIMALLOC_PURGE_HOLES="))).toBe(false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// Regression (found in review): the restart passed on what Bun had added to process.env
// (a .env file's values, which then showed in /proc/PID/environ), and applied a relative
// --cwd a second time, from the directory it had already changed to (exit 1).
test("started again with the environment it was started with, not .env's values; a relative --cwd is applied once", async () => {
  const dir = mkdtempSync(join(tmpdir(), "smts-alloc-"));
  try {
    writeFileSync(join(dir, ".env"), "SMTS_FROM_DOTENV=read\n");
    const withCwd = ([bun, ...rest]: string[]) => [bun!, `--cwd=${relative(ROOT, dir)}`, ...rest];
    const relay = await spawnRelay(["--open"], {}, { cwd: ROOT, wrap: withCwd });
    relays.push(relay);
    const env = procFile(relay.proc.pid, "environ");
    expect(env).toContain("MIMALLOC_PURGE_HOLES=0");
    expect(env.some((e) => e.startsWith("SMTS_FROM_DOTENV="))).toBe(false);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
