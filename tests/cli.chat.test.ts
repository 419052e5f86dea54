// `smts chat` as real processes in scripted --json mode against a real relay
// process: join failures, a full session with messages, waiting for a session
// the peer starts, and exit codes.
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { closeSync, openSync } from "node:fs";
import { tmpdir } from "node:os";
import { killChats, spawnChat, type ChatProcessOptions } from "./chat-process.ts";
import { ROOT, rssOf, SECRET_TEXT, spawnRelay, waitFor, type RelayProcess } from "./helpers.ts";

let relay: RelayProcess;
beforeAll(async () => {
  relay = await spawnRelay([], { SMTS_SECRET: SECRET_TEXT });
});
afterAll(() => relay.proc.kill());
afterEach(killChats);

const chat = (args: string[] = [], opts: ChatProcessOptions = {}) => spawnChat(relay.port, args, { timeoutMs: 10_000, ...opts });

test("a wrong secret and an unreachable relay exit non-zero with one clear line", async () => {
  const wrong = await chat([], { env: { SMTS_SECRET: "definitely not the secret" }, mayExit: true });
  expect(await wrong.exited()).toBe(1);
  expect(wrong.stderr().trim().split("\n")).toEqual([expect.stringContaining("wrong join secret")]);

  const r = Bun.spawnSync([process.execPath, `${ROOT}cmd/smts.ts`, "chat", "127.0.0.1:1", "--json"], { env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT }, stdin: "ignore" });
  expect(r.exitCode).toBe(1);
  expect(r.stderr.toString()).toContain("cannot reach relay 127.0.0.1:1: connection refused"); // not Bun's "Failed to connect" (found in audit)

  const usage = Bun.spawnSync([process.execPath, `${ROOT}cmd/smts.ts`, "chat", "host:notaport"], { env: { PATH: process.env.PATH ?? "" }, stdin: "ignore" });
  expect(usage.exitCode).toBe(2);
  expect(usage.stderr.toString()).toContain("invalid port");
});

test("scripted: /connect, /msg both ways, same fingerprint on both sides, exit 0 at end of input", async () => {
  const a = await chat();
  const b = await chat();
  a.send(`/connect ${b.id}`);
  a.send(`/msg ${b.id} hello from a`);
  a.send(`/msg ${b.id} second, with "quotes" and ünïcödé`);
  const sa = await a.event((e) => e.event === "session" && e.state === "established", "session on a");
  const sb = await b.event((e) => e.event === "session" && e.state === "established", "session on b");
  expect(sa.fingerprint).toBe(sb.fingerprint);
  expect(sa.fingerprint).toMatch(/^[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}$/);
  await waitFor(() => b.events.filter((e) => e.event === "message").length === 2, "two messages at b");
  expect(b.events.filter((e) => e.event === "message")).toEqual([
    { event: "message", from: a.id, text: "hello from a", broadcast: false, verified: false },
    { event: "message", from: a.id, text: 'second, with "quotes" and ünïcödé', broadcast: false, verified: false },
  ]);
  b.send(`/msg ${a.id} reply from b`);
  expect(await a.event((e) => e.event === "message", "reply at a")).toEqual({ event: "message", from: b.id, text: "reply from b", broadcast: false, verified: false });
  a.send("/list");
  const list = await a.event((e) => e.event === "list", "list");
  expect(list.peers).toContainEqual({ id: b.id, online: true, session: "established", fingerprint: sa.fingerprint, verified: false });
  a.send(`/verify ${b.id} ${sa.fingerprint}`); // the fingerprint compared: taken only if it is still the session's
  a.send(`/fingerprint ${b.id}`);
  a.send("/list");
  await waitFor(() => a.events.filter((e) => e.event === "list").length === 2, "second list");
  expect(a.events.filter((e) => e.event === "verified" || e.event === "fingerprint")).toEqual([
    { event: "verified", peer: b.id, fingerprint: sa.fingerprint },
    { event: "fingerprint", peer: b.id, fingerprint: expect.stringMatching(new RegExp(`^${String(sa.fingerprint).replace(/-/g, " ")}( [0-9a-f]{4}){13}$`)) },
  ]);
  expect((a.events.filter((e) => e.event === "list")[1]!.peers as { verified: boolean }[])[0]!.verified).toBe(true);
  a.end();
  expect(await a.exited()).toBe(0);
  // b sees a leave and erases the session.
  await b.event((e) => e.event === "session" && e.state === "closed", "session closed at b");
  await b.event((e) => e.event === "peer" && e.online === false, "peer offline at b");
  b.end();
  expect(await b.exited()).toBe(0);
});

test("scripted: /msg waits for a session the peer starts", async () => {
  const a = await chat();
  const b = await chat();
  a.send(`/msg ${b.id} sent once b connected`); // no session yet: waits
  await Bun.sleep(200);
  b.send(`/connect ${a.id}`);
  expect((await b.event((e) => e.event === "message", "message at b")).text).toBe("sent once b connected");
  a.end();
  b.end();
  expect(await a.exited()).toBe(0);
  expect(await b.exited()).toBe(0);
});

test("scripted: a failed command makes the exit code non-zero; typos are one error line", async () => {
  const a = await chat(["--timeout", "1"]);
  a.send("/frobnicate");
  a.send("/"); // regression (found in audit): crashed the client
  a.send("/verify zzzzzzzz not-a-fingerprint");
  a.send("/msg zzzzzzzz nobody is there");
  a.end();
  expect(await a.exited()).toBe(1);
  const errors = a.events.filter((e) => e.event === "error");
  expect(errors[0]).toMatchObject({ code: "usage", message: expect.stringContaining("unknown command /frobnicate") });
  expect(errors[1]).toMatchObject({ code: "usage", message: "a command needs a name after the / (try /help)" });
  expect(errors[2]).toMatchObject({ code: "usage", message: 'not a fingerprint: "not-a-fingerprint" (as /list or /fingerprint shows it)' });
  expect(errors[3]).toMatchObject({ code: "unknown_peer", peer: "zzzzzzzz", message: "zzzzzzzz is not online" });
  expect(a.stderr()).not.toContain("    at "); // no stack traces
});

// Regression (found in audit): a script pinning a fingerprint cannot branch, so
// after its `/verify ID FINGERPRINT` failed (a man in the middle) its next /msg
// still went out, to the man in the middle.
test("scripted: after a /verify whose fingerprint does not match, /msg and /send to that peer fail (unverified) and send nothing", async () => {
  const a = await chat();
  const b = await chat(["--download-dir", tmpdir()]); // should the file get through after all, not into the checkout

  a.send(`/connect ${b.id}`);
  a.send(`/verify ${b.id} 0000-0000-0000`);
  a.send(`/msg ${b.id} the deploy key is 0xC0FFEE`);
  a.send(`/send ${b.id} ${ROOT}package.json`);
  a.end();
  expect(await a.exited()).toBe(1);
  const errors = a.events.filter((e) => e.event === "error").map((e) => e.code);
  expect(errors).toEqual(["fingerprint_mismatch", "unverified", "unverified"]);
  await Bun.sleep(200);
  expect(b.events.filter((e) => e.event === "message" || e.event === "transfer")).toEqual([]);
  b.end();
  expect(await b.exited()).toBe(0);
});

// Regression (found in review): a scripted /verify before the session existed
// failed with no_session and pinned nothing; the /msg after it waited and went to
// whoever connected.
test("scripted: a /verify with a fingerprint before there is a session waits for it, and checks it: a mismatch, and /msg sends nothing", async () => {
  const a = await chat(["--timeout", "10"]);
  const b = await chat(["--download-dir", tmpdir()]);
  a.send(`/verify ${b.id} 0000-0000-0000`); // the fingerprint the script was given: the session will not have it
  a.send(`/msg ${b.id} the deploy key is 0xC0FFEE`);
  await Bun.sleep(300);
  b.send(`/connect ${a.id}`);
  await waitFor(() => a.events.filter((e) => e.event === "error").length === 2, "two errors at a");
  expect(a.events.filter((e) => e.event === "error").map((e) => e.code)).toEqual(["fingerprint_mismatch", "unverified"]);
  expect(a.events.find((e) => e.event === "session")).toMatchObject({ state: "established", verified: false, blocked: true });
  a.end();
  expect(await a.exited()).toBe(1);
  await Bun.sleep(200);
  expect(b.events.filter((e) => e.event === "message")).toEqual([]);
  b.end();
  expect(await b.exited()).toBe(0);
});

// Regression (found in audit): each /msg to a peer that never connects waited the
// whole --timeout again (four commands, two minutes).
test("scripted: once a wait for a session with a peer ran out, later /msg and /send to it fail at once; a session with it clears that", async () => {
  const b = await chat(); // online, and not connecting (yet)
  const a = await chat(["--timeout", "1"]);
  a.send(`/msg ${b.id} one`);
  a.send(`/msg ${b.id} two`);
  a.send(`/send ${b.id} ${ROOT}package.json`);
  await waitFor(() => a.events.filter((e) => e.event === "error").length === 3, "three errors at a");
  expect(a.events.filter((e) => e.event === "error").map((e) => [e.code, e.message])).toEqual([
    ["timeout", `no session with ${b.id} after 1 s`],
    ["timeout", `no session with ${b.id}: none came during the earlier wait either`],
    ["timeout", `no session with ${b.id}: none came during the earlier wait either`],
  ]);
  b.send(`/connect ${a.id}`);
  await a.event((e) => e.event === "session" && e.state === "established", "session at a");
  a.send(`/msg ${b.id} three`);
  expect((await b.event((e) => e.event === "message", "message at b")).text).toBe("three");
  a.end();
  b.end();
  expect(await a.exited()).toBe(1); // the first three failed
  expect(await b.exited()).toBe(0);
});

// Regression (found in audit): a /msg or /send to a peer that had left, or to an
// ID the relay does not know, waited the whole --timeout, holding up every later command.
test("scripted, with a long --timeout: /msg and /send to a peer that left, or to an ID nobody has, fail at once; the next command runs", async () => {
  const b = await chat();
  const a = await chat(["--timeout", "3600"]);
  a.send("/list"); // ready comes after the relay's first list: b is in it
  const first = await a.event((e) => e.event === "list", "a's first list");
  expect(first.peers).toContainEqual(expect.objectContaining({ id: b.id, online: true }));
  b.end();
  expect(await b.exited()).toBe(0);
  await a.event((e) => e.event === "peer" && e.id === b.id && e.online === false, "b gone at a");
  a.send(`/msg ${b.id} too late`);
  a.send(`/send ${b.id} ${import.meta.path}`);
  a.send("/msg zzzzzzzz nobody has this ID");
  a.send(`/msg ${a.id} myself`);
  a.send("/list");
  a.end();
  expect(await a.exited()).toBe(1);
  expect(a.events.filter((e) => e.event === "error").map((e) => [e.code, e.message])).toEqual([
    ["peer_left", `${b.id} left`],
    ["peer_left", `${b.id} left`],
    ["unknown_peer", "zzzzzzzz is not online"],
    ["bad_peer", "that is your own ID"],
  ]);
  expect(a.events.filter((e) => e.event === "list")).toHaveLength(2);
});

// Regressions (found in audit): a last line "...\r" without "\n" kept its "\r";
// a 20 MB line was held whole (290 MB of memory).
test("scripted input: a line over 1 MiB is dropped with one usage error; a last line without a newline loses its \\r like the others", async () => {
  const b = await chat();
  const a = await chat();
  a.send(`/connect ${b.id}`);
  a.send(`/msg ${b.id} ${"x".repeat(2 * 1024 * 1024)}`); // in pieces, as a pipe delivers it
  a.send("/list");
  a.proc.stdin.write(`/msg ${b.id} last\r`);
  a.end();
  expect(await a.exited()).toBe(1);
  expect(a.events.filter((e) => e.event === "error")).toEqual([{ event: "error", code: "usage", message: "a line of more than 1048576 characters: ignored" }]);
  expect(a.events.filter((e) => e.event === "list")).toHaveLength(1);
  expect(await b.event((e) => e.event === "message", "the last line at b")).toEqual({ event: "message", from: a.id, text: "last", broadcast: false, verified: false });
  b.end();
  expect(await b.exited()).toBe(0);
});

test("scripted input that cannot be read (a directory as stdin) is one clear line and exit 1, not an internal error", () => {
  const dir = openSync(tmpdir(), "r");
  try {
    const r = Bun.spawnSync([process.execPath, `${ROOT}cmd/smts.ts`, "chat", `127.0.0.1:${relay.port}`, "--json"], { env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT }, stdin: dir });
    expect(r.exitCode).toBe(1);
    expect(r.stderr.toString()).toBe("smts: cannot read commands from stdin: EISDIR\n");
    expect(r.stdout.toString().trim().split("\n").map((l) => JSON.parse(l).event)).toEqual(["ready"]);
  } finally {
    closeSync(dir);
  }
});

// stdout's reader going away ends the client (exit 141, in transfer.cli.test.ts);
// stderr's only loses the failure lines.
test("with stderr's reader gone, a failure line is dropped and the client goes on with the next command", async () => {
  const a = await chat();
  await a.closeStderr();
  a.send("/frobnicate");
  a.send("/list");
  a.end();
  expect(await a.exited()).toBe(1);
  expect(a.events.map((e) => e.event)).toEqual(["ready", "error", "list"]);
});

// Regression test (cmd/chat.ts): without --json, a failed scripted command's
// line went to stdout and stderr stayed empty, though the exit code table
// promises one line on stderr.
test("regression: scripted without --json, a failed command's line is on stderr (exit 1); stdout keeps the ordinary lines", async () => {
  const proc = Bun.spawn([process.execPath, `${ROOT}cmd/smts.ts`, "chat", `127.0.0.1:${relay.port}`], {
    stdin: new TextEncoder().encode("/bogus\n/list\n"),
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT },
  });
  const [code, stdout, stderr] = await Promise.all([proc.exited, new Response(proc.stdout).text(), new Response(proc.stderr).text()]);
  expect(code).toBe(1);
  expect(stderr).toBe("! unknown command /bogus (try /help)\n");
  expect(stdout).toStartWith("Your ID: ");
  expect(stdout).not.toContain("unknown command");
  expect(stdout).toContain("no other peers online"); // /list still answered after the failure
});

// Regression test (lib/ui/execute.ts, lib/client/chat-client.ts): /msg and
// /send to one's own ID waited the whole --timeout and then said `timeout`;
// an offline ID gave a `session failed` plus two `unknown_peer` errors.
test("regression: /msg, /send and /connect to one's own ID fail at once (bad_peer); /connect to an offline ID is one error (and its session failed event)", async () => {
  const a = await chat(["--timeout", "1"]);
  a.send(`/msg ${a.id} hi`);
  a.send(`/send ${a.id} ${ROOT}package.json`);
  a.send(`/connect ${a.id}`);
  a.send("/connect 00000000");
  a.end();
  expect(await a.exited()).toBe(1);
  const own = { event: "error", code: "bad_peer", message: "that is your own ID" };
  expect(a.events.filter((e) => e.event === "error")).toEqual([own, own, own, { event: "error", code: "unknown_peer", message: "00000000 is not online", peer: "00000000" }]);
  expect(a.events.filter((e) => e.event === "session")).toEqual([{ event: "session", peer: "00000000", state: "failed", reason: "00000000 is not online" }]);
  expect(a.stderr().trim().split("\n")).toEqual([...Array(3).fill("! that is your own ID"), "! 00000000 is not online"]);
});

// Regression test (lib/client/chat-client.ts): a --timeout beyond setTimeout's
// limit (2^31-1 ms) overflowed to 1 ms, so scripted waits failed at once.
test("regression: --timeout 3000000 (beyond the longest timer) still waits for the session", async () => {
  const a = await chat(["--timeout", "3000000"]);
  const b = await chat();
  a.send(`/msg ${b.id} waited for`); // no session yet: waits
  b.send(`/connect ${a.id}`);
  const outcome = await waitFor(() => b.events.find((e) => e.event === "message") ?? a.events.find((e) => e.event === "error"), "the message at b, or an error at a");
  expect(outcome).toMatchObject({ event: "message", text: "waited for" });
  a.end();
  b.end();
  expect(await a.exited()).toBe(0);
  expect(a.events.filter((e) => e.event === "error")).toEqual([]);
  expect(a.stderr()).toBe(""); // no TimeoutOverflowWarning
  expect(await b.exited()).toBe(0);
});

// Regression test (cmd/chat.ts): scripted input was read with Bun's readline,
// which also ends a line at U+2028, U+2029 and a lone "\r" (Node's ends it at
// "\r" too): the rest of a /msg text ran as a command.
test("regression: scripted input lines end at \\n only: U+2028, U+2029 or a lone \\r in a /msg text does not start a command", async () => {
  const a = await chat();
  const b = await chat();
  const text = "one\u2028/list\u2029/bmsg to all\r/connect zzzzzzzz";
  a.send(`/connect ${b.id}`);
  a.send(`/msg ${b.id} ${text}`);
  a.send(`/msg ${b.id} windows line end\r`);
  a.send(`/msg ${b.id}    indented code\t \u2028`); // exactly as written after the one space (found in audit: it was trimmed)
  a.send(`/bmsg   to all \t`);
  a.end();
  expect(await a.exited()).toBe(0);
  await waitFor(() => b.events.filter((e) => e.event === "message").length === 4, "four messages at b");
  expect(b.events.filter((e) => e.event === "message").map((e) => e.text)).toEqual([text, "windows line end", "   indented code\t \u2028", "  to all \t"]);
  expect(a.events.map((e) => e.event)).not.toContain("list");
  b.end();
  expect(await b.exited()).toBe(0);
});

// With the terminal's fix (lib/ui/format.ts, tests/cli.interactive.test.ts): the
// JSON output stays exact, and escapes what would act on a terminal showing it.
test("--json keeps a peer's text exact but writes bidi controls, line separators and C1 controls as \\u escapes", async () => {
  const a = await chat();
  const b = await chat();
  const text = "hi \u202Eevil\u2066x\u2069 \u2028next\u2029 \u0085 \u200F.";
  a.send(`/connect ${b.id}`);
  a.send(`/msg ${b.id} ${text}`);
  expect((await b.event((e) => e.event === "message", "message at b")).text).toBe(text);
  const line = b.lines.find((l) => l.includes('"message"'))!;
  expect(line).toContain("\\u202eevil\\u2066x\\u2069 \\u2028next\\u2029 \\u0085 \\u200f.");
  expect(line).not.toMatch(/[\u0085\u200f\u2028\u2029\u202e\u2066\u2069]/);
  a.end();
  b.end();
  expect(await a.exited()).toBe(0);
  expect(await b.exited()).toBe(0);
});

// Regression: Bun keeps whatever a pipe's reader has not taken, without limit, so
// a --json client whose reader stalled took in a peer's messages as fast as they
// came and grew by all of them (64 MiB of messages: 64 MiB more).
test("regression: a --json client whose stdout reader stalls stops taking messages in (its memory stays bounded, the sender stops reading its input), and loses none once the reader reads again", async () => {
  const own = await spawnRelay(["--slow-timeout", "120"], { SMTS_SECRET: SECRET_TEXT }); // no slow-consumer cut meanwhile
  try {
    const at = (args: string[] = []) => spawnChat(own.port, args, { timeoutMs: 60_000 });
    const b = await at();
    const a = await at();
    a.send(`/connect ${b.id}`);
    await b.event((e) => e.event === "session" && e.state === "established", "session on b");
    const release = b.holdStdout();
    const before = rssOf(b.proc.pid);
    const COUNT = 16 * 1024;
    const text = (i: number) => `${i} ${"x".repeat(4000)}`; // 64 MiB in all
    let written = false;
    const writing = (async () => {
      for (let i = 0; i < COUNT; i++) {
        a.proc.stdin.write(`/msg ${b.id} ${text(i)}\n`);
        if (i % 256 === 255) await a.proc.stdin.flush();
      }
      await a.proc.stdin.flush();
      written = true;
    })();
    // Before: a read all of it at once and b buffered it; now a stops reading its input.
    let peak = before;
    const until = performance.now() + 5000;
    while (!written && performance.now() < until) {
      peak = Math.max(peak, rssOf(b.proc.pid));
      await Bun.sleep(50);
    }
    peak = Math.max(peak, rssOf(b.proc.pid));
    expect(peak - before).toBeLessThan(32 * 1024 * 1024);
    expect(written).toBe(false);
    release();
    await writing;
    a.end();
    await waitFor(() => b.events.filter((e) => e.event === "message").length === COUNT, "every message at b", 60_000);
    const texts = b.events.filter((e) => e.event === "message").map((e) => e.text);
    expect(texts.every((t, i) => t === text(i))).toBe(true);
    expect(await a.exited()).toBe(0);
    b.end();
    expect(await b.exited()).toBe(0);
  } finally {
    own.proc.kill();
  }
}, 120_000);
