// Fault injection (issue 7, item 3), with real processes, sockets and files:
// the relay SIGKILLed and restarted on its port during a chat and during a
// file transfer, the receiving client SIGKILLed mid-transfer, and a chat and
// a 10 MiB transfer over a network with latency and loss (network namespaces
// joined by a veth pair, tests/netem.ts; skipped, with the reason, where that
// is not permitted). The sender-killed case is in tests/transfer.cli.test.ts.
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import type { Subprocess } from "bun";
import { createHash, randomBytes } from "node:crypto";
import { closeSync, openSync, readdirSync, readFileSync, writeSync } from "node:fs";
import { join } from "node:path";
import { ROOT, SECRET_TEXT, tempDirs, waitFor } from "./helpers.ts";
import { impairedNetwork, type Counters } from "./netem.ts";

setDefaultTimeout(120_000);
const LONG = 30_000;
const MiB = 1024 * 1024;
const env = { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", SMTS_SECRET: SECRET_TEXT };
type Wrap = (argv: string[]) => string[];
const direct: Wrap = (argv) => argv;

let procs: Subprocess[] = []; // killed after each test
const kept: Subprocess[] = []; // shared by the tests of a describe: killed after all
const temp = tempDirs("smts-faults-");
afterEach(() => {
  for (const p of procs) if (p.exitCode === null && p.signalCode === null) p.kill("SIGKILL");
  temp.removeAll();
  procs = [];
});

/** A file of random bytes, written 1 MiB at a time (200 MiB never sits in memory). */
function makeFile(dir: string, name: string, size: number) {
  const path = join(dir, name);
  const hash = createHash("sha256");
  const fd = openSync(path, "w");
  for (let left = size; left > 0; ) {
    const block = randomBytes(Math.min(MiB, left));
    writeSync(fd, block);
    hash.update(block);
    left -= block.length;
  }
  closeSync(fd);
  return { path, size, sha256: hash.digest("hex") };
}
const sha256File = (path: string) => createHash("sha256").update(readFileSync(path)).digest("hex");

/** Collects a stream's text, line by line, into `lines`; resolves at its end. */
async function readLines(stream: ReadableStream<Uint8Array>, lines: string[]): Promise<void> {
  let buf = "";
  const dec = new TextDecoder();
  for await (const chunk of stream) {
    buf += dec.decode(chunk, { stream: true });
    let nl: number;
    while ((nl = buf.indexOf("\n")) >= 0) {
      lines.push(buf.slice(0, nl));
      buf = buf.slice(nl + 1);
    }
  }
  if (buf) lines.push(buf);
}

/** Waits for a process to exit, with a clear failure instead of the test timeout. */
async function exitCode(p: { proc: Subprocess; done: Promise<unknown> }, what: string): Promise<number> {
  const code = await Promise.race([p.proc.exited, Bun.sleep(LONG).then(() => null)]);
  if (code === null) throw new Error(`${what} did not exit within ${LONG / 1000} s`);
  await p.done; // all its output was read
  return code;
}

interface RelayProc {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  port: number;
  done: Promise<unknown>;
}

/** `smts relay` as a real process on a given port (0: any), once it listens. */
async function startRelay(opts: { host?: string; port?: number; wrap?: Wrap; keep?: boolean } = {}): Promise<RelayProc> {
  const argv = [process.execPath, `${ROOT}cmd/smts.ts`, "relay", "--host", opts.host ?? "127.0.0.1", "--port", String(opts.port ?? 0)];
  const proc = Bun.spawn((opts.wrap ?? direct)(argv), { stdin: "ignore", stdout: "pipe", stderr: "pipe", env });
  (opts.keep ? kept : procs).push(proc);
  const lines: string[] = [];
  const done = Promise.all([readLines(proc.stdout, lines), readLines(proc.stderr, lines)]);
  const port = await waitFor(() => Number(lines.map((l) => /listening on \S+:(\d+)/.exec(l)?.[1]).find(Boolean)) || (proc.exitCode !== null ? -1 : 0), "the relay to listen", LONG);
  if (port < 0) throw new Error(`relay exited: ${lines.join("\n")}`);
  return { proc, port, done };
}

type Ev = Record<string, unknown>;
interface Chat {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  id: string;
  /** stdout lines: NDJSON events with --json, else the human-readable lines. */
  lines: string[];
  events(): Ev[];
  of(kind: string): Ev[];
  stderr: string[];
  done: Promise<unknown>;
  send(line: string): void;
  end(): void;
  event(match: (e: Ev) => boolean, what: string, timeoutMs?: number): Promise<Ev>;
  line(re: RegExp, what: string): Promise<string>;
}

/** `smts chat` as a real process with commands on stdin (scripted mode), once it joined. */
async function startChat(relay: string, opts: { json?: boolean; args?: string[]; wrap?: Wrap } = {}): Promise<Chat> {
  const cwd = temp.make();
  const argv = [process.execPath, `${ROOT}cmd/smts.ts`, "chat", relay, ...(opts.json ? ["--json"] : []), ...(opts.args ?? [])];
  const proc = Bun.spawn((opts.wrap ?? direct)(argv), { cwd, stdin: "pipe", stdout: "pipe", stderr: "pipe", env });
  procs.push(proc);
  const lines: string[] = [];
  const stderr: string[] = [];
  const done = Promise.all([readLines(proc.stdout, lines), readLines(proc.stderr, stderr)]);
  const parsed: Ev[] = []; // parsed once: tests poll events() every few ms
  const events = () => {
    while (opts.json && parsed.length < lines.length) parsed.push(JSON.parse(lines[parsed.length]!) as Ev);
    return parsed;
  };
  const readyId = () => (opts.json ? events().find((e) => e.event === "ready")?.id : /^Your ID: (\w+)/.exec(lines[0] ?? "")?.[1]);
  const id = await waitFor(() => readyId() ?? (proc.exitCode !== null ? "" : null), "the chat client to join", LONG);
  if (!id) throw new Error(`chat exited before joining: ${stderr.join("\n")}`);
  return {
    proc,
    id: String(id),
    lines,
    events,
    of: (kind) => events().filter((e) => e.event === kind),
    stderr,
    done,
    send(line) {
      proc.stdin.write(`${line}\n`);
      proc.stdin.flush();
    },
    end: () => void proc.stdin.end(),
    event: (match, what, timeoutMs = LONG) => waitFor(() => events().find(match), what, timeoutMs),
    line: (re, what) => waitFor(() => lines.find((l) => re.test(l)), what, LONG),
  };
}

const midway = (size: number) => (e: Ev) => e.event === "progress" && (e.bytes as number) > 0 && (e.bytes as number) < size;
const partFiles = (dir: string) => readdirSync(dir).filter((n) => n.endsWith(".smts-part"));

/** A fresh pair on `relay`: a connects to b, a sends `src` to b; checks delivery and the bytes on disk. */
async function transferCompletes(relay: string, src: { path: string; size: number; sha256: string }, opts: { wrap?: Wrap; args?: string[] } = {}) {
  const dl = temp.make();
  const b = await startChat(relay, { json: true, wrap: opts.wrap, args: ["--download-dir", dl, ...(opts.args ?? [])] });
  const a = await startChat(relay, { json: true, wrap: opts.wrap, args: opts.args });
  a.send(`/connect ${b.id}`);
  await a.event((e) => e.event === "session" && e.state === "established", "session at a");
  const started = performance.now();
  a.send(`/send ${b.id} ${src.path}`);
  a.end();
  const delivered = await a.event((e) => e.event === "delivered", "delivered at a", 90_000);
  const seconds = (performance.now() - started) / 1000;
  expect(await exitCode(a, "the sender")).toBe(0);
  expect(delivered).toMatchObject({ to: b.id, size: src.size, sha256: src.sha256 });
  const file = await b.event((e) => e.event === "file", "file at b");
  expect(file).toMatchObject({ from: a.id, size: src.size, sha256: src.sha256, path: join(dl, file.name as string) });
  expect(sha256File(file.path as string)).toBe(src.sha256);
  expect(readdirSync(dl)).toEqual([file.name as string]);
  expect(a.of("error")).toEqual([]);
  expect(b.of("error")).toEqual([]);
  b.end();
  expect(await exitCode(b, "the receiver")).toBe(0);
  return seconds;
}

describe("relay killed (SIGKILL) and restarted on the same port", () => {
  test("during a chat: both clients report the disconnection (JSON event / a line) and exit 1; new clients join the restarted relay and talk", async () => {
    let relay = await startRelay();
    const port = relay.port;
    const a = await startChat(`127.0.0.1:${port}`, { json: true });
    const b = await startChat(`127.0.0.1:${port}`); // human-readable lines on stdout
    a.send(`/connect ${b.id}`);
    a.send(`/msg ${b.id} before the crash`);
    await b.line(new RegExp(`^\\[${a.id}\\] before the crash$`), "the message at b");
    b.send(`/msg ${a.id} reply before the crash`);
    await a.event((e) => e.event === "message" && e.text === "reply before the crash", "the reply at a");

    relay.proc.kill("SIGKILL");
    await relay.proc.exited;
    expect(relay.proc.signalCode).toBe("SIGKILL");
    // Both learn it on their own (stdin stays open: nothing told them to stop).
    expect(await exitCode(a, "client a")).toBe(1);
    expect(await exitCode(b, "client b")).toBe(1);
    expect(a.of("disconnected")).toEqual([{ event: "disconnected", code: "closed", message: "connection to relay closed" }]);
    // Its keys are gone with the relay: the session is reported closed.
    expect(a.of("session").at(-1)).toMatchObject({ peer: b.id, state: "closed", reason: expect.stringContaining("disconnected from relay") });
    expect(b.stderr).toEqual(["! disconnected from relay: connection to relay closed"]); // why it exits 1: one line on stderr

    relay = await startRelay({ port });
    expect(relay.port).toBe(port);
    const c = await startChat(`127.0.0.1:${port}`, { json: true });
    const d = await startChat(`127.0.0.1:${port}`, { json: true });
    c.send(`/connect ${d.id}`);
    c.send(`/msg ${d.id} after the restart`);
    await d.event((e) => e.event === "message" && e.from === c.id && e.text === "after the restart", "the message at d");
    d.send(`/msg ${c.id} reply after the restart`);
    await c.event((e) => e.event === "message" && e.from === d.id && e.text === "reply after the restart", "the reply at c");
    c.end();
    d.end();
    expect(await exitCode(c, "client c")).toBe(0);
    expect(await exitCode(d, "client d")).toBe(0);
    expect([...c.of("error"), ...d.of("error"), ...c.of("disconnected"), ...d.of("disconnected")]).toEqual([]);
  });

  // Regression (found in review): the relay's `shutdown` came out twice, as an
  // `error` and then as the reason of `disconnected` (two lines on stderr).
  test("a relay stopped with SIGTERM: each client reports it once (`disconnected`, code shutdown) and exits 1", async () => {
    const relay = await startRelay();
    const a = await startChat(`127.0.0.1:${relay.port}`, { json: true });
    const b = await startChat(`127.0.0.1:${relay.port}`);
    relay.proc.kill("SIGTERM");
    expect(await relay.proc.exited).toBe(0);
    expect(await exitCode(a, "client a")).toBe(1);
    expect(await exitCode(b, "client b")).toBe(1);
    expect(a.of("error")).toEqual([]);
    expect(a.of("disconnected")).toEqual([{ event: "disconnected", code: "shutdown", message: "relay is shutting down" }]);
    expect(b.stderr).toEqual(["! disconnected from relay: relay is shutting down"]);
  });

  test("during a 200 MiB transfer: both sides fail it, the receiver keeps no file and no temporary file; after the restart a transfer completes (SHA-256 checked)", async () => {
    let relay = await startRelay();
    const port = relay.port;
    const src = makeFile(temp.make(), "big.bin", 200 * MiB);
    const dl = temp.make();
    const limit = ["--max-file-size", "256MiB"];
    const b = await startChat(`127.0.0.1:${port}`, { json: true, args: ["--download-dir", dl, ...limit] });
    const a = await startChat(`127.0.0.1:${port}`, { json: true, args: limit });
    a.send(`/connect ${b.id}`);
    a.send(`/send ${b.id} ${src.path}`);
    await b.event(midway(src.size), "the file flowing into b");
    expect(partFiles(dl)).toHaveLength(1);
    // Freeze the receiver so the kill surely lands mid-way (it cannot finish
    // while stopped), kill the relay, then let the receiver find out.
    b.proc.kill("SIGSTOP");
    relay.proc.kill("SIGKILL");
    await relay.proc.exited;
    b.proc.kill("SIGCONT");

    expect(await exitCode(a, "the sender")).toBe(1);
    expect(await exitCode(b, "the receiver")).toBe(1);
    const failedOut = a.of("transfer").find((e) => e.state === "failed");
    expect(failedOut).toMatchObject({ direction: "out", peer: b.id, name: "big.bin", reason: expect.stringContaining("disconnected from relay") });
    const failedIn = b.of("transfer").find((e) => e.state === "failed");
    expect(failedIn).toMatchObject({ direction: "in", peer: a.id, name: "big.bin", reason: expect.stringContaining("disconnected from relay") });
    expect(a.of("disconnected")).toEqual([{ event: "disconnected", code: "closed", message: "connection to relay closed" }]);
    expect(b.of("disconnected")).toEqual([{ event: "disconnected", code: "closed", message: "connection to relay closed" }]);
    expect(a.of("delivered")).toEqual([]);
    expect(b.of("file")).toEqual([]);
    expect(readdirSync(dl)).toEqual([]); // neither big.bin nor a .smts-part file

    relay = await startRelay({ port });
    const small = makeFile(temp.make(), "after-restart.bin", 5 * MiB + 7);
    await transferCompletes(`127.0.0.1:${port}`, small);
  });
});

test("the receiving process is killed (SIGKILL) mid-transfer: the sender fails the transfer (peer left) and keeps working with a third client", async () => {
  const relay = await startRelay();
  const at = `127.0.0.1:${relay.port}`;
  const src = makeFile(temp.make(), "big.bin", 200 * MiB);
  const dl = temp.make();
  const limit = ["--max-file-size", "256MiB"];
  const b = await startChat(at, { json: true, args: ["--download-dir", dl, ...limit] });
  const c = await startChat(at, { json: true });
  const a = await startChat(at, { json: true, args: limit });
  a.send(`/connect ${b.id}`);
  a.send(`/connect ${c.id}`);
  a.send(`/send ${b.id} ${src.path}`);
  await b.event(midway(src.size), "the file flowing into b");
  b.proc.kill("SIGKILL");

  const failed = await a.event((e) => e.event === "transfer" && e.state === "failed", "the transfer failing at a");
  expect(failed).toMatchObject({ direction: "out", peer: b.id, name: "big.bin", reason: expect.stringContaining("left") });
  // The relay's `left` may come after the transfer failed on its unknown_peer (presence comes in batches, PROTOCOL §5.6).
  expect(await a.event((e) => e.event === "peer" && e.id === b.id && e.online === false, "b reported offline at a")).toEqual({ event: "peer", id: b.id, online: false });
  // Still usable: a message to the third client goes through the same relay connection.
  a.send(`/msg ${c.id} still here after ${b.id} vanished`);
  await c.event((e) => e.event === "message" && e.from === a.id && e.text === `still here after ${b.id} vanished`, "the message at c");
  a.end();
  expect(await exitCode(a, "the sender")).toBe(1); // scripted mode: the failed /send counts
  expect(a.of("delivered")).toEqual([]);
  expect(a.of("disconnected")).toEqual([]);
  // SIGKILL gave b no chance to clean up, but nothing appeared under the final name.
  expect(readdirSync(dl).filter((n) => !n.endsWith(".smts-part"))).toEqual([]);
  c.end();
  expect(await exitCode(c, "the third client")).toBe(0);
});

// Regression test for a fixed bug (lib/transfer/transfers.ts stream(), with lib/client/chat-client.ts
// onRelayFrame "error"): once the relay discards chunks for a receiver that
// left, the sender's socket never backs up, and stream() only yields with
// `await null` (a microtask): incoming frames, the relay's "left" among them,
// are not read until the whole file was read, encrypted and sent to nobody.
// The relay answers each discarded chunk with an `unknown_peer` error, and the
// client reports every one of them: thousands of error events / stderr lines
// for one failure. Fixed: stream() also yields to the event loop once per MiB,
// and an unknown_peer for a peer already known to be gone is not reported again.
test("regression: the receiving process is killed mid-transfer: the sender stops streaming the file and reports the failure once", async () => {
  const relay = await startRelay();
  const at = `127.0.0.1:${relay.port}`;
  const src = makeFile(temp.make(), "big.bin", 200 * MiB);
  const limit = ["--max-file-size", "256MiB"];
  const b = await startChat(at, { json: true, args: ["--download-dir", temp.make(), ...limit] });
  const a = await startChat(at, { json: true, args: limit });
  a.send(`/connect ${b.id}`);
  a.send(`/send ${b.id} ${src.path}`);
  a.end();
  await b.event(midway(src.size), "the file flowing into b");
  b.proc.kill("SIGKILL");
  expect(await exitCode(a, "the sender")).toBe(1);
  // b took at most a few MiB before it died; the relay buffers little more: a
  // sender that reached 100 % pushed the rest of the file to a peer that was gone.
  const sent = a.of("progress").filter((e) => e.direction === "out").at(-1)?.bytes as number;
  expect(sent).toBeLessThan(src.size);
  // One failure, one error: the send that failed (not one per chunk in flight).
  expect(a.of("error")).toEqual([{ event: "error", code: "failed", message: `sending big.bin to ${b.id}: ${b.id} left`, peer: b.id }]);
  expect(a.stderr).toEqual([`! sending big.bin to ${b.id}: ${b.id} left`]);
});

// The impaired network is set up once, at load, so that the tests can be
// marked skipped (not passed) when it is not permitted here.
const DELAY_MS = 50;
const LOSS = 0.01;
const net = await impairedNetwork({ delayMs: DELAY_MS, loss: LOSS });
const skipNet = "notPermitted" in net;
if (skipNet) console.warn(`SKIPPED the impaired-network tests: ${net.notPermitted}`);
afterAll(async () => {
  for (const p of kept) p.kill("SIGKILL");
  await Promise.all(kept.map((p) => p.exited));
  if (!skipNet) net.close(); // after its processes are gone, so the namespaces really go
});

describe("over a network with latency and loss (network namespaces, veth)", () => {
  const n = net as Exclude<typeof net, { notPermitted: string }>;
  let relay: RelayProc;
  let rtt = 0;
  beforeAll(async () => {
    if (skipNet) return;
    relay = await startRelay({ host: n.relayHost, port: 5555, wrap: n.inRelay, keep: true });
    rtt = await n.connectRtt(relay.port);
  });
  const relayAt = () => `${n.relayHost}:${relay.port}`;
  const report = (what: string, seconds: number, before: Counters) => {
    const after = n.counters();
    console.log(
      `impaired network [${n.mechanism}]: TCP connect RTT (median of 5) ${rtt.toFixed(1)} ms; ${what} in ${seconds.toFixed(2)} s; ` +
        `packets dropped ${after.dropped - before.dropped}, delayed ${after.delayed - before.delayed}, TCP segments retransmitted ${after.retransmitted - before.retransmitted}`,
    );
    return { dropped: after.dropped - before.dropped };
  };

  test.skipIf(skipNet)("the emulated link: the relay is reachable across it, and the round trip carries the added delay (where latency is emulated)", () => {
    expect(rtt).toBeGreaterThan(0); // the probe connected across the link
    // A check of the emulator, not of smts: the RTT cannot be below the added delay.
    if (n.delayed) expect(rtt).toBeGreaterThanOrEqual(2 * DELAY_MS * 0.95);
    else console.warn(`impaired network: NO latency emulated here, loss only; measured RTT ${rtt.toFixed(1)} ms`);
  });

  test.skipIf(skipNet)("a chat exchange: 200 messages of 1.5 kB each way, all delivered, in order, through real packet loss", async () => {
    const before = n.counters();
    const a = await startChat(relayAt(), { json: true, wrap: n.inClients });
    const b = await startChat(relayAt(), { json: true, wrap: n.inClients });
    const started = performance.now();
    // ~300 kB each way: some hundreds of packets on each hop, so that 1 % loss
    // surely hits some of them (checked below); short texts would fit in a few.
    const count = 200;
    const text = (dir: string, i: number) => `${dir} ${i} ${"x".repeat(1500)}`;
    a.send(`/connect ${b.id}`);
    for (let i = 0; i < count; i++) a.send(`/msg ${b.id} ${text("a-to-b", i)}`);
    for (let i = 0; i < count; i++) b.send(`/msg ${a.id} ${text("b-to-a", i)}`); // each waits for a's session
    const texts = (c: Chat, from: string) => c.of("message").filter((e) => e.from === from).map((e) => e.text);
    await waitFor(() => texts(b, a.id).length >= count && texts(a, b.id).length >= count, "all messages", 60_000);
    const seconds = (performance.now() - started) / 1000;
    expect(texts(b, a.id)).toEqual(Array.from({ length: count }, (_, i) => text("a-to-b", i)));
    expect(texts(a, b.id)).toEqual(Array.from({ length: count }, (_, i) => text("b-to-a", i)));
    a.end();
    b.end();
    expect(await exitCode(a, "client a")).toBe(0);
    expect(await exitCode(b, "client b")).toBe(0);
    // TCP hides loss and delay from smts: no lost/replayed-record warnings.
    expect([...a.of("error"), ...b.of("error")]).toEqual([]);
    const { dropped } = report(`chat: /connect + ${count} messages of 1.5 kB each way`, seconds, before);
    expect(dropped).toBeGreaterThan(0); // else this run did not exercise loss
  });

  test.skipIf(skipNet)("a 10 MiB file: delivered, SHA-256 verified on both sides", async () => {
    const before = n.counters();
    const src = makeFile(temp.make(), "ten.bin", 10 * MiB);
    const seconds = await transferCompletes(relayAt(), src, { wrap: n.inClients, args: ["--max-file-size", "16MiB"] });
    const { dropped } = report("10 MiB file A → relay → B (sha256 verified)", seconds, before);
    // ~15k packets crossed the link: with 1 % loss some were surely dropped (else loss was not emulated).
    expect(dropped).toBeGreaterThan(0);
  });
});
