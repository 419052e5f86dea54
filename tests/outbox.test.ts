// The write queue under partial writes, its bulk lane, and the relay's `send` fast path
// against the general decoder.
import { expect, test } from "bun:test";
import { Outbox } from "../lib/wire/outbox.ts";
import { msgFrameHeader, parseSimpleSend, rewriteSendAsMsg } from "../lib/relay/protocol.ts";
import { decodePayload, encodeFrame } from "../lib/wire/frame.ts";

/** A socket that takes `accept` bytes in all (then nothing, until it is set again), keeping what it took in `written`. */
function metered() {
  const m = {
    accept: 0,
    written: [] as number[],
    socket: {
      write(data: Uint8Array) {
        const n = Math.min(data.length, m.accept);
        m.accept -= n;
        for (let i = 0; i < n; i++) m.written.push(data[i]!);
        return n;
      },
    },
  };
  return m;
}

test("bytes leave in order, exactly once, whatever the socket accepts each time", () => {
  let seed = 7;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n);
  const written: number[] = [];
  let open = true;
  const socket = {
    write(data: Uint8Array) {
      if (!open) return -1;
      const n = Math.min(data.length, rand(3) === 0 ? 0 : rand(40_000));
      for (let i = 0; i < n; i++) written.push(data[i]!);
      return n;
    },
  };
  const box = new Outbox(socket);
  const expected: number[] = [];
  let value = 0;
  for (let round = 0; round < 300; round++) {
    const sizes = [rand(100), rand(20_000), rand(3) === 0 ? 70_000 : rand(10)];
    const a = new Uint8Array(sizes[0]!).map(() => value++ & 0xff);
    const b = new Uint8Array(sizes[1]!).map(() => value++ & 0xff);
    box.push(a, b);
    const c = new Uint8Array(sizes[2]!).map(() => value++ & 0xff);
    box.push(c);
    expected.push(...a, ...b, ...c);
    expect(box.bytes).toBe(expected.length - written.length);
    if (rand(2)) box.flush();
  }
  while (!box.flush());
  expect(box.bytes).toBe(0);
  expect(written.length).toBe(expected.length);
  expect(Buffer.from(written).equals(Buffer.from(expected))).toBe(true);
  open = false;
  box.push(new Uint8Array(10));
  expect(box.flush()).toBe(false);
  expect(box.closed).toBe(true);
});

test("small frames: a lone one is written alone; a burst is coalesced into writes that grow to 64 KiB; nothing is held once written", () => {
  const writes: number[] = [];
  const box = new Outbox({ write: (data) => (writes.push(data.length), data.length) });
  const frame = new Uint8Array(100).fill(1);
  box.push(frame);
  expect(box.flush()).toBe(true);
  expect(writes).toEqual([100]);
  // The memory promise (a relay holds thousands of idle outboxes): no staging buffer is kept.
  expect((box as unknown as { stage: Uint8Array | null }).stage).toBeNull();

  writes.length = 0;
  for (let i = 0; i < 2000; i++) box.push(frame); // 200,000 bytes in one turn
  expect(box.flush()).toBe(true);
  expect(writes.reduce((a, b) => a + b, 0)).toBe(200_000);
  expect(Math.max(...writes)).toBeLessThanOrEqual(64 * 1024);
  expect(writes.slice(0, 6)).toEqual([2000, 4000, 8100, 16300, 32700, 65500]); // 2, 4, ... 64 KiB stages of whole 100-byte frames
  expect(writes.length).toBeLessThan(10);

  writes.length = 0;
  for (let i = 0; i < 2000; i++) box.push(frame); // the next burst starts near the size the last one reached:
  box.flush();
  expect(writes[0]).toBe(32700); // 32 KiB, as that burst's last 64 KiB stage was less than a quarter full
  expect((box as unknown as { stage: Uint8Array | null }).stage).toBeNull();
});

// Regression (found in audit): each flush sealed the staging buffer, so a recipient
// that did not read got a 2 KiB buffer for every 36-byte frame queued (the relay
// flushes after each frame then): 60 times what `bytes` counted, 2.9 GiB of relay.
test("small frames to a socket that takes nothing, flushed one by one: the memory held stays near what is counted", () => {
  let open = false;
  const written: number[] = [];
  const box = new Outbox({ write: (data) => (open ? (written.push(...data), data.length) : 0) });
  const frame = (i: number) => new Uint8Array(36).fill(i & 0xff);
  for (let i = 0; i < 100_000; i++) {
    box.push(frame(i));
    expect(box.flush()).toBe(false);
  }
  expect(box.bytes).toBe(3_600_000);
  const inner = box as unknown as { queue: Uint8Array[]; head: number; stage: Uint8Array | null };
  const held = [...inner.queue.slice(inner.head), ...(inner.stage ? [inner.stage] : [])];
  expect(held.reduce((n, b) => n + b.buffer.byteLength, 0)).toBeLessThan(3_600_000 + 128 * 1024); // before the fix: 100,000 buffers of 2 KiB, 205 MB
  open = true;
  expect(box.flush()).toBe(true);
  expect(written.length).toBe(3_600_000);
  expect(written.every((b, j) => b === (Math.floor(j / 36) & 0xff))).toBe(true); // in order, exactly once

  // The same with frames to this recipient alone alternating with frames to several (found in
  // review: each shared one sealed the staging buffer nearly empty, and the next took a new one).
  open = false;
  written.length = 0;
  for (let i = 0; i < 20_000; i++) {
    box.push(frame(i));
    box.pushShared(new Uint8Array(40).fill((i + 128) & 0xff));
    box.flush();
  }
  expect(box.bytes).toBe(20_000 * 76);
  const held2 = [...inner.queue.slice(inner.head), ...(inner.stage ? [inner.stage] : [])];
  expect(held2.reduce((n, b) => n + b.buffer.byteLength, 0)).toBeLessThan(20_000 * 76 + 128 * 1024); // before the fix: 41 MB
  open = true;
  expect(box.flush()).toBe(true);
  expect(written.length).toBe(20_000 * 76);
});

test("the relay's send fast path agrees with the general decoder, or declines", () => {
  const cases = [
    { t: "send", to: "abcdefgh", body: new Uint8Array(0) },
    { t: "send", to: "abcdefgh", body: new Uint8Array(255).fill(1) },
    { t: "send", to: "abcdefgh", body: new Uint8Array(256).fill(2) },
    { t: "send", to: "abcdefgh", body: new Uint8Array(65_535).fill(3) },
    { t: "send", to: "abcdefgh", body: new Uint8Array(65_536).fill(4) },
  ];
  for (const c of cases) {
    const payload = encodeFrame(c).subarray(4);
    const fast = parseSimpleSend(payload)!;
    const slow = decodePayload(payload);
    expect(fast.to).toBe(slow.to as string);
    expect(Buffer.compare(fast.body, slow.body as Uint8Array)).toBe(0);
    // Rewritten in place, the frame is byte for byte the msg the relay would build.
    const frame = encodeFrame(c);
    rewriteSendAsMsg(frame.subarray(4), "k3x9pm2q");
    expect(Buffer.compare(frame, Buffer.concat([msgFrameHeader("k3x9pm2q", c.body.length), c.body]))).toBe(0);
  }
  // Anything else goes the general way.
  const others = [
    { t: "send", to: ["abcdefgh"], body: new Uint8Array(1) },
    { t: "send", to: "abcdefgh", body: new Uint8Array(1), ref: 1 },
    { to: "abcdefgh", t: "send", body: new Uint8Array(1) },
    { t: "send", to: "abcdefghi", body: new Uint8Array(1) },
    { t: "send", to: "abcdefgh", body: "text" },
    { t: "list" },
  ];
  for (const o of others) expect(parseSimpleSend(encodeFrame(o).subarray(4))).toBeNull();
  const truncated = encodeFrame(cases[1]!).subarray(4, 100);
  expect(parseSimpleSend(truncated)).toBeNull();
  const trailing = new Uint8Array([...encodeFrame(cases[1]!).subarray(4), 0]);
  expect(parseSimpleSend(trailing)).toBeNull();
});

// Regression (found in review): a relay's small frame to many recipients was
// copied into each one's staging buffer, so 1,000 recipients that fell behind
// held 1,000 copies of every frame (1.7 GB of relay RSS in 15 s).
test("a shared frame is queued by reference once the outbox is behind, and still leaves in order, exactly once", () => {
  const m = metered();
  const box = new Outbox(m.socket);
  box.push(new Uint8Array([1, 2]));
  box.flush(); // nothing taken: behind from now on
  const frame = new Uint8Array([3, 4, 5]);
  box.pushShared(frame);
  box.push(new Uint8Array([6]));
  frame[0] = 30; // the caller's buffer, shared: what leaves is what it holds then
  expect(box.bytes).toBe(6);
  m.accept = 100;
  expect(box.flush()).toBe(true);
  expect(m.written).toEqual([1, 2, 30, 4, 5, 6]);
  // An empty outbox stages it like any small piece (m.written at once, or copied).
  const early = new Uint8Array([7]);
  m.accept = 0;
  box.pushShared(early);
  early[0] = 70;
  m.accept = 100;
  box.flush();
  expect(m.written.at(-1)).toBe(7);
});

test("`total` counts a frame shared by several outboxes once, until the last of them wrote it or closed", () => {
  const total = { bytes: 0 };
  const [sa, sb, sc] = [metered(), metered(), metered()];
  const [a, b, c] = [new Outbox(sa.socket, total), new Outbox(sb.socket, total), new Outbox(sc.socket, total)];
  const big = new Uint8Array(20_000); // queued by reference (16 KiB and up)
  for (const box of [a, b, c]) box.pushShared(big);
  a.push(new Uint8Array(100)); // a's own
  expect([a.bytes, b.bytes, c.bytes]).toEqual([20_100, 20_000, 20_000]);
  expect(total.bytes).toBe(20_100);
  // Part written by one, all by another: the frame is still held by the third.
  sa.accept = 5_000;
  a.flush();
  sb.accept = 30_000;
  b.flush();
  expect([a.bytes, b.bytes, c.bytes]).toEqual([15_100, 0, 20_000]);
  expect(total.bytes).toBe(20_100);
  c.close();
  expect(total.bytes).toBe(20_100); // a still holds it (its unsent tail)
  sa.accept = 15_050;
  a.flush();
  expect(a.bytes).toBe(50);
  expect(total.bytes).toBe(50); // the frame's last holder wrote it: only a's own 50 bytes left
  a.close();
  b.close();
  expect(total.bytes).toBe(0);
});

test("shared frames in the bulk lane (a relay's `bulk` to many): `total` counts them once, also after one moved to the first lane, until the last holder wrote it or closed", () => {
  const total = { bytes: 0 };
  const [sa, sb, sc] = [metered(), metered(), metered()];
  const [a, b, c] = [new Outbox(sa.socket, total), new Outbox(sb.socket, total), new Outbox(sc.socket, total)];
  const big = new Uint8Array(20_000);
  for (const box of [a, b, c]) box.pushBulk(big, true);
  expect([a.bulkBytes, b.bulkBytes, c.bulkBytes, total.bytes]).toEqual([20_000, 20_000, 20_000, 20_000]);
  sa.accept = 5_000;
  a.flush();
  sb.accept = 30_000;
  b.flush();
  c.close();
  expect([a.bytes, b.bytes, c.bytes, total.bytes]).toEqual([15_000, 0, 0, 20_000]); // a holds its unsent tail
  sa.accept = 15_000;
  a.flush();
  expect([a.bytes, total.bytes]).toEqual([0, 0]);

  // d's bulk frame waits behind 256 KiB of first-lane frames and then joins their end (the fairness rule).
  const [sd, se] = [metered(), metered()];
  const [d, e] = [new Outbox(sd.socket, total), new Outbox(se.socket, total)];
  const g = new Uint8Array(30_000);
  d.pushBulk(g, true);
  e.pushBulk(g, true);
  for (let i = 0; i < 15; i++) d.push(new Uint8Array(20_000));
  sd.accept = 270_000;
  d.flush();
  expect([d.bulkBytes, total.bytes]).toEqual([30_000, 330_000 - 270_000]);
  d.push(new Uint8Array(20_000));
  sd.accept = 60_000; // the rest of the 15, the 16th, then g (moved behind them), in part
  d.flush();
  expect([d.bulkBytes, d.bytes, total.bytes]).toEqual([0, 20_000, 30_000]); // g is held by d (its tail) and by e
  e.close();
  expect(total.bytes).toBe(30_000);
  sd.accept = 20_000;
  d.flush();
  expect([d.bytes, total.bytes]).toEqual([0, 0]);
});

test("a shared frame's bytes queued again later as an outbox's own are counted as its own (found in review)", () => {
  const total = { bytes: 0 };
  let accept = 0;
  const socket = {
    write(data: Uint8Array) {
      const n = Math.min(data.length, accept);
      accept -= n;
      return n;
    },
  };
  const [a, b] = [new Outbox(socket, total), new Outbox({ write: () => 0 }, total)];
  const [f, g] = [new Uint8Array(20_000), new Uint8Array(20_000)];
  a.pushShared(f);
  accept = 1e9;
  a.flush(); // f written by its only holder
  accept = 0;
  a.push(f); // the same bytes again, a's own this time
  a.pushShared(g);
  b.pushShared(g);
  expect(total.bytes).toBe(40_000);
  accept = 1e9;
  a.flush();
  expect(total.bytes).toBe(20_000); // g, still held by b
  b.close();
  expect(total.bytes).toBe(0);
});

// A frame of the randomized lane test: u32be length ‖ u8 lane (0 first, 1 bulk) ‖ u32be index ‖ filler.
function laneFrame(lane: number, index: number, length: number): Uint8Array {
  const f = new Uint8Array(Math.max(9, length));
  const v = new DataView(f.buffer);
  v.setUint32(0, f.length);
  f[4] = lane;
  v.setUint32(5, index);
  f.fill(index & 0xff, 9);
  return f;
}

test("bulk frames wait while anything else is queued, one begun goes out whole, and each lane keeps its order", () => {
  let seed = 11;
  const rand = (n: number) => ((seed = (seed * 1103515245 + 12345) & 0x7fffffff) >>> 8) % n; // the high bits: the low ones of this generator alternate
  const written: number[] = [];
  const socket = {
    write(data: Uint8Array) {
      const n = Math.min(data.length, rand(3) === 0 ? 0 : rand(150_000));
      for (let i = 0; i < n; i++) written.push(data[i]!);
      return n;
    },
  };
  const box = new Outbox(socket);
  const next = [0, 0];
  let pushed = 0;
  for (let round = 0; round < 600; round++) {
    const bulk = rand(2);
    const frame = laneFrame(bulk, next[bulk]!, bulk ? 10_000 + rand(50_000) : rand(3) === 0 ? 30_000 : rand(200));
    next[bulk]!++;
    if (bulk) box.pushBulk(frame);
    else box.push(frame);
    pushed += frame.length;
    expect(box.bytes).toBe(pushed - written.length);
    if (rand(2)) box.flush();
  }
  while (!box.flush());
  expect(box.bytes).toBe(0);
  expect(written.length).toBe(pushed);
  // Parsed back: every frame whole, every lane in order, nothing twice.
  const bytes = Buffer.from(written);
  const seen = [0, 0];
  let bulkRuns = 0;
  let lastLane = -1;
  for (let at = 0; at < bytes.length; ) {
    const length = bytes.readUInt32BE(at);
    const lane = bytes[at + 4]!;
    expect(bytes.readUInt32BE(at + 5)).toBe(seen[lane]!++);
    expect(bytes.subarray(at + 9, at + length).every((b) => b === (bytes.readUInt32BE(at + 5) & 0xff))).toBe(true);
    if (lane === 1 && lastLane !== 1) bulkRuns++;
    lastLane = lane;
    at += length;
  }
  expect(seen).toEqual(next);
  // The lanes did interleave (first-lane frames overtook bulk ones), at frame boundaries only.
  expect(bulkRuns).toBeGreaterThan(20);
});

test("a first-lane frame overtakes every bulk frame not yet begun", () => {
  const m = metered();
  const box = new Outbox(m.socket);
  box.pushBulk(new Uint8Array(100).fill(1));
  box.pushBulk(new Uint8Array(100).fill(2));
  m.accept = 30;
  box.flush(); // the first bulk frame begun
  box.push(new Uint8Array([9, 9]));
  box.pushBulk(new Uint8Array(100).fill(3));
  m.accept = 1000;
  expect(box.flush()).toBe(true);
  expect(m.written).toEqual([...new Array(100).fill(1), 9, 9, ...new Array(100).fill(2), ...new Array(100).fill(3)]);
  expect(box.bytes).toBe(0);
});

test("a bulk frame the socket has taken nothing of still gives way; one it took part of does not (found in review)", () => {
  const m = metered();
  const box = new Outbox(m.socket);
  box.pushBulk(new Uint8Array(100).fill(1));
  expect(box.flush()).toBe(false); // the socket took nothing
  box.push(new Uint8Array([9, 9]));
  m.accept = 50;
  box.flush(); // the message, then half of the bulk frame
  box.push(new Uint8Array([8]));
  expect(box.flush()).toBe(false); // nothing taken, the bulk frame still half out
  m.accept = 1000;
  expect(box.flush()).toBe(true);
  expect(m.written).toEqual([9, 9, ...new Array(100).fill(1), 8]);
});

test("a first lane that never empties cannot starve the bulk lane: after 256 KiB of it, a waiting bulk frame joins its end", () => {
  const K = 256 * 1024;
  let budget = 0; // bytes the socket takes until the next round
  const writes: [lane: number, bytes: number][] = []; // lane by the first byte: 0 first, 1 bulk
  const box = new Outbox({
    write(data: Uint8Array) {
      const n = Math.min(data.length, budget);
      budget -= n;
      if (n > 0) writes.push([data[0]!, n]);
      return n;
    },
  });
  const first = (n: number) => box.push(new Uint8Array(n));
  const round = (take: number) => ((budget = take), box.flush());
  // First-lane traffic with no bulk frame waiting does not count against the next one.
  for (let i = 0; i < 20; i++) first(20_000), round(20_000);
  for (let i = 0; i < 4; i++) box.pushBulk(new Uint8Array(20_000).fill(1));
  expect(box.bulkBytes).toBe(80_000);
  // The first lane never empties: a byte more arrives each round than the socket takes.
  for (let i = 0; i < 100; i++) first(20_001), round(20_000);
  expect(box.bulkBytes).toBe(0); // each frame moved to the first lane's end (and left the bulk count) ...
  expect(writes.filter(([lane]) => lane === 1).reduce((a, [, n]) => a + n, 0)).toBe(80_000); // ... and went
  // Between bulk frames, at least 256 KiB of the first lane, and at most that plus what was queued ahead.
  const gaps: number[] = [];
  let run = 0;
  let last = 0;
  for (const [lane, n] of writes.slice(20)) {
    if (lane === 0) run += n;
    else if (last === 0) gaps.push(run), (run = 0); // a frame may take more than one write
    last = lane;
  }
  expect(gaps).toHaveLength(4);
  for (const gap of gaps) {
    expect(gap).toBeGreaterThanOrEqual(K);
    expect(gap).toBeLessThanOrEqual(K + 3 * 20_001);
  }
  // Once the first lane empties, a bulk frame goes at once, and the count starts again from there.
  while (!round(1e9));
  writes.length = 0;
  box.pushBulk(new Uint8Array(20_000).fill(1));
  round(1e9);
  expect(writes).toEqual([[1, 20_000]]);
  box.pushBulk(new Uint8Array(20_000).fill(1));
  for (let i = 0; i < 5; i++) first(20_001), round(20_000);
  expect(writes.slice(1).every(([lane]) => lane === 0)).toBe(true); // 100 KB of the first lane: the bulk frame still waits
  expect(box.bulkBytes).toBe(20_000);
  // A bulk frame that went because the first lane emptied starts the count again for the next one.
  while (!round(1e9));
  box.pushBulk(new Uint8Array(20_000).fill(1));
  box.pushBulk(new Uint8Array(20_000).fill(1));
  for (let i = 0; i < 10; i++) first(20_000), round(20_000); // 200 KB of the first lane while both wait
  round(20_000); // the first lane empty: the first bulk frame goes
  writes.length = 0;
  for (let i = 0; i < 12; i++) first(20_001), round(20_000); // 240 KB more: under 256 KiB since it went
  expect(writes.every(([lane]) => lane === 0)).toBe(true);
  expect(box.bulkBytes).toBe(20_000);
});

test("an outbox that stays behind does not keep written frames alive", async () => {
  // Each flush takes a byte less than was pushed: the lane never empties, and
  // the unsent tail of each frame is a view of it. Such views kept every
  // written frame of the last 1024 alive, 128 MiB of 128 KiB frames.
  const frameBytes = 128 * 1024;
  let budget = 0;
  const box = new Outbox({ write: (d) => { const n = Math.min(d.length, budget); budget -= n; return n; } });
  let freed = 0;
  const registry = new FinalizationRegistry(() => void freed++);
  const pushAll = async (bulk: boolean) => {
    freed = 0;
    for (let i = 0; i < 200; i++) {
      const frame = new Uint8Array(frameBytes);
      registry.register(frame.buffer, i); // the memory: a view of the frame keeps its buffer, not the frame object
      if (bulk) box.pushBulk(frame);
      else box.push(frame);
      budget = frameBytes - 1;
      box.flush();
    }
    expect(box.bytes).toBeGreaterThan(0); // still behind
    for (let i = 0; i < 20 && freed < 195; i++) {
      Bun.gc(true);
      await Bun.sleep(10);
    }
    return freed;
  };
  expect(await pushAll(false)).toBeGreaterThanOrEqual(195); // all but the few still (partly) queued
  expect(await pushAll(true)).toBeGreaterThanOrEqual(195);
});

test("a piece queued by reference that is a view of a much larger buffer (a relay's socket read) is copied, in either lane; a file chunk's is not", async () => {
  // A relay's frames are views of reads of up to 512 KiB: kept by reference, a
  // 10-byte `bulk` frame held its whole read while counted at 10 bytes (found in review).
  let accept = false; // stays behind until then: everything is kept
  const buffers: ArrayBufferLike[] = [];
  const box = new Outbox({ write: (d) => (accept ? (buffers.push(d.buffer), d.length) : 0) });
  let freed = 0;
  const registry = new FinalizationRegistry(() => void freed++);
  const READ = 512 * 1024;
  for (let i = 0; i < 40; i++) {
    const read = new Uint8Array(READ).fill(i);
    registry.register(read.buffer, i);
    if (i % 2) box.pushBulk(read.subarray(100, 110));
    else box.push(read.subarray(100, 100 + 20_000)); // queued by reference (16 KiB and up), not staged
  }
  const chunkRead = new Uint8Array(READ);
  box.pushBulk(chunkRead.subarray(0, 65_536)); // a frame of 64 KiB in the largest read: an eighth of it
  expect(box.bytes).toBe(20 * 10 + 20 * 20_000 + 65_536);
  for (let i = 0; i < 20 && freed < 40; i++) {
    Bun.gc(true);
    await Bun.sleep(10);
  }
  expect(freed).toBe(40);
  accept = true;
  expect(box.flush()).toBe(true);
  expect(buffers.filter((b) => b === chunkRead.buffer)).toHaveLength(1); // that frame went as it was
});

test("dropBulk forgets the bulk frames of one tag that have not begun to leave; a begun one, other tags and the first lane stay, in order", () => {
  const total = { bytes: 0 };
  const m = metered();
  const box = new Outbox(m.socket, total);
  const [mine, theirs] = [{}, {}];
  const frames = [1, 2, 3, 4, 5].map((i) => laneFrame(1, i, 20_000));
  box.pushBulk(frames[0]!, false, mine); // begun below: it goes out whole
  box.pushBulk(frames[1]!, false, theirs);
  box.pushBulk(frames[2]!, false, mine);
  box.pushBulk(frames[3]!); // no tag
  box.pushBulk(frames[4]!, false, mine);
  m.accept = 5_000;
  box.flush();
  const first = laneFrame(0, 1, 100);
  box.push(first);
  expect(box.dropBulk(mine)).toBe(40_000);
  expect([box.bytes, box.bulkBytes, total.bytes]).toEqual([100_000 + 100 - 5_000 - 40_000, 60_000 - 5_000, 55_100]);
  expect(box.dropBulk(mine)).toBe(0);
  m.accept = 1e9;
  expect(box.flush()).toBe(true);
  expect([box.bytes, box.bulkBytes, total.bytes]).toEqual([0, 0, 0]);
  const expected = [frames[0]!, first, frames[1]!, frames[3]!].flatMap((f) => [...f]);
  expect(m.written).toEqual(expected);
});

test("the unsent rest of a piece, a small part of its buffer by then, is copied too (found in review)", async () => {
  let freed = 0;
  const registry = new FinalizationRegistry(() => void freed++);
  const boxes = [false, true].map((bulk) => {
    const m = metered();
    const box = new Outbox(m.socket);
    const read = new Uint8Array(512 * 1024);
    registry.register(read.buffer, bulk);
    const frame = read.subarray(0, 65_536); // an eighth of its read: queued as it is
    if (bulk) box.pushBulk(frame);
    else box.push(frame);
    m.accept = 65_536 - 100;
    box.flush(); // 100 bytes left: kept as they are, they would hold the whole read
    return box;
  });
  for (let i = 0; i < 20 && freed < 2; i++) {
    Bun.gc(true);
    await Bun.sleep(10);
  }
  expect(freed).toBe(2);
  expect(boxes.map((box) => box.bytes)).toEqual([100, 100]);
});
