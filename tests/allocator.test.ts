// lib/runtime/allocator.ts: `smts relay` and `smts chat` start again once,
// with the allocator setting in their environment, as the same process (PID),
// with the same arguments and the rest of the environment as given; a value
// the user set is kept. Read from /proc (Linux), of real processes.
import { afterEach, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
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
