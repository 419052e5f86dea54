// A peer the relay says is busy (its queue is full, PROTOCOL §5.9, §10) must
// not be able to talk us into a pause at the relay, which would stop all our
// traffic: past 128 KiB sent to it since `busy` (half the relay's allowance),
// we answer none of its requests until `ready` (found in audit: a slow reader
// sent hellos or offers until its victim's answers got the victim paused).
// Real chat client, real relay; the relay's `busy`/`ready` come through the
// test MITM, the peer is a hand-driven raw peer.
import { afterAll, afterEach, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { startDhEngine, type DhEngine } from "../lib/crypto/dh.ts";
import { startWorld, type World } from "./broadcast-helpers.ts";
import { waitFor } from "./helpers.ts";

setDefaultTimeout(60_000);
const engines: DhEngine[] = [];
let world: World | null = null;
beforeAll(() => void engines.push(startDhEngine()));
afterAll(() => engines.forEach((e) => e.close()));
afterEach(async () => {
  await world?.close();
  world = null;
});

const sameId = (a: unknown, b: Uint8Array) => Buffer.from(a as Uint8Array).equals(Buffer.from(b));

test("past 128 KiB sent to a busy peer, its file offer is declined locally and not answered; after `ready`, offers are answered again", async () => {
  const w = (world = await startWorld(engines));
  const s = await w.party();
  const r = await w.rawPeer(s);
  const tell = (t: "busy" | "ready") => w.mitm.pipe(s.id).injectToClient({ t, peer: r.id });

  tell("busy");
  const early = r.offer("early.bin", 5); // within the budget: answered
  expect((await early.answer()).t).toBe("accept");
  for (let i = 0; i < 3; i++) s.chat.sendText(r.id, "x".repeat(50_000)); // 150 kB since `busy`
  await s.chat.flush();
  const ignored = r.offer("ignored.bin", 5);
  await waitFor(() => s.of("transfer").some((e) => e.state === "declined" && e.name === "ignored.bin"), "s declines it locally");
  expect(s.of("transfer").find((e) => e.name === "ignored.bin" && e.state === "declined")!.reason).toMatch(/not reading/);

  tell("ready");
  const later = r.offer("later.bin", 5);
  expect((await later.answer()).t).toBe("accept");
  r.pump();
  // Whatever s had sent about the ignored offer would have arrived before this answer (one session, in order).
  expect(r.contents.filter((c) => (c.t === "accept" || c.t === "decline") && sameId(c.id, ignored.id))).toEqual([]);
  expect(s.of("error")).toEqual([]);
});

// Before, messages typed past the budget went on to the relay, which then paused
// our whole connection (its allowance is 256 KiB): now they wait, unsealed, for `ready`.
test("past 128 KiB sent to a busy peer, further messages to it wait for `ready` (in order; past 512 KiB waiting, refused); a broadcast or the end of input sends them anyway", async () => {
  const w = (world = await startWorld(engines));
  const s = await w.party();
  const r = await w.rawPeer(s);
  const tell = (t: "busy" | "ready") => w.mitm.pipe(s.id).injectToClient({ t, peer: r.id });
  const texts = () => (r.pump(), r.contents.filter((c) => c.t === "text").map((c) => String(c.text).slice(0, 12)));

  // Each `busy` or `ready` reaches s before a text r sends after it (same stream from the relay).
  const told = async (t: "busy" | "ready", n: number) => {
    tell(t);
    r.record({ t: "text", text: `${t} ${n}` });
    await waitFor(() => s.of("message").some((m) => m.text === `${t} ${n}`), `s read ${t}`);
  };
  await told("busy", 1);
  for (let i = 0; i < 3; i++) s.chat.sendText(r.id, `early ${i} `.padEnd(50_000, "x")); // 150 kB since `busy`: over the budget once sealed
  await waitFor(() => texts().length === 3, "the first three at r");
  s.chat.sendText(r.id, "held 1");
  s.chat.sendText(r.id, "held 2");
  await Bun.sleep(200); // time for anything sent to arrive (nothing should)
  expect(texts()).toEqual(["early 0 xxxx", "early 1 xxxx", "early 2 xxxx"]);
  // A broadcast sends first what was held for its members only (found in review: it released r's too).
  const t = await w.party();
  await s.chat.connect(t.id);
  expect(s.chat.broadcastText("to t only")).toEqual([t.id]);
  await waitFor(() => t.of("message").some((m) => m.text === "to t only"), "the broadcast at t");
  await Bun.sleep(200);
  expect(texts()).toEqual(["early 0 xxxx", "early 1 xxxx", "early 2 xxxx"]);
  // A producer of commands (a script) waits once half of the 512 KiB waits for r; typed messages are refused at 512 KiB.
  for (let i = 0; i < 5; i++) s.chat.sendText(r.id, `bulk ${i} `.padEnd(60_000, "y"));
  let writable = false;
  const waited = s.chat.writable().then(() => void (writable = true));
  await Bun.sleep(200);
  expect(writable).toBe(false);
  let refused = "";
  for (let i = 5; i < 30 && !refused; i++) {
    try {
      s.chat.sendText(r.id, `bulk ${i} `.padEnd(60_000, "y"));
    } catch (err) {
      refused = (err as { code: string }).code;
    }
  }
  expect(refused).toBe("peer_busy"); // about 512 KiB wait for r
  await told("ready", 1);
  await waited; // released with the held content
  await waitFor(() => texts().length >= 6, "the held ones at r");
  const got = texts();
  expect(got.slice(3, 5)).toEqual(["held 1", "held 2"]);
  expect(got.slice(5).every((t, i) => t === `bulk ${i} `.padEnd(12, "y"))).toBe(true);

  await told("busy", 2);
  for (let i = 0; i < 3; i++) s.chat.sendText(r.id, "z".repeat(50_000));
  s.chat.sendText(r.id, "waits for the end");
  await s.chat.flush(); // the end of a script's input: what waits is sent
  await waitFor(() => texts().includes("waits for th"), "the last one at r");

  await told("busy", 3);
  for (let i = 0; i < 3; i++) s.chat.sendText(r.id, "z".repeat(50_000));
  s.chat.sendText(r.id, "before the broadcast");
  s.chat.verify(r.id); // a broadcast member now
  s.chat.broadcastText("to all"); // private messages typed before it go first, held or not
  await waitFor(() => texts().includes("before the b"), "the held one at r, with the broadcast");
  expect(r.brecs().length).toBe(1);
  expect(s.of("error")).toEqual([]);

  // Held when the peer leaves: reported, not dropped in silence.
  await told("busy", 4);
  for (let i = 0; i < 3; i++) s.chat.sendText(r.id, "z".repeat(50_000));
  s.chat.sendText(r.id, "never sent");
  await Bun.sleep(100);
  r.link.close();
  const lost = await waitFor(() => s.of("error").find((e) => e.code === "not_sent"), "the lost message reported");
  expect(lost).toEqual({ event: "error", code: "not_sent", message: `1 message(s) to ${r.id} not sent: the session ended (left) while they waited`, peer: r.id });
});

// A `done` held for a busy peer was dropped, with the user's texts, when a re-key
// the peer started completed meanwhile: its sender then waited 60 s and reported
// the file failed. File control is the client's own and tells a relay nothing (a
// `done` carries a MAC only the sender can check), so it goes on under the new
// session; texts do not.
test("file control held for a busy peer goes on under a re-key the peer started (texts held with it do not)", async () => {
  const w = (world = await startWorld(engines));
  const s = await w.party();
  const r = await w.rawPeer(s);
  const tell = (t: "busy" | "ready") => w.mitm.pipe(s.id).injectToClient({ t, peer: r.id });
  const texts = () => r.contents.filter((c) => c.t === "text").map((c) => String(c.text).slice(0, 12));

  const file = new Uint8Array([1, 2, 3, 4, 5]);
  const offer = r.offer("kept.bin", file.length);
  expect((await offer.answer()).t).toBe("accept");
  tell("busy");
  // s answers the re-key's hello while within its budget for busy r (past it, it would not: §28)...
  await r.rekey(async () => {
    // ... and holds what it has for r from here: 150 kB sent since `busy`, over the budget.
    for (let i = 0; i < 3; i++) s.chat.sendText(r.id, `early ${i} `.padEnd(50_000, "x"));
    await waitFor(() => r.inbox.filter((f) => f.t === "msg").length >= 3, "the first three at r");
    s.chat.sendText(r.id, "held text");
    offer.sendAll(file);
    await waitFor(() => s.of("file").some((f) => f.name === "kept.bin"), "s saved the file");
    await Bun.sleep(200); // time for anything sent to arrive (nothing should)
  });
  await waitFor(() => s.of("session").some((e) => e.peer === r.id && e.state === "rekeyed"), "the re-key at s");
  expect(texts()).toEqual(["early 0 xxxx", "early 1 xxxx", "early 2 xxxx"]);
  expect(r.contents.some((c) => c.t === "done")).toBe(false);
  expect(s.of("error")).toEqual([{ event: "error", code: "not_sent", message: `1 message(s) to ${r.id} not sent: a new key exchange with ${r.id} replaced the session they waited for`, peer: r.id }]);
  tell("ready");
  const done = await offer.outcome();
  expect(done.t).toBe("done");
  expect(sameId(done.mac, offer.doneMac(new Bun.CryptoHasher("sha256").update(file).digest()))).toBe(true);
  expect(texts()).toEqual(["early 0 xxxx", "early 1 xxxx", "early 2 xxxx"]);
});
