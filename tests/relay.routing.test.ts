// Routing, sender stamping, presence, keepalive and hostile clients.
import { afterEach, describe, expect, test } from "bun:test";
import type { Relay } from "../lib/relay/server.ts";
import { presenceLog } from "../lib/relay/presence.ts";
import { decodePayload, encodeFrame, FrameDecoder } from "../lib/wire/frame.ts";
import { joinTest, RawClient, rawJoined, SECRET, startTestRelay, waitFor } from "./helpers.ts";
import { clientProof, newNonce } from "../lib/relay/protocol.ts";
import { PackedBin } from "../lib/wire/msgpack.ts";
import { Outbox } from "../lib/wire/outbox.ts";

let relay: Relay;
afterEach(async () => relay && (await relay.stop()));

const bytes = (...b: number[]) => new Uint8Array(b);

describe("routing", () => {
  test("flaw 1 (sender spoofing): the relay stamps the real sender's ID, whatever the frame claims", async () => {
    relay = startTestRelay();
    const a = await rawJoined(relay.port);
    const b = await joinTest(relay);
    const victim = await joinTest(relay);
    // A forged `src` field (and a forged `t: "msg"` frame) must not reach anyone as such.
    a.raw.writeFrame({ t: "send", to: b.link.id, src: victim.link.id, body: bytes(9) });
    const got = await b.next((f) => f.t === "msg");
    expect(got.src).toBe(a.id);
    expect([...(got.body as Uint8Array)]).toEqual([9]);
    a.raw.writeFrame({ t: "msg", src: victim.link.id, body: bytes(1) });
    expect((await a.raw.next("error")).code).toBe("bad_request");
    await Bun.sleep(50);
    expect(b.frames.filter((f) => f.t === "msg")).toEqual([]);
  });

  test("to one and to many (duplicates delivered once), body bytes unchanged", async () => {
    relay = startTestRelay();
    const [a, b, c, d] = await Promise.all([0, 1, 2, 3].map(() => joinTest(relay, { watch: false })));
    const body = new Uint8Array(100_000).map((_, i) => i * 7); // larger than one inline write
    a!.link.send([b!.link.id, c!.link.id, b!.link.id], body);
    a!.link.send(d!.link.id, bytes(1, 2, 3));
    for (const r of [b!, c!]) {
      const m = await r.next((f) => f.t === "msg");
      expect(m.src).toBe(a!.link.id);
      expect(Buffer.compare(m.body as Uint8Array, body)).toBe(0);
    }
    expect([...((await d!.next((f) => f.t === "msg")).body as Uint8Array)]).toEqual([1, 2, 3]);
    await Bun.sleep(50);
    expect(b!.frames.filter((f) => f.t === "msg").length).toBe(0); // no duplicate
  });

  test("simple sends rewritten in place: many in one write, to two peers, arrive intact and in order", async () => {
    relay = startTestRelay();
    const { raw: a, id } = await rawJoined(relay.port);
    const [b, c] = await Promise.all([joinTest(relay, { watch: false }), joinTest(relay, { watch: false })]);
    // Sizes around the outbox's copy threshold and every bin width; one write,
    // so the relay reads several frames per read and assembles others.
    const sizes = [0, 1, 255, 256, 16_383, 16_384, 65_535, 65_536, 70_000, 100_000];
    const sent = sizes.map((n, i) => ({ to: i % 2 ? c! : b!, body: new Uint8Array(n).map((_, j) => j * 7 + i) }));
    a.write(Buffer.concat(sent.map((s) => encodeFrame({ t: "send", to: s.to.link.id, body: s.body }))));
    for (const r of [b!, c!]) {
      const mine = sent.filter((s) => s.to === r);
      await waitFor(() => r.frames.filter((f) => f.t === "msg").length >= mine.length, "all msgs");
      const got = r.frames.filter((f) => f.t === "msg");
      expect(got.map((f) => f.src)).toEqual(mine.map(() => id));
      expect(got.map((f) => Buffer.from(f.body as Uint8Array).toString("hex"))).toEqual(mine.map((s) => Buffer.from(s.body).toString("hex")));
    }
  });

  test("an unknown recipient gives an error naming that ID and the ref; the others still get it", async () => {
    relay = startTestRelay();
    const a = await joinTest(relay, { watch: false });
    const b = await joinTest(relay, { watch: false });
    a.link.send([b.link.id, "zzzzzzzz"], bytes(5), 42);
    const err = await a.next((f) => f.t === "error");
    expect(err).toMatchObject({ code: "unknown_peer", peer: "zzzzzzzz", ref: 42 });
    expect((await b.next((f) => f.t === "msg")).src).toBe(a.link.id);
  });

  test("malformed sends are refused without closing the connection", async () => {
    relay = startTestRelay({ maxRecipients: 3 });
    const a = await joinTest(relay, { watch: false });
    const b = await joinTest(relay, { watch: false });
    a.link.sendFrame({ t: "send", to: b.link.id, body: "text, not bin" });
    a.link.sendFrame({ t: "send", to: ["1", "2", "3", "4"], body: bytes(1) });
    a.link.sendFrame({ t: "send", to: [], body: bytes(1) });
    a.link.sendFrame({ t: "send", to: b.link.id, body: bytes(1), ref: -1 });
    a.link.sendFrame({ t: "whatever" });
    for (let i = 0; i < 5; i++) expect((await a.next((f) => f.t === "error")).code).toBe("bad_request");
    a.link.send(b.link.id, bytes(7));
    expect([...((await b.next((f) => f.t === "msg")).body as Uint8Array)]).toEqual([7]);
  });

  test("frames larger than maxFrame after joining close only that connection", async () => {
    relay = startTestRelay({ maxFrame: 1000 });
    const a = await rawJoined(relay.port);
    const b = await joinTest(relay, { watch: false });
    const c = await joinTest(relay, { watch: false });
    a.raw.write(encodeFrame({ t: "send", to: b.link.id, body: new Uint8Array(2000) }));
    expect((await a.raw.next("error")).code).toBe("frame_too_large");
    await a.raw.waitClosed();
    b.link.send(c.link.id, bytes(1));
    expect((await c.next((f) => f.t === "msg")).src).toBe(b.link.id);
  });

  test("a large frame in the same write as the join is judged by the joined limit, not the pre-join one", async () => {
    relay = startTestRelay();
    const b = await joinTest(relay, { watch: false });
    const raw = await RawClient.connect(relay.port);
    const ch = await raw.next("challenge");
    const nonce = newNonce();
    const join = encodeFrame({ t: "join", v: 1, proof: clientProof(SECRET, ch.nonce as Uint8Array, nonce), nonce, watch: false });
    const big = encodeFrame({ t: "send", to: b.link.id, body: new Uint8Array(5000).fill(1) });
    raw.write(Buffer.concat([join, big]));
    expect((await b.next((f) => f.t === "msg")).body).toHaveLength(5000);
    expect(raw.frames.some((f) => f.t === "error")).toBe(false);
  });

  test("hostile field values (a map with a toString key as the type) get bad_request, not a crash", async () => {
    relay = startTestRelay();
    const a = await rawJoined(relay.port);
    a.raw.writeFrame({ t: { toString: 1, valueOf: 2 } });
    expect((await a.raw.next("error")).code).toBe("bad_request");
    a.raw.writeFrame({ t: "list" });
    expect((await a.raw.next("peers")).ids).toEqual([]);
  });
});

describe("presence", () => {
  test("list, joined and left; watch:false gets no presence frames", async () => {
    relay = startTestRelay();
    const a = await joinTest(relay);
    const quiet = await joinTest(relay, { watch: false });
    // A batch may also tell a watcher of its own join (§5.6): the matchers skip it.
    expect((await a.next((f) => f.t === "joined" && f.id !== a.link.id)).id).toBe(quiet.link.id);
    const b = await joinTest(relay);
    expect((await a.next((f) => f.t === "joined" && f.id !== a.link.id)).id).toBe(b.link.id);
    a.link.sendFrame({ t: "list" });
    expect(((await a.next((f) => f.t === "peers")).ids as string[]).sort()).toEqual([quiet.link.id, b.link.id].sort());
    b.link.close();
    expect((await a.next((f) => f.t === "left")).id).toBe(b.link.id);
    a.link.sendFrame({ t: "list" });
    expect((await a.next((f) => f.t === "peers")).ids).toEqual([quiet.link.id]);
    expect(quiet.frames.filter((f) => f.t === "joined" || f.t === "left")).toEqual([]);
  });

  test("list with more than 4096 others: 4096 IDs of online clients, never the asker's own, and `more`; right again after clients come and go", async () => {
    relay = startTestRelay({ maxPending: 5000, maxPendingPerSource: 5000, maxClientsPerSource: 5000, joinRatePerSource: 5000 });
    const clients: { raw: RawClient; id: string }[] = [];
    for (let i = 0; i < 4098; i += 200) clients.push(...(await Promise.all(Array.from({ length: Math.min(200, 4098 - i) }, () => rawJoined(relay.port)))));
    const online = new Set(clients.map((c) => c.id));
    // The first to join is in the relay's cached list; the last is past it.
    for (const asker of [clients[0]!, clients[4097]!, clients[2000]!]) {
      asker.raw.writeFrame({ t: "list" });
      const peers = await asker.raw.next("peers");
      const ids = peers.ids as string[];
      expect(ids).toHaveLength(4096);
      expect(new Set(ids).size).toBe(4096);
      expect(ids.includes(asker.id)).toBe(false);
      expect(ids.every((id) => online.has(id))).toBe(true);
      expect(peers.more).toBe(true);
    }
    // Two leave: 4095 others for the first client, all of them listed.
    for (const c of clients.splice(1, 2)) c.raw.close(), online.delete(c.id);
    await waitFor(() => relay.stats().clients === 4096, "two clients gone");
    clients[0]!.raw.writeFrame({ t: "list" });
    const after = await clients[0]!.raw.next("peers");
    expect(new Set(after.ids as string[])).toEqual(new Set([...online].filter((id) => id !== clients[0]!.id)));
    expect(after.more).toBeUndefined();
    for (const c of clients) c.raw.close();
  }, 60_000);

  test("presenceLog: a batch in order; an ID that joined and left within it is dropped unless it spoke or a watcher joined meanwhile", () => {
    const log = presenceLog();
    const frames = (bytes: Uint8Array) => [...new FrameDecoder(1024).push(bytes)].map((p) => decodePayload(p)).map((f) => `${f.t} ${f.id}`);
    log.joined("aaaaaaaa", false);
    log.joined("bbbbbbbb", false);
    log.left("aaaaaaaa", false); // churned: dropped
    log.joined("cccccccc", false);
    log.left("bbbbbbbb", true); // spoke: its peers must hear it left
    log.left("zzzzzzzz", false); // joined in an earlier batch
    log.joined("dddddddd", false);
    log.joined("wwwwwwww", true); // a watcher, who may have seen d in a `list`
    log.left("dddddddd", false);
    expect(frames(log.take())).toEqual(["joined bbbbbbbb", "joined cccccccc", "left bbbbbbbb", "left zzzzzzzz", "joined dddddddd", "joined wwwwwwww", "left dddddddd"]);
    expect(log.size).toBe(0);
    expect(log.take()).toHaveLength(0);
  });

  // Regression: every join and leave was a write to every watcher, so with 2,000
  // watchers one client joining and leaving 16 times a second kept the relay 89 %
  // busy (about 60,000 presence frames a second).
  test("presence goes out in batches: a client that joins and leaves within one, saying nothing, is never announced; one that sent something is", async () => {
    relay = startTestRelay({ presencePerWatcherMs: 1000, presenceMaxMs: 5000 }); // two watchers: batches 2 s apart
    const a = await joinTest(relay);
    const b = await joinTest(relay); // a learns of b in the next batch, and the one after is 2 s later ...
    expect((await a.next((f) => f.t === "joined" && f.id === b.link.id, "b's join at a")).t).toBe("joined");
    const churned: string[] = [];
    for (let i = 0; i < 10; i++) {
      const c = await joinTest(relay, { watch: false }); // ... so all of this falls within it
      churned.push(c.link.id);
      c.link.close();
      await c.link.closed;
    }
    const talker = await joinTest(relay, { watch: false });
    talker.link.send(a.link.id, new Uint8Array([1]));
    await a.next((f) => f.t === "msg", "the talker's message at a");
    talker.link.close();
    await talker.link.closed;
    const stays = await joinTest(relay, { watch: false });
    const mentioned = (frames: Record<string, unknown>[]) => frames.filter((f) => f.t === "joined" || f.t === "left").map((f) => `${f.t} ${f.id}`);
    await waitFor(() => mentioned(a.frames).includes(`joined ${stays.link.id}`), "the batch at a", 5000);
    await waitFor(() => mentioned(b.frames).includes(`joined ${stays.link.id}`), "the batch at b", 5000);
    // (A batch may also tell a watcher of joins just before its own, its own included: a and b are left out here.)
    const others = (frames: Record<string, unknown>[]) => mentioned(frames.filter((f) => f.id !== a.link.id && f.id !== b.link.id));
    for (const w of [a, b]) expect(others(w.frames)).toEqual([`joined ${talker.link.id}`, `left ${talker.link.id}`, `joined ${stays.link.id}`]);
    expect(churned.some((id) => [...a.frames, ...b.frames].some((f) => f.id === id))).toBe(false);
  }, 20_000);
});

describe("hostile and dead clients", () => {
  test("a garbage-sending client is dropped while two others keep talking", async () => {
    relay = startTestRelay();
    const evil = await rawJoined(relay.port);
    const a = await joinTest(relay, { watch: false });
    const b = await joinTest(relay, { watch: false });
    evil.raw.write(new Uint8Array([0, 0, 0, 5, 0xc1, 0xc1, 0xc1, 0xc1, 0xc1]));
    expect((await evil.raw.next("error")).code).toBe("bad_frame");
    await evil.raw.waitClosed();
    for (let i = 0; i < 20; i++) a.link.send(b.link.id, bytes(i));
    await waitFor(() => b.frames.filter((f) => f.t === "msg").length === 20, "20 messages");
    b.link.send(a.link.id, bytes(1));
    await a.next((f) => f.t === "msg");
    expect(relay.stats().counters.badFrames).toBe(1);
  });

  test("random byte streams never crash the relay", async () => {
    relay = startTestRelay();
    let seed = 12345;
    const rand = () => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff);
    for (let round = 0; round < 30; round++) {
      const { raw } = await rawJoined(relay.port);
      const junk = new Uint8Array(1 + Math.floor(rand() * 3000)).map(() => Math.floor(rand() * 256));
      if (round % 2) junk.set([0, 0, 0, Math.min(255, junk.length - 4)]); // plausible prefix, garbage body
      raw.write(junk);
      raw.close();
    }
    const a = await joinTest(relay, { watch: false });
    const b = await joinTest(relay, { watch: false });
    a.link.send(b.link.id, bytes(1));
    await b.next((f) => f.t === "msg");
    await waitFor(() => relay.stats().clients === 2, "junk connections to be gone");
  });

  test("the relay pings a quiet client, the link answers, and a dead one is dropped", async () => {
    relay = startTestRelay({ pingIntervalMs: 100 });
    const alive = await joinTest(relay, { watch: false });
    const { raw: dead } = await rawJoined(relay.port); // never answers pings
    await dead.next("ping");
    await dead.waitClosed(2000);
    expect(dead.frames.find((f) => f.t === "error")?.code).toBe("idle_timeout");
    await Bun.sleep(300);
    expect(relay.stats().clients).toBe(1); // the link answered its pings
    expect(alive.frames.some((f) => f.t === "error")).toBe(false);
  });

  test("stop() tells every client `shutdown`", async () => {
    relay = startTestRelay();
    const a = await joinTest(relay);
    await relay.stop();
    expect((await a.link.closed).code).toBe("shutdown");
    relay = startTestRelay(); // for afterEach
  });
});

// Regression (found in audit): the relay handled every frame of a read before
// anyone else's, and Bun's reads go up to 512 KiB: one client's 43,691 `list`
// frames held every other client for 70 ms, reads back to back for 1-2 s.
test("one client's burst of frames is handled in turns of at most 1024 (the relay pauses it and serves the others in between), and still arrives whole and in order", async () => {
  relay = startTestRelay();
  const [x, c, b] = [await joinTest(relay, { watch: false }), await joinTest(relay, { watch: false }), await joinTest(relay, { watch: false })];
  const N = 5000;
  for (let i = 0; i < N; i++) x.link.send(b.link.id, new Uint8Array([i >> 8, i & 255])); // one turn: written together
  c.link.send(b.link.id, new Uint8Array([0xff, 0xff, 0xff]));
  await waitFor(() => b.frames.filter((f) => f.t === "msg").length === N + 1, "every frame at b", 10_000);
  const bodies = b.frames.filter((f) => f.t === "msg").map((f) => f.body as Uint8Array);
  const fromX = bodies.filter((body) => body.length === 2).map((body) => (body[0]! << 8) | body[1]!);
  expect(fromX).toEqual(Array.from({ length: N }, (_, i) => i));
  expect(bodies.filter((body) => body.length === 3)).toHaveLength(1);
  expect(relay.stats().counters.yields).toBeGreaterThanOrEqual(Math.floor(N / 1024) - 1); // before the fix: none
});

// Regression (found in review): a connection that closed while its read was held
// for its next turn still had the rest handled, forwarded under its ID after its
// `left`, and could be put back among a busy recipient's waiters.
test("a client that closes while the rest of its burst waits for its turn: nothing more of it is forwarded", async () => {
  relay = startTestRelay();
  const b = await joinTest(relay, { watch: false });
  const { raw: x } = await rawJoined(relay.port);
  const frames = Array.from({ length: 3000 }, (_, i) => encodeFrame({ t: "send", to: b.link.id, body: new Uint8Array([i >> 8, i & 255]) }));
  const all = new Uint8Array(frames.reduce((n, f) => n + f.length, 0));
  frames.reduce((at, f) => (all.set(f, at), at + f.length), 0);
  x.write(all);
  x.close(); // reset at once: the relay sees it while the rest of the read waits for its turn
  await Bun.sleep(300);
  const got = b.frames.filter((f) => f.t === "msg").length;
  expect(got).toBeGreaterThan(0);
  expect(got).toBeLessThanOrEqual(1024); // before the fix: all 3000
});

describe("bulk frames (PROTOCOL §5.4)", () => {
  // A watching client that joins and then stops reading, so the relay queues for it.
  async function pausedWatcher(): Promise<{ raw: RawClient; id: string }> {
    const raw = await RawClient.connect(relay.port);
    const ch = await raw.next("challenge");
    const nonce = newNonce();
    raw.writeFrame({ t: "join", v: 1, proof: clientProof(SECRET, ch.nonce as Uint8Array, nonce), nonce, watch: true });
    const id = (await raw.next("welcome")).id as string;
    raw.socket.pause();
    return { raw, id };
  }
  /** A body whose first two bytes number it. */
  const numbered = (i: number, n: number) => new Uint8Array(n).fill(7).fill(i >> 8, 0, 1).fill(i & 255, 1, 2);
  const PACKED = 200 * 1024 + 5; // a numbered body as a link's sendBulk packs it: bin32 header first
  const numberOf = (f: Record<string, unknown>) => {
    const body = f.body as Uint8Array;
    const at = body.length === PACKED ? 5 : 0;
    return (body[at]! << 8) | body[at + 1]!;
  };

  test("a recipient's queued bulk msgs are overtaken by later sends, keep their order, and come before the `left` of their sender; shared ones are counted once", async () => {
    // Limits far above what this test queues: nothing may be dropped, no one paused.
    relay = startTestRelay({ queueHigh: 128 << 20, queuePause: 256 << 20, queueMax: 1 << 30, queueTotalMax: 1 << 30 });
    const r = await pausedWatcher();
    const other = await joinTest(relay, { watch: false });
    const s = await joinTest(relay, { watch: false });
    const { raw: x } = await rawJoined(relay.port);
    expect(x.frames).toEqual([]);
    // 32 MiB of `bulk` frames from s's link (its welcome said bulk: true), more than the kernel's buffers take.
    const N = 160;
    for (let i = 0; i < N; i++) s.link.sendBulk(r.id, new PackedBin(numbered(i, 200 * 1024)));
    await waitFor(() => relay.stats().counters.framesForwarded === N, "the relay took s's bulk frames", 10_000);
    // The general path: a list of IDs (one frame shared by two queues, counted once) and a `ref`.
    const pushes: { frame: Uint8Array; shared: boolean | undefined }[] = [];
    const { pushBulk } = Outbox.prototype;
    Outbox.prototype.pushBulk = function (frame: Uint8Array, shared?: boolean, tag?: object) {
      pushes.push({ frame, shared });
      return pushBulk.call(this, frame, shared, tag);
    };
    try {
      x.writeFrame({ t: "bulk", to: [r.id, other.link.id], body: numbered(N, 100_000) });
      x.writeFrame({ t: "bulk", to: r.id, body: numbered(N + 1, 1000), ref: 5 });
      await waitFor(() => relay.stats().counters.framesForwarded === N + 3, "the relay took every bulk", 10_000);
    } finally {
      Outbox.prototype.pushBulk = pushBulk;
    }
    const msgs = pushes.filter((p) => p.frame.length > 100); // not a presence batch, which may come meanwhile
    expect(msgs.map((p) => [p.frame.length, p.shared])).toEqual([[4 + 30 + 100_000, true], [4 + 30 + 100_000, true], [4 + 28 + 1000, false]]);
    expect(msgs[1]!.frame).toBe(msgs[0]!.frame);
    s.link.send(r.id, numbered(0xffff, 10));
    await waitFor(() => relay.stats().counters.framesForwarded === N + 4, "the relay took the send");
    expect(numberOf(await other.next((f) => f.t === "msg"))).toBe(N);
    const sId = s.link.id;
    s.link.close();
    await s.link.closed;
    x.close();
    await Bun.sleep(100); // the presence batch with their `left`s is queued
    const queued = relay.stats().queuedBytes; // r's queue does not drain while r reads nothing
    r.raw.writeFrame({ t: "send", to: sId, body: numbered(0, 1) }); // to s, gone: `unknown_peer`, which says so too
    await waitFor(() => relay.stats().queuedBytes > queued, "the error queued for r");
    r.raw.socket.resume();
    await waitFor(() => r.raw.frames.filter((f) => f.t === "left").length === 2 && r.raw.frames.some((f) => f.t === "error"), "both `left`s and the error at r", 20_000);
    expect(r.raw.frames.filter((f) => f.t === "error").map((f) => [f.code, f.peer])).toEqual([["unknown_peer", sId]]);
    const seen = r.raw.frames.filter((f) => f.t === "msg" || f.t === "left" || f.t === "error");
    const bulks = seen.filter((f) => f.t === "msg" && numberOf(f) !== 0xffff);
    expect(bulks.map(numberOf)).toEqual(Array.from({ length: N + 2 }, (_, i) => i));
    expect(bulks.map((f) => (f.body as Uint8Array).length)).toEqual([...Array<number>(N).fill(PACKED), 100_000, 1000]);
    const send = seen.findIndex((f) => f.t === "msg" && numberOf(f) === 0xffff);
    // Before the bulk lane, the send came after every bulk, and the `left`s before those still queued.
    expect(send).toBeGreaterThanOrEqual(0);
    for (const i of [N - 1, N, N + 1]) expect(send).toBeLessThan(seen.indexOf(bulks[i]!)); // the fast path's last, the general path's
    expect(seen.slice(-3).map((f) => f.t).sort()).toEqual(["error", "left", "left"]); // none of them before a bulk msg
    await waitFor(() => relay.stats().queuedTotal === 0, "every queue drained and uncounted");
  }, 30_000);

  test("with no bulk msg waiting, presence keeps its place among a client's other frames", async () => {
    relay = startTestRelay({ queueHigh: 128 << 20, queuePause: 256 << 20, queueMax: 1 << 30, queueTotalMax: 1 << 30 });
    const r = await pausedWatcher();
    const s = await joinTest(relay, { watch: false });
    const N = 60; // 12 MiB of plain sends: more than the kernel's buffers take
    for (let i = 0; i < N; i++) s.link.send(r.id, numbered(i, 200 * 1024));
    await waitFor(() => relay.stats().counters.framesForwarded === N, "the relay took them", 10_000);
    const newcomer = await joinTest(relay, { watch: false });
    await Bun.sleep(100); // its `joined` is queued for r
    s.link.send(r.id, numbered(0xffff, 10));
    await waitFor(() => relay.stats().counters.framesForwarded === N + 1, "the relay took the last send");
    r.raw.socket.resume();
    await waitFor(() => r.raw.frames.some((f) => f.t === "msg" && numberOf(f) === 0xffff), "the last send at r", 20_000);
    const joined = r.raw.frames.findIndex((f) => f.t === "joined" && f.id === newcomer.link.id);
    expect(joined).toBeGreaterThanOrEqual(0);
    expect(joined).toBeLessThan(r.raw.frames.findIndex((f) => f.t === "msg" && numberOf(f) === 0xffff));
  }, 30_000);
});
