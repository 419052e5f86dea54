// The key-exchange state machine (lib/client/exchanges.ts) between two
// instances wired to each other in memory, with real DH engines, so that the
// timing of each step can be chosen: PROTOCOL.md §17.4 gives each step its own
// timeout, counted from the side's own last message.
import { afterEach, expect, test } from "bun:test";
import { ChatError } from "../lib/client/chat-error.ts";
import { ANSWERS_PER_SECOND, createExchanges, MAX_ANSWERING, type Exchanges } from "../lib/client/exchanges.ts";
import { randomBytes } from "../lib/crypto/primitives.ts";
import { E2E_VERSION } from "../lib/session/handshake.ts";
import { startDhEngine, type DhEngine } from "../lib/crypto/dh.ts";
import type { SessionKeys } from "../lib/session/handshake.ts";
import type { Frame } from "../lib/wire/frame.ts";

const engines: DhEngine[] = [];
afterEach(() => {
  for (const e of engines.splice(0)) e.close();
});

interface Side {
  ex: Exchanges;
  established: SessionKeys[];
  failed: string[];
}

/** Two sides, I and R; `delay(type)` is how long a message of that type takes to arrive (Infinity: lost). */
function pair(stepTimeoutMs: number, delay: (t: string) => number, congested = () => false): { i: Side; r: Side } {
  const sides: Record<string, Side> = {};
  const make = (me: string, other: string): Side => {
    const dh = startDhEngine();
    engines.push(dh);
    const side: Side = { ex: null!, established: [], failed: [] };
    side.ex = createExchanges({
      dh,
      myId: () => me,
      sendE2E(_peer, frame: Frame) {
        const ms = delay(frame.t as string);
        if (ms !== Infinity) setTimeout(() => void sides[other]!.ex.onFrame(me, frame), ms);
      },
      established: (_peer, keys) => side.established.push(keys),
      failed: (_peer, err: ChatError) => side.failed.push(err.message),
      stray: (_peer, err: ChatError) => side.failed.push(`stray: ${err.message}`),
      congested,
      known: () => false,
      stepTimeoutMs,
    });
    return (sides[me] = side);
  };
  return { i: make("iiiiiiii", "rrrrrrrr"), r: make("rrrrrrrr", "iiiiiiii") };
}

/** Waits until both DH workers are up (their start takes about 0.5 s), so short step timeouts measure the peer only. */
async function warm(): Promise<void> {
  await Promise.all(engines.map((e) => e.keypair().then((kp) => e.forget(kp.handle))));
}

async function settled(s: Side): Promise<void> {
  while (!s.established.length && !s.failed.length) await Bun.sleep(20);
}

// Regression (found in review): one timer covered the whole exchange, so an
// initiator whose reply came late failed soon after its reveal while the
// responder went on to establish a session (the half-established state of §21.1).
test("each step has its own timeout: a slow reply and a slow confirm, each within it, establish the session on both sides", async () => {
  const STEP = 2000;
  const { i, r } = pair(STEP, (t) => (t === "reply" || t === "confirm" ? 1200 : 0)); // 2.4 s in all, over one STEP
  await i.ex.start("rrrrrrrr");
  await settled(i);
  await settled(r);
  expect(i.failed).toEqual([]);
  expect(r.failed).toEqual([]);
  expect(i.established.length).toBe(1);
  expect(r.established.length).toBe(1);
  expect(Buffer.from(i.established[0]!.fingerprint).equals(Buffer.from(r.established[0]!.fingerprint))).toBe(true);
});

test("a step whose answer never comes times out", async () => {
  const { i } = pair(300, (t) => (t === "reply" ? Infinity : 0));
  await warm();
  await i.ex.start("rrrrrrrr");
  await settled(i);
  expect(i.failed).toEqual(["key exchange with rrrrrrrr timed out"]);
  expect(i.established).toEqual([]);
});

test("while the responder's queue is congested it does not answer a hello; the initiator times out", async () => {
  let replies = 0;
  const { i, r } = pair(1000, (t) => (t === "reply" && ++replies, 0), () => true);
  await warm();
  await i.ex.start("rrrrrrrr");
  await settled(i);
  expect(i.failed).toEqual(["key exchange with rrrrrrrr timed out"]);
  expect(replies).toBe(0);
  expect(r.ex.has("iiiiiiii")).toBe(false);
});

// Regression (found in audit): 40,000 hellos under made-up IDs held 40,000
// exchanges, kept the DH worker busy for minutes and delayed the user's own /connect.
test(`hellos under many IDs: at most ${MAX_ANSWERING} exchanges that peers started run at once; the others wait their turn, oldest first, and start at most at ${ANSWERS_PER_SECOND}/s after the first burst`, async () => {
  const dh = startDhEngine();
  engines.push(dh);
  const replies: string[] = [];
  const ex = createExchanges({
    dh,
    myId: () => "rrrrrrrr",
    sendE2E: (peer, f) => void (f.t === "reply" && replies.push(peer)),
    established() {},
    failed() {},
    stray() {},
    congested: () => false,
    known: () => false,
    stepTimeoutMs: 60_000,
  });
  const hello = () => ({ t: "hello", v: E2E_VERSION, commit: randomBytes(32), nonce: randomBytes(32) });
  const ids = Array.from({ length: 200 }, (_, i) => `p${String(i).padStart(7, "0")}`);
  const burst = performance.now(); // the burst takes every token at once
  await Promise.all(ids.map((id) => ex.onFrame(id, hello())));
  expect(ex.peers()).toEqual(ids.slice(0, MAX_ANSWERING));
  expect(replies.length).toBe(MAX_ANSWERING);
  // All slots taken: time alone starts none of the waiting ones.
  await Bun.sleep(300);
  expect(ex.peers().length).toBe(MAX_ANSWERING);
  // Slots freed: the waiting ones start, oldest first, only as fast as the rate refilled since the burst.
  for (const id of ex.peers()) ex.end(id);
  await Bun.sleep(300);
  const allowed = Math.floor(((performance.now() - burst) / 1000) * ANSWERS_PER_SECOND) + 1;
  const started = ex.peers();
  expect(started.length).toBeGreaterThan(0);
  expect(started.length).toBeLessThanOrEqual(allowed);
  expect(started).toEqual(ids.slice(MAX_ANSWERING, MAX_ANSWERING + started.length));
  for (const id of ids) ex.end(id); // running or waiting: nothing more starts
  await Bun.sleep(100);
  expect(ex.peers()).toEqual([]);
});

test("a peer we hold a session with re-keys without waiting for the rate; a new peer waits its turn", async () => {
  const dh = startDhEngine();
  engines.push(dh);
  const ex = createExchanges({
    dh,
    myId: () => "rrrrrrrr",
    sendE2E() {},
    established() {},
    failed() {},
    stray() {},
    congested: () => false,
    known: (peer) => peer === "kkkkkkkk",
    stepTimeoutMs: 60_000,
  });
  const hello = () => ({ t: "hello", v: E2E_VERSION, commit: randomBytes(32), nonce: randomBytes(32) });
  const burst = Array.from({ length: MAX_ANSWERING }, (_, i) => `p${String(i).padStart(7, "0")}`);
  await Promise.all(burst.map((id) => ex.onFrame(id, hello()))); // every token taken
  for (const id of burst) ex.end(id);
  const fresh = Array.from({ length: 200 }, (_, i) => `n${String(i).padStart(7, "0")}`); // more than the rate refilled since
  await Promise.all([...fresh.map((id) => ex.onFrame(id, hello())), ex.onFrame("kkkkkkkk", hello())]);
  expect(ex.peers()).toContain("kkkkkkkk"); // not behind the new peers waiting
  expect(fresh.filter((id) => !ex.peers().includes(id)).length).toBeGreaterThan(0); // some of those wait
  for (const id of [...fresh, "kkkkkkkk"]) ex.end(id);
});
