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
