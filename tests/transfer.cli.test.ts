// `/send` through real `smts chat --json` processes and a real relay process:
// scripted transfers exit 0 once delivered, failed sends and bad
// --download-dir values exit 1 with one clear line, limits on both sides,
// and a sender killed mid-way leaves nothing behind at the receiver.
import { afterAll, afterEach, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { startDhEngine } from "../lib/crypto/dh.ts";
import type { Link } from "../lib/link/relay-link.ts";
import type { Frame } from "../lib/wire/frame.ts";
import { type ChatProcess, killChats, spawnChat } from "./chat-process.ts";
import { ROOT, SECRET_TEXT, sha256Hex, spawnRelay, tempDirs, tryMount, waitFor, writeTestFile, type RelayProcess } from "./helpers.ts";
import { startRawPeer } from "./raw-peer.ts";

setDefaultTimeout(90_000);
const LONG = 30_000;
const MiB = 1024 * 1024;

let relay: RelayProcess;
const temp = tempDirs("smts-cli-xfer-");
let mounts: string[] = [];
beforeAll(async () => {
  relay = await spawnRelay([], { SMTS_SECRET: SECRET_TEXT });
});
afterAll(() => relay.proc.kill());
afterEach(() => {
  killChats();
  for (const m of mounts) Bun.spawnSync(["umount", "-l", m]);
  temp.removeAll();
  mounts = [];
});


const env = { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT };

const chat = (cwd: string, args: string[] = [], port = relay.port) => spawnChat(port, args, { cwd, timeoutMs: LONG });

const ofKind = (c: ChatProcess, kind: string) => c.events.filter((e) => e.event === kind);

/** A random `large.bin` of `size` bytes under way from a to b (both limits 128 MiB); b saves into `dl`. */
async function largeTransfer(size: number, port = relay.port) {
  const cwd = temp.make();
  const dl = temp.make();
  const src = writeTestFile(cwd, "large.bin", size);
  const b = await chat(temp.make(), ["--download-dir", dl, "--max-file-size", "128MiB"], port);
  const a = await chat(cwd, ["--max-file-size", "128MiB"], port);
  a.send(`/connect ${b.id}`);
  a.send(`/send ${b.id} ${src.path}`);
  return { a, b, src, dl };
}

test("scripted: /connect, /send ID \"path with space\", end of input → the sender exits 0 after 'delivered'; the file is under --download-dir (relative to the working directory)", async () => {
  const home = temp.make();
  const aCwd = join(home, "a");
  const bCwd = join(home, "b");
  mkdirSync(aCwd);
  mkdirSync(join(bCwd, "incoming"), { recursive: true });
  const src = writeTestFile(aCwd, "my file.bin", 2 * MiB + 3);
  const a = await chat(aCwd);
  const b = await chat(bCwd, ["--download-dir", "incoming"]);
  a.send(`/connect ${b.id}`);
  a.send(`/send ${b.id} "${src.path}"`);
  a.end();
  expect(await a.exited()).toBe(0);
  const delivered = ofKind(a, "delivered");
  expect(delivered).toEqual([{ event: "delivered", to: b.id, id: expect.stringMatching(/^[0-9a-f]{8}$/), name: "my file.bin", size: src.size, sha256: src.sha256, verified: false }]);
  expect(ofKind(a, "error")).toEqual([]);
  const file = await b.event((e) => e.event === "file", "file at b");
  // The brief's contract fields, plus the transfer ID.
  expect(file).toEqual({ event: "file", from: a.id, id: delivered[0]!.id, name: "my file.bin", path: join(bCwd, "incoming", "my file.bin"), size: src.size, sha256: src.sha256, broadcast: false, verified: false });
  expect(Buffer.from(readFileSync(file.path as string)).equals(Buffer.from(src.bytes))).toBe(true);
  expect(readdirSync(join(bCwd, "incoming"))).toEqual(["my file.bin"]);
  expect(readdirSync(bCwd)).toEqual(["incoming"]); // nothing in b's working directory itself
  // --json progress: numeric, throttled, ending at the full size.
  const progress = ofKind(b, "progress");
  expect(progress.length).toBeGreaterThan(0);
  expect(progress.length).toBeLessThan(32); // 2 MiB is 33 chunks: not one event per chunk
  expect(progress.at(-1)).toMatchObject({ direction: "in", bytes: src.size, size: src.size });
  b.end();
  expect(await b.exited()).toBe(0);
});

test("scripted: /send of a missing file or a directory → error events, one line each on stderr, exit 1; nothing offered", async () => {
  const cwd = temp.make();
  const a = await chat(cwd);
  const b = await chat(temp.make(), ["--download-dir", temp.make()]);
  a.send(`/connect ${b.id}`);
  a.send(`/send ${b.id} ${join(cwd, "no-such-file.bin")}`);
  a.send(`/send ${b.id} ${cwd}`);
  a.send(`/msg ${b.id} after the failed sends`);
  a.end();
  expect(await a.exited()).toBe(1);
  const errors = ofKind(a, "error");
  expect(errors).toEqual([
    { event: "error", code: "unreadable", message: expect.stringContaining(`cannot read ${join(cwd, "no-such-file.bin")}: no such file`), peer: b.id },
    { event: "error", code: "not_a_file", message: expect.stringContaining(`${cwd} is not a regular file`), peer: b.id },
  ]);
  expect(a.stderr().trim().split("\n")).toEqual([expect.stringContaining("no-such-file.bin"), expect.stringContaining("not a regular file")]);
  await b.event((e) => e.event === "message", "message at b");
  expect(ofKind(b, "transfer")).toEqual([]);
  b.end();
  expect(await b.exited()).toBe(0);
});

test("a missing, non-directory or read-only --download-dir → exit 1 with one clear line, before joining", async () => {
  const cwd = temp.make();
  writeFileSync(join(cwd, "plain-file"), "x");
  const run = (dir: string) => Bun.spawnSync([process.execPath, `${ROOT}cmd/smts.ts`, "chat", `127.0.0.1:${relay.port}`, "--json", "--download-dir", dir], { cwd, env, stdin: "ignore" });
  const cases: [string, RegExp][] = [
    [join(cwd, "missing", "dir"), /ENOENT/],
    [join(cwd, "plain-file"), /not a directory/],
  ];
  const ro = join(cwd, "ro");
  mkdirSync(ro);
  const why = tryMount(mounts, ro, "ro,size=64k");
  if (why === null) cases.push([ro, /EROFS/]);
  else console.warn(`SKIPPED the read-only --download-dir case: cannot mount a read-only tmpfs (${why}); a chmod'ed directory cannot stand in, since root ignores permission bits`);
  for (const [dir, why] of cases) {
    const r = run(dir);
    expect(r.exitCode).toBe(1);
    expect(r.stdout.toString()).toBe(""); // no 'ready': it never joined
    const lines = r.stderr.toString().trim().split("\n");
    expect(lines).toEqual([expect.stringContaining(`--download-dir ${dir}`)]);
    expect(lines[0]).toMatch(why);
  }
});

test("limits: the sender's --max-file-size 1KiB refuses 1025 bytes (too_large, exit 1, nothing offered); a receiver with --max-file-size 1000 declines 5000 bytes (sender exits 1)", async () => {
  const cwd = temp.make();
  const src = writeTestFile(cwd, "k.bin", 1025);
  const b = await chat(temp.make(), ["--download-dir", temp.make(), "--max-file-size", "1000"]);
  const a = await chat(cwd, ["--max-file-size", "1KiB"]);
  a.send(`/connect ${b.id}`);
  a.send(`/send ${b.id} ${src.path}`);
  a.send(`/msg ${b.id} marker`);
  a.end();
  expect(await a.exited()).toBe(1);
  expect(ofKind(a, "error")).toEqual([expect.objectContaining({ code: "too_large", message: expect.stringContaining("is 1.0 KiB (1025 bytes), over the limit of 1.0 KiB (1024 bytes)") })]);
  await b.event((e) => e.event === "message", "marker at b");
  expect(ofKind(b, "transfer")).toEqual([]);

  const big = writeTestFile(cwd, "five.bin", 5000);
  const a2 = await chat(cwd);
  a2.send(`/connect ${b.id}`);
  a2.send(`/send ${b.id} ${big.path}`);
  a2.end();
  expect(await a2.exited()).toBe(1);
  expect(ofKind(a2, "transfer").find((e) => e.state === "declined")).toMatchObject({ direction: "out", name: "five.bin", size: 5000 });
  expect(ofKind(a2, "error")).toEqual([expect.objectContaining({ code: "declined", message: expect.stringContaining("the receiver accepts at most 1000") })]);
  expect(ofKind(b, "transfer")).toEqual([expect.objectContaining({ direction: "in", state: "declined", name: "five.bin", size: 5000 })]);
  b.end();
  expect(await b.exited()).toBe(0);
});

test("the sending process is killed (SIGKILL) mid-transfer: the receiver fails the transfer and leaves no file and no temporary file", async () => {
  const { a, b, src, dl } = await largeTransfer(96 * MiB);
  await b.event((e) => e.event === "progress" && (e.bytes as number) > 0 && (e.bytes as number) < src.size, "the file flowing into b");
  a.proc.kill("SIGKILL");
  const failed = await b.event((e) => e.event === "transfer" && e.state === "failed", "transfer failed at b");
  expect(failed).toMatchObject({ direction: "in", peer: a.id, name: "large.bin", reason: expect.stringContaining("left") });
  await waitFor(() => readdirSync(dl).length === 0, "temporary file removed", LONG);
  expect(ofKind(b, "file")).toEqual([]);
  b.end();
  expect(await b.exited()).toBe(0);
  expect(readdirSync(dl)).toEqual([]);
});

test("scripted /cancel FILE-ID at the receiver stops the transfer: the sender exits 1 (cancelled), nothing is saved; /cancel with nothing running is an error", async () => {
  const { a, b, dl } = await largeTransfer(96 * MiB);
  a.end();
  const receiving = await b.event((e) => e.event === "transfer" && e.state === "receiving", "transfer at b");
  await b.event((e) => e.event === "progress" && (e.bytes as number) > 0, "the file flowing into b");
  b.send(`/cancel ${receiving.id}`);
  await b.event((e) => e.event === "transfer" && e.state === "cancelled", "cancelled at b");
  expect(await a.exited()).toBe(1);
  expect(ofKind(a, "error")).toEqual([expect.objectContaining({ code: "cancelled", peer: b.id })]);
  expect(ofKind(a, "transfer").find((e) => e.state === "cancelled")).toMatchObject({ id: receiving.id, direction: "out" });
  await waitFor(() => readdirSync(dl).length === 0, "temporary file removed", LONG);
  b.send("/cancel");
  await b.event((e) => e.event === "error" && e.code === "no_transfer", "no_transfer error");
  b.end();
  expect(await b.exited()).toBe(1); // the failed /cancel counts
  expect(readdirSync(dl)).toEqual([]);
});

// Regression test for a fixed bug (cmd/chat.ts, scripted mode, end of input): brief §3 says "at end of input
// the client finishes queued sends and transfers, then exits". Only outgoing
// sends are waited for (`running`); an incoming transfer still arriving is
// cancelled by client.close(), and the sender then fails too. Fixed: before
// finish(), cmd/chat.ts also waits while client.activeTransfers() > 0 (each
// transfer ends by itself: completion, failure or the idle timeout).
test("regression: scripted receiver: end of input while a file is arriving → it finishes receiving it, then exits 0", async () => {
  const { a, b, src, dl } = await largeTransfer(64 * MiB);
  a.end();
  await b.event((e) => e.event === "progress" && (e.bytes as number) > 0 && (e.bytes as number) < src.size, "the file flowing into b");
  b.end();
  const bCode = await b.exited();
  expect(ofKind(b, "transfer").filter((e) => e.state === "cancelled")).toEqual([]);
  expect(ofKind(b, "file")).toEqual([expect.objectContaining({ name: "large.bin", sha256: src.sha256 })]);
  expect(bCode).toBe(0);
  expect(await a.exited()).toBe(0);
});

// Regression test (found in audit): after end of input the client waited for
// every transfer, including ones offered later, so any peer offering a file
// every minute kept a finished script running for good.
test("regression: scripted receiver: offers that arrive after end of input are declined (the receiver is leaving); the transfer under way completes and it exits 0", async () => {
  const dl = temp.make();
  const b = await chat(temp.make(), ["--download-dir", dl]);
  const dh = startDhEngine();
  const track: Link[] = [];
  try {
    const waitSession = (peer: string) => b.event((e) => e.event === "session" && e.peer === peer, "session").then(() => {});
    const m = await startRawPeer({ id: b.id, chat: { waitSession } }, { port: relay.port, dh, track });
    const accepted = [m.offer("first.bin", 5)]; // no chunk yet: b must wait for it
    expect((await accepted[0]!.answer()).t).toBe("accept");
    b.end();
    let answer: Frame;
    for (let i = 0; ; i++) {
      // Until b has read its end of input, offers are still accepted (and must be completed).
      const late = m.offer(`late-${i}.bin`, 5);
      answer = await late.answer();
      if (answer.t === "decline") break;
      accepted.push(late);
      await Bun.sleep(20);
    }
    expect(answer.reason).toBe("the receiver is leaving");
    for (const o of accepted) o.sendAll(new TextEncoder().encode("hello"));
    expect(await b.exited()).toBe(0);
    expect(ofKind(b, "file").length).toBe(accepted.length);
    expect(readdirSync(dl).sort()).toEqual(["first.bin", ...Array.from({ length: accepted.length - 1 }, (_, i) => `late-${i}.bin`)].sort());
  } finally {
    for (const l of track) l.close();
    dh.close();
  }
});

// Regression test (cmd/chat.ts): stdout had no 'error' handler, so once its
// reader exited (`smts chat --json | head -1`, `| grep -m1 ...`) every event
// printed an EPIPE stack trace on stderr and the client stayed online for good.
test("regression: the reader of stdout goes away mid-transfer (`| head -1`): the receiver exits 141 without a word, cancels the transfer (no temporary file left, the sender is told)", async () => {
  const { a, b, src, dl } = await largeTransfer(96 * MiB);
  await b.event((e) => e.event === "progress" && (e.bytes as number) > 0 && (e.bytes as number) < src.size, "the file flowing into b");
  await b.closeStdout(); // its stdin stays open, as with `tail -f commands | smts chat ...`
  expect(await b.exited()).toBe(141);
  expect(b.stderr()).toBe("");
  expect(readdirSync(dl)).toEqual([]);
  await a.event((e) => e.event === "transfer" && e.state === "cancelled", "transfer cancelled at a");
  a.end();
  expect(await a.exited()).toBe(1);
  expect(ofKind(a, "error")).toEqual([expect.objectContaining({ code: "cancelled", peer: b.id })]);
});

// Regression test (cmd/chat.ts installed no signal handlers): SIGTERM, SIGINT
// or SIGHUP left the receiver's `.smts-part` file behind, though only SIGKILL
// and power loss cannot clean up.
test("regression: SIGTERM, SIGINT or SIGHUP to a receiving client: the transfer is cancelled (no temporary file left, the sender is told), exit 143, 130, 129", async () => {
  for (const [signal, code] of [["SIGTERM", 143], ["SIGINT", 130], ["SIGHUP", 129]] as const) {
    const { a, b, src, dl } = await largeTransfer(64 * MiB);
    await b.event((e) => e.event === "progress" && (e.bytes as number) > 0 && (e.bytes as number) < src.size, "the file flowing into b");
    b.proc.kill(signal);
    expect([signal, await b.exited()]).toEqual([signal, code]);
    expect(readdirSync(dl)).toEqual([]);
    expect(ofKind(b, "transfer").at(-1)).toMatchObject({ direction: "in", state: "cancelled" });
    expect(b.stderr()).toBe("");
    await a.event((e) => e.event === "transfer" && e.state === "cancelled", "transfer cancelled at a");
    a.end();
    expect(await a.exited()).toBe(1);
  }
});

// Regression test (cmd/chat.ts): when the relay went away during a scripted
// --json /send, the client exited 1 before the failed /send was reported, and
// nothing was written on stderr (only `error` events were echoed there).
test("regression: the relay is killed during a scripted --json /send: the sender reports the failed /send (error event) and exits 1 with the reason on stderr", async () => {
  const own = await spawnRelay([], { SMTS_SECRET: SECRET_TEXT });
  try {
    const { a, b, src, dl } = await largeTransfer(96 * MiB, own.port);
    a.end();
    await a.event((e) => e.event === "progress" && (e.bytes as number) > 0 && (e.bytes as number) < src.size, "the file flowing out of a");
    own.proc.kill("SIGKILL");
    expect(await a.exited()).toBe(1);
    expect(ofKind(a, "error")).toEqual([expect.objectContaining({ code: "failed", peer: b.id, message: expect.stringContaining("disconnected from relay") })]);
    expect(ofKind(a, "disconnected")).toHaveLength(1);
    const lines = a.stderr().trim().split("\n");
    expect(lines).toEqual([expect.stringMatching(/^! disconnected from relay: /), expect.stringMatching(/^! sending large\.bin to .*disconnected from relay/)]);
    expect(await b.exited()).toBe(1);
    expect(b.stderr().trim().split("\n")).toEqual([expect.stringMatching(/^! disconnected from relay: /)]);
    expect(readdirSync(dl)).toEqual([]);
  } finally {
    own.proc.kill("SIGKILL");
  }
});

test("regression: a receiver that stops reading holds up only its own transfer: the sender's messages to a third client go through meanwhile, and the transfer completes once it reads again", async () => {
  // The relay would cut the stopped receiver only after 120 s: a sender paused by
  // the relay on its behalf (its queue full of our chunks) could not reach c before.
  const slowRelay = await spawnRelay(["--slow-timeout", "120"], { SMTS_SECRET: SECRET_TEXT });
  try {
    const { a, b, src, dl } = await largeTransfer(64 * MiB, slowRelay.port);
    const c = await chat(temp.make(), [], slowRelay.port);
    a.send(`/connect ${c.id}`);
    await a.event((e) => e.event === "session" && e.peer === c.id && e.state === "established", "a's session with c");
    await b.event((e) => e.event === "progress" && (e.bytes as number) > 0, "the file flowing into b");
    b.proc.kill("SIGSTOP");
    await Bun.sleep(1000); // whatever a sends towards b now piles up in the relay and the kernel
    a.send(`/msg ${c.id} still here`);
    try {
      expect(await c.event((e) => e.event === "message", "a's message at c")).toMatchObject({ from: a.id, text: "still here" });
    } finally {
      b.proc.kill("SIGCONT");
    }
    const saved = await b.event((e) => e.event === "file", "the file saved at b");
    expect(saved).toMatchObject({ name: "large.bin", size: src.size, sha256: src.sha256 });
    await a.event((e) => e.event === "delivered" && e.to === b.id, "delivered at a");
    expect(sha256Hex(readFileSync(join(dl, "large.bin")))).toBe(src.sha256);
  } finally {
    slowRelay.proc.kill();
  }
});
