// Rules of the file layer that need no network: names, timeouts, chunk sizes,
// and a file that changes while it is being sent.
import { afterEach, expect, test } from "bun:test";
import { createHash } from "node:crypto";
import { appendFileSync, readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CHUNK_BYTES, doneMac, fileKeys, sealChunk } from "../lib/transfer/chunks.ts";
import { safeName } from "../lib/transfer/names.ts";
import { createTransfers, type TransferEvent } from "../lib/transfer/transfers.ts";
import type { Frame } from "../lib/wire/frame.ts";
import { tempDirs, waitFor } from "./helpers.ts";

const temp = tempDirs("smts-rules-");
afterEach(() => temp.removeAll());

function harness(opts: { idleTimeoutMs?: number; answerWindowMs?: number; onMessage?: (f: Frame) => void; congested?: () => boolean } = {}) {
  const contents: Frame[] = [];
  const messages: Frame[] = [];
  const events: TransferEvent[] = [];
  const dir = temp.make();
  const t = createTransfers(
    {
      sendContent: (_p, item) => void contents.push(item),
      sendChunk: (_p, f) => void (messages.push(f), opts.onMessage?.(f)),
      chunkBacklog: () => 0,
      dropChunks() {},
      congested: opts.congested ?? (() => false),
      isBusy: () => false,
      chunksDrained: async () => {},
      emit: (e) => void events.push(e),
      maxFrame: () => 256 * 1024,
    },
    { downloadDir: dir, maxFileSize: 10 * 1024 * 1024, idleTimeoutMs: opts.idleTimeoutMs, answerWindowMs: opts.answerWindowMs },
  );
  return { t, contents, messages, events, dir };
}

test("names: no trailing space or dot after shortening; device names with spaces; invisible separators", () => {
  const long = safeName(`${"a".repeat(199)} bb`);
  expect(long).not.toMatch(/[.\s]$/);
  expect(Buffer.byteLength(long)).toBeLessThanOrEqual(200);
  expect(safeName("con .txt")).toStartWith("_");
  expect(safeName("a\u2028b\u2060c\u061cd")).toBe("abcd");
});

test("an offer nobody answers fails after the idle timeout", async () => {
  const h = harness({ idleTimeoutMs: 200 });
  const src = join(h.dir, "x.bin");
  writeFileSync(src, "hello");
  const outcome = h.t.send("abcdefgh", src).then(() => "delivered", (e) => e.message);
  expect(await outcome).toContain("no progress");
  expect(h.events.at(-1)).toMatchObject({ event: "transfer", state: "failed" });
});

// Regression (found in audit): the broadcast's 10 s answer window cut every
// unanswered /send short of the 60 s of PROTOCOL §27.
test("the answer window is for broadcasts only: an unanswered /send waits for the idle timeout, an unanswered /bsend recipient is dropped after the window", async () => {
  const h = harness({ idleTimeoutMs: 600, answerWindowMs: 50 });
  const src = join(h.dir, "x.bin");
  writeFileSync(src, "hello");
  const single = h.t.send("abcdefgh", src).then(() => "delivered", (e) => e.message);
  const broadcast = h.t.send(["abcdefgh", "ijklmnop"], src, true).then(() => "delivered", (e) => e.message);
  expect(await broadcast).toMatch(/no answer to the offer/);
  expect(await single).toContain("no progress");
  expect(h.contents.filter((c) => c.t === "cancel").map((c) => c.reason)).toEqual(["no answer to the offer", "no answer to the offer"]);
});

test("after stopAccepting(), every offer is declined (the receiver is leaving) while the transfer under way goes on", async () => {
  const h = harness();
  const offer = (n: number) => h.t.onContent("abcdefgh", { t: "offer", id: new Uint8Array(16).fill(n), name: `f${n}`, size: 5, key: new Uint8Array(32) });
  offer(1);
  h.t.stopAccepting();
  offer(2);
  expect(h.contents.map((c) => [c.t, (c.id as Uint8Array)[0], c.reason])).toEqual([
    ["accept", 1, undefined],
    ["decline", 2, "the receiver is leaving"],
  ]);
  expect(h.t.active()).toBe(1);
  expect(h.t.cancel("")).toBe(1);
  expect(readdirSync(h.dir)).toEqual([]);
});

// Regression (found in review): any answer naming the file counted as progress, so one
// recipient repeating `accept` kept a /bsend (done for the others) open for good.
/** Sends "hello" (one chunk) to a peer that accepts; returns once the chunk has left. */
async function sentInFull(h: ReturnType<typeof harness>) {
  const src = join(h.dir, "x.bin");
  writeFileSync(src, "hello");
  const outcome = h.t.send("abcdefgh", src).then(() => "delivered", (e) => e.message);
  const offer = h.contents.find((c) => c.t === "offer")!;
  h.t.onContent("abcdefgh", { t: "accept", id: offer.id });
  await waitFor(() => h.messages.length === 1, "the last chunk");
  await Bun.sleep(1); // the stream finishes its turn: all sent, waiting for `done`
  return { outcome, offer };
}

test("a recipient that repeats `accept` instead of answering `done` does not keep the transfer open", async () => {
  const h = harness({ idleTimeoutMs: 300 });
  const { outcome, offer } = await sentInFull(h);
  const again = setInterval(() => h.t.onContent("abcdefgh", { t: "accept", id: offer.id }), 50);
  try {
    expect(await outcome).toContain("no progress");
  } finally {
    clearInterval(again);
  }
});

// Regression (found in review): /cancel right after the last chunk left said
// "cancelled" while the receiver kept the file.
test("/cancel after the last chunk left leaves the transfer alone: the receiver's `done` still makes it delivered", async () => {
  const h = harness();
  const { outcome, offer } = await sentInFull(h);
  expect(h.t.cancel("")).toBe(0);
  expect(h.contents.map((c) => c.t)).toEqual(["offer"]);
  const id = offer.id as Uint8Array;
  h.t.onContent("abcdefgh", { t: "done", id, mac: doneMac(fileKeys(offer.key as Uint8Array, id), id, createHash("sha256").update("hello").digest()) });
  expect(await outcome).toBe("delivered");
});

// Regression (found in review): the file was opened before it was checked, and
// opening a FIFO blocks until a writer comes: the whole client froze, signals included.
test("/send of a FIFO is refused as not a regular file, without blocking", async () => {
  const dir = temp.make();
  const fifo = join(dir, "pipe");
  expect(Bun.spawnSync(["mkfifo", fifo]).exitCode).toBe(0);
  const script = `
    import { createTransfers } from ${JSON.stringify(join(import.meta.dir, "../lib/transfer/transfers.ts"))};
    const t = createTransfers({ sendContent() {}, sendChunk() {}, chunkBacklog: () => 0, dropChunks() {}, congested: () => false, isBusy: () => false, chunksDrained: async () => {}, emit() {}, maxFrame: () => 256 * 1024 }, { downloadDir: ${JSON.stringify(dir)}, maxFileSize: 1e6 });
    for (const path of [${JSON.stringify(fifo)}, "/dev/zero", ${JSON.stringify(dir)}]) console.log(await t.send("abcdefgh", path).then(() => "sent", (e) => e.code));
    process.exit(0);`;
  const child = Bun.spawn([process.execPath, "-e", script], { stdout: "pipe", stderr: "pipe" });
  const killer = setTimeout(() => child.kill(), 4000); // blocked in open(): it would never answer
  const out = await new Response(child.stdout).text();
  clearTimeout(killer);
  expect(out.trim().split("\n")).toEqual(["not_a_file", "not_a_file", "not_a_file"]);
});

test("a receiver gives up on a sender that stops, and removes its temporary file", async () => {
  const h = harness({ idleTimeoutMs: 200 });
  h.t.onContent("abcdefgh", { t: "offer", id: new Uint8Array(16).fill(1), name: "f", size: 10, key: new Uint8Array(32) });
  expect(readdirSync(h.dir)).toHaveLength(1); // the temporary file
  await waitFor(() => h.events.find((e) => e.event === "transfer" && e.state === "failed"), "receiver timeout");
  expect(readdirSync(h.dir)).toEqual([]);
  expect(h.contents.at(-1)).toMatchObject({ t: "failed" });
});

// Regression (found in review): a peer that stopped reading and kept sending
// offers grew the receiver's queue by one `decline` per offer, without bound.
test("while our queue is congested, offers and failed chunks are not answered; afterwards they are", () => {
  let congested = true;
  const h = harness({ congested: () => congested });
  const key = () => new Uint8Array(32).fill(3);
  h.t.onContent("abcdefgh", { t: "offer", id: new Uint8Array(16).fill(4), name: "f", size: 10, key: key() });
  h.t.onContent("abcdefgh", { t: "offer", id: new Uint8Array(16).fill(5), name: "g", size: 2 ** 40, key: key() });
  expect(h.contents).toEqual([]);
  expect(h.events.map((e) => e.event === "transfer" && e.state)).toEqual(["declined", "declined"]);
  expect(readdirSync(h.dir)).toEqual([]);
  // A transfer accepted before the congestion fails without telling the peer.
  congested = false;
  const id = new Uint8Array(16).fill(6);
  const keys = fileKeys(key(), id);
  h.t.onContent("abcdefgh", { t: "offer", id, name: "h", size: CHUNK_BYTES + 10, key: key() });
  expect(h.contents.map((c) => c.t)).toEqual(["accept"]);
  congested = true;
  h.t.onChunk("abcdefgh", sealChunk(keys, id, 1, false, new Uint8Array(CHUNK_BYTES))); // out of order
  expect(h.events.at(-1)).toMatchObject({ state: "failed" });
  expect(h.contents.map((c) => c.t)).toEqual(["accept"]);
  expect(readdirSync(h.dir)).toEqual([]);
  // Not congested any more: answered as usual.
  congested = false;
  h.t.onContent("abcdefgh", { t: "offer", id: new Uint8Array(16).fill(7), name: "i", size: 2 ** 40, key: key() });
  expect(h.contents.map((c) => c.t)).toEqual(["accept", "decline"]);
});

test("a short chunk that is not the last fails the transfer", () => {
  const h = harness();
  const id = new Uint8Array(16).fill(2);
  const key = new Uint8Array(32).fill(3);
  const keys = fileKeys(key.slice(), id);
  h.t.onContent("abcdefgh", { t: "offer", id, name: "f", size: CHUNK_BYTES + 10, key });
  h.t.onChunk("abcdefgh", sealChunk(keys, id, 0, false, new Uint8Array(10)));
  expect(h.events.at(-1)).toMatchObject({ state: "failed", reason: expect.stringContaining("only the last may be short") });
  expect(readdirSync(h.dir)).toEqual([]);
});

test("a file that grows while being sent fails before its last chunk leaves", async () => {
  let grown = false;
  const h = harness({
    onMessage: () => {
      if (!grown) appendFileSync(src, "more"), (grown = true); // grows after the first chunk was read
    },
  });
  const src = join(h.dir, "growing.bin");
  writeFileSync(src, new Uint8Array(CHUNK_BYTES * 2));
  const outcome = h.t.send("abcdefgh", src).then(() => "delivered", (e) => e.message);
  const offer = h.contents[0]!;
  h.t.onContent("abcdefgh", { t: "accept", id: offer.id });
  expect(await outcome).toContain("grew");
  expect(h.messages.filter((m) => m.last === true)).toEqual([]); // no final chunk was ever sent
});
