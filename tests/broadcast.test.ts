// Broadcast end to end (issue 5): /bmsg and /bsend with four or more real chat
// clients over a real relay on 127.0.0.1. The sender's uploads are observed
// through the test MITM (tests/mitm.ts) or a byte-counting proxy
// (tests/broadcast-helpers.ts); peers that must hold (or must not hold) a
// sender key are hand-driven raw peers that run the real key exchange and
// decrypt the `skey` records they are given, so a test can try those keys on
// broadcast records sent after they left or before they joined.
import { afterAll, afterEach, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { randomBytes } from "node:crypto";
import { readFileSync } from "node:fs";
import { join } from "node:path";
import type { ChatError } from "../lib/client/chat-client.ts";
import { startDhEngine, type DhEngine } from "../lib/crypto/dh.ts";
import { RELAY_DEFAULTS, type RelayOptions } from "../lib/relay/server.ts";
import { ReceiveChain, SendChain } from "../lib/session/records.ts";
import { CHUNK_BYTES, fileKeys, sealChunk } from "../lib/transfer/chunks.ts";
import { decodePayload, type Frame } from "../lib/wire/frame.ts";
import { pack } from "../lib/wire/msgpack.ts";
import { hex, listing, LONG, MiB, partFiles, rejection, startWorld, textsOf, type Party, type World } from "./broadcast-helpers.ts";
import { sha256Hex, waitFor } from "./helpers.ts";
import { e2eOf, isE2E, msgFrame } from "./mitm.ts";
import type { RawPeer } from "./raw-peer.ts";

setDefaultTimeout(120_000);

const engines: DhEngine[] = [];
let world: World | null = null;

beforeAll(() => void engines.push(startDhEngine(), startDhEngine()));
afterAll(() => {
  for (const e of engines) e.close();
});
afterEach(async () => {
  await world?.close();
  world = null;
});

async function start(relayOpts: Partial<RelayOptions> = {}): Promise<World> {
  world = await startWorld(engines, relayOpts);
  return world;
}

/** Establishes a session between `s` and each of `peers` (s initiates). */
async function connectAll(s: Party, peers: Party[]): Promise<void> {
  for (const p of peers) {
    await s.chat.connect(p.id);
    await p.chat.waitSession(s.id, LONG);
  }
}

const ids = (ps: { id: string }[]) => ps.map((p) => p.id).sort();

interface Upload {
  to: string | string[];
  type: string;
  inner: Frame;
}

/** Every `send` or `bulk` (file chunks, PROTOCOL §5.4) frame `p` wrote through the MITM, with its end-to-end message decoded. */
function uploads(w: World, p: Party): Upload[] {
  return w.mitm
    .pipe(p.id)
    .fromClient.filter((f) => (f.t === "send" || f.t === "bulk") && f.body instanceof Uint8Array)
    .map((f) => {
      const inner = decodePayload(f.body as Uint8Array);
      return { to: f.to as string | string[], type: String(inner.t), inner };
    });
}

/** Broadcast records the relay delivered to `p` from `from` (as sent by the relay). */
const brecsAt = (w: World, p: Party, from: string) => w.mitm.pipe(p.id).fromRelay.filter((f) => isE2E(f, "brec", from));

const toList = (to: string | string[]) => (typeof to === "string" ? [to] : [...to]).sort();

async function gotText(p: Party, text: string): Promise<void> {
  await waitFor(() => p.texts().includes(text), `${p.id} to receive "${text}"`, LONG);
}

const transfers = (p: Party, state?: string, direction?: "in" | "out") =>
  p.of("transfer").filter((e) => (state === undefined || e.state === state) && (direction === undefined || e.direction === direction));

/** The recipient saved exactly `src` (byte-identical, marked broadcast) and nothing else. */
function expectFile(p: Party, from: Party, src: { bytes: Uint8Array; sha256: string; size: number }, name: string): void {
  const files = p.of("file");
  expect(files).toEqual([{ event: "file", from: from.id, id: expect.stringMatching(/^[0-9a-f]{8}$/), name, path: join(p.dir, name), size: src.size, sha256: src.sha256, broadcast: true, verified: false }]);
  expect(Buffer.from(readFileSync(files[0]!.path)).equals(Buffer.from(src.bytes))).toBe(true);
  expect(listing(p.dir)).toEqual([name]);
}

function flipped(c: Frame, field: string, i: number): Frame {
  const b = new Uint8Array(c[field] as Uint8Array);
  b[i]! ^= 0x01;
  return { ...c, [field]: b };
}

// ---- /bmsg -------------------------------------------------------------------

describe("/bmsg", () => {
  test("reaches every peer holding a session with the sender, marked broadcast; uploaded once as one send to the list; a peer without a session gets nothing", async () => {
    const w = await start();
    const s = await w.party();
    const peers = [await w.party(), await w.party(), await w.party()];
    const outsider = await w.party();
    let none: unknown;
    try {
      s.chat.broadcastText("to nobody");
    } catch (e) {
      none = e;
    }
    expect((none as ChatError | undefined)?.code).toBe("no_sessions");
    await connectAll(s, peers);
    // The outsider is online and even has a session with a recipient, but none with the sender.
    await outsider.chat.connect(peers[0]!.id);

    const before = uploads(w, s).length;
    expect(s.chat.broadcastText("hello everyone")).toEqual(ids(peers));
    for (const p of peers) await gotText(p, "hello everyone");
    for (const p of peers) expect(p.of("message")).toEqual([{ event: "message", from: s.id, text: "hello everyone", broadcast: true, verified: false }]);

    const sent = uploads(w, s).slice(before);
    const brecs = sent.filter((u) => u.type === "brec");
    expect(brecs).toHaveLength(1); // encrypted and uploaded once ...
    expect(Array.isArray(brecs[0]!.to)).toBe(true);
    expect(toList(brecs[0]!.to)).toEqual(ids(peers)); // ... addressed to the recipient list
    // The new sender key went to each recipient in its own pairwise record, before the broadcast record.
    const at = sent.indexOf(brecs[0]!);
    expect(sent.slice(0, at).filter((u) => u.type === "rec").map((u) => u.to).sort()).toEqual(ids(peers));
    expect(sent.slice(at + 1).filter((u) => u.type === "brec" || u.type === "rec")).toEqual([]);
    // The relay copied it: each recipient got exactly one broadcast record from the sender.
    for (const p of peers) expect(brecsAt(w, p, s.id)).toHaveLength(1);

    // A marker the outsider gets from a recipient after that recipient got the broadcast:
    // had the relay queued the broadcast for the outsider, it would have arrived first.
    peers[0]!.chat.sendText(outsider.id, "marker");
    await gotText(outsider, "marker");
    expect(w.mitm.pipe(outsider.id).fromRelay.filter((f) => f.t === "msg" && f.src === s.id)).toEqual([]);
    expect(outsider.of("message")).toEqual([{ event: "message", from: peers[0]!.id, text: "marker", broadcast: false, verified: false }]);
    expect(outsider.of("error")).toEqual([]);

    // Many at once: batched into few records, each uploaded once, all arriving in order everywhere.
    const many = Array.from({ length: 300 }, (_, i) => `burst ${i} ${"x".repeat(i % 7 === 0 ? 400 : 10)}`);
    const mark = uploads(w, s).length;
    for (const t of many) s.chat.broadcastText(t);
    for (const p of peers) await waitFor(() => p.of("message").length === 1 + many.length, `${p.id}: the burst`, LONG);
    for (const p of peers) {
      expect(p.texts()).toEqual(["hello everyone", ...many]);
      expect(p.of("message").every((m) => m.broadcast && m.from === s.id)).toBe(true);
      expect(p.of("error")).toEqual([]);
    }
    const burst = uploads(w, s).slice(mark);
    expect(burst.filter((u) => u.type === "rec")).toEqual([]); // same members, same key: nothing pairwise
    const burstBrecs = burst.filter((u) => u.type === "brec");
    expect(burstBrecs.length).toBeGreaterThan(0);
    expect(burstBrecs.length).toBeLessThan(many.length);
    for (const u of burstBrecs) expect(toList(u.to)).toEqual(ids(peers));
    for (const p of peers) expect(brecsAt(w, p, s.id)).toHaveLength(1 + burstBrecs.length);
    expect(s.of("error")).toEqual([]);
  });

  test("a broadcast record tampered with or replayed on ONE recipient's link is rejected there only; the others show it; later broadcasts still reach everyone", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c, d] = [await w.party(), await w.party(), await w.party()];
    await connectAll(s, [b, c, d]);
    let round = 0;
    w.mitm.toClient = (f, pipe) => {
      if (pipe.id !== c.id || !isE2E(f, "brec", s.id)) return undefined;
      round++;
      if (round === 1) return msgFrame(s.id, flipped(e2eOf(f)!, "ct", 5)); // tampered
      if (round === 2) return [f, f]; // replayed
      return undefined;
    };
    for (const text of ["one", "two", "three"]) {
      s.chat.broadcastText(text);
      for (const p of [b, d]) await gotText(p, text);
      if (text !== "one") await gotText(c, text);
    }
    await waitFor(() => c.of("error").length >= 3, "c's errors", LONG);
    expect(b.texts()).toEqual(["one", "two", "three"]);
    expect(d.texts()).toEqual(["one", "two", "three"]);
    expect(c.texts()).toEqual(["two", "three"]); // the forgery is not shown, the copy is shown once
    expect(c.of("error").map((e) => e.code).sort()).toEqual(["lost", "replayed", "tampered"]);
    expect(c.of("error").every((e) => e.peer === s.id)).toBe(true);
    for (const p of [b, d, s]) expect(p.of("error")).toEqual([]);
  });
});

describe("/bmsg to many", () => {
  // Regression test for a fixed bug (lib/client/chat-client.ts, broadcastText): the length check keeps a
  // 1024-byte margin for the record and the envelope, but the envelope of a
  // broadcast also carries the recipient list (9 bytes per ID). With ~115 or
  // more recipients a message the client accepts makes a frame over the
  // relay's limit, and the relay disconnects the sender (frame_too_large).
  test("a /bmsg the client accepts never gets the sender disconnected, whatever the number of recipients (120 here)", async () => {
    const w = await start();
    const s = await w.party({ direct: true });
    const recipients: RawPeer[] = [];
    for (let i = 0; i < 120; i++) recipients.push(await w.rawPeer(s));
    for (const r of recipients) s.chat.verify(r.id); // peers that connected to s are in its broadcasts once s verified them
    const maxFrame = RELAY_DEFAULTS.maxFrame; // startTestRelay keeps the default
    const text = "x".repeat(maxFrame - 1024);
    let refused: unknown = null;
    try {
      s.chat.broadcastText(text);
    } catch (e) {
      refused = e; // refusing it up front (too_long) is fine too
    }
    if (refused) {
      expect((refused as ChatError).code).toBe("too_long");
    } else {
      await waitFor(() => recipients.every((r) => r.brecs().length === 1) || s.of("disconnected").length > 0, "the broadcast to arrive (or the sender to be cut off)", LONG);
      expect(s.of("disconnected")).toEqual([]);
      expect(textsOf((recipients[0]!.open(recipients[0]!.brecs()[0]!) as { plaintext: Uint8Array }).plaintext)).toEqual([text]);
    }
    // The longest text the client accepts for 120 recipients (IDs and tags counted) goes through.
    const longest = "y".repeat(maxFrame - 1024 - 42 * 120);
    s.chat.broadcastText(longest);
    await waitFor(() => recipients.every((r) => r.brecs().some((b) => r.open(b).ok)) || s.of("disconnected").length > 0, "the longest broadcast to arrive", LONG);
    expect(s.of("disconnected")).toEqual([]);
    // Either way the sender is still connected and can broadcast.
    s.chat.broadcastText("still connected");
    const opened = (r: RawPeer, b: Frame) => {
      const o = r.open(b);
      return o.ok ? textsOf(o.plaintext) : [];
    };
    await waitFor(() => recipients.every((r) => r.brecs().some((b) => opened(r, b).includes("still connected"))), "a later broadcast", LONG);
  });
});

describe("/bmsg ordering", () => {
  // Regression test for a fixed bug (lib/client/chat-client.ts, sealBroadcast): the broadcast is sealed in a
  // microtask that first seals every member's pending pairwise queue, so a /msg
  // typed after a /bmsg in the same tick leaves before it.
  test("a /bmsg then a /msg to one member, sent in the same tick, arrive in the order sent", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c, d] = [await w.party(), await w.party(), await w.party()];
    await connectAll(s, [b, c, d]);
    s.chat.broadcastText("warm-up"); // the sender key exists: no key record involved below
    for (const p of [b, c, d]) await gotText(p, "warm-up");
    s.chat.broadcastText("1: meeting at five (to all)");
    s.chat.sendText(b.id, "2: actually six (to b)");
    await waitFor(() => b.texts().length === 3, "b: both", LONG);
    expect(b.texts()).toEqual(["warm-up", "1: meeting at five (to all)", "2: actually six (to b)"]);
  });
});

// ---- Membership changes --------------------------------------------------------

// Regression (found in audit): broadcasts went to every session, and the client
// answers any key exchange on its own, so the relay could make up an ID, start a
// session with a user, and read that user's broadcasts from then on.
describe("who is in a broadcast", () => {
  test("a peer that started a session with us is not in our broadcasts until we /verify it; the peers we /connect'ed to are", async () => {
    const w = await start();
    const s = await w.party();
    const b = await w.party();
    await connectAll(s, [b]);
    const stranger = await w.rawPeer(s); // it connected to s: the relay, say, under an ID it made up
    expect(s.chat.broadcastText("for b only")).toEqual([b.id]);
    await gotText(b, "for b only");
    s.chat.sendText(stranger.id, "a private hello"); // after the broadcast in s's queue: anything for the stranger was sent before it
    await stranger.content((c) => c.t === "text", "the private message");
    stranger.pump();
    expect(stranger.brecs()).toEqual([]);
    expect(stranger.keys.size).toBe(0); // never given a sender key
    s.chat.verify(stranger.id); // s's user compared the fingerprint
    expect(s.chat.broadcastText("for both")).toEqual(ids([b, stranger]));
    await waitFor(() => (stranger.pump(), stranger.brecs().length === 1), "the broadcast at the verified peer", LONG);
    expect(stranger.keys.size).toBe(1);
  });

  test("with only sessions others started, /bmsg says who a broadcast goes to", async () => {
    const w = await start();
    const s = await w.party();
    await w.rawPeer(s);
    const err = (() => {
      try {
        s.chat.broadcastText("anyone?");
      } catch (e) {
        return e as ChatError;
      }
    })();
    expect(err?.code).toBe("no_sessions");
    expect(err?.message).toBe("no peers to broadcast to: a broadcast goes to the peers you /connect'ed to or /verify'd");
  });
});

describe("re-keying on membership change", () => {
  test("same members keep the sender key; a peer leaving or a new peer connecting makes the next broadcast use a new key id, distributed pairwise to exactly the new set", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c, d] = [await w.party(), await w.party(), await w.party()];
    await connectAll(s, [b, c, d]);
    const sent = () => uploads(w, s);
    const brecs = () => sent().filter((u) => u.type === "brec");
    /** Recipients of pairwise records the sender wrote between broadcast record i-1 and i. */
    const keyedBefore = (i: number) => {
      const all = sent();
      const list = all.filter((u) => u.type === "brec");
      const from = i === 0 ? 0 : all.indexOf(list[i - 1]!) + 1;
      return all.slice(from, all.indexOf(list[i]!)).filter((u) => u.type === "rec").map((u) => u.to as string).sort();
    };
    const kid = (i: number) => hex(brecs()[i]!.inner.kid);

    s.chat.broadcastText("m1");
    for (const p of [b, c, d]) await gotText(p, "m1");
    s.chat.broadcastText("m2");
    for (const p of [b, c, d]) await gotText(p, "m2");
    expect(brecs()).toHaveLength(2);
    expect(kid(0)).toMatch(/^[0-9a-f]{32}$/);
    expect(kid(1)).toBe(kid(0)); // nothing changed: same key, no new key sent
    expect(keyedBefore(0)).toEqual(ids([b, c, d]));
    expect(keyedBefore(1)).toEqual([]);
    expect(toList(brecs()[1]!.to)).toEqual(ids([b, c, d]));

    // d leaves.
    await d.chat.close();
    await waitFor(() => !s.chat.hasSession(d.id), "the sender to drop d", LONG);
    s.chat.broadcastText("m3");
    for (const p of [b, c]) await gotText(p, "m3");
    expect(kid(2)).not.toBe(kid(0));
    expect(toList(brecs()[2]!.to)).toEqual(ids([b, c]));
    expect(keyedBefore(2)).toEqual(ids([b, c])); // the new key went to b and c only

    // A newcomer connects (it initiates).
    const e = await w.party();
    await e.chat.connect(s.id);
    s.chat.verify(e.id); // e connected to s: in s's broadcasts once verified
    await s.chat.waitSession(e.id, LONG);
    s.chat.broadcastText("m4");
    for (const p of [b, c, e]) await gotText(p, "m4");
    expect(new Set([kid(0), kid(2), kid(3)]).size).toBe(3);
    expect(toList(brecs()[3]!.to)).toEqual(ids([b, c, e]));
    expect(keyedBefore(3)).toEqual(ids([b, c, e]));
    expect(e.texts()).toEqual(["m4"]); // nothing from before it joined

    // Someone merely online (no session with the sender) changes nothing.
    const f = await w.party();
    s.chat.broadcastText("m5");
    for (const p of [b, c, e]) await gotText(p, "m5");
    expect(kid(4)).toBe(kid(3));
    expect(keyedBefore(4)).toEqual([]);
    expect(toList(brecs()[4]!.to)).toEqual(ids([b, c, e]));

    for (const p of [b, c]) expect(p.texts()).toEqual(["m1", "m2", "m3", "m4", "m5"]);
    expect(e.texts()).toEqual(["m4", "m5"]);
    expect(f.of("message")).toEqual([]);
    expect(w.mitm.pipe(f.id).fromRelay.filter((x) => x.t === "msg")).toEqual([]);
    for (const p of [s, b, c, e, f]) expect(p.of("error")).toEqual([]);
  });

  test("a departed peer cannot decrypt a later broadcast: the key it held (K1) opens broadcast 1 but not the next one, which uses a new key it was never sent", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await connectAll(s, [b, c]);
    const d = await w.rawPeer(s); // the fourth client: hand-driven, so the test holds its keys
    s.chat.verify(d.id);

    s.chat.broadcastText("before d left");
    for (const p of [b, c]) await gotText(p, "before d left");
    await waitFor(() => d.brecs().length === 1, "d: the broadcast record", LONG);
    const brec1 = d.brecs()[0]!;
    d.pump();
    expect([...d.keys.keys()]).toEqual([hex(brec1.kid)]); // d was given exactly one sender key, K1
    const k1 = new Uint8Array(d.keys.get(hex(brec1.kid))!);
    const r1 = d.open(brec1);
    expect(r1.ok).toBe(true);
    expect(textsOf((r1 as { plaintext: Uint8Array }).plaintext)).toEqual(["before d left"]);

    // d leaves; the sender notices and forgets its session.
    d.link.close();
    await waitFor(() => s.of("session").some((e) => e.peer === d.id && e.state === "closed"), "the sender to drop d", LONG);
    const mark = uploads(w, s).length;
    s.chat.broadcastText("after d left");
    for (const p of [b, c]) await gotText(p, "after d left");
    const after = uploads(w, s).slice(mark);
    const brec2 = after.find((u) => u.type === "brec")!;
    expect(toList(brec2.to)).toEqual(ids([b, c])); // not even addressed to d
    expect(after.filter((u) => toList(u.to).includes(d.id))).toEqual([]); // no key record for d either
    expect(hex(brec2.inner.kid)).not.toBe(hex(brec1.kid));

    // Captured on the wire (the relay operator could hand it to d): K1 cannot open it ...
    expect(new ReceiveChain(new Uint8Array(k1)).open(brec2.inner)).toEqual({ ok: false, reason: "tampered" });
    // ... not under K1's key id, nor at any position along K1's chain.
    expect(new ReceiveChain(new Uint8Array(k1)).open({ ...brec2.inner, kid: brec1.kid })).toEqual({ ok: false, reason: "tampered" });
    for (let seq = 0; seq <= 16; seq++) {
      expect(new ReceiveChain(new Uint8Array(k1)).open({ ...brec2.inner, seq }).ok).toBe(false);
    }
    // The remaining recipients could.
    for (const p of [b, c]) expect(p.texts()).toEqual(["before d left", "after d left"]);
    for (const p of [s, b, c]) expect(p.of("error")).toEqual([]);
  });

  test("a newcomer cannot read earlier broadcasts: it is given only the new key K2; an earlier record replayed to it is rejected (raw peer: K2 cannot open it; real client: not shown, chain undisturbed)", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await connectAll(s, [b, c]);
    s.chat.broadcastText("old news");
    for (const p of [b, c]) await gotText(p, "old news");
    const brec1 = uploads(w, s).find((u) => u.type === "brec")!.inner;

    const e = await w.rawPeer(s); // a raw newcomer, so the test holds its keys
    s.chat.verify(e.id);
    const f = await w.party(); // a real newcomer behind the MITM
    await f.chat.connect(s.id);
    s.chat.verify(f.id);
    await s.chat.waitSession(f.id, LONG);
    s.chat.broadcastText("fresh news");
    for (const p of [b, c, f]) await gotText(p, "fresh news");
    await waitFor(() => e.brecs().length === 1, "e: the broadcast record", LONG);
    const brec2 = e.brecs()[0]!;
    e.pump();
    expect(hex(brec2.kid)).not.toBe(hex(brec1.kid));
    expect([...e.keys.keys()]).toEqual([hex(brec2.kid)]); // only K2, never K1
    const r2 = e.open(brec2);
    expect(r2.ok).toBe(true);
    expect(textsOf((r2 as { plaintext: Uint8Array }).plaintext)).toEqual(["fresh news"]);
    const k2 = e.keys.get(hex(brec2.kid))!;

    // The earlier record replayed to the newcomer: no key for its id, and K2 cannot open it (even relabelled).
    expect(e.keys.has(hex(brec1.kid))).toBe(false);
    expect(new ReceiveChain(new Uint8Array(k2)).open(brec1)).toEqual({ ok: false, reason: "tampered" });
    expect(new ReceiveChain(new Uint8Array(k2)).open({ ...brec1, kid: brec2.kid })).toEqual({ ok: false, reason: "tampered" });

    // The same replay against the real newcomer: under its own id, then relabelled with K2's id.
    const fp = w.mitm.pipe(f.id);
    fp.injectToClient(msgFrame(s.id, brec1));
    await waitFor(() => f.of("error").some((x) => x.code === "no_key"), "f: no_key", LONG);
    fp.injectToClient(msgFrame(s.id, brec2)); // the current record again: genuine tags, seq 0 already used
    await waitFor(() => f.of("error").some((x) => x.code === "replayed"), "f: replayed", LONG);
    fp.injectToClient(msgFrame(s.id, { ...brec1, kid: brec2.kid, seq: 1 })); // relabelled: its tags are for K1's tag keys
    await waitFor(() => f.of("error").some((x) => x.code === "tampered"), "f: tampered", LONG);
    expect(f.texts()).toEqual(["fresh news"]);
    // Its key chain was not disturbed: the next broadcast is shown, with nothing reported lost.
    s.chat.broadcastText("later news");
    for (const p of [b, c, f]) await gotText(p, "later news");
    expect(f.texts()).toEqual(["fresh news", "later news"]);
    expect(f.of("error").map((x) => x.code)).toEqual(["no_key", "replayed", "tampered"]);
    for (const p of [b, c]) expect(p.texts()).toEqual(["old news", "fresh news", "later news"]);
    for (const p of [s, b, c]) expect(p.of("error")).toEqual([]);
  });

  // Regression test for a fixed bug (lib/client/chat-client.ts, sealBroadcast): a new sender key travels in
  // the pairwise queue, which sealQueued holds back while we (as initiator) wait
  // for a peer's confirm; the broadcast record under that key is sent at once,
  // so that peer gets the record before the key, reports no_key and never shows it.
  test("a broadcast sent while a re-key with one member waits for that member's confirm still reaches that member", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c, d] = [await w.party(), await w.party(), await w.party()];
    await connectAll(s, [b, c, d]);
    let held: Frame | null = null;
    w.mitm.toClient = (f, pipe) => {
      if (held || pipe.id !== s.id || !isE2E(f, "confirm", b.id)) return undefined;
      held = f;
      return null; // b already uses the new keys; s waits for this
    };
    const rekey = s.chat.connect(b.id);
    rekey.catch(() => {});
    await waitFor(() => held, "b's confirm (held)", LONG);
    s.chat.broadcastText("during the re-key"); // a new sender key (first broadcast)
    await s.chat.flush(); // whatever the sender sends now, it has sent (it may also wait for the re-key)
    w.mitm.pipe(s.id).injectToClient(held!);
    await rekey;
    s.chat.broadcastText("after the re-key");
    for (const p of [b, c, d]) await gotText(p, "after the re-key");
    for (const p of [b, c, d]) expect(p.texts()).toEqual(["during the re-key", "after the re-key"]);
    for (const p of [b, c, d]) expect(p.of("error")).toEqual([]);
  });

  // ---- Broadcasts held for a member's re-key (regressions found in review) ----

  /** s with sessions to `peers`; s re-keys with `held` and the relay holds back its confirm. */
  async function holdReKey(w: World, s: Party, peers: Party[], held: Party) {
    await connectAll(s, peers);
    let confirm: Frame | null = null;
    w.mitm.toClient = (f, pipe) => {
      if (confirm || pipe.id !== s.id || !isE2E(f, "confirm", held.id)) return undefined;
      confirm = f;
      return null;
    };
    s.chat.connect(held.id).catch(() => {});
    await waitFor(() => confirm, `${held.id}'s confirm (held)`, LONG);
    return { release: () => w.mitm.pipe(s.id).injectToClient(confirm!) };
  }

  test("a broadcast held for a re-key goes to the members it was typed for, never to a peer that connected meanwhile", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    const hold = await holdReKey(w, s, [b, c], b);
    expect(s.chat.broadcastText("for b and c only")).toEqual(ids([b, c]));
    const d = await w.party(); // did not exist when the text was typed
    await d.chat.connect(s.id);
    s.chat.verify(d.id);
    hold.release();
    for (const p of [b, c]) await gotText(p, "for b and c only");
    s.chat.broadcastText("for b, c and d");
    for (const p of [b, c, d]) await gotText(p, "for b, c and d");
    expect(d.texts()).toEqual(["for b, c and d"]);
    for (const p of [b, c, d]) expect(p.of("error")).toEqual([]);
  });

  test("a broadcast held for a member's re-key goes to the others at once when that member leaves", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await holdReKey(w, s, [b, c], b);
    s.chat.broadcastText("X");
    await b.chat.close();
    await gotText(c, "X"); // with nothing else happening at s
    expect(s.of("error")).toEqual([]);
  });

  test("a broadcast held for its only member's re-key is reported not sent when that member leaves", async () => {
    const w = await start();
    const s = await w.party();
    const b = await w.party();
    await holdReKey(w, s, [b], b);
    s.chat.broadcastText("Y");
    await b.chat.close();
    await waitFor(() => s.of("error").length, "s: not sent", LONG);
    expect(s.of("error")).toEqual([{ event: "error", code: "not_sent", message: "1 broadcast text(s) not sent: none of their recipients has a session any more" }]);
  });

  test("broadcasts and private messages piled up during a re-key are sealed in records that fit a frame, in the order typed", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    const hold = await holdReKey(w, s, [b, c], b);
    const big = (tag: string, i: number) => `${tag}${i} ${"x".repeat(8000)}`;
    for (let i = 0; i < 40; i++) s.chat.broadcastText(big("all", i)); // 320 KB: more than one frame
    for (let i = 0; i < 40; i++) s.chat.sendText(b.id, big("b", i));
    s.chat.sendText(c.id, "c, after the broadcasts");
    hold.release();
    await waitFor(() => b.texts().length === 80, "b: 80 texts", LONG);
    await gotText(c, "c, after the broadcasts");
    const all = Array.from({ length: 40 }, (_, i) => big("all", i));
    expect(b.texts()).toEqual([...all, ...Array.from({ length: 40 }, (_, i) => big("b", i))]);
    expect(c.texts()).toEqual([...all, "c, after the broadcasts"]);
    expect(s.of("disconnected")).toEqual([]);
    for (const f of w.mitm.pipe(s.id).fromClient) expect((f.body as Uint8Array | undefined)?.length ?? 0).toBeLessThan(RELAY_DEFAULTS.maxFrame);
  });

  test("a member whose session ended on its side only and who connects again leaves the broadcasts (to us, a re-key it started, maybe the relay's) until we /verify it; then it gets a new sender key and later broadcasts reach it", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await connectAll(s, [b, c]);
    s.chat.broadcastText("one");
    await gotText(b, "one");
    w.mitm.pipe(b.id).injectToClient({ t: "left", id: s.id }); // the relay tells b alone that s left
    await waitFor(() => b.of("session").some((e) => e.peer === s.id && e.state === "closed"), "b: session with s closed", LONG);
    await b.chat.connect(s.id); // the documented recovery: to s, a re-key
    await waitFor(() => s.of("session").some((e) => e.peer === b.id && e.state === "rekeyed"), "s: re-keyed with b", LONG);
    expect(s.chat.broadcastText("two")).toEqual([c.id]);
    await gotText(c, "two");
    s.chat.verify(b.id); // s compared the new fingerprint
    s.chat.broadcastText("three");
    for (const p of [b, c]) await gotText(p, "three");
    expect(b.texts()).toEqual(["one", "three"]);
    expect(b.of("error")).toEqual([]);
  });

  // Regression test (found in audit): with the session gone on both sides and
  // back before the next broadcast, the member list looked unchanged, so the
  // sender kept the key the member had erased; every later broadcast to it
  // failed there with no_key, and the sender was never told.
  test("a member whose session ended on both sides and who connects again before the next broadcast gets a new sender key", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await connectAll(s, [b, c]);
    s.chat.broadcastText("one");
    for (const p of [b, c]) await gotText(p, "one");
    w.mitm.pipe(s.id).injectToClient({ t: "left", id: b.id }); // the relay tells each side the other left
    w.mitm.pipe(b.id).injectToClient({ t: "left", id: s.id });
    await waitFor(() => !s.chat.hasSession(b.id) && !b.chat.hasSession(s.id), "both sides: session closed", LONG);
    await s.chat.connect(b.id);
    await b.chat.waitSession(s.id, LONG);
    s.chat.broadcastText("two");
    for (const p of [b, c]) await gotText(p, "two");
    expect(b.texts()).toEqual(["one", "two"]);
    for (const p of [b, c]) expect(p.of("error")).toEqual([]);
  });

  // The sender key is symmetric, so every recipient can make records whose MAC
  // verifies; the per-recipient tags (docs/PROTOCOL.md §35.2, §38) are what stop
  // a recipient colluding with the relay (brief §4 adversary) from making the
  // sender appear to broadcast anything, or from using up its sequence numbers.
  test("a recipient holding the sender key cannot, with the relay's help, forge a broadcast that another recipient shows as coming from the sender", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await connectAll(s, [b, c]);
    const d = await w.rawPeer(s); // the insider
    s.chat.verify(d.id);
    s.chat.broadcastText("genuine");
    for (const p of [b, c]) await gotText(p, "genuine");
    await waitFor(() => d.brecs().length === 1, "d: the broadcast record", LONG);
    const brec1 = d.brecs()[0]!;
    d.pump();
    const chain = new SendChain(new Uint8Array(d.keys.get(hex(brec1.kid))!));
    chain.seal(new Uint8Array(16)); // seq 0 was "genuine"
    // A valid record MAC at the next seq, with the genuine record's tags (all d has).
    const forged = { ...chain.seal(pack({ t: "text", text: "forged by d" })), t: "brec", kid: brec1.kid, tags: brec1.tags };
    expect(new ReceiveChain(new Uint8Array(d.keys.get(hex(brec1.kid))!)).open({ ...forged, t: "rec" }).ok).toBe(true); // its MAC alone would pass
    w.mitm.pipe(b.id).injectToClient(msgFrame(s.id, forged)); // the relay stamps whatever `from` it likes
    await waitFor(() => b.of("error").some((x) => x.code === "tampered"), "b: tampered", LONG);
    // Nothing shown, and the sender's real seq 1 is not pre-empted: it is shown, nothing replayed or lost.
    s.chat.broadcastText("genuine again");
    for (const p of [b, c]) await gotText(p, "genuine again");
    expect(b.texts()).toEqual(["genuine", "genuine again"]);
    expect(b.of("error").map((x) => x.code)).toEqual(["tampered"]);
    expect(c.texts()).toEqual(["genuine", "genuine again"]);
  });

  // Regression in part (found in review): the check compared the `kid` only,
  // which the member chooses: the same key under a fresh kid was taken.
  test("a recipient handing the sender's own key back as its own, under its kid or a new one, is refused, so the sender's broadcast, replayed by it, is not shown as its message", async () => {
    const w = await start();
    const s = await w.party();
    const b = await w.party();
    await connectAll(s, [b]);
    const d = await w.rawPeer(s);
    s.chat.verify(d.id);
    s.chat.broadcastText("genuine");
    await gotText(b, "genuine");
    await waitFor(() => d.brecs().length === 1, "d: the broadcast record", LONG);
    const skey = await d.content((c) => c.t === "skey", "d: the sender key");
    d.record(skey); // "my broadcast key": s's own
    await waitFor(() => s.of("error").length > 0, "s: refuses its own key", LONG);
    const refused = ["malformed", `broadcast key from ${d.id} is our own: ignored`];
    expect(s.of("error").map((x) => [x.code, x.message])).toEqual([refused]);
    d.link.send(s.id, pack(d.brecs()[0]!)); // with that key and d's tag, this would open as d's
    await waitFor(() => s.of("error").length > 1, "s: no key for d's broadcast", LONG);
    expect(s.of("error")[1]).toMatchObject({ code: "no_key", peer: d.id });
    d.record({ ...skey, kid: randomBytes(16) }); // the same key, relabelled
    await waitFor(() => s.of("error").length > 2, "s: refuses it again", LONG);
    expect(s.of("error").slice(2).map((x) => [x.code, x.message])).toEqual([refused]);
    expect(s.texts()).toEqual([]);
  });
});

// ---- /bsend ---------------------------------------------------------------------

describe("/bsend", () => {
  test("~3 MiB to 4 peers: every peer saves a byte-identical file marked broadcast, the sender gets one 'delivered' per peer; it uploads ≈1× the file (socket bytes) while the relay forwards ≈4×", async () => {
    const w = await start();
    const proxy = w.counting();
    const s = await w.party({ port: proxy.port });
    const peers = [await w.party({ direct: true }), await w.party({ direct: true }), await w.party({ direct: true }), await w.party({ direct: true })];
    await connectAll(s, peers);
    const src = w.makeFile("payload.bin", 3 * MiB + 12345);
    const chunks = Math.ceil(src.size / CHUNK_BYTES);
    await s.chat.flush();
    const up0 = proxy.up;
    const sends0 = proxy.sends.length;
    const fwd0 = w.relay.stats().counters.bytesForwarded!;

    await s.chat.broadcastFile(src.path); // resolves once every peer reported it complete and verified

    const uploaded = proxy.up - up0;
    const forwarded = w.relay.stats().counters.bytesForwarded! - fwd0;
    console.log(`bsend to ${peers.length}: file ${src.size} B, sender uploaded ${uploaded} B (${(uploaded / src.size).toFixed(4)}×), relay forwarded ${forwarded} B (${(forwarded / src.size).toFixed(3)}×)`);
    expect(uploaded).toBeGreaterThan(src.size);
    expect(uploaded).toBeLessThanOrEqual(1.05 * src.size);
    expect(forwarded).toBeGreaterThan(peers.length * src.size);
    expect(forwarded).toBeLessThanOrEqual(1.05 * peers.length * src.size);
    const sent = proxy.sends.slice(sends0);
    const chunkSends = sent.filter((x) => x.type === "chunk");
    expect(chunkSends).toHaveLength(chunks); // each chunk encrypted and uploaded once ...
    for (const x of chunkSends) expect(toList(x.to)).toEqual(ids(peers)); // ... to the whole list
    expect(chunkSends.map((x) => x.inner.n)).toEqual(Array.from({ length: chunks }, (_, i) => i));

    for (const p of peers) {
      await waitFor(() => p.of("file").length === 1, `${p.id}: file`, LONG);
      expectFile(p, s, src, "payload.bin");
      expect(p.of("progress").at(-1)).toMatchObject({ direction: "in", bytes: src.size, size: src.size });
      expect(transfers(p).map((t) => t.state)).toEqual(["receiving"]);
      expect(p.of("error")).toEqual([]);
      expect(p.chat.activeTransfers()).toBe(0);
    }
    const fileId = peers[0]!.of("file")[0]!.id;
    expect(peers.every((p) => p.of("file")[0]!.id === fileId)).toBe(true); // one file, one ID for all
    expect(s.of("delivered").sort((x, y) => x.to.localeCompare(y.to))).toEqual(ids(peers).map((to) => ({ event: "delivered", to, id: fileId, name: "payload.bin", size: src.size, sha256: src.sha256, verified: false })));
    expect(transfers(s, "offered", "out").map((t) => t.peer).sort()).toEqual(ids(peers));
    expect(transfers(s, "sending", "out").map((t) => t.peer).sort()).toEqual(ids(peers));
    expect(transfers(s).filter((t) => !["offered", "sending"].includes(t.state))).toEqual([]);
    expect(s.of("progress").at(-1)).toMatchObject({ direction: "out", bytes: src.size, size: src.size });
    expect(s.of("error")).toEqual([]);
    expect(s.chat.activeTransfers()).toBe(0);
  });

  // Regression test for a fixed bug (lib/transfer/transfers.ts, onOffer): the temporary file is named after
  // the file ID alone (`.${tid}.smts-part`), and a broadcast gives every
  // recipient the same file ID, so recipients sharing a download directory
  // collide: all but the first decline with EEXIST.
  test("recipients that share one download directory each save their own copy (distinct names, no collision of temporary files)", async () => {
    const w = await start();
    const shared = w.tempDir("smts-bc-shared-");
    const s = await w.party();
    const peers = [await w.party({ dir: shared }), await w.party({ dir: shared }), await w.party({ dir: shared })];
    await connectAll(s, peers);
    const src = w.makeFile("report.pdf", 300_000);
    const outcome = await s.chat.broadcastFile(src.path).then(
      () => "delivered to all",
      (err: Error) => err.message,
    );
    expect(outcome).toBe("delivered to all");
    expect(listing(shared)).toEqual(["report (1).pdf", "report (2).pdf", "report.pdf"]);
    for (const name of listing(shared)) expect(sha256Hex(readFileSync(join(shared, name)))).toBe(src.sha256);
    for (const p of peers) expect(p.of("file")).toHaveLength(1);
  });

  // The file-layer counterpart of the limitation above (PROTOCOL.md "Limitation 2"):
  // recipients share the chunk key, so an insider with the relay can forge chunks
  // that pass the chunk MACs; the SHA-256 in the sender's pairwise offer must
  // still keep the victim from saving anything.
  test("an insider (a recipient, with the relay) replacing another recipient's chunks: the victim keeps nothing, the others get the real file", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await connectAll(s, [b, c]);
    const d = await w.rawPeer(s); // the insider: it declines, but it has seen the offer and its key
    s.chat.verify(d.id);
    let forgedChunks = 0;
    let offer: Frame | undefined;
    w.mitm.toClient = (f, pipe) => {
      if (pipe.id !== b.id || !isE2E(f, "chunk", s.id)) return undefined;
      offer ??= d.pump().find((x) => x.t === "offer");
      if (!offer) return undefined;
      const real = e2eOf(f)!;
      const n = real.n as number;
      const size = offer.size as number;
      const plain = new Uint8Array(Math.min(CHUNK_BYTES, size - n * CHUNK_BYTES)).fill(0x45); // same length, other bytes
      forgedChunks++;
      return msgFrame(s.id, sealChunk(fileKeys(new Uint8Array(offer.key as Uint8Array), offer.id as Uint8Array), offer.id as Uint8Array, n, real.last as boolean, plain));
    };
    const src = w.makeFile("target.bin", 5 * CHUNK_BYTES + 777);
    const sending = s.chat.broadcastFile(src.path);
    sending.catch(() => {});
    const theOffer = await waitFor(() => d.pump().find((x) => x.t === "offer"), "d: the offer", LONG);
    d.record({ t: "decline", id: theOffer.id, reason: "not interested" });
    const err = await rejection(sending);
    expect(forgedChunks).toBe(6);
    expect(err.code).toBe("partial");
    expect(err.message).toContain(b.id);
    expectFile(c, s, src, "target.bin");
    const ev = await waitFor(() => transfers(b, "failed", "in")[0], "b: transfer failed", LONG);
    expect(ev.reason).toMatch(/SHA-256/);
    await waitFor(() => partFiles(b.dir).length === 0, "b's temporary file removed", LONG);
    expect(listing(b.dir)).toEqual([]);
    expect(b.of("file")).toEqual([]);
    expect(s.of("delivered").map((x) => x.to)).toEqual([c.id]);
  });

  test("a recipient whose limit is smaller declines; the others get the file; the sender sees 'declined' for that peer, 'delivered' for the others, and broadcastFile rejects with code 'partial' naming it", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    const small = await w.party({ maxFileSize: 1 * MiB });
    await connectAll(s, [b, c, small]);
    const src = w.makeFile("big.bin", 3 * MiB);
    const err = await rejection(s.chat.broadcastFile(src.path));
    expect(err.code).toBe("partial");
    expect(err.message).toContain(small.id);
    expect(err.message).toMatch(/too large/);
    expect(err.message).toMatch(/delivered to 2 of 3/);
    for (const p of [b, c]) expectFile(p, s, src, "big.bin");
    expect(s.of("delivered").map((x) => x.to).sort()).toEqual(ids([b, c]));
    const declined = transfers(s, "declined", "out");
    expect(declined.map((t) => t.peer)).toEqual([small.id]);
    expect(declined[0]!.reason).toMatch(/too large/);
    expect(transfers(s, "failed")).toEqual([]);
    // The decliner saved nothing and was not sent a single chunk.
    expect(transfers(small, "declined", "in")).toHaveLength(1);
    expect(small.of("file")).toEqual([]);
    expect(listing(small.dir)).toEqual([]);
    expect(w.mitm.pipe(small.id).fromRelay.filter((f) => isE2E(f, "chunk"))).toEqual([]);
    for (const u of uploads(w, s).filter((x) => x.type === "chunk")) expect(toList(u.to)).toEqual(ids([b, c]));
  });

  test("a recipient that disconnects mid-way fails alone: the others complete; its temporary file is removed; the sender is told per recipient", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c, d] = [await w.party(), await w.party(), await w.party()];
    await connectAll(s, [b, c, d]);
    let cut = false;
    w.mitm.toClient = (f, pipe) => {
      if (pipe.id !== c.id || !isE2E(f, "chunk", s.id) || (e2eOf(f)!.n as number) < 5) return undefined;
      if (!cut) setTimeout(() => pipe.close(), 0); // c got chunks 0..4; its connection now drops
      cut = true;
      return null;
    };
    const src = w.makeFile("big.bin", 3 * MiB);
    const err = await rejection(s.chat.broadcastFile(src.path));
    expect(cut).toBe(true);
    expect(err.code).toBe("partial");
    expect(err.message).toContain(c.id);
    expect(err.message).toMatch(/delivered to 2 of 3/);
    for (const p of [b, d]) expectFile(p, s, src, "big.bin");
    expect(s.of("delivered").map((x) => x.to).sort()).toEqual(ids([b, d]));
    expect(transfers(s, "failed", "out").map((t) => t.peer)).toEqual([c.id]);
    const ev = await waitFor(() => transfers(c, "failed", "in")[0], "c: transfer failed", LONG);
    expect(ev.reason).toMatch(/disconnected/);
    await waitFor(() => partFiles(c.dir).length === 0, "c's temporary file removed", LONG);
    expect(listing(c.dir)).toEqual([]);
    expect(c.of("file")).toEqual([]);
  });

  test("a chunk tampered with on ONE recipient's link: that recipient fails verification and keeps nothing, the others complete, and its session goes on", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c, d] = [await w.party(), await w.party(), await w.party()];
    await connectAll(s, [b, c, d]);
    let attacked = 0;
    w.mitm.toClient = (f, pipe) => {
      if (pipe.id !== c.id || !isE2E(f, "chunk", s.id) || e2eOf(f)!.n !== 3) return undefined;
      attacked++;
      return msgFrame(s.id, flipped(e2eOf(f)!, "ct", 100));
    };
    const src = w.makeFile("big.bin", 3 * MiB);
    const err = await rejection(s.chat.broadcastFile(src.path));
    expect(attacked).toBe(1);
    expect(err.code).toBe("partial");
    expect(err.message).toContain(c.id);
    expect(err.message).toMatch(/chunk 3 failed verification/);
    for (const p of [b, d]) expectFile(p, s, src, "big.bin");
    expect(s.of("delivered").map((x) => x.to).sort()).toEqual(ids([b, d]));
    const failed = transfers(s, "failed", "out");
    expect(failed.map((t) => t.peer)).toEqual([c.id]);
    expect(failed[0]!.reason).toMatch(/chunk 3 failed verification/);
    const ev = await waitFor(() => transfers(c, "failed", "in")[0], "c: transfer failed", LONG);
    expect(ev.reason).toMatch(/chunk 3 failed verification/);
    await waitFor(() => partFiles(c.dir).length === 0, "c's temporary file removed", LONG);
    expect(listing(c.dir)).toEqual([]);
    expect(c.of("file")).toEqual([]);

    // Nothing else was disturbed: a broadcast message and a second broadcast file reach everyone.
    w.mitm.toClient = null;
    s.chat.broadcastText("still here");
    for (const p of [b, c, d]) await gotText(p, "still here");
    const again = w.makeFile("again.bin", 200_000);
    await s.chat.broadcastFile(again.path);
    expect(c.of("file").map((f) => f.sha256)).toEqual([again.sha256]);
    expect(sha256Hex(readFileSync(join(c.dir, "again.bin")))).toBe(again.sha256);
    for (const p of [b, c, d, s]) expect(p.of("error")).toEqual([]);
  });

  test("a recipient that never answers the offer does not hold the others back for long: after the answer window they get the file, it is reported failed", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c] = [await w.party(), await w.party()];
    await connectAll(s, [b, c]);
    const mute = await w.rawPeer(s); // gets the offer, says nothing
    s.chat.verify(mute.id);
    const src = w.makeFile("wait.bin", 1 * MiB);
    const err = await rejection(s.chat.broadcastFile(src.path));
    expect(err.code).toBe("partial");
    expect(err.message).toContain(mute.id);
    expect(err.message).toMatch(/no answer/);
    for (const p of [b, c]) expectFile(p, s, src, "wait.bin");
    expect(s.of("delivered").map((x) => x.to).sort()).toEqual(ids([b, c]));
    expect(transfers(s, "failed", "out").map((t) => t.peer)).toEqual([mute.id]);
    mute.pump();
    expect(mute.contents.filter((x) => x.t === "offer")).toHaveLength(1);
    expect(mute.contents.find((x) => x.t === "offer")!.bc).toBe(true);
    expect(mute.inbox.filter((f) => isE2E(f, "chunk"))).toEqual([]); // never accepted, never sent a chunk
  });

  // Regression test for a fixed bug (lib/transfer/transfers.ts, the sweeper in watch() → dropRecipient): when
  // the sender gives up on a recipient that did not answer within the answer
  // window, it does not tell that recipient. One whose `accept` was merely
  // slow has already opened a temporary file, and waits for chunks that never
  // come until its 60 s idle timeout.
  test("a recipient whose answer comes too late is told the sender gave up on it, and removes its temporary file at once", async () => {
    const w = await start();
    const s = await w.party();
    const [b, c, late] = [await w.party(), await w.party(), await w.party()];
    await connectAll(s, [b, c, late]);
    // Everything `late` says to the sender is held back (its accept among it).
    const held: Frame[] = [];
    w.mitm.toClient = (f, pipe) => (pipe.id === s.id && f.t === "msg" && f.src === late.id ? (held.push(f), null) : undefined);
    const src = w.makeFile("slow.bin", 1 * MiB);
    const err = await rejection(s.chat.broadcastFile(src.path));
    expect(err.code).toBe("partial");
    expect(err.message).toContain(late.id);
    expect(err.message).toMatch(/no answer/);
    for (const p of [b, c]) expectFile(p, s, src, "slow.bin");
    expect(held.length).toBeGreaterThan(0);
    expect(transfers(late, "receiving", "in")).toHaveLength(1); // it did accept, and opened a temporary file
    // The sender gave up on it: it should be told (cancel), not left to time out after 60 s.
    await waitFor(() => transfers(late).some((t) => t.state === "cancelled" || t.state === "failed"), "late: its transfer ended", 10_000);
    await waitFor(() => partFiles(late.dir).length === 0, "late's temporary file removed", 10_000);
  });

  test("one stalled recipient among many: the sender holds back when the relay says it is busy (never paused; memory bounded, far below the file size), the relay cuts the stalled one after its slow-consumer timeout, and the others complete", async () => {
    const w = await start({ slowTimeoutMs: 2000 });
    const SIZE = 32 * MiB;
    const s = await w.party({ direct: true, maxFileSize: 64 * MiB }); // direct: the MITM would buffer its uploads
    const [b, d] = [await w.party({ direct: true, maxFileSize: 64 * MiB }), await w.party({ direct: true, maxFileSize: 64 * MiB })];
    const c = await w.party({ maxFileSize: 64 * MiB }); // behind the MITM, which stops reading for it
    await connectAll(s, [b, c, d]);
    let stalled = false;
    w.mitm.toClient = (f, pipe) => {
      pipe.fromRelay.length = 0; // keep no log of tens of MiB
      if (!stalled && pipe.id === c.id && isE2E(f, "chunk", s.id)) {
        stalled = true;
        pipe.relaySocket!.pause(); // c's side stops reading from the relay
      }
      return undefined;
    };
    const src = w.makeFile("huge.bin", SIZE);
    let maxQueued = 0;
    let pausedSeen = 0;
    const sampler = setInterval(() => {
      const st = w.relay.stats();
      maxQueued = Math.max(maxQueued, st.maxQueuedBytes);
      pausedSeen = Math.max(pausedSeen, st.pausedSenders);
    }, 5);
    let err: Awaited<ReturnType<typeof rejection>>;
    try {
      err = await rejection(s.chat.broadcastFile(src.path));
    } finally {
      clearInterval(sampler);
    }
    console.log(`stalled recipient: relay max queue ${(maxQueued / MiB).toFixed(2)} MiB for a ${SIZE / MiB} MiB file; paused senders seen ${pausedSeen}`);
    expect(stalled).toBe(true);
    expect(w.relay.stats().counters.closed_slow_consumer).toBe(1);
    expect(w.relay.stats().counters.busy).toBeGreaterThanOrEqual(1); // for c (b and d may be told too, on a loaded machine)
    expect(pausedSeen).toBe(0); // it held back by itself, so the relay never had to pause it
    expect(maxQueued).toBeLessThan(RELAY_DEFAULTS.queuePause);
    expect(err.code).toBe("partial");
    expect(err.message).toContain(c.id);
    expect(err.message).toMatch(/delivered to 2 of 3/);
    for (const p of [b, d]) expectFile(p, s, src, "huge.bin");
    expect(s.of("delivered").map((x) => x.to).sort()).toEqual(ids([b, d]));
    expect(transfers(s, "failed", "out").map((t) => t.peer)).toEqual([c.id]);
    // The stalled client, once it reads again, finds itself disconnected and cleans up.
    w.mitm.pipe(c.id).relaySocket!.resume();
    await waitFor(() => c.of("disconnected").length === 1, "c: disconnected", LONG);
    await waitFor(() => transfers(c, "failed", "in").length === 1, "c: transfer failed", LONG);
    await waitFor(() => partFiles(c.dir).length === 0, "c's temporary file removed", LONG);
    expect(c.of("file")).toEqual([]);
    expect(w.relay.stats().queuedBytes).toBe(0);
  });
});
