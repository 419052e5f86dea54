// Hostile end-to-end tests: real relay, real chat clients (startChat), real
// sockets on 127.0.0.1, with a man in the middle (tests/mitm.ts) playing the
// adversary of brief §4 — the relay operator and the network, who can read,
// drop, delay, replay, reorder, modify and inject frames and lie about IDs.
// Each test is named after the original's flaw (brief §4) it proves impossible.
import { afterEach, describe, expect, setDefaultTimeout, test } from "bun:test";
import { mkdtempSync, readdirSync, readFileSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ChatError, startChat, type ChatClient, type ChatEvent } from "../lib/client/chat-client.ts";
import { joinRelay } from "../lib/link/relay-link.ts";
import { startDhEngine, type DhEngine } from "../lib/crypto/dh.ts";
import { GROUP_BYTES, isValidPublic, jacobi, P, toBigInt, toFixedBytes } from "../lib/crypto/group14.ts";
import { randomBytes } from "../lib/crypto/primitives.ts";
import { ID_ALPHABET } from "../lib/relay/protocol.ts";
import type { Relay } from "../lib/relay/server.ts";
import {
  commitment,
  initiatorConfirm,
  initiatorFinish,
  parseHello,
  respond,
  responderFinish,
  shortFingerprint,
  startInitiator,
} from "../lib/session/handshake.ts";
import { ReceiveChain, SendChain } from "../lib/session/records.ts";
import { newSenderKey, sealBroadcastRecord } from "../lib/session/sender-keys.ts";
import { formatEvent } from "../lib/ui/format.ts";
import { decodePayload, type Frame } from "../lib/wire/frame.ts";
import { joinTest, ROOT, SECRET, startTestRelay, waitFor, type TestClient } from "./helpers.ts";
import { e2eOf, flipBit, installDhMitm, isE2E, msgFrame, pack, startMitm, type Mitm } from "./mitm.ts";

const LONG = 15_000; // generous: the DH worker needs ~0.5–0.8 s to start, more on a busy machine
setDefaultTimeout(60_000);

let relay: Relay | null = null;
let mitm: Mitm | null = null;
let chats: ChatClient[] = [];
let engines: DhEngine[] = [];

let dirs: string[] = []; // download directories (twoThroughMitm(true)), removed after each test
afterEach(async () => {
  for (const c of chats) await c.close().catch(() => {});
  for (const d of dirs) rmSync(d, { recursive: true, force: true });
  dirs = [];
  const tapErrors = mitm?.errors ?? [];
  mitm?.stop();
  if (relay) await relay.stop();
  for (const e of engines) e.close();
  relay = mitm = null;
  chats = [];
  engines = [];
  expect(tapErrors).toEqual([]); // a test's tap threw: its assertions may not have run
});

function engine(): DhEngine {
  const e = startDhEngine();
  engines.push(e);
  return e;
}

interface Party {
  chat: ChatClient;
  id: string;
  events: ChatEvent[];
  dir?: string;
}

/** A chat client; with `downloadDir`, where its received files go (else nowhere it is told: the tests that use this receive none). */
async function party(port: number, dh: DhEngine = engine(), downloadDir?: string): Promise<Party> {
  const events: ChatEvent[] = [];
  const chat = await startChat({ host: "127.0.0.1", port, secret: SECRET, dh, onEvent: (e) => events.push(e), downloadDir });
  chats.push(chat);
  return { chat, id: chat.id, events, dir: downloadDir };
}

const texts = (p: Party) => p.events.flatMap((e) => (e.event === "message" ? [e.text] : []));
const errors = (p: Party, code?: string) => p.events.filter((e): e is Extract<ChatEvent, { event: "error" }> => e.event === "error" && (code === undefined || e.code === code));
const sessionEvents = (p: Party, peer: string) => p.events.filter((e): e is Extract<ChatEvent, { event: "session" }> => e.event === "session" && e.peer === peer);

/** Waits for the `n`-th error event with `code` from `peer` (1-based) and returns it. */
async function errorFrom(p: Party, code: string, peer: string, n = 1) {
  return waitFor(() => errors(p, code).filter((e) => e.peer === peer)[n - 1], `${code} error #${n} about ${peer}`, LONG);
}
async function message(p: Party, text: string) {
  await waitFor(() => texts(p).includes(text), `message "${text}"`, LONG);
}
async function sessionEvent(p: Party, peer: string, state: string, n = 1) {
  return waitFor(() => sessionEvents(p, peer).filter((e) => e.state === state)[n - 1], `session ${state} #${n} with ${peer}`, LONG);
}

/** Relay + MITM proxy + two chat clients joined through the proxy (`downloads`: each with a download directory of its own). */
async function twoThroughMitm(downloads = false): Promise<{ a: Party; b: Party; m: Mitm }> {
  relay = startTestRelay();
  mitm = startMitm(relay.port);
  const dir = () => (downloads ? (dirs.push(mkdtempSync(join(tmpdir(), "smts-hostile-"))), dirs.at(-1)) : undefined);
  const [a, b] = await Promise.all([party(mitm.port, engine(), dir()), party(mitm.port, engine(), dir())]);
  await waitFor(() => mitm!.pipes.filter((p) => p.id).length === 2, "both pipes to learn their IDs", LONG);
  return { a: a!, b: b!, m: mitm };
}

/** As twoThroughMitm, plus an established session A → B (A initiated). */
async function established(): Promise<{ a: Party; b: Party; m: Mitm }> {
  const t = await twoThroughMitm();
  await t.a.chat.connect(t.b.id);
  await t.b.chat.waitSession(t.a.id, LONG);
  expect(t.a.chat.fingerprint(t.b.id)).toBe(t.b.chat.fingerprint(t.a.id)!);
  return t;
}

/**
 * A hand-driven peer: a bare relay link that speaks the key exchange message
 * by message, so a test can put anything at all into a reply or reveal.
 */
async function handPeer(r: Relay): Promise<TestClient> {
  return joinTest(r, { watch: false });
}
async function nextE2E(c: TestClient, t: string, from: string): Promise<Frame> {
  const f = await c.next((x) => isE2E(x, t, from), `${t} from ${from}`, LONG);
  return e2eOf(f)!;
}

// Public values a peer must never get accepted (flaw 3).
const NON_RESIDUE = P - 2n; // p ≡ 7 (mod 8): (−1/p) = −1 and (2/p) = 1, so (−2/p) = −1
const BAD_VALUES: [string, Uint8Array][] = [
  ["0", toFixedBytes(0n)],
  ["1", toFixedBytes(1n)],
  ["p−1 (order 2)", toFixedBytes(P - 1n)],
  ["p", toFixedBytes(P)],
  ["p+1 (above p)", toFixedBytes(P + 1n)],
  ["2^2048−1 (above p)", new Uint8Array(GROUP_BYTES).fill(0xff)],
  ["p−2 (quadratic non-residue, outside the order-q subgroup)", toFixedBytes(NON_RESIDUE)],
];
function validValue(): Uint8Array {
  return toFixedBytes(4n ** 12345n % P); // a square, so in the subgroup: passes validation
}
const BAD_LENGTHS: [string, unknown][] = [
  ["255 bytes", validValue().subarray(1)],
  ["257 bytes (leading zero)", new Uint8Array([0, ...validValue()])],
  ["empty", new Uint8Array(0)],
  ["a number instead of bytes", 5],
  ["a string instead of bytes", "ff".repeat(256)],
];

describe("key exchange", () => {
  test("flaw 2 (silent re-keying): a new key exchange with an established peer is announced on both sides as rekeyed, with the new fingerprint, and verified resets to false", async () => {
    const { a, b } = await established();
    const first = a.chat.fingerprint(b.id)!;
    a.chat.verify(b.id);
    b.chat.verify(a.id);
    expect(b.chat.peers().find((p) => p.id === a.id)).toMatchObject({ session: "established", verified: true, fingerprint: first });

    await a.chat.connect(b.id); // a second key exchange with the same peer
    const onB = await sessionEvent(b, a.id, "rekeyed");
    const onA = await sessionEvent(a, b.id, "rekeyed");
    expect(onB.fingerprint).toBeString();
    expect(onB.fingerprint).not.toBe(first);
    expect(onA.fingerprint).toBe(onB.fingerprint!);
    expect(onA.verified).toBe(false);
    expect(onB.verified).toBe(false);
    expect(b.chat.peers().find((p) => p.id === a.id)).toMatchObject({ verified: false, fingerprint: onB.fingerprint });
    expect(a.chat.peers().find((p) => p.id === b.id)).toMatchObject({ verified: false, fingerprint: onA.fingerprint });
    // Exactly one "established" then one "rekeyed" on each side: nothing silent, nothing extra.
    expect(sessionEvents(b, a.id).map((e) => e.state)).toEqual(["established", "rekeyed"]);
    expect(sessionEvents(a, b.id).map((e) => e.state)).toEqual(["established", "rekeyed"]);
    // Who started it: B gets the alarm; A, who ran /connect again, is told so instead (found in audit).
    expect([onA.by, onB.by]).toEqual(["us", "peer"]);
    expect(formatEvent(onB)).toStartWith(`! ${a.id} made a NEW key exchange: fingerprint is now ${onB.fingerprint}`);
    expect(formatEvent(onA)).toBe(`* new key exchange with ${b.id} (you started it): fingerprint is now ${onA.fingerprint} (not verified). Compare it again, then /verify ${b.id}`);
    a.chat.sendText(b.id, "after re-key");
    await message(b, "after re-key");
  });

  test("flaw 2 (silent re-keying): a re-key injected by the relay, posing as A with its own key exchange, is announced on B with a fingerprint that no longer matches A's", async () => {
    const { a, b, m } = await established();
    const original = a.chat.fingerprint(b.id)!;
    b.chat.verify(a.id);
    const dhM = engine();
    // The MITM plays initiator "A" towards B and swallows B's answers on their way to A.
    const i = await startInitiator(dhM, a.id, b.id);
    let pending: Awaited<ReturnType<typeof initiatorFinish>>["pending"] | null = null;
    m.toClient = (f, pipe) => {
      if (pipe.id !== a.id || f.src !== b.id) return;
      const inner = e2eOf(f);
      if (inner?.t === "reply") {
        void initiatorFinish(dhM, i.state, inner).then(({ reveal, pending: p }) => {
          pending = p;
          m.pipe(b.id).injectToClient(msgFrame(a.id, reveal));
        });
        return null;
      }
      if (inner?.t === "confirm") return null;
    };
    m.pipe(b.id).injectToClient(msgFrame(a.id, i.hello));
    const ev = await sessionEvent(b, a.id, "rekeyed");
    expect(ev.verified).toBe(false);
    expect(ev.fingerprint).not.toBe(original);
    expect(b.chat.fingerprint(a.id)).not.toBe(a.chat.fingerprint(b.id)!);
    expect(a.chat.fingerprint(b.id)).toBe(original); // A saw nothing: comparing fingerprints now exposes it
    expect(b.chat.peers().find((p) => p.id === a.id)?.verified).toBe(false);
    expect(pending).not.toBeNull();
  });

  test("flaw 2 (silent re-keying): replaying A's old hello and reveal cannot re-key: key confirmation fails and the old session keeps working", async () => {
    const { a, b, m } = await established();
    const fp = b.chat.fingerprint(a.id)!;
    const pb = m.pipe(b.id);
    const oldHello = pb.fromRelay.find((f) => isE2E(f, "hello", a.id))!;
    const oldReveal = pb.fromRelay.find((f) => isE2E(f, "reveal", a.id))!;
    expect(oldHello && oldReveal).toBeTruthy();
    m.toClient = (f, pipe) => (pipe.id === a.id && isE2E(f, "reply", b.id) ? null : undefined); // keep A out of it
    const replies = () => m.pipe(a.id).fromRelay.filter((f) => isE2E(f, "reply", b.id)).length;
    expect(replies()).toBe(1); // the genuine one
    pb.injectToClient(oldHello);
    await waitFor(() => replies() === 2, "B's reply to the replayed hello", LONG);
    pb.injectToClient(oldReveal);
    const failed = await sessionEvent(b, a.id, "failed");
    expect(failed.reason).toMatch(/key confirmation failed/);
    expect(sessionEvents(b, a.id).map((e) => e.state)).toEqual(["established", "failed"]);
    expect(b.chat.fingerprint(a.id)).toBe(fp);
    a.chat.sendText(b.id, "still the same session");
    await message(b, "still the same session");
  });

  test("flaw 3 (unvalidated DH values): a reply carrying 0, 1, p−1, p, values above p, a non-residue, or a wrong length fails the key exchange; no session", async () => {
    expect(jacobi(NON_RESIDUE, P)).toBe(-1);
    relay = startTestRelay();
    const a = await party(relay.port);
    const h = await handPeer(relay);
    const cases: [string, unknown, RegExp][] = [
      ...BAD_VALUES.map(([name, v]): [string, unknown, RegExp] => [name, v, /invalid Diffie-Hellman value/]),
      ...BAD_LENGTHS.map(([name, v]): [string, unknown, RegExp] => [name, v, /malformed reply/]),
    ];
    let n = 0;
    for (const [name, pub, reason] of cases) {
      const connecting = a.chat.connect(h.link.id).then(
        () => "established",
        (e: Error) => e.message,
      );
      await nextE2E(h, "hello", a.id);
      h.link.send(a.id, pack({ t: "reply", v: 1, pub, nonce: randomBytes(32) }));
      const ev = await sessionEvent(a, h.link.id, "failed", ++n);
      expect({ name, reason: ev.reason }).toEqual({ name, reason: expect.stringMatching(reason) });
      expect(await connecting).toMatch(reason);
      expect(a.chat.hasSession(h.link.id)).toBe(false);
      expect(a.chat.fingerprint(h.link.id)).toBeNull();
      // A never revealed its value or confirmed anything after a bad reply.
      expect(h.frames.filter((f) => isE2E(f, "reveal") || isE2E(f, "confirm"))).toEqual([]);
    }
    expect(sessionEvents(a, h.link.id).every((e) => e.state === "failed")).toBe(true);
    // Control: the same hand-driven peer with a real value gets a session.
    const dhH = engine();
    const connecting = a.chat.connect(h.link.id);
    const r = await respond(dhH, h.link.id, a.id, parseHello(await nextE2E(h, "hello", a.id)));
    h.link.send(a.id, pack(r.reply));
    const fin = await responderFinish(dhH, r.state, await nextE2E(h, "reveal", a.id));
    h.link.send(a.id, pack(fin.confirm));
    await connecting;
    expect(a.chat.fingerprint(h.link.id)).toBe(shortFingerprint(fin.keys.fingerprint));
  });

  test("flaw 3 (unvalidated DH values): a reveal carrying 0, 1, p−1, p, values above p, a non-residue, or a wrong length fails the key exchange on the responder; no session", async () => {
    relay = startTestRelay();
    const a = await party(relay.port);
    const h = await handPeer(relay);
    const cases: [string, unknown, RegExp][] = [
      ...BAD_VALUES.map(([name, v]): [string, unknown, RegExp] => [name, v, /invalid Diffie-Hellman value/]),
      ...BAD_LENGTHS.map(([name, v]): [string, unknown, RegExp] => [name, v, /malformed reveal/]),
    ];
    let n = 0;
    for (const [name, pub, reason] of cases) {
      // Commit honestly to the bad value, so only the value check can stop it.
      const commit = pub instanceof Uint8Array ? commitment(pub) : randomBytes(32);
      h.link.send(a.id, pack({ t: "hello", v: 1, commit, nonce: randomBytes(32) }));
      await nextE2E(h, "reply", a.id);
      h.link.send(a.id, pack({ t: "reveal", v: 1, pub, confirm: randomBytes(32) }));
      const ev = await sessionEvent(a, h.link.id, "failed", ++n);
      expect({ name, reason: ev.reason }).toEqual({ name, reason: expect.stringMatching(reason) });
      expect(a.chat.hasSession(h.link.id)).toBe(false);
      expect(h.frames.filter((f) => isE2E(f, "confirm"))).toEqual([]);
    }
    expect(sessionEvents(a, h.link.id).every((e) => e.state === "failed")).toBe(true);
  });

  test("flaw 3 (unvalidated DH values): a relay substituting p−1 for B's real value in transit is caught by A's validation", async () => {
    const { a, b, m } = await twoThroughMitm();
    m.toClient = (f, pipe) => {
      if (pipe.id !== a.id || !isE2E(f, "reply", b.id)) return;
      return msgFrame(b.id, { ...e2eOf(f)!, pub: toFixedBytes(P - 1n) });
    };
    const outcome = await a.chat.connect(b.id).then(
      () => "established",
      (e: Error) => e.message,
    );
    expect(outcome).toMatch(/invalid Diffie-Hellman value/);
    expect((await sessionEvent(a, b.id, "failed")).reason).toMatch(/invalid Diffie-Hellman value/);
    expect(a.chat.hasSession(b.id)).toBe(false);
    expect(b.chat.hasSession(a.id)).toBe(false);
    expect(m.pipe(b.id).fromRelay.filter((f) => isE2E(f, "reveal"))).toEqual([]);
  });

  // Observed behaviour: the messages have no parameter fields at all; extra
  // `p`/`g`/`group` fields are ignored and both sides compute in group 14.
  // Proof: a peer computing strictly in group 14 (lib's own handshake with its
  // own DhEngine) completes key confirmation with the client, which would fail
  // if the client had used any other group.
  test("flaw 4 (peer-chosen group): a hello carrying p=23, g=5 is ignored; the responder answers with a 2048-bit group-14 value and confirms a group-14 key", async () => {
    relay = startTestRelay();
    const a = await party(relay.port);
    const h = await handPeer(relay);
    const dhH = engine();
    const i = await startInitiator(dhH, h.link.id, a.id);
    h.link.send(a.id, pack({ ...i.hello, p: toFixedBytes(23n, 1), g: 5, group: "tiny" }));
    const reply = await nextE2E(h, "reply", a.id);
    expect(Object.keys(reply).sort()).toEqual(["nonce", "pub", "t", "v"]); // no parameters echoed or chosen
    expect((reply.pub as Uint8Array).length).toBe(GROUP_BYTES);
    expect(isValidPublic(reply.pub as Uint8Array)).toBe(true);
    expect(toBigInt(reply.pub as Uint8Array) > 23n).toBe(true);
    const fin = await initiatorFinish(dhH, i.state, reply);
    h.link.send(a.id, pack({ ...fin.reveal, p: toFixedBytes(23n, 1), g: 5 }));
    const keys = initiatorConfirm(fin.pending, await nextE2E(h, "confirm", a.id));
    await sessionEvent(a, h.link.id, "established");
    expect(a.chat.fingerprint(h.link.id)).toBe(shortFingerprint(keys.fingerprint));
  });

  test("flaw 4 (peer-chosen group): a reply carrying p=23, g=5 is ignored; the initiator stays in group 14 and key confirmation succeeds", async () => {
    relay = startTestRelay();
    const a = await party(relay.port);
    const h = await handPeer(relay);
    const dhH = engine();
    const connecting = a.chat.connect(h.link.id);
    const hello = await nextE2E(h, "hello", a.id);
    expect(Object.keys(hello).sort()).toEqual(["commit", "nonce", "t", "v"]); // the initiator offers no parameters either
    const r = await respond(dhH, h.link.id, a.id, parseHello(hello));
    h.link.send(a.id, pack({ ...r.reply, p: toFixedBytes(23n, 1), g: 5, group: "tiny" }));
    const reveal = await nextE2E(h, "reveal", a.id);
    expect((reveal.pub as Uint8Array).length).toBe(GROUP_BYTES);
    expect(isValidPublic(reveal.pub as Uint8Array)).toBe(true);
    const fin = await responderFinish(dhH, r.state, reveal); // throws unless A used the group-14 secret
    h.link.send(a.id, pack(fin.confirm));
    await connecting;
    expect(a.chat.fingerprint(h.link.id)).toBe(shortFingerprint(fin.keys.fingerprint));
  });

  test("flaw 5 (man in the middle): a relay running its own key exchange with each side gives the two sides different fingerprints", async () => {
    const { a, b, m } = await twoThroughMitm();
    const spy = installDhMitm(m, engine(), a.id, b.id);
    await a.chat.connect(b.id);
    await b.chat.waitSession(a.id, LONG);
    await waitFor(() => spy.keysWith.size === 2 || spy.errors.length, "the MITM's two sessions", LONG); // B's confirm reaches it last
    expect(spy.errors).toEqual([]);
    // The attack "works" at the transport level (the MITM reads and re-encrypts)...
    a.chat.sendText(b.id, "meet at noon");
    await message(b, "meet at noon");
    expect(new TextDecoder().decode(spy.read[0]!.plaintext)).toContain("meet at noon");
    // ...and is exposed the moment the users compare fingerprints, short or long.
    expect(a.chat.fingerprint(b.id)).not.toBe(b.chat.fingerprint(a.id)!);
    expect(a.chat.fingerprint(b.id, true)).not.toBe(b.chat.fingerprint(a.id, true)!);
    const onA = (await sessionEvent(a, b.id, "established")).fingerprint;
    const onB = (await sessionEvent(b, a.id, "established")).fingerprint;
    expect(onA).not.toBe(onB!);
    // Each side's fingerprint is the one of its session with the MITM.
    expect(onA).toBe(shortFingerprint(spy.keysWith.get(a.id)!.fingerprint));
    expect(onB).toBe(shortFingerprint(spy.keysWith.get(b.id)!.fingerprint));
  });

  test("flaw 5 (man in the middle): a relay redirecting A's key exchange with B to C (and renaming C as B) fails key confirmation: the IDs are in the transcript", async () => {
    relay = startTestRelay();
    mitm = startMitm(relay.port);
    const [a, b, c] = (await Promise.all([party(mitm.port), party(mitm.port), party(mitm.port)])) as [Party, Party, Party];
    await waitFor(() => mitm!.pipes.filter((p) => p.id).length === 3, "three pipes", LONG);
    const m = mitm;
    m.toClient = (f, pipe) => {
      if (f.t !== "msg") return;
      if (pipe.id === b.id && f.src === a.id) return m.pipe(c.id).injectToClient(f), null; // A → "B" goes to C
      if (pipe.id === a.id && f.src === c.id) return { ...f, src: b.id }; // C's answers appear to come from B
    };
    void a.chat.connect(b.id).catch(() => {});
    const ev = await sessionEvent(c, a.id, "failed");
    expect(ev.reason).toMatch(/key confirmation failed/);
    expect(c.chat.hasSession(a.id)).toBe(false);
    expect(a.chat.hasSession(b.id)).toBe(false);
    expect(b.events.some((e) => e.event === "session")).toBe(false);
  });

  // A relay that substitutes only some values, without a full second
  // handshake, cannot produce a matching key confirmation. `fails` is the side
  // whose key-confirmation check catches it.
  const substitutions: [string, (m: Frame, own: Uint8Array) => Frame | undefined, "a" | "b"][] = [
    ["B's public value in the reply (with a valid value of the relay's own)", (m, own) => (m.t === "reply" ? { ...m, pub: own } : undefined), "b"],
    ["B's nonce in the reply", (m) => (m.t === "reply" ? { ...m, nonce: randomBytes(32) } : undefined), "b"],
    ["A's confirmation MAC in the reveal", (m) => (m.t === "reveal" ? { ...m, confirm: flipBit(m.confirm as Uint8Array, 0) } : undefined), "b"],
    ["B's confirmation MAC in the confirm", (m) => (m.t === "confirm" ? { ...m, confirm: flipBit(m.confirm as Uint8Array, 31) } : undefined), "a"],
  ];
  for (const [what, edit, fails] of substitutions) {
    test(`flaw 5 (man in the middle): substituting ${what} fails key confirmation on ${fails.toUpperCase()}, which gets no session`, async () => {
      const { a, b, m } = await twoThroughMitm();
      const own = (await engine().keypair()).pub; // a valid value the relay knows the exponent of
      m.toClient = (f) => {
        const inner = e2eOf(f);
        const changed = inner && edit(inner, own);
        return changed ? msgFrame(f.src as string, changed) : undefined;
      };
      void a.chat.connect(b.id).catch(() => {});
      const [victim, other] = fails === "a" ? [a, b] : [b, a];
      const ev = await sessionEvent(victim, other.id, "failed");
      expect(ev.reason).toMatch(/key confirmation failed/);
      expect(a.chat.hasSession(b.id)).toBe(false);
      if (fails === "b") expect(b.chat.hasSession(a.id)).toBe(false);
      expect(sessionEvents(victim, other.id).some((e) => e.state === "established")).toBe(false);
    });
  }

  test("flaw 5 (no commitment): the responder rejects a reveal whose value does not match the hello's commitment", async () => {
    const { a, b, m } = await twoThroughMitm();
    const own = (await engine().keypair()).pub; // valid, so only the commitment can stop it
    m.toClient = (f, pipe) => {
      if (pipe.id !== b.id || !isE2E(f, "reveal", a.id)) return;
      return msgFrame(a.id, { ...e2eOf(f)!, pub: own });
    };
    void a.chat.connect(b.id).catch(() => {});
    const ev = await sessionEvent(b, a.id, "failed");
    expect(ev.reason).toMatch(/does not match its commitment/);
    expect(b.chat.hasSession(a.id)).toBe(false);
    expect(m.pipe(a.id).fromRelay.filter((f) => isE2E(f, "confirm"))).toEqual([]); // B confirmed nothing
  });

  test("flaw 5 (no commitment): the initiator sends only a hash of its value and reveals the value only after the responder's value arrived", async () => {
    const { a, b, m } = await twoThroughMitm();
    const pa = m.pipe(a.id);
    const sentByA = () => pa.fromClient.filter((f) => f.t === "send").map((f) => e2eOf({ t: "msg", body: f.body })!);
    let heldReply: Frame | null = null;
    m.toClient = (f, pipe) => (pipe.id === a.id && isE2E(f, "reply", b.id) ? ((heldReply = f), null) : undefined);
    const connecting = a.chat.connect(b.id);
    await waitFor(() => heldReply, "B's reply", LONG);
    // B has answered; A has sent its commitment and nothing else.
    expect(sentByA().map((x) => x.t)).toEqual(["hello"]);
    const hello = sentByA()[0]!;
    expect(Object.keys(hello).sort()).toEqual(["commit", "nonce", "t", "v"]);
    m.toClient = null;
    pa.injectToClient(heldReply!);
    await connecting;
    const reveal = sentByA().find((x) => x.t === "reveal")!;
    expect([...(hello.commit as Uint8Array)]).toEqual([...commitment(reveal.pub as Uint8Array)]);
    expect(a.chat.fingerprint(b.id)).toBe(b.chat.fingerprint(a.id)!);
  });
});

describe("randomness", () => {
  test("flaw 6 (weak RNG): 50 public values from the DH engine are all distinct, valid group-14 values, and differ across engines", async () => {
    const e1 = engine();
    const e2 = engine();
    const pubs: string[] = [];
    for (let i = 0; i < 50; i++) {
      const kp = await e1.keypair();
      expect(kp.pub.length).toBe(GROUP_BYTES);
      expect(isValidPublic(kp.pub)).toBe(true);
      pubs.push(Buffer.from(kp.pub).toString("hex"));
      e1.forget(kp.handle);
    }
    expect(new Set(pubs).size).toBe(50);
    const other = await e2.keypair();
    expect(pubs).not.toContain(Buffer.from(other.pub).toString("hex")); // no fixed seed per worker
    // The public values are the ones of the private exponents used: both sides agree on the secret.
    const x = await e1.keypair();
    const [s1, s2] = await Promise.all([e1.secret(x.handle, other.pub), e2.secret(other.handle, x.pub)]);
    expect(Buffer.compare(s1, s2)).toBe(0);
    expect(s1.length).toBe(GROUP_BYTES);
    // A handle is good for exactly one secret. (Not `expect(...).rejects`: in Bun 1.4 it can hang
    // forever on a promise that a Worker message settles.)
    const reused = await e1.secret(x.handle, other.pub).then(() => "accepted", (e: Error) => e.message);
    expect(reused).toMatch(/unknown key handle/);
  });

  test("flaw 6 (weak RNG): the DH worker draws 32-byte private exponents from the CSPRNG, and nothing in lib/ uses Math.random", () => {
    const worker = readFileSync(`${ROOT}lib/crypto/dh-ops.ts`, "utf8");
    expect(worker).toMatch(/getRandomValues\(Buffer\.alloc\(32\)\)/);
    expect(worker).toMatch(/setPrivateKey\(priv\)/);
    const offenders: string[] = [];
    const walk = (dir: string) => {
      for (const e of readdirSync(dir, { withFileTypes: true })) {
        const path = `${dir}/${e.name}`;
        if (e.isDirectory()) walk(path);
        else if (e.name.endsWith(".ts") && /Math\.random/.test(readFileSync(path, "utf8"))) offenders.push(path);
      }
    };
    walk(`${ROOT}lib`);
    expect(offenders).toEqual([]);
  });
});

describe("records", () => {
  const tamperings: [string, (r: Frame) => Frame][] = [
    ["the first ciphertext byte", (r) => ({ ...r, ct: flipBit(r.ct as Uint8Array, 0) })],
    ["the last ciphertext byte (the padding: no padding oracle)", (r) => ({ ...r, ct: flipBit(r.ct as Uint8Array, (r.ct as Uint8Array).length - 1) })],
    ["an IV byte", (r) => ({ ...r, iv: flipBit(r.iv as Uint8Array, 5) })],
    ["a MAC byte", (r) => ({ ...r, mac: flipBit(r.mac as Uint8Array, 17) })],
    ["the sequence number", (r) => ({ ...r, seq: (r.seq as number) + 1 })],
    ["the ciphertext length (one block cut off)", (r) => ({ ...r, ct: (r.ct as Uint8Array).subarray(0, (r.ct as Uint8Array).length - 16) })],
    ["the ciphertext length (one block appended)", (r) => ({ ...r, ct: new Uint8Array([...(r.ct as Uint8Array), ...randomBytes(16)]) })],
  ];
  for (const [what, tamper] of tamperings) {
    test(`flaw 7 (no MAC): tampering ${what} of a record → not shown, "tampered" error naming the peer; the next genuine message is shown`, async () => {
      const { a, b, m } = await established();
      a.chat.sendText(b.id, "warm-up"); // so the record we tamper with is not seq 0
      await message(b, "warm-up");
      let done = false;
      m.toClient = (f, pipe) => {
        if (done || pipe.id !== b.id || !isE2E(f, "rec", a.id)) return;
        done = true;
        return msgFrame(a.id, tamper(e2eOf(f)!));
      };
      a.chat.sendText(b.id, "transfer 100 to Alice");
      const err = await errorFrom(b, "tampered", a.id);
      expect(err.message).toContain(a.id);
      expect(texts(b)).toEqual(["warm-up"]);
      a.chat.sendText(b.id, "genuine");
      await message(b, "genuine");
      expect(texts(b)).toEqual(["warm-up", "genuine"]);
      expect(errors(b).map((e) => e.code)).toEqual(["tampered", "lost"]); // the forged one counts as lost
      expect(b.chat.hasSession(a.id)).toBe(true);
    });
  }

  test("flaw 7 (no MAC): a tampered batch record (several messages sent in one tick) shows none of them, reported once", async () => {
    const { a, b, m } = await established();
    let done = false;
    m.toClient = (f, pipe) => {
      if (done || pipe.id !== b.id || !isE2E(f, "rec", a.id)) return;
      done = true;
      const r = e2eOf(f)!;
      return msgFrame(a.id, { ...r, ct: flipBit(r.ct as Uint8Array, 40) });
    };
    for (const text of ["one", "two", "three"]) a.chat.sendText(b.id, text); // one tick: one batch record
    await errorFrom(b, "tampered", a.id);
    a.chat.sendText(b.id, "after");
    await message(b, "after");
    expect(texts(b)).toEqual(["after"]);
    expect(errors(b).map((e) => e.code)).toEqual(["tampered", "lost"]);
    expect(m.pipe(b.id).fromRelay.filter((f) => isE2E(f, "rec", a.id)).length).toBe(2); // the batch was one record
  });

  test("flaw 8 (no sequence numbers): a replayed record is rejected as replayed; the session goes on", async () => {
    const { a, b, m } = await established();
    a.chat.sendText(b.id, "pay 10");
    await message(b, "pay 10");
    const recorded = m.pipe(b.id).fromRelay.find((f) => isE2E(f, "rec", a.id))!;
    m.pipe(b.id).injectToClient(recorded);
    const err = await errorFrom(b, "replayed", a.id);
    expect(err.message).toContain(a.id);
    a.chat.sendText(b.id, "pay 20");
    await message(b, "pay 20");
    expect(texts(b)).toEqual(["pay 10", "pay 20"]);
    // Replaying it again, much later, changes nothing.
    m.pipe(b.id).injectToClient(recorded, recorded);
    await errorFrom(b, "replayed", a.id, 3);
    expect(texts(b)).toEqual(["pay 10", "pay 20"]);
  });

  test("flaw 8 (no sequence numbers): two reordered records → the later one is shown with a loss report, the earlier one arriving late is rejected", async () => {
    const { a, b, m } = await established();
    let held: Frame | null = null;
    m.toClient = (f, pipe) => {
      if (pipe.id !== b.id || !isE2E(f, "rec", a.id)) return;
      if (!held) return (held = f), null;
      const both = [f, held];
      m.toClient = null;
      return both;
    };
    // Separate ticks: contents sent in one tick share one (batch) record.
    a.chat.sendText(b.id, "first");
    await a.chat.flush();
    a.chat.sendText(b.id, "second");
    await message(b, "second");
    await errorFrom(b, "replayed", a.id);
    expect((await errorFrom(b, "lost", a.id)).message).toMatch(/^1 record/);
    a.chat.sendText(b.id, "third");
    await message(b, "third");
    expect(texts(b)).toEqual(["second", "third"]);
    expect(errors(b).map((e) => e.code)).toEqual(["lost", "replayed"]);
  });

  test("flaw 8 (no sequence numbers): a dropped record is reported as lost when the next one arrives", async () => {
    const { a, b, m } = await established();
    let n = 0;
    m.toClient = (f, pipe) => (pipe.id === b.id && isE2E(f, "rec", a.id) && ++n === 2 ? null : undefined);
    for (const text of ["one", "two", "three"]) {
      a.chat.sendText(b.id, text);
      await a.chat.flush(); // one record each (one tick's contents share a batch record)
    }
    await message(b, "three");
    const lost = await errorFrom(b, "lost", a.id);
    expect(lost.message).toMatch(/^1 record\(s\) from/);
    expect(texts(b)).toEqual(["one", "three"]);
  });

  test("flaw 8 (one key for both directions): a record from A reflected back to A as if from B is rejected", async () => {
    const { a, b, m } = await established();
    let reflected = false;
    m.toClient = (f, pipe) => {
      if (reflected || pipe.id !== b.id || !isE2E(f, "rec", a.id)) return;
      reflected = true;
      m.pipe(a.id).injectToClient({ ...f, src: b.id }); // A's seq 0, back to A, from "B"
    };
    a.chat.sendText(b.id, "ping");
    await message(b, "ping");
    await errorFrom(a, "tampered", b.id);
    expect(texts(a)).toEqual([]);
    // And the reverse direction works with its own key.
    b.chat.sendText(a.id, "pong");
    await message(a, "pong");
    expect(texts(a)).toEqual(["pong"]);
  });

  test("flaw 8: a record from an earlier session (before a re-key) is rejected in the new one", async () => {
    const { a, b, m } = await established();
    a.chat.sendText(b.id, "old session");
    await message(b, "old session");
    const old = m.pipe(b.id).fromRelay.find((f) => isE2E(f, "rec", a.id))!;
    await a.chat.connect(b.id);
    await sessionEvent(b, a.id, "rekeyed");
    m.pipe(b.id).injectToClient(old); // seq 0 again, but under the new session's keys it is a forgery
    await errorFrom(b, "tampered", a.id);
    expect(texts(b)).toEqual(["old session"]);
  });
});

describe("injection", () => {
  test("flaw 1 (sender spoofing) end to end: a third client sending A's genuine record to B, claiming to be A, is stamped with its own ID and not shown", async () => {
    const { a, b, m } = await established();
    const c = await joinTest(relay!, { watch: false }); // a third client, joined to the real relay directly
    let stolen: Uint8Array | null = null;
    m.toClient = (f, pipe) => {
      if (stolen || pipe.id !== b.id || !isE2E(f, "rec", a.id)) return;
      stolen = f.body as Uint8Array;
      return null; // B never gets it from A
    };
    a.chat.sendText(b.id, "for B only");
    await waitFor(() => stolen, "A's record", LONG);
    c.link.sendFrame({ t: "send", to: b.id, src: a.id, body: stolen! });
    const err = await errorFrom(b, "no_session", c.link.id);
    expect(err.peer).toBe(c.link.id);
    // The relay sent those bytes to B twice: from A (dropped by the MITM) and from C, stamped C.
    expect(m.pipe(b.id).fromRelay.filter((f) => f.t === "msg" && Buffer.compare(f.body as Uint8Array, stolen!) === 0).map((f) => f.src)).toEqual([a.id, c.link.id]);
    expect(texts(b)).toEqual([]);
    a.chat.sendText(b.id, "next");
    await message(b, "next");
    expect(texts(b)).toEqual(["next"]);
  });

  test("injected records forged by the relay (posing as A) fail the MAC or the sequence checks and are never shown", async () => {
    const { a, b, m } = await established();
    const pb = m.pipe(b.id);
    const forged = (over: Frame) => msgFrame(a.id, { t: "rec", v: 1, seq: 0, iv: randomBytes(16), ct: randomBytes(32), mac: randomBytes(32), ...over });
    // A well-formed record sealed under a key the relay made up.
    const fake = new SendChain(randomBytes(32)).seal(pack({ t: "text", text: "forged under a guessed key" }));
    pb.injectToClient(forged({}), msgFrame(a.id, fake));
    await errorFrom(b, "tampered", a.id, 2);
    pb.injectToClient(forged({ seq: 5000 }), forged({ seq: 2 ** 53 - 1 }));
    await errorFrom(b, "too_far", a.id, 2);
    pb.injectToClient(forged({ seq: -1 }), forged({ seq: 1.5 }), forged({ v: 2 }), forged({ iv: randomBytes(15) }), forged({ ct: randomBytes(31) }), forged({ ct: new Uint8Array(0) }), forged({ mac: randomBytes(16) }));
    await errorFrom(b, "malformed", a.id, 7);
    // Plaintext content posing as a message, and garbage bodies.
    pb.injectToClient(msgFrame(a.id, { t: "text", text: "plaintext injection" }), { t: "msg", src: a.id, body: new Uint8Array([0xc1]) });
    await errorFrom(b, "malformed", a.id, 9);
    expect(texts(b)).toEqual([]);
    a.chat.sendText(b.id, "genuine");
    await message(b, "genuine");
    expect(texts(b)).toEqual(["genuine"]); // seq 0: none of the forgeries moved the chain
    expect(errors(b, "lost")).toEqual([]);
  });
});

describe("no session, no message", () => {
  test("records are never shown from a peer without a session: a stranger, before the key exchange, during it, and after the peer left", async () => {
    const { a, b, m } = await twoThroughMitm();
    const pb = m.pipe(b.id);
    // A client never sends a record without a session.
    expect(() => a.chat.sendText(b.id, "x")).toThrow(/no session/);
    // 1. A stranger's record (a real third client, its own random chain).
    const c = await joinTest(relay!, { watch: false });
    c.link.send(b.id, pack(new SendChain(randomBytes(32)).seal(pack({ t: "text", text: "from a stranger" }))));
    await errorFrom(b, "no_session", c.link.id);
    // 2. A record injected as from A before any key exchange.
    pb.injectToClient(msgFrame(a.id, new SendChain(randomBytes(32)).seal(pack({ t: "text", text: "before" }))));
    await errorFrom(b, "no_session", a.id);
    // 3. During the key exchange: B has answered A's hello and waits for the reveal.
    let heldReveal: Frame | null = null;
    m.toClient = (f, pipe) => (pipe.id === b.id && isE2E(f, "reveal", a.id) ? ((heldReveal = f), null) : undefined);
    const connecting = a.chat.connect(b.id);
    await waitFor(() => heldReveal, "A's reveal", LONG);
    expect(b.chat.peers().find((p) => p.id === a.id)?.session).toBe("connecting");
    pb.injectToClient(msgFrame(a.id, new SendChain(randomBytes(32)).seal(pack({ t: "text", text: "during" }))));
    await errorFrom(b, "no_session", a.id, 2);
    m.toClient = null;
    pb.injectToClient(heldReveal!);
    await connecting;
    a.chat.sendText(b.id, "in session");
    await message(b, "in session");
    // 4. After A left: a genuine record of A's, captured and delivered late.
    let late: Frame | null = null;
    m.toClient = (f, pipe) => (pipe.id === b.id && isE2E(f, "rec", a.id) ? ((late = f), null) : undefined);
    a.chat.sendText(b.id, "after leaving");
    await waitFor(() => late, "A's last record", LONG);
    await a.chat.close();
    await sessionEvent(b, a.id, "closed");
    expect(b.chat.hasSession(a.id)).toBe(false);
    pb.injectToClient(late!);
    await errorFrom(b, "no_session", a.id, 3);
    expect(texts(b)).toEqual(["in session"]);
  });

  // Found in audit: a relay could run a key exchange with B under B's own ID, and then
  // show messages and save files "from" B itself.
  test("a message from one's own ID (only a relay can send one) is ignored: no key exchange answered, no session, no text", async () => {
    const { b, m } = await twoThroughMitm();
    const pb = m.pipe(b.id);
    const sentToSelf: Frame[] = [];
    m.toRelay = (f) => void (f.t === "send" && f.to === b.id && sentToSelf.push(f));
    const { hello } = await startInitiator(engine(), b.id, b.id);
    pb.injectToClient(msgFrame(b.id, hello));
    pb.injectToClient(msgFrame(b.id, new SendChain(randomBytes(32)).seal(pack({ t: "text", text: "from yourself" }))));
    await waitFor(() => errors(b, "malformed").length === 2, "both messages refused", LONG);
    expect(errors(b, "malformed").map((e) => e.message)).toEqual(Array(2).fill("a message from our own ID: ignored (the relay is misbehaving)"));
    await Bun.sleep(200);
    expect(sentToSelf).toEqual([]);
    expect(sessionEvents(b, b.id)).toEqual([]);
    expect(b.chat.peers().some((p) => p.id === b.id)).toBe(false);
  });

  // Found in audit: the new session used to be announced as a plain "established", so the
  // relay could swap a verified session for its own without the re-key warning.
  test("a forged `left` from the relay erases the session; a relay-run key exchange posing as A afterwards is announced as a re-key (an honest relay never reuses an ID), unverified, with a fingerprint A does not have; /verify with the fingerprint compared before is refused", async () => {
    const { a, b, m } = await established();
    b.chat.verify(a.id);
    const fpA = a.chat.fingerprint(b.id);
    m.pipe(b.id).injectToClient({ t: "left", id: a.id });
    await sessionEvent(b, a.id, "closed");
    const dhM = engine();
    const i = await startInitiator(dhM, a.id, b.id);
    m.toClient = (f, pipe) => {
      if (pipe.id !== a.id || f.src !== b.id) return;
      const inner = e2eOf(f);
      if (inner?.t === "reply") void initiatorFinish(dhM, i.state, inner).then(({ reveal }) => m.pipe(b.id).injectToClient(msgFrame(a.id, reveal)));
      return null;
    };
    m.pipe(b.id).injectToClient(msgFrame(a.id, i.hello));
    const ev = await sessionEvent(b, a.id, "rekeyed");
    expect(ev.verified).toBe(false);
    expect(ev.fingerprint).not.toBe(fpA!);
    expect(sessionEvents(b, a.id).map((e) => e.state)).toEqual(["established", "closed", "rekeyed"]);
    expect(() => b.chat.verify(a.id, fpA!)).toThrow("not verified (did it change?)");
    expect(b.chat.peers().find((p) => p.id === a.id)?.verified).toBe(false);
    b.chat.verify(a.id, ev.fingerprint as string); // the fingerprint it has now: taken
    expect(b.chat.peers().find((p) => p.id === a.id)?.verified).toBe(true);
  });
});

// What the user gave a session must not go out under a session a relay made
// later by a re-key posing as the peer (found in audit): the re-key is
// announced, but nothing the user gave before it asked about the new one.
describe("after a re-key the relay made", () => {
  /**
   * The relay runs a key exchange with `victim` posing as `as`, swallowing the
   * victim's answers on their way to `as`; from then on it opens every record the
   * victim sends to `as` with the keys it made, and collects their contents; `seal`
   * makes a record from "as" under the relay's session, for the relay to inject.
   */
  async function takeOver(m: Mitm, victim: Party, as: Party) {
    const dhM = engine();
    const i = await startInitiator(dhM, as.id, victim.id);
    let pending: Awaited<ReturnType<typeof initiatorFinish>>["pending"] | null = null;
    let chain: ReceiveChain | null = null;
    let sender: SendChain | null = null;
    const read: Frame[] = [];
    m.toClient = (f, pipe) => {
      if (pipe.id !== as.id || f.src !== victim.id) return;
      const inner = e2eOf(f);
      if (inner?.t === "reply") {
        void initiatorFinish(dhM, i.state, inner).then(({ reveal, pending: p }) => ((pending = p), m.pipe(victim.id).injectToClient(msgFrame(as.id, reveal))));
      } else if (inner?.t === "confirm") {
        const keys = initiatorConfirm(pending!, inner);
        chain = new ReceiveChain(keys.receiveChain);
        sender = new SendChain(keys.sendChain);
      } else if (inner?.t === "brec") {
        read.push({ t: "brec" }); // a broadcast record addressed to `as`: the relay holds the sender key only if one came to its session
      } else if (inner?.t === "rec" && chain) {
        const r = chain.open(inner);
        if (r.ok) {
          const c = decodePayload(r.plaintext);
          read.push(...(c.t === "batch" ? (c.items as Frame[]) : [c]));
        }
      }
      return null; // nothing from the victim reaches `as` any more
    };
    m.pipe(victim.id).injectToClient(msgFrame(as.id, i.hello));
    await sessionEvent(victim, as.id, "rekeyed");
    await waitFor(() => sender, "the victim's confirm at the relay", LONG); // it may come after the victim's event
    return Object.assign(read, { seal: (content: Frame) => sender!.seal(pack(content)) });
  }

  test("a file given to send before it, still waiting for its turn, fails instead of being offered, file key and all, under the relay's session; the peer leaves the broadcasts", async () => {
    const { a, b, m } = await twoThroughMitm(true);
    await b!.chat.connect(a!.id);
    b!.chat.verify(a!.id); // compared: B trusts this session, with broadcasts and files
    // A's answers never reach B, so B's first 4 files stay offered and the 5th waits its turn.
    m.toClient = (f, pipe) => (pipe.id === b!.id && f.src === a!.id && e2eOf(f)?.t === "rec" ? null : undefined);
    const paths = [1, 2, 3, 4, 5].map((n) => join(b.dir!, `f${n}.txt`));
    paths.forEach((p, n) => writeFileSync(p, `file ${n + 1}`));
    const sends = paths.map((p) => b!.chat.sendFile(a!.id, p).then(() => "delivered", (e: Error) => e.message));
    await waitFor(() => b!.events.filter((e) => e.event === "transfer" && e.state === "queued").length === 1, "the 5th file queued", LONG);

    const read = await takeOver(m, b!, a!);
    expect(await sends[4]).toBe(`sending f5.txt to ${a!.id}: the session was re-keyed before the file went out: compare the new fingerprint, then send it again`);
    // The relay frees B's slots (it knows the 4 file IDs from their chunks, or guesses): nothing more is offered.
    expect(b!.chat.cancel("")).toBe(4); // the 4 offered under the old session go on until answered; called off here
    for (const o of await Promise.all(sends.slice(0, 4))) expect(o).toEndWith(": cancelled");
    await Bun.sleep(200); // anything still on its way to the relay
    expect(read.filter((c) => c.t === "offer")).toEqual([]); // before the fix: f5.txt's offer, with its key
    // The re-key was the peer's (as far as B can tell): A is out of B's broadcasts until B checks again.
    expect(() => b!.chat.broadcastText("to everyone I chose")).toThrow("no peers to broadcast to");
    const ev = sessionEvents(b!, a!.id).find((e) => e.state === "rekeyed")!;
    expect(formatEvent(ev)).toEndWith(`until you /verify ${a!.id}, it gets nothing from you (you had verified the old key).`);
  });

  test("a file coming in when it happens is saved, and its `done` gives the relay's session nothing of the file: a MAC only the sender can check (found in audit)", async () => {
    const { a, b, m } = await twoThroughMitm(true);
    await b!.chat.connect(a!.id);
    await a!.chat.waitSession(b!.id, LONG);
    // B's chunks wait at the relay until it has its own session with A, posing as B.
    const held: Frame[] = [];
    m.toClient = (f, pipe) => (pipe.id === a!.id && f.src === b!.id && e2eOf(f)?.t === "chunk" ? (held.push(f), null) : undefined);
    const path = join(b.dir!, "f.txt");
    writeFileSync(path, "saved, then confirmed");
    const sent = b!.chat.sendFile(a!.id, path).then(() => "delivered", (e: Error) => e.message);
    await waitFor(() => held.some((f) => (e2eOf(f) as { last?: boolean }).last), "the last chunk, held", LONG);
    const read = await takeOver(m, a!, b!);
    m.pipe(a!.id).injectToClient(...held);
    const file = await waitFor(() => a!.events.find((e) => e.event === "file"), "A saving the file", LONG);
    expect(file.verified).toBe(false);
    expect(readFileSync(join(a.dir!, "f.txt"), "utf8")).toBe("saved, then confirmed");
    const done = await waitFor(() => read.find((c) => c.t === "done"), "A's done, read by the relay", LONG);
    // Before the fix: the file's SHA-256, in the clear to the relay's session.
    expect(Object.keys(done).sort()).toEqual(["id", "mac", "t"]);
    expect(Buffer.from(done.mac as Uint8Array).toString("hex")).not.toBe(file.sha256);
    // A relay in the middle passes it on to B, under a session it makes with B posing as A: B can check it.
    const toB = await takeOver(m, b!, a!);
    m.pipe(b!.id).injectToClient(msgFrame(a!.id, toB.seal(done)));
    expect(await sent).toBe("delivered");
  });

  // Found in review: every member of a broadcast shares its file key, so without
  // the per-member dn all their `done`s were the same bytes.
  test("a broadcast member's `done` cannot be passed off as another's: the relay replays A's as B's, and the sender does not call B delivered", async () => {
    relay = startTestRelay();
    mitm = startMitm(relay.port);
    const m = mitm;
    const dir = () => (dirs.push(mkdtempSync(join(tmpdir(), "smts-hostile-"))), dirs.at(-1));
    const [s, a, b] = await Promise.all([party(m.port, engine(), dir()), party(m.port, engine(), dir()), party(m.port, engine(), dir())]);
    await waitFor(() => m.pipes.filter((p) => p.id).length === 3, "all pipes to learn their IDs", LONG);
    await s!.chat.connect(a!.id);
    await s!.chat.connect(b!.id);
    await a!.chat.waitSession(s!.id, LONG);
    await b!.chat.waitSession(s!.id, LONG);
    // The relay holds A's chunks and drops B's.
    const held: Frame[] = [];
    m.toClient = (f, pipe) => {
      if (f.src !== s!.id || e2eOf(f)?.t !== "chunk") return undefined;
      if (pipe.id === a!.id) held.push(f);
      return null;
    };
    const path = join(s.dir!, "f.txt");
    writeFileSync(path, "for A and B");
    const sent = s!.chat.broadcastFile(path).catch(() => {});
    await waitFor(() => held.some((f) => (e2eOf(f) as { last?: boolean }).last), "A's last chunk, held", LONG);
    // The relay re-keys with A posing as S, then lets A have the file: A's done comes under the relay's session.
    const fromA = await takeOver(m, a!, s!);
    m.pipe(a!.id).injectToClient(...held);
    const done = await waitFor(() => fromA.find((c) => c.t === "done"), "A's done, read by the relay", LONG);
    // Then it re-keys with S posing as B and hands S A's done as B's.
    const toS = await takeOver(m, s!, b!);
    m.pipe(s!.id).injectToClient(msgFrame(b!.id, toS.seal(done)));
    const failed = await waitFor(() => s!.events.find((e) => e.event === "transfer" && e.peer === b!.id && e.state === "failed"), "S: B failed", LONG);
    expect((failed as { reason?: string }).reason).toBe("the receiver's SHA-256 differs from ours");
    expect(s!.events.filter((e) => e.event === "delivered")).toEqual([]); // before the fix: delivered to B, who got nothing
    expect(b!.events.filter((e) => e.event === "file")).toEqual([]);
    void sent; // A's answer was the relay's to keep: the transfer waits for it until the test ends
  });

  test("control: a re-key we started carries over what was held for it, a file's accept among it: the file goes through", async () => {
    const { a, b, m } = await twoThroughMitm(true);
    await a!.chat.connect(b!.id);
    await b!.chat.waitSession(a!.id, LONG);
    // A re-keys; the relay holds A's reveal, so B still uses the old session while A
    // (past its reveal) holds what it sends B: B's offer comes, A's accept waits.
    let reveal: Frame | null = null;
    m.toClient = (f, pipe) => (pipe.id === b!.id && f.src === a!.id && e2eOf(f)?.t === "reveal" ? ((reveal = f), null) : undefined);
    const rekey = a!.chat.connect(b!.id);
    await waitFor(() => reveal, "A's reveal, held", LONG);
    const path = join(b.dir!, "f.txt");
    writeFileSync(path, "through the re-key");
    const sent = b!.chat.sendFile(a!.id, path);
    await waitFor(() => a!.events.find((e) => e.event === "transfer" && e.state === "receiving"), "A accepting", LONG);
    m.toClient = null;
    m.pipe(b!.id).injectToClient(reveal!);
    await rekey;
    await sent; // delivered: the accept went out under the new session
    expect(readFileSync(join(a.dir!, "f.txt"), "utf8")).toBe("through the re-key");
  });

  test("messages held behind a broadcast (waiting for another member's re-key) are not sent under the relay's session, and their loss is reported", async () => {
    relay = startTestRelay();
    mitm = startMitm(relay.port);
    const m = mitm;
    const [a, b, c] = await Promise.all([party(m.port), party(m.port), party(m.port)]);
    await waitFor(() => m.pipes.filter((p) => p.id).length === 3, "all pipes to learn their IDs", LONG);
    await b!.chat.connect(a!.id);
    await b!.chat.connect(c!.id);
    // B re-keys with C, and the relay holds C's confirm: B's broadcasts wait for
    // that exchange (the new key must reach C first), and so does what B sends
    // after a broadcast to anyone.
    let confirm: Frame | null = null;
    m.toClient = (f, pipe) => (pipe.id === b!.id && f.src === c!.id && e2eOf(f)?.t === "confirm" ? ((confirm = f), null) : undefined);
    const rekeyC = b!.chat.connect(c!.id);
    await waitFor(() => confirm, "C's confirm, held", LONG);
    b!.chat.broadcastText("held broadcast");
    b!.chat.sendText(a!.id, "secret for A");
    await Bun.sleep(200);
    expect(texts(a!)).not.toContain("secret for A"); // held, as it should be

    const read = await takeOver(m, b!, a!);
    const lost = await errorFrom(b!, "not_sent", a!.id);
    expect(lost.message).toBe(`1 message(s) to ${a!.id} not sent: a new key exchange with ${a!.id} replaced the session they waited for`);
    m.pipe(b!.id).injectToClient(confirm!); // C's exchange completes: the broadcast goes now, and what waited behind it (the relay still reads what goes to "A")
    await rekeyC;
    await message(c!, "held broadcast");
    await Bun.sleep(200);
    expect(read.filter((x) => x.t === "text")).toEqual([]); // before the fix: "secret for A", read by the relay
    // Nor the broadcast: A is no longer chosen, so neither the new sender key nor the record goes to it (found in review).
    expect(read.filter((x) => x.t === "skey" || x.t === "brec")).toEqual([]);
  });

  test("after it replaced a session the user had verified, nothing is sent to the peer until the user checks again (found in audit); messages say whether their session was verified", async () => {
    const { a, b, m } = await established();
    b.chat.verify(a.id, a.chat.fingerprint(b.id)!);
    b.chat.sendText(a.id, "before");
    await message(a, "before");
    expect(b.events.find((e) => e.event === "message")).toBeUndefined();
    a.chat.sendText(b.id, "from the real A");
    await message(b, "from the real A");
    expect(b.events.filter((e) => e.event === "message").at(-1)).toMatchObject({ from: a.id, verified: true });
    const read = await takeOver(m, b, a);
    expect(() => b.chat.sendText(a.id, "the password is hunter2")).toThrow(`${a.id}'s key is not the one you verified`);
    expect(await b.chat.sendFile(a.id, `${ROOT}package.json`).then(() => "sent", (e: ChatError) => e.code)).toBe("unverified");
    const fp = b.chat.fingerprint(a.id)!;
    b.chat.verify(a.id, fp); // the user compared the new fingerprint (with the relay, here) and took it
    b.chat.sendText(a.id, "after /verify");
    await waitFor(() => read.some((c) => c.text === "after /verify"), "the text under the new session", LONG);
    expect(read.filter((c) => c.t === "text").map((c) => c.text)).toEqual(["after /verify"]);
  });

  test("texts held for a peer the relay calls busy are not sent under the session that answers the user's own /connect later; their loss is reported (found in audit)", async () => {
    const { a, b, m } = await established();
    m.pipe(b.id).injectToClient({ t: "busy", peer: a.id }); // forged
    await Bun.sleep(100);
    for (let i = 0; i < 20; i++) b.chat.sendText(a.id, `log line ${i} `.padEnd(8000, "."));
    await Bun.sleep(100);
    b.chat.sendText(a.id, "held: the vault code is 4711"); // over the budget: held
    await Bun.sleep(200);
    expect(texts(a).filter((t) => t.startsWith("held"))).toEqual([]);
    // The user, seeing A silent, runs /connect A again; the relay answers as A.
    const dhM = engine();
    let state: Awaited<ReturnType<typeof respond>>["state"] | null = null;
    let chain: ReceiveChain | null = null;
    const read: string[] = [];
    m.toClient = (f, pipe) => {
      if (pipe.id !== a.id || f.src !== b.id) return;
      const inner = e2eOf(f);
      if (inner?.t === "hello") void respond(dhM, a.id, b.id, parseHello(inner)).then((r) => ((state = r.state), m.pipe(b.id).injectToClient(msgFrame(a.id, r.reply))));
      else if (inner?.t === "reveal") void responderFinish(dhM, state!, inner).then(({ keys, confirm }) => ((chain = new ReceiveChain(keys.receiveChain)), m.pipe(b.id).injectToClient(msgFrame(a.id, confirm))));
      else if (inner?.t === "rec" && chain) {
        const r = chain.open(inner);
        if (r.ok) {
          const c = decodePayload(r.plaintext);
          for (const x of c.t === "batch" ? (c.items as Frame[]) : [c]) read.push(x.text as string);
        }
      }
      return null;
    };
    await b.chat.connect(a.id);
    const lost = await errorFrom(b, "not_sent", a.id);
    expect(lost.message).toBe(`1 message(s) to ${a.id} not sent: a new key exchange with ${a.id} replaced the session they waited for`);
    m.pipe(b.id).injectToClient({ t: "ready", peer: a.id });
    b.chat.sendText(a.id, "after the new exchange"); // the user's own /connect: sending goes on
    await waitFor(() => read.includes("after the new exchange"), "the new text at the relay", LONG);
    expect(read).toEqual(["after the new exchange"]); // before the fix: the held text too
  });

  test("the user's own /connect lifts the block only once its exchange completes: a relay that drops it keeps its session blocked (found in review)", async () => {
    const { a, b, m } = await established();
    b.chat.verify(a.id);
    await takeOver(m, b, a); // blocked now
    const tap = m.toClient!;
    m.toClient = (f, pipe) => (pipe.id === a.id && f.src === b.id && e2eOf(f)?.t === "hello" ? null : tap(f, pipe)); // B's /connect goes nowhere
    const connecting = b.chat.connect(a.id).catch((e: ChatError) => e.code);
    await Bun.sleep(300);
    expect(() => b.chat.sendText(a.id, "the password is hunter2")).toThrow(`${a.id}'s key is not the one you verified`);
    expect(() => b.chat.broadcastText("to everyone I chose")).toThrow("no peers to broadcast to");
    void connecting;
  });

  test("a broadcast under a sender key the relay's session gave is not marked verified, even once the real peer's session is verified (found in review)", async () => {
    const { a, b, m } = await established();
    const read = await takeOver(m, b, a);
    const made = newSenderKey([b.id]);
    m.pipe(b.id).injectToClient(msgFrame(a.id, read.seal(made.skeys[0] as Frame))); // the relay's sender key, under its session
    await Bun.sleep(100);
    m.toClient = null;
    await b.chat.connect(a.id); // B re-keys with the real A
    b.chat.verify(a.id);
    m.pipe(b.id).injectToClient(msgFrame(a.id, sealBroadcastRecord(made.key, pack({ t: "text", text: "forged by the relay" }))));
    await message(b, "forged by the relay");
    expect(b.events.filter((e) => e.event === "message").at(-1)).toMatchObject({ from: a.id, broadcast: true, verified: false });
    a.chat.sendText(b.id, "the real A");
    await message(b, "the real A");
    expect(b.events.filter((e) => e.event === "message").at(-1)).toMatchObject({ from: a.id, broadcast: false, verified: true });
  });

  test("control: both sides run /connect at once on a session they have: each sees its own re-key, no alarm, and both still broadcast to the other (found in review)", async () => {
    const { a, b } = await established();
    await Promise.all([a.chat.connect(b.id), b.chat.connect(a.id)]);
    await waitFor(() => a.chat.fingerprint(b.id) === b.chat.fingerprint(a.id) && sessionEvents(a, b.id).length === 2 && sessionEvents(b, a.id).length === 2, "one new session on both sides", LONG);
    for (const [p, q] of [[a, b], [b, a]] as const) {
      expect(sessionEvents(p, q.id).at(-1)).toMatchObject({ state: "rekeyed", by: "us" });
      expect(p.chat.broadcastText(`from ${p.id}`)).toEqual([q.id]);
      await message(q, `from ${p.id}`);
    }
  });
});

// Regression (found in audit): a million `joined` frames (42 MiB from the relay)
// left a client holding a million IDs.
test("a relay announcing more than 100,000 made-up peers: the client keeps 100,000 and no more", async () => {
  const { a, m } = await twoThroughMitm();
  const id = (n: number) => `z${[...n.toString(32).padStart(7, "0")].map((c) => ID_ALPHABET[parseInt(c, 32)]).join("")}`;
  for (let from = 0; from < 100_050; from += 10_000) {
    const batch = Array.from({ length: Math.min(10_000, 100_050 - from) }, (_, i) => ({ t: "joined", id: id(from + i) }));
    m.pipe(a.id).injectToClient(...batch);
  }
  await waitFor(() => a.events.filter((e) => e.event === "peer").length >= 99_999, "the announcements read", LONG);
  await Bun.sleep(200);
  expect(a.chat.peers().filter((p) => p.online).length).toBe(100_000);
}, 60_000);

describe("key erasure under hostile handshakes", () => {
  /** Wraps an engine to check that every private exponent handed out is used or erased. */
  function tracked(dh: DhEngine) {
    const issued = new Set<number>();
    const done = new Set<number>();
    let making = 0;
    let mostAtOnce = 0; // key pairs asked for and not yet made, at most
    const wrapper: DhEngine = {
      async keypair() {
        mostAtOnce = Math.max(mostAtOnce, ++making);
        try {
          const kp = await dh.keypair();
          issued.add(kp.handle);
          return kp;
        } finally {
          making--;
        }
      },
      secret(handle, peer) {
        done.add(handle);
        return dh.secret(handle, peer);
      },
      forget(handle) {
        done.add(handle);
        dh.forget(handle);
      },
      close: () => dh.close(),
    };
    return { wrapper, leaked: () => [...issued].filter((h) => !done.has(h)), issued, mostAtOnce: () => mostAtOnce };
  }

  test("a hello answered normally, then closing: every private exponent is used or erased (control)", async () => {
    relay = startTestRelay();
    const t = tracked(engine());
    const a = await party(relay.port, t.wrapper);
    const h = await handPeer(relay);
    const i = await startInitiator(engine(), h.link.id, a.id);
    h.link.send(a.id, pack(i.hello));
    await nextE2E(h, "reply", a.id);
    h.link.send(a.id, pack(i.hello)); // a second hello later: the first exchange is abandoned
    await nextE2E(h, "reply", a.id);
    await a.chat.close();
    expect(t.issued.size).toBe(2);
    expect(t.leaked()).toEqual([]);
  });

  // Regression: with the first chat client, hellos that arrived in one read
  // all saw "no exchange in progress", each got a key pair, and all but the
  // last were replaced without dh.forget(), so their private exponents stayed
  // in the worker for good (a hostile relay could repeat it forever). The
  // per-exchange token in chat-client.ts now erases superseded key pairs.
  // Since the hello-flood fix, hellos that arrive while a key pair is being
  // made are answered by that one key pair (the newest hello wins).
  test("key erasure: hellos from one peer arriving in one read make one key pair and leave no private exponent un-erased", async () => {
    relay = startTestRelay();
    mitm = startMitm(relay.port);
    const t = tracked(engine());
    const a = await party(mitm.port, t.wrapper);
    await waitFor(() => mitm!.pipes[0]?.id, "pipe ID", LONG);
    const dhM = engine();
    const hellos: Frame[] = [];
    for (let i = 0; i < 10; i++) hellos.push(msgFrame("zzzzzzzz", (await startInitiator(dhM, "zzzzzzzz", a.id)).hello));
    mitm.pipe(a.id).injectToClient(...hellos); // one write, one read
    await waitFor(() => t.issued.size === 1, "one responder key pair", LONG);
    // A's reply goes to an ID that is not online: the relay's answer ends the exchange.
    await sessionEvent(a, "zzzzzzzz", "failed");
    await a.chat.close();
    expect(t.leaked()).toEqual([]);
    expect(t.issued.size).toBe(1);
  });

  // Regression (found in review): every hello queued a key pair in the DH
  // worker, with no bound; 300,000 hellos (26 MiB) from any client grew the
  // victim to 700 MiB and kept its worker busy for minutes, so real key
  // exchanges timed out.
  test("a flood of hellos from one client makes at most one key pair at a time for it; another peer's key exchange goes on", async () => {
    relay = startTestRelay();
    const t = tracked(engine());
    const a = await party(relay.port, t.wrapper);
    const b = await party(relay.port);
    const h = await handPeer(relay);
    const HELLOS = 50_000;
    let connecting: Promise<unknown> | null = null;
    for (let i = 0; i < HELLOS; i++) {
      h.link.send(a.id, pack({ t: "hello", v: 1, commit: randomBytes(32), nonce: randomBytes(32) }));
      if (h.link.backlog > 1 << 20) await h.link.drained(256 << 10);
      if (i === HELLOS / 2) connecting = b.chat.connect(a.id); // in the middle of the flood
    }
    await connecting;
    await sessionEvent(b, a.id, "established");
    await sessionEvent(a, b.id, "established");
    expect(t.mostAtOnce()).toBeLessThanOrEqual(2); // one for h, one for b
    expect(t.issued.size).toBeLessThan(HELLOS);
  });
});

// Regression (found in audit): every `ping` got a `pong`, congested or not, so a
// relay that stopped reading and sent pings grew the client's queue without bound
// (2 million pings: 18.8 MiB).
test("a relay that sends pings and does not read gets no more pongs once the client's queue is long: it stays bounded", async () => {
  relay = startTestRelay();
  mitm = startMitm(relay.port);
  const m = mitm;
  const link = await joinRelay({ host: "127.0.0.1", port: m.port, secret: SECRET });
  try {
    const pipe = await waitFor(() => m.pipes.find((p) => p.id === link.id), "the pipe", LONG);
    pipe.clientSocket.pause(); // the relay reads nothing more from this client
    // 2 million pings: 24 MB of pongs before the fix, more than the kernel's socket buffers take.
    for (let i = 0; i < 40; i++) {
      pipe.injectToClient(...Array.from({ length: 50_000 }, () => ({ t: "ping" })));
      await Bun.sleep(20);
    }
    await waitFor(() => pipe.toClient.bytes === 0, "the pings delivered", 30_000);
    await Bun.sleep(100);
    expect(link.backlog).toBeLessThan(1024 * 1024);
    pipe.clientSocket.resume();
  } finally {
    link.close();
  }
});
