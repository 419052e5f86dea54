// The relay's collector (lib/relay/collector.ts): a full collection when
// forwarding grew the heap, never more than its time share, and wired into a
// real relay forwarding over real sockets.
import { afterEach, expect, test } from "bun:test";
import { churnCollector } from "../lib/relay/collector.ts";
import type { Relay } from "../lib/relay/server.ts";
import { joinTest, startTestRelay, waitFor } from "./helpers.ts";

const MiB = 1024 * 1024;

test("checks the heap after every `checkBytes` forwarded, and collects when it grew by `growth` since the last collection", () => {
  let heap = 10 * MiB;
  let runs = 0;
  const collect = () => (runs++, (heap = 12 * MiB));
  const c = churnCollector({ checkBytes: 4 * MiB, growth: 16 * MiB, share: 0.05, collect, heapBytes: () => heap, now: () => 0 });
  heap = 40 * MiB;
  expect(c.after(4 * MiB - 1)).toBe(false); // not checked yet
  expect(c.after(4 * MiB)).toBe(true); // 30 MiB over the 10 at the start
  expect(heap).toBe(12 * MiB);
  heap = 27 * MiB;
  expect(c.after(8 * MiB)).toBe(false); // 15 MiB over the 12 after the collection
  heap = 28 * MiB;
  expect(c.after(11 * MiB)).toBe(false); // grown enough, but only 3 MiB since the last check
  expect(c.after(12 * MiB)).toBe(true);
  expect(runs).toBe(2);
  expect(c.runs).toBe(2);
});

test("a collection that took d ms allows the next only after d × (1 − share) / share ms", () => {
  let clock = 1000;
  const collect = () => ((clock += 10), 0); // each takes 10 ms and leaves an empty heap
  let heap = 0;
  const c = churnCollector({ checkBytes: MiB, growth: MiB, share: 0.05, collect, heapBytes: () => heap, now: () => clock });
  heap = 100 * MiB; // and it grows again at once
  expect(c.after(MiB)).toBe(true); // 1000 → 1010: the next not before 1010 + 190
  clock = 1199;
  expect(c.after(5 * MiB)).toBe(false);
  clock = 1200;
  expect(c.after(6 * MiB)).toBe(true);
  expect(c.runs).toBe(2);
});

let relay: Relay | null = null;
afterEach(async () => void (await relay?.stop()));

test("a relay collects while forwarding, and forwards everything", async () => {
  relay = startTestRelay({ collectAfterGrowth: Number.NEGATIVE_INFINITY }); // at every check, whatever the heap did
  const a = await joinTest(relay, { watch: false });
  const b = await joinTest(relay, { watch: false });
  const body = new Uint8Array(128 * 1024).fill(7);
  for (let i = 0; i < 48; i++) {
    a.link.send(b.link.id, body);
    await a.link.drained(MiB);
  }
  await waitFor(() => b.frames.length === 48, "all 6 MiB to arrive", 20_000);
  expect(b.frames.every((f) => f.t === "msg" && (f.body as Uint8Array).length === body.length)).toBe(true);
  // 6 MiB, checked every 4 MiB: one collection.
  expect(relay.stats().counters.collections).toBe(1);
  a.link.close();
  b.link.close();
});
