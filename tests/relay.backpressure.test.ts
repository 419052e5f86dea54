// A recipient that stops reading: the relay tells its senders it is `busy`
// (and `ready` once it drained or left), pauses those that go on regardless
// instead of buffering, unrelated clients keep talking, and after the
// slow-consumer timeout the stalled client is cut and its senders resume.
import { afterEach, expect, test } from "bun:test";
import { RELAY_DEFAULTS, type Relay } from "../lib/relay/server.ts";
import { decodePayload, encodeFrame, FrameDecoder } from "../lib/wire/frame.ts";
import { joinRelay, type Link } from "../lib/link/relay-link.ts";
import { clientProof } from "../lib/relay/protocol.ts";
import { joinTest, RawClient, rawJoined, rssOf, SECRET, SECRET_TEXT, spawnRelay, startTestRelay, waitFor } from "./helpers.ts";

let relay: Relay | null = null;
afterEach(async () => void (await relay?.stop()));

const CHUNK = new Uint8Array(64 * 1024).fill(0xab);

/** Joins, then stops reading from the socket entirely. */
async function stalledClient(port: number): Promise<{ raw: RawClient; id: string }> {
  const joined = await rawJoined(port);
  joined.raw.socket.pause();
  return joined;
}

/** Sends 64 KiB frames to `to` for `ms`, never queueing more than 1 MiB locally. Returns bytes handed over. */
async function flood(link: Link, to: string, ms: number): Promise<number> {
  let sent = 0;
  const until = performance.now() + ms;
  while (performance.now() < until) {
    link.send(to, CHUNK);
    sent += CHUNK.length;
    await Promise.race([link.drained(1024 * 1024), Bun.sleep(until - performance.now())]);
  }
  return sent;
}

/** Sends 64 KiB frames to `to` until `done()`, each after the last one left and what came in was read (a polite sender). Returns how many. */
async function sendPolitely(link: Link, to: string, done: () => boolean): Promise<number> {
  let frames = 0;
  while (!done()) {
    link.send(to, CHUNK);
    frames++;
    await link.drained(0);
    await new Promise((resolve) => setImmediate(resolve)); // it reads what comes in as it writes
  }
  return frames;
}

test("a non-reading recipient: its sender is told `busy`, is paused when it goes on regardless, relay queues stay bounded, others are not stalled; `ready` when it is cut", async () => {
  // Pings every 200 ms: the paused sender must not be mistaken for a dead one.
  // The slow-consumer cut must come well after the 1.5 s flood, also on a busy machine.
  relay = startTestRelay({ slowTimeoutMs: 4000, pingIntervalMs: 200 });
  const r = relay;
  const stalled = await stalledClient(r.port);
  // It still writes (so it is alive, just not reading): only the slow-consumer rule may cut it.
  const heartbeat = setInterval(() => stalled.raw.writeFrame({ t: "ping" }), 50);
  const sender = await joinTest(r, { watch: false });
  const a = await joinTest(r, { watch: false });
  const b = await joinTest(r, { watch: false });

  const flooding = flood(sender.link, stalled.id, 1500);
  let maxQueued = 0;
  let maxBacklog = 0;
  let paused = false;
  const watcher = setInterval(() => {
    const s = r.stats();
    maxQueued = Math.max(maxQueued, s.maxQueuedBytes);
    maxBacklog = Math.max(maxBacklog, sender.link.backlog);
    paused ||= s.pausedSenders > 0;
  }, 5);
  // Unrelated clients exchange 200 messages meanwhile.
  for (let i = 0; i < 200; i++) a.link.send(b.link.id, new Uint8Array([i & 0xff]));
  await waitFor(() => b.frames.filter((f) => f.t === "msg").length === 200, "200 messages between unrelated clients");
  const attempted = await flooding;
  clearInterval(watcher);

  expect(paused).toBe(true);
  expect(sender.frames.filter((f) => f.t === "busy")).toEqual([{ t: "busy", peer: stalled.id }]); // once, not per frame
  // The flood ignores `busy`: the relay queued up to its pause mark plus one frame, far below the cut.
  expect(maxQueued).toBeLessThanOrEqual(RELAY_DEFAULTS.queuePause + CHUNK.length + 64);
  // The sender was held back: it had to queue locally, and what left it is kernel buffers
  // plus the relay queue, not the flood's full demand.
  expect(r.stats().counters.closed_slow_consumer).toBeUndefined(); // still paused, not yet cut
  expect(maxBacklog).toBeGreaterThan(0);
  expect(attempted - sender.link.backlog).toBeLessThan(32 * 1024 * 1024);

  // After the slow-consumer timeout the stalled client is cut and the sender drains.
  await waitFor(() => r.stats().counters.closed_slow_consumer === 1, "slow consumer to be dropped", 8000);
  clearInterval(heartbeat);
  await sender.next((f) => f.t === "ready" && f.peer === stalled.id, "`ready` for the client that was cut");
  await waitFor(() => sender.link.backlog === 0, "sender to drain", 5000);
  expect(r.stats().clients).toBe(3);
  expect(r.stats().counters.closed_idle_timeout).toBeUndefined();
  stalled.raw.close();
});

test("a sender that holds back on `busy` is never paused, and is told `ready` once the recipient reads again", async () => {
  relay = startTestRelay({ slowTimeoutMs: 60_000 });
  const r = relay;
  const stalled = await stalledClient(r.port);
  const sender = await joinTest(r, { watch: false });
  const other = await joinTest(r, { watch: false });
  const frames = await sendPolitely(sender.link, stalled.id, () => sender.frames.some((f) => f.t === "busy"));
  expect(sender.frames).toEqual([{ t: "busy", peer: stalled.id }]);
  // Past the kernel's buffers, the relay queued just over queueHigh: the frames in flight when it said so.
  expect(r.stats().maxQueuedBytes).toBeGreaterThan(RELAY_DEFAULTS.queueHigh);
  expect(r.stats().maxQueuedBytes).toBeLessThan(RELAY_DEFAULTS.queuePause);
  expect(r.stats().counters.pauses).toBeUndefined();
  // Its other traffic goes on.
  sender.link.send(other.link.id, new Uint8Array([7]));
  expect((await other.next((f) => f.t === "msg", "a message to another client")).body).toEqual(new Uint8Array([7]));
  stalled.raw.socket.resume();
  await sender.next((f) => f.t === "ready" && f.peer === stalled.id, "`ready` once the recipient drained");
  await waitFor(() => stalled.raw.frames.filter((f) => f.t === "msg").length === frames, "every frame delivered");
  expect(r.stats().counters.pauses).toBeUndefined();
  stalled.raw.close();
});

// Regression (found in review): senders told `busy` stayed listed after they
// closed, as long as the recipient stayed above queueLow, and every frame to it
// searched that list: a recipient read a little now and then, and each of 10,000
// clients that sent it one byte and left cost the relay memory for good.
test("a sender that leaves is forgotten by the recipients it was told about (busy) or paused on", async () => {
  relay = startTestRelay({ slowTimeoutMs: 60_000 });
  const r = relay;
  const sink = await stalledClient(r.port);
  const filler = await joinTest(r, { watch: false });
  // Well past queueHigh (the kernel may yet take some of it), under queuePause.
  await sendPolitely(filler.link, sink.id, () => r.stats().maxQueuedBytes >= 2.5 * 1024 * 1024);
  for (let i = 0; i < 50; i++) {
    const s = await joinTest(r, { watch: false });
    s.link.send(sink.id, new Uint8Array([i]));
    await s.next((f) => f.t === "busy" && f.peer === sink.id, "busy for a one-byte sender");
    s.link.close();
    await s.link.closed;
  }
  await waitFor(() => r.stats().clients === 2, "the 50 senders gone");
  expect(r.stats().busyTold).toBe(1); // the filler alone
  sink.raw.socket.resume();
  await filler.next((f) => f.t === "ready" && f.peer === sink.id, "ready for the filler");
  expect(r.stats().busyTold).toBe(0);
  sink.raw.close();
});

// Regression (found in review): a sender released from a pause had its waiting
// frame handled without a flush, so the next unrelated client to send anything
// was held responsible: told `busy` about, and paused on, a recipient it had
// never sent to, while the real sender went on.
test("a sender released from a pause answers for its own waiting frame; an unrelated client is neither told busy nor paused", async () => {
  relay = startTestRelay({ slowTimeoutMs: 60_000, pingIntervalMs: 60_000 });
  const r = relay;
  const join = () => joinTest(r, { watch: false });
  const r1 = await stalledClient(r.port); // stalls, then reads
  const r2 = await stalledClient(r.port); // stays stalled
  const [s1, s2, w, x, y] = [await join(), await join(), await join(), await join(), await join()];
  const big = new Uint8Array(200 * 1024);
  const forwarded = () => r.stats().counters.framesForwarded ?? 0;
  /** Sends one frame and waits until the relay forwarded it (or paused its sender). */
  const sendOne = async (from: typeof w, to: string | string[]) => {
    const before = forwarded();
    const paused = r.stats().pausedSenders;
    from.link.send(to, big);
    await waitFor(() => forwarded() >= before + (Array.isArray(to) ? to.length : 1) || r.stats().pausedSenders > paused, "the frame handled");
  };
  // r2 well past queueHigh, and r1 just past it.
  while (!s2.frames.some((f) => f.t === "busy") || r.stats().maxQueuedBytes < 2 * 1024 * 1024) await sendOne(s2, r2.id);
  while (!s1.frames.some((f) => f.t === "busy")) await sendOne(s1, r1.id);
  // w sends both three frames: told they are busy at the first, it is then past its allowance for both.
  for (let i = 0; i < 3; i++) await sendOne(w, [r1.id, r2.id]);
  expect(r.stats().pausedSenders).toBe(0);
  // s1 takes r1 past queuePause and is paused; w's next frame then waits on r1, and w with it.
  while (r.stats().pausedSenders === 0) await sendOne(s1, r1.id);
  await sendOne(w, [r1.id, r2.id]);
  expect(r.stats().pausedSenders).toBe(2);
  // r1 reads: both are released, and w's waiting frame goes to r1 and r2. x sends at once,
  // well before the relay's once-a-second sweep would flush whatever that frame left.
  r1.raw.socket.resume();
  await waitFor(() => r.stats().pausedSenders === 0, "s1 and w released", 10_000);
  x.link.send(y.link.id, new Uint8Array([1]));
  await y.next((f) => f.t === "msg", "x's message at y");
  x.link.send(y.link.id, new Uint8Array([2]));
  await y.next((f) => f.t === "msg", "x's second message at y");
  expect(x.frames.filter((f) => f.t === "busy")).toEqual([]);
  r1.raw.close();
  r2.raw.close();
}, 60_000);

// Regression (found in review): a recipient that keeps its queue full (it reads a
// trickle, and a partner floods it) got everyone who sent it anything paused, a
// single message or a `/bmsg` it was among, with all their other traffic.
test("a recipient someone else keeps over the pause mark: a sender of a few messages is told busy but not paused; one that goes on past its allowance is", async () => {
  relay = startTestRelay({ slowTimeoutMs: 60_000 });
  const r = relay;
  const sink = await stalledClient(r.port);
  const flooder = await joinTest(r, { watch: false });
  const flooding = flood(flooder.link, sink.id, 1000); // ignores `busy`
  await waitFor(() => r.stats().pausedSenders === 1, "the flooder paused");
  await flooding;
  const s = await joinTest(r, { watch: false });
  const y = await joinTest(r, { watch: false });
  for (let i = 0; i < 3; i++) s.link.send(sink.id, new Uint8Array(1000).fill(i));
  s.link.send(y.link.id, new Uint8Array([42]));
  expect((await y.next((f) => f.t === "msg", "s's message to y")).body).toEqual(new Uint8Array([42]));
  expect(s.frames.filter((f) => f.t === "busy")).toEqual([{ t: "busy", peer: sink.id }]);
  expect(r.stats().pausedSenders).toBe(1); // the flooder only
  // Past 256 KiB since it was told, it is paused like the flooder. (It sends until then: the
  // kernel's buffers for the stalled sink take a varying amount meanwhile, and the sink's queue
  // must be above the pause mark again, with s's chunks, for anyone to wait.)
  let sent = 0;
  while (r.stats().pausedSenders < 2 && sent < 200) {
    s.link.send(sink.id, CHUNK);
    sent++;
    await Bun.sleep(10);
  }
  expect(r.stats().pausedSenders).toBe(2);
  expect(3 * 1000 + sent * CHUNK.length).toBeGreaterThan(256 * 1024); // not before its allowance (its three messages count too)
  sink.raw.close();
});

// Regression (found in audit): past half of queueMax, anyone sending the
// recipient a frame was paused, with all its other traffic, until the queue
// drained. A slow reader whose friends kept its queue that full could mute
// anyone who sent it one message, or whom it made answer one (a key exchange).
test("a recipient others keep above half of queueMax: a sender's frame to it is dropped and it is told (recipient_full), never paused; its other traffic goes on; the queue stays bounded", async () => {
  const limits = { queueHigh: 64 * 1024, queueLow: 16 * 1024, queuePause: 128 * 1024, queueMax: 1024 * 1024 };
  relay = startTestRelay({ ...limits, slowTimeoutMs: 60_000 });
  const r = relay;
  const sink = await stalledClient(r.port);
  const flooders = [await joinTest(r, { watch: false }), await joinTest(r, { watch: false }), await joinTest(r, { watch: false }), await joinTest(r, { watch: false })];
  await Promise.all(flooders.map((f) => flood(f.link, sink.id, 500))); // each ignores `busy` and goes on past its allowance
  await waitFor(() => r.stats().maxQueuedBytes > limits.queueMax / 2, "the sink's queue past half of queueMax");
  const pausedBefore = r.stats().pausedSenders;
  const s = await joinTest(r, { watch: false });
  const y = await joinTest(r, { watch: false });
  s.link.send(sink.id, new Uint8Array(100));
  const dropped = await s.next((f) => f.t === "error", "s told its frame was dropped");
  expect(dropped).toMatchObject({ t: "error", code: "recipient_full", peer: sink.id });
  s.link.send(y.link.id, new Uint8Array([42]));
  expect((await y.next((f) => f.t === "msg", "s's message to y")).body).toEqual(new Uint8Array([42]));
  s.link.send([sink.id, y.link.id], new Uint8Array([43])); // to a list: dropped for the sink only
  expect((await y.next((f) => f.t === "msg" && (f.body as Uint8Array)[0] === 43, "the list message at y")).src).toBe(s.link.id);
  expect(await s.next((f) => f.t === "error" && f !== dropped, "the second drop")).toMatchObject({ code: "recipient_full", peer: sink.id });
  expect(r.stats().pausedSenders).toBe(pausedBefore); // s was never paused
  expect(s.frames.filter((f) => f.t === "error")).toEqual([]); // one per dropped frame (both taken above), nothing else
  expect(r.stats().maxQueuedBytes).toBeLessThanOrEqual(limits.queueMax / 2 + CHUNK.length + 64);
  expect(r.stats().counters.closed_slow_consumer).toBeUndefined();
  sink.raw.close();
});

/** Small queue limits for the two tests of queueTotalMax: a few 64 KiB frames pass it. */
const TOTAL_LIMITS = { queueHigh: 64 * 1024, queueLow: 16 * 1024, queuePause: 2 * 1024 * 1024, queueMax: 8 * 1024 * 1024, queueTotalMax: 1024 * 1024 };

// Regression (found in audit): each queue had its limit, their sum none; 60
// slow readers, each fed by a sender, took a relay from 44 to 391 MiB.
test("all queues together above queueTotalMax: frames for recipients with more than queueLow queued are dropped (recipient_full); a reader with an empty queue still gets its frames", async () => {
  relay = startTestRelay({ ...TOTAL_LIMITS, slowTimeoutMs: 60_000 });
  const r = relay;
  const readers = [await stalledClient(r.port), await stalledClient(r.port), await stalledClient(r.port)];
  const sender = await joinTest(r, { watch: false });
  const fresh = await joinTest(r, { watch: false });
  // The sender goes on past `busy` (within its allowance: each queue stays under queuePause) until the relay drops.
  const drops = () => sender.frames.filter((f) => f.t === "error" && f.code === "recipient_full");
  for (let i = 0; drops().length === 0; i++) {
    sender.link.send(readers[i % 3]!.id, CHUNK);
    await sender.link.drained(0);
    await new Promise((resolve) => setImmediate(resolve));
    expect(r.stats().queuedTotal).toBe(r.stats().queuedBytes); // the running total stays exact
  }
  const atDrop = r.stats();
  expect(atDrop.queuedBytes).toBeGreaterThan(TOTAL_LIMITS.queueTotalMax);
  expect(atDrop.queuedBytes).toBeLessThanOrEqual(TOTAL_LIMITS.queueTotalMax + CHUNK.length + 64);
  expect(atDrop.maxQueuedBytes).toBeLessThan(TOTAL_LIMITS.queuePause); // no single queue was full
  expect(drops()[0]!.peer).toBeOneOf(readers.map((x) => x.id));
  sender.link.send(fresh.link.id, new Uint8Array([5]));
  expect((await fresh.next((f) => f.t === "msg", "the message to a reader with an empty queue")).body).toEqual(new Uint8Array([5]));
  expect(r.stats().pausedSenders).toBe(0);
  for (const x of readers) x.raw.close();
  await waitFor(() => r.stats().queuedTotal === 0, "the closed readers' queues released");
  expect(r.stats().queuedBytes).toBe(0);
});

// Regression (found in audit): a frame queued for several recipients counted once
// per recipient against queueTotalMax, so broadcasts to clients that did not read
// took the count past it with little memory held, and then honest recipients with
// more than queueLow queued had their frames dropped relay-wide.
test("a frame shared by several recipients counts once against queueTotalMax", async () => {
  relay = startTestRelay({ ...TOTAL_LIMITS, slowTimeoutMs: 60_000 });
  const r = relay;
  const readers = [await stalledClient(r.port), await stalledClient(r.port), await stalledClient(r.port)];
  const sender = await joinTest(r, { watch: false });
  const ids = readers.map((x) => x.id);
  const frameBytes = CHUNK.length + 64; // the body and its msg header
  // Until the queues together hold 2.5 times the limit (each under queuePause, so no one is paused).
  while (r.stats().queuedBytes <= 2.5 * TOTAL_LIMITS.queueTotalMax) {
    sender.link.send(ids, CHUNK);
    await sender.link.drained(0);
    await new Promise((resolve) => setImmediate(resolve));
    const { queuedTotal, maxQueuedBytes } = r.stats();
    // What the queues hold in memory: the frames the fullest queue still has, the one it is writing counted whole.
    expect(queuedTotal).toBeGreaterThanOrEqual(maxQueuedBytes);
    expect(queuedTotal).toBeLessThanOrEqual(maxQueuedBytes + frameBytes);
  }
  expect(r.stats().queuedTotal).toBeLessThan(TOTAL_LIMITS.queueTotalMax);
  expect(sender.frames.filter((f) => f.t === "error")).toEqual([]); // nothing dropped
  expect(r.stats().pausedSenders).toBe(0);
  // Closing one holder keeps the frames counted; closing the last uncounts them.
  readers[0]!.raw.close();
  await waitFor(() => r.stats().clients === 3, "the first reader gone");
  expect(r.stats().queuedTotal).toBeGreaterThanOrEqual(r.stats().maxQueuedBytes);
  for (const x of readers.slice(1)) x.raw.close();
  await waitFor(() => r.stats().queuedTotal === 0, "the closed readers' queues released");
  expect(r.stats().queuedBytes).toBe(0);
});

test("relay process RSS stays bounded while a sender floods a stalled recipient", async () => {
  const rp = await spawnRelay(["--slow-timeout", "30"], { SMTS_SECRET: SECRET_TEXT });
  try {
    const stalled = await stalledClient(rp.port);
    const sender = await joinRelay({ host: "127.0.0.1", port: rp.port, secret: SECRET, watch: false });
    const before = rssOf(rp.proc.pid);
    let peak = before;
    const watcher = setInterval(() => (peak = Math.max(peak, rssOf(rp.proc.pid))), 20);
    const attempted = await flood(sender, stalled.id, 2000);
    clearInterval(watcher);
    // Without backpressure the relay would take everything the sender offered (over 1 GiB in 2 s);
    // with it, the sender gets only as far as the kernel buffers and the relay queue (~12 MiB here).
    expect(attempted - sender.backlog).toBeLessThan(32 * 1024 * 1024);
    expect(peak - before).toBeLessThan(48 * 1024 * 1024);
    stalled.raw.close();
    sender.close();
  } finally {
    rp.proc.kill();
    await rp.proc.exited;
  }
});

// Regression (found in review): every frame of a read was handled before any
// queue was checked, so one read of 12-byte `list` requests (tens of
// thousands) queued tens of MiB of `peers` answers for a client that never
// read them, and held the relay up meanwhile.
test("a client sending `list` requests without reading the answers is paused at its own queue's high-water mark", async () => {
  // 201 joins from one address at once; the list allowance (next test) out of the way: this is about the queue's mark.
  relay = startTestRelay({ slowTimeoutMs: 60_000, joinRatePerSource: 1000, listAnswerRate: 2 ** 40 });
  const r = relay;
  const crowd = [];
  for (let i = 0; i < 4; i++) crowd.push(...(await Promise.all(Array.from({ length: 50 }, () => joinTest(r, { watch: false }))))); // answers of ~2 KiB; 50 at a time (the per-source pending limit is 100)
  const lister = await stalledClient(r.port);
  const list = encodeFrame({ t: "list" });
  const requests = new Uint8Array(list.length * 60_000);
  for (let at = 0; at < requests.length; at += list.length) requests.set(list, at);
  let maxQueued = 0;
  const watcher = setInterval(() => (maxQueued = Math.max(maxQueued, r.stats().maxQueuedBytes)), 2);
  lister.raw.write(requests);
  await waitFor(() => r.stats().pausedSenders === 1, "the lister to be paused");
  // Unrelated clients are served meanwhile.
  crowd[0]!.link.send(crowd[1]!.link.id, new Uint8Array([7]));
  await crowd[1]!.next((f) => f.t === "msg", "a message between unrelated clients");
  clearInterval(watcher);
  maxQueued = Math.max(maxQueued, r.stats().maxQueuedBytes);
  expect(maxQueued).toBeLessThanOrEqual(RELAY_DEFAULTS.queueHigh + 4096); // one answer past the mark at most
  expect(r.stats().counters.closed_slow_consumer).toBeUndefined();
  // Once it reads, it gets every answer.
  lister.raw.socket.resume();
  await waitFor(() => lister.raw.frames.filter((f) => f.t === "peers").length === 60_000, "60,000 answers", 30_000);
  lister.raw.close();
}, 60_000);

// Found in audit: a 12-byte `list` is answered with up to 37 KB of IDs, so one
// client's uplink could make the relay send thousands of times as much; and, kept
// per connection, a host got one allowance per connection (found in review).
test("`peers` answers to one source keep to listAnswerRate after a burst, over all its connections: lists beyond it are answered later, and their connections' other frames go on meanwhile", async () => {
  const rate = 16 * 1024; // bytes of answers a second; a burst of 4 s worth (LIST_BURST_SECONDS)
  relay = startTestRelay({ joinRatePerSource: 1000, listAnswerRate: rate });
  const r = relay;
  for (let i = 0; i < 2; i++) await Promise.all(Array.from({ length: 50 }, () => joinTest(r, { watch: false }))); // answers of ~900 bytes
  const listers = [await rawJoined(r.port), await rawJoined(r.port)]; // one source, two connections
  const perLister = 55; // ~100 KB of answers in all: ~36 KB past the burst, so at least ~2.2 s
  const answers = (l: (typeof listers)[number]) => l.raw.frames.filter((f) => f.t === "peers").length;
  const answered = () => answers(listers[0]!) + answers(listers[1]!);
  let answerBytes = 0;
  const overLimit: string[] = [];
  const started = performance.now();
  const watcher = setInterval(() => {
    const n = answered();
    if (n === 0) return;
    answerBytes ||= encodeFrame(listers.flatMap((l) => l.raw.frames).find((f) => f.t === "peers")!).length;
    // What the relay may have sent by now (its clock started after ours): the burst, the rate since, and the answer that took it below zero.
    const allowed = 4 * rate + ((performance.now() - started) / 1000) * rate + answerBytes;
    if (n * answerBytes > allowed) overLimit.push(`${n} answers of ${answerBytes} bytes after ${Math.round(performance.now() - started)} ms`);
  }, 5);
  for (const l of listers) {
    for (let i = 0; i < perLister; i++) l.raw.writeFrame({ t: "list" });
    l.raw.writeFrame({ t: "ping" });
  }
  // The pings are answered at once (the lists owed do not hold up what came after them)...
  for (const l of listers) await l.raw.next("pong");
  expect(answered()).toBeLessThan(2 * perLister);
  // ... and every list in time.
  await waitFor(() => answered() === 2 * perLister, "every list answered", 30_000);
  const took = performance.now() - started;
  clearInterval(watcher);
  expect(overLimit).toEqual([]);
  expect(took).toBeGreaterThanOrEqual(((2 * perLister * answerBytes - 4 * rate - answerBytes) / rate) * 1000); // they did wait
  expect(r.stats().counters.listsOwed).toBeGreaterThan(0);
  await Bun.sleep(200);
  expect(answered()).toBe(2 * perLister); // each answered once
  for (const l of listers) l.raw.close();
}, 60_000);

// Found in review: owed answers went on into the queue of a client that did not
// read it (a timer every 50 ms until it was cut); now they wait for it to drain.
test("answers owed to a client whose own queue is above queueHigh wait until it drains, then all come", async () => {
  relay = startTestRelay({ listAnswerRate: 16 * 1024, slowTimeoutMs: 60_000 }); // answers of ~40 bytes: ~1600 in the burst
  const r = relay;
  const sender = await joinTest(r, { watch: false });
  const lister = await stalledClient(r.port);
  const lists = 4000;
  const list = encodeFrame({ t: "list" });
  const requests = new Uint8Array(list.length * lists);
  for (let at = 0; at < requests.length; at += list.length) requests.set(list, at);
  lister.raw.write(requests);
  await waitFor(() => r.stats().listsOwed > 0, "lists owed");
  // Fill the lister's queue past queueHigh (its socket buffers first), before the owed ones are through (~6 s).
  await flood(sender.link, lister.id, 300);
  await waitFor(() => r.stats().maxQueuedBytes > RELAY_DEFAULTS.queueHigh, "the lister's queue past queueHigh");
  const owed = r.stats().listsOwed;
  expect(owed).toBeGreaterThan(0);
  await Bun.sleep(1000); // at 16 KiB/s, ~400 answers' worth
  expect(r.stats().listsOwed).toBe(owed);
  lister.raw.socket.resume();
  await waitFor(() => lister.raw.frames.filter((f) => f.t === "peers").length === lists, "every answer", 30_000);
  expect(r.stats().listsOwed).toBe(0);
  lister.raw.close();
}, 60_000);

// Found in review: a list from a connection that owed nothing was answered as soon as
// the allowance turned positive, before the owed ones (which wait for 50 ms' worth),
// so a neighbour asking at the right moments kept the others of its address waiting
// (shown by the reviewer's script, which timed each list to 25 ms after a refill; this
// test does not hit that window reliably, and checks the turn-taking around it).
test("owed `list` answers of one source take turns: another connection asking meanwhile does not hold them up", async () => {
  relay = startTestRelay({ joinRatePerSource: 1000, listAnswerRate: 2000 }); // answers of ~200 bytes: one every ~100 ms after a burst of ~40
  const r = relay;
  await Promise.all(Array.from({ length: 20 }, () => joinTest(r, { watch: false })));
  const [h, a] = [await rawJoined(r.port), await rawJoined(r.port)];
  const answers = (c: typeof h) => c.raw.frames.filter((f) => f.t === "peers").length;
  for (let i = 0; i < 60; i++) h.raw.writeFrame({ t: "list" });
  await waitFor(() => r.stats().listsOwed > 0, "h owed answers");
  const before = answers(h);
  // a asks, waits for its answer, then asks again ~120 ms later: just after the allowance it spent is back.
  for (const until = performance.now() + 2000; performance.now() < until; ) {
    const n = answers(a);
    a.raw.writeFrame({ t: "list" });
    await waitFor(() => answers(a) > n, "a's answer", 5000);
    await Bun.sleep(120);
  }
  expect(answers(h)).toBeGreaterThan(before); // without turns: none while a kept asking
  h.raw.close();
  a.raw.close();
}, 30_000);

// Regression (found in review): at shutdown each closing client was announced
// to every other one, N²/2 `left` frames (3 million for 2,500 clients).
test("at shutdown every client gets `shutdown` and no `left` frames", async () => {
  relay = startTestRelay();
  const r = relay;
  const watchers = await Promise.all(Array.from({ length: 50 }, () => joinTest(r, { watch: true })));
  const before = watchers.map((w) => w.frames.length);
  await r.stop();
  relay = null;
  // The link reports a fatal error as the reason it closed, not as a frame.
  expect((await Promise.all(watchers.map((w) => w.link.closed))).map((c) => c.code)).toEqual(watchers.map(() => "shutdown"));
  expect(watchers.flatMap((w, i) => w.frames.slice(before[i]).filter((f) => f.t === "left"))).toEqual([]);
});

// Regression (found in review): when a recipient drained, every sender paused
// on it was resumed at once and each handled a whole read for it, so about 30
// or more senders took its queue past queueMax and the relay cut a client
// that was reading all along. Now a frame for a full queue waits.
test("a hundred senders flooding one client that reads steadily, at 5 MB/s, do not get it cut", async () => {
  const rp = await spawnRelay([], { SMTS_SECRET: SECRET_TEXT });
  const sockets: { end(): void }[] = [];
  try {
    // The reader: 0.5 MB per 100 ms window, its socket paused for the rest of each window.
    let read = 0;
    let win = 0;
    let closed = false;
    const decoder = new FrameDecoder(1 << 20);
    let id = "";
    const reader = await Bun.connect({
      hostname: "127.0.0.1",
      port: rp.port,
      socket: {
        data(s, chunk) {
          read += chunk.length;
          win += chunk.length;
          if (!id)
            for (const p of decoder.push(chunk)) {
              const f = decodePayload(p);
              if (f.t === "challenge") s.write(encodeFrame({ t: "join", v: 1, proof: clientProof(SECRET, f.nonce as Uint8Array, new Uint8Array(32)), nonce: new Uint8Array(32), watch: false }));
              if (f.t === "welcome") id = f.id as string;
            }
          if (win >= 500_000) s.pause();
        },
        close: () => void (closed = true),
      },
    });
    sockets.push(reader);
    const windows = setInterval(() => ((win = 0), reader.resume()), 100);
    await waitFor(() => id, "the reader's ID");
    // The senders: 200 KiB frames to the reader, as fast as their sockets take them.
    const frame = encodeFrame({ t: "send", to: id, body: new Uint8Array(200 * 1024) });
    let stop = false;
    for (let k = 0; k < 100; k++) {
      let joined = false;
      const dec = new FrameDecoder(1 << 20);
      const pump = (s: { write(b: Uint8Array): number }) => {
        while (!stop && s.write(frame) === frame.length);
      };
      sockets.push(
        await Bun.connect({
          hostname: "127.0.0.1",
          port: rp.port,
          socket: {
            data(s, chunk) {
              if (joined) return;
              for (const p of dec.push(chunk)) {
                const f = decodePayload(p);
                if (f.t === "challenge") s.write(encodeFrame({ t: "join", v: 1, proof: clientProof(SECRET, f.nonce as Uint8Array, new Uint8Array(32)), nonce: new Uint8Array(32), watch: false }));
                if (f.t === "welcome") (joined = true), pump(s);
              }
            },
            drain: (s) => pump(s),
          },
        }),
      );
    }
    await Bun.sleep(4000);
    stop = true;
    clearInterval(windows);
    expect(closed).toBe(false);
    expect(read).toBeGreaterThan(10_000_000); // it kept reading throughout
  } finally {
    for (const s of sockets) s.end();
    rp.proc.kill();
    await rp.proc.exited;
  }
}, 30_000);
