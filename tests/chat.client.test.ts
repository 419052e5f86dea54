// The chat core (lib/client) over a real relay: simultaneous /connect, re-keying
// while messages flow, batching, message size limits, and a peer leaving.
import { afterAll, afterEach, beforeAll, expect, test } from "bun:test";
import { startChat, type ChatClient, type ChatEvent } from "../lib/client/chat-client.ts";
import { startDhEngine, type DhEngine } from "../lib/crypto/dh.ts";
import type { Relay } from "../lib/relay/server.ts";
import { SECRET, startTestRelay, tempDirs, waitFor, writeTestFile } from "./helpers.ts";
import { msgFrame, startMitm } from "./mitm.ts";

let relay: Relay;
const engines: DhEngine[] = [];
const clients: ChatClient[] = [];
const temp = tempDirs("smts-client-");
beforeAll(() => void (relay = startTestRelay()));
afterAll(async () => {
  for (const e of engines) e.close();
  await relay.stop();
});
afterEach(async () => {
  for (const c of clients.splice(0)) await c.close().catch(() => {});
  temp.removeAll();
});

async function client(hook: (e: ChatEvent) => void = () => {}, port = relay.port) {
  const events: ChatEvent[] = [];
  if (engines.length < 2) engines.push(startDhEngine());
  const dh = engines[clients.length % 2]!;
  // Files received land in a temporary directory, never in the working directory.
  const c = await startChat({ host: "127.0.0.1", port, secret: SECRET, dh, onEvent: (e) => void (events.push(e), hook(e)), downloadDir: temp.make() });
  clients.push(c);
  const of = <K extends ChatEvent["event"]>(kind: K) => events.filter((e): e is Extract<ChatEvent, { event: K }> => e.event === kind);
  return { c, events, of };
}

test("/connect in both directions at once ends in one session with one fingerprint", async () => {
  const a = await client();
  const b = await client();
  await Promise.all([a.c.connect(b.c.id), b.c.connect(a.c.id)]);
  await waitFor(() => a.c.fingerprint(b.c.id) && b.c.fingerprint(a.c.id), "both sessions");
  expect(a.c.fingerprint(b.c.id)).toBe(b.c.fingerprint(a.c.id));
  a.c.sendText(b.c.id, "after the race");
  await waitFor(() => b.of("message").length === 1, "message");
  expect(a.of("session").filter((e) => e.state === "failed")).toEqual([]);
  expect(b.of("error")).toEqual([]);
});

test("a second /connect waits for the new keys, announces them, and no message is lost meanwhile", async () => {
  const a = await client();
  // The moment b switches to the new keys, a has sent its reveal but not yet seen b's
  // confirm: what a sends now must not be sealed under the keys b just dropped.
  const b = await client((e) => {
    if (e.event === "session" && e.state === "rekeyed") for (let i = 0; i < 20; i++) a.c.sendText(b.c.id, `window ${i}`);
  });
  await a.c.connect(b.c.id);
  const first = a.c.fingerprint(b.c.id, true);
  for (let i = 0; i < 50; i++) a.c.sendText(b.c.id, `before ${i}`);
  const rekey = a.c.connect(b.c.id);
  for (let i = 0; i < 50; i++) a.c.sendText(b.c.id, `during ${i}`); // sealed under old or new keys, never both
  await rekey;
  expect(a.c.fingerprint(b.c.id, true)).not.toBe(first); // resolved only once the new session exists
  for (let i = 0; i < 50; i++) a.c.sendText(b.c.id, `after ${i}`);
  await waitFor(() => b.of("message").length === 170, "170 messages", 10_000);
  expect(b.of("message").map((m) => m.text)).toEqual([
    ...Array.from({ length: 50 }, (_, i) => `before ${i}`),
    ...Array.from({ length: 50 }, (_, i) => `during ${i}`),
    ...Array.from({ length: 20 }, (_, i) => `window ${i}`),
    ...Array.from({ length: 50 }, (_, i) => `after ${i}`),
  ]);
  expect(b.of("error")).toEqual([]);
  const rekeyed = b.of("session").find((e) => e.state === "rekeyed");
  expect(rekeyed).toMatchObject({ peer: a.c.id, verified: false, fingerprint: a.c.fingerprint(b.c.id) });
});

test("many messages in one burst arrive in order (batched records), interleaved both ways", async () => {
  const a = await client();
  const b = await client();
  await a.c.connect(b.c.id);
  for (let i = 0; i < 3000; i++) {
    a.c.sendText(b.c.id, `a${i}`);
    if (i % 3 === 0) b.c.sendText(a.c.id, `b${i}`);
  }
  await waitFor(() => b.of("message").length === 3000 && a.of("message").length === 1000, "all messages", 10_000);
  expect(b.of("message").map((m) => m.text)).toEqual(Array.from({ length: 3000 }, (_, i) => `a${i}`));
  expect(a.of("message")[999]!.text).toBe("b2997");
});

test("an event handler that throws on a message costs that message, reported as an error; the connection and the session go on", async () => {
  const a = await client();
  const b = await client((e) => {
    if (e.event === "message" && e.text === "boom") throw new Error("handler broke");
  });
  await a.c.connect(b.c.id);
  a.c.sendText(b.c.id, "boom");
  await waitFor(() => b.of("error").length === 1, "error event");
  a.c.sendText(b.c.id, "after");
  await waitFor(() => b.of("message").length === 2, "second message");
  expect(b.of("message").map((m) => m.text)).toEqual(["boom", "after"]);
  expect(b.of("error")).toEqual([{ event: "error", code: "internal", message: `handling a message from ${a.c.id} failed: handler broke`, peer: a.c.id }]);
  expect(b.of("disconnected")).toEqual([]);
});

test("a message too long for one frame is refused locally with a clear error", async () => {
  const a = await client();
  const b = await client();
  await a.c.connect(b.c.id);
  expect(() => a.c.sendText(b.c.id, "x".repeat(300 * 1024))).toThrow(/message too long/);
  a.c.sendText(b.c.id, "y".repeat(200 * 1024)); // fits: delivered
  await waitFor(() => b.of("message").length === 1, "long message");
  expect(b.of("message")[0]!.text.length).toBe(200 * 1024);
});

test("when a peer leaves, its session is erased and sending to it fails clearly", async () => {
  const a = await client();
  const b = await client();
  const connecting = a.c.connect(b.c.id);
  // Found in audit: "/connect first" while the /connect was still running.
  expect(() => a.c.sendText(b.c.id, "too early")).toThrow(`no session with ${b.c.id} yet: the key exchange is still running`);
  await connecting;
  const bId = b.c.id;
  await clients.splice(1, 1)[0]!.close();
  await waitFor(() => a.of("session").find((e) => e.state === "closed"), "session closed");
  expect(a.c.hasSession(bId)).toBe(false);
  expect(() => a.c.sendText(bId, "hello?")).toThrow(`no session with ${bId}, and it is not online`);
  expect(a.c.peers().find((p) => p.id === bId)).toBeUndefined();
});

test("a broken DH engine fails /connect with a clear error instead of crashing or hanging", async () => {
  const broken: DhEngine = {
    keypair: () => Promise.reject(new Error("worker failed to load")),
    secret: () => Promise.reject(new Error("worker failed to load")),
    forget() {},
    close() {},
  };
  const b = await client();
  const a = await startChat({ host: "127.0.0.1", port: relay.port, secret: SECRET, dh: broken, onEvent() {} });
  clients.push(a);
  const outcome = await a.connect(b.c.id).then(
    () => "connected",
    (err: Error) => err.message,
  );
  expect(outcome).toContain("worker failed to load");
});

// Regression test (lib/client/chat-client.ts): an event handler that threw
// while close() cancelled transfers (the terminal's closed prompt did) stopped
// close() there: sessions not erased, the relay connection left open.
test("regression: close() with an event handler that throws still erases every session and leaves the relay; the error comes out at the end", async () => {
  let throwing = false;
  const a = await client(() => {
    if (throwing) throw new Error("handler failed");
  });
  const b = await client();
  await a.c.connect(b.c.id);
  const src = writeTestFile(temp.make(), "f.bin", 1000);
  a.c.sendFile(b.c.id, src.path).catch(() => {}); // offered: close() cancels it, an event for the handler
  throwing = true;
  expect(await a.c.close().then(() => "closed", (err: Error) => err.message)).toBe("handler failed");
  expect(a.c.fingerprint(b.c.id)).toBeNull(); // its keys are erased
  await waitFor(() => b.of("peer").find((e) => e.id === a.c.id && !e.online), "a gone at b");
});

// Regression test (lib/client/chat-client.ts): close() erases the sessions,
// and a peer's record still in flight (its answer to a /cancel, say) was then
// reported as "encrypted record from ... without a session: ignored".
test("regression: frames arriving while close() runs are dropped without an event", async () => {
  const mitm = startMitm(relay.port);
  try {
    const a = await client(() => {}, mitm.port);
    const b = await client();
    await a.c.connect(b.c.id);
    const pipe = mitm.pipe(a.c.id);
    const before = a.events.length;
    const closing = a.c.close();
    // Written before a half-closes its connection, so a reads them before it closes: a record, and a peer joining.
    pipe.injectToClient(msgFrame(b.c.id, { t: "rec", n: 1, ct: new Uint8Array(32), mac: new Uint8Array(32) }), { t: "joined", id: "zzzzzzzz" });
    await closing;
    expect(a.events.slice(before)).toEqual([]);
  } finally {
    mitm.stop();
  }
});

// Regression: a presence batch can tell a client of its own join, in the very read
// that brings `welcome` (PROTOCOL §5.6); handling it before the link was in place
// threw, and the client lost its connection.
test("a client is never told about itself: presence of its own ID is ignored, also right after joining", async () => {
  const clientsNow = await Promise.all(Array.from({ length: 6 }, () => client()));
  for (const x of clientsNow) await waitFor(() => clientsNow.every((y) => y === x || x.c.peers().some((p) => p.id === y.c.id && p.online)), "everyone online for everyone");
  for (const x of clientsNow) expect(x.of("peer").filter((e) => e.id === x.c.id)).toEqual([]);
  for (const x of clientsNow) expect(x.c.peers().some((p) => p.id === x.c.id)).toBe(false);
});

// Regression (found in review): the client waits for the relay's answers to
// `list` (for `ready`, and to fail fast on an ID nobody has); a relay that
// never answered hung startChat, and a scripted /msg, forever.
test("a relay that does not answer `list`: ready still comes (after 10 s), and waitSession keeps to its own timeout", async () => {
  const mitm = startMitm(relay.port);
  try {
    mitm.toRelay = (f) => (f.t === "list" ? null : undefined);
    const a = await client(() => {}, mitm.port);
    expect(a.of("ready")).toEqual([{ event: "ready", id: a.c.id }]);
    expect(await a.c.waitSession("zzzzzzzz", 500).then(() => "ok", (err: { code: string }) => err.code)).toBe("timeout");
  } finally {
    mitm.stop();
  }
}, 30_000);

// Regression (found in review): after a /verify whose fingerprint did not match,
// files already under way went on streaming, queued ones were still offered, and
// held texts still went out: "nothing more is sent" was not true.
test("a /verify whose fingerprint does not match ends every transfer to that peer (the peer is told) and refuses new sends", async () => {
  const a = await client();
  const b = await client();
  await b.c.connect(a.c.id);
  await a.c.waitSession(b.c.id, 10_000);
  const dir = temp.make();
  const sends = [1, 2, 3, 4, 5, 6].map((n) => b.c.sendFile(a.c.id, writeTestFile(dir, `f${n}.bin`, 8 * 1024 * 1024).path).then(() => "delivered", (e: Error) => e.message));
  await waitFor(() => a.of("transfer").some((e) => e.state === "receiving"), "a receiving");
  expect(() => b.c.verify(a.c.id, "0000-0000-0000")).toThrow("nothing more is sent");
  for (const outcome of await Promise.all(sends)) expect(outcome).toContain("its fingerprint did not match the one given to /verify");
  await waitFor(() => a.c.activeTransfers() === 0, "a's transfers ended (told, not timed out)", 5_000);
  expect(a.of("file")).toEqual([]);
  expect(() => b.c.sendText(a.c.id, "secret")).toThrow("is not the one you verified");
});
