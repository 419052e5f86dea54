// lib/wire/standard.ts: only standard msgpack, no extension types, reaches a
// decoder. Valid encodings come from msgpackr and from bytes written by hand
// from the spec; the hostile one is the frame that froze a relay for 88 s
// (found in audit): msgpackr's shared-reference extensions describing a
// structure of 2^40 nodes in 531 bytes.
import { afterEach, describe, expect, test } from "bun:test";
import { Packr } from "msgpackr";
import type { Relay } from "../lib/relay/server.ts";
import { decodePayload, FrameError } from "../lib/wire/frame.ts";
import { MAX_DEPTH, MAX_VALUES, standardProblem } from "../lib/wire/standard.ts";
import { joinTest, RawClient, startTestRelay } from "./helpers.ts";

const hex = (s: string) => Uint8Array.from(Buffer.from(s.replace(/\s/g, ""), "hex"));
const packr = new Packr({ useRecords: false, variableMapSize: true });

/** msgpackr's shared references: `depth` levels, each an array of the level below, twice. */
function referenceBomb(depth: number): Uint8Array {
  const u32 = (n: number) => [n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255];
  let v: number[] = [0xd6, 0x69, ...u32(0), 0x90];
  for (let k = 1; k <= depth; k++) v = [0xd6, 0x69, ...u32(k), 0x92, ...v, 0xd6, 0x70, ...u32(k - 1)];
  return new Uint8Array([0x81, 0xa1, 0x74, ...v, 0xc0]); // {t: <bomb>} and a byte after it
}

const nested = (levels: number) => new Uint8Array([...Array(levels - 1).fill(0x91), 0xc0]); // [[[...nil]]]

describe("standardProblem", () => {
  test("every standard encoding passes: msgpackr's own output for all families and sizes", () => {
    const values: unknown[] = [
      { t: "send", to: "abcdefgh", body: new Uint8Array(70_000), n: 1 },
      [0, 127, 128, 255, 256, 65535, 65536, 2 ** 32 - 1, 2 ** 32, 2 ** 53 - 1, -1, -32, -33, -128, -129, -32768, -32769, -(2 ** 31), -(2 ** 31) - 1, -(2 ** 53) + 1],
      [0.5, -1.25e300, Number.MAX_VALUE, null, true, false],
      ["", "x".repeat(31), "x".repeat(32), "x".repeat(255), "x".repeat(256), "x".repeat(65536), "é😀"],
      [new Uint8Array(0), new Uint8Array(255), new Uint8Array(256), new Uint8Array(65536)],
      Array.from({ length: 16 }, (_, i) => i),
      Array.from({ length: 65_535 }, () => 1),
      Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i])),
      Object.fromEntries(Array.from({ length: 32_767 }, (_, i) => [`k${i}`, i])),
      { a: { b: { c: [[], {}, [{}]] } } },
    ];
    for (const v of values) expect(standardProblem(packr.pack(v))).toBeNull();
    // msgpackr writes array 32 and map 32 only past 65,535 entries, more values than any frame may
    // hold (MAX_VALUES, below); "bytes written by hand" checks those two encodings with small counts.
    for (const v of [Array.from({ length: 70_000 }, () => 1), Object.fromEntries(Array.from({ length: 70_000 }, (_, i) => [`k${i}`, i]))]) {
      expect(standardProblem(packr.pack(v))).toBe(`more than ${MAX_VALUES} values`);
    }
  });

  test("bytes written by hand: float32, uint64, array32, map32, str32, bin32, fixstr", () => {
    for (const b of ["ca3f800000", "cf0000000100000000", "dd00000001c0", "df00000001a161c3", "db00000001 61", "c600000002 0102", "a3616263"]) expect(standardProblem(hex(b)), b).toBeNull();
  });

  test("every extension type and the byte c1 are refused, wherever they are", () => {
    for (const ext of ["d40100", "d5010000", "d601 00000000", "d701 0000000000000000", "d801 00000000000000000000000000000000", "c70101 00", "c8000101 00", "c900000001 01 00", "d6ff00000000", "d47200"]) {
      expect(standardProblem(hex(ext)), ext).toContain("extension type");
      expect(standardProblem(hex(`81a174 ${ext}`)), ext).toContain("extension type");
      expect(standardProblem(hex(`93 01 02 ${ext}`)), ext).toContain("extension type");
    }
    expect(standardProblem(hex("c1"))).toContain("0xc1");
    expect(standardProblem(hex("81a174c1"))).toContain("0xc1");
  });

  test("every truncation of a valid payload is refused, and so is a byte after it", () => {
    const p = packr.pack({ t: "x", list: [1, 300, 70_000, 2 ** 40, -5, 0.5, "str", new Uint8Array(300)], m: { k: null } });
    expect(standardProblem(p)).toBeNull();
    for (let cut = 0; cut < p.length; cut++) expect(standardProblem(p.subarray(0, cut)), `cut at ${cut}`).toBe("truncated");
    expect(standardProblem(new Uint8Array([...p, 0xc0]))).toBe("1 bytes after the value");
  });

  test("counts and lengths beyond the payload are refused without reading or allocating: 2^32-1 items or bytes", () => {
    for (const b of ["ddffffffff", "dfffffffff", "dbffffffff", "c6ffffffff", "dcffff", "deffff", "daffff 61", "c4ff 00"]) expect(standardProblem(hex(b)), b).toBe("truncated");
  });

  test(`nesting: ${MAX_DEPTH} levels pass, one more is refused`, () => {
    expect(standardProblem(nested(MAX_DEPTH + 1))).toBeNull(); // MAX_DEPTH arrays around a nil
    expect(standardProblem(nested(MAX_DEPTH + 2))).toContain("nested deeper");
    expect(standardProblem(nested(250_000))).toContain("nested deeper");
  });

  test(`values: ${MAX_VALUES} in all pass (map keys count), one more is refused; so is a frame of millions of empty arrays (found in audit: 1.8 GB to decode)`, () => {
    const arrayOf = (n: number, item: number) => new Uint8Array([0xdd, n >>> 24, (n >>> 16) & 255, (n >>> 8) & 255, n & 255, ...new Uint8Array(n).fill(item)]);
    expect(standardProblem(arrayOf(MAX_VALUES - 1, 0xc0))).toBeNull(); // the array and its items
    expect(standardProblem(arrayOf(MAX_VALUES, 0xc0))).toBe(`more than ${MAX_VALUES} values`);
    expect(standardProblem(arrayOf(24 * 1024 * 1024, 0x90))).toBe(`more than ${MAX_VALUES} values`);
    const map = packr.pack(Object.fromEntries(Array.from({ length: MAX_VALUES / 2 }, (_, i) => [`k${i}`, 0])));
    expect(standardProblem(map)).toBe(`more than ${MAX_VALUES} values`); // the map and 2 × 32768 keys and values
    const peers = packr.pack({ t: "peers", ids: Array.from({ length: 4096 }, (_, i) => `id${i}`.padEnd(8, "x")), more: true });
    expect(standardProblem(peers)).toBeNull(); // the largest frame the protocol has
  });

  test("the reference bomb is refused at once, as a bad_frame naming the extension", () => {
    const bomb = referenceBomb(40);
    expect(bomb.length).toBeLessThan(600);
    let err: unknown;
    try {
      decodePayload(bomb);
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FrameError);
    expect((err as FrameError).code).toBe("bad_frame");
    expect((err as FrameError).message).toContain("extension type (byte 0xd6)");
  });
});

describe("relay", () => {
  let relay: Relay | null = null;
  afterEach(async () => void (await relay?.stop()));

  test("regression: the reference bomb sent before join gets bad_frame and close; the relay goes on answering its clients", async () => {
    relay = startTestRelay();
    await joinTest(relay);
    const evil = await RawClient.connect(relay.port);
    await evil.next("challenge");
    const bomb = referenceBomb(40);
    const frame = new Uint8Array(4 + bomb.length);
    new DataView(frame.buffer).setUint32(0, bomb.length);
    frame.set(bomb, 4);
    evil.write(frame);
    const error = await evil.next("error");
    expect(error.code).toBe("bad_frame");
    expect(String(error.message)).toContain("extension type");
    await evil.waitClosed();
    const fresh = await RawClient.connect(relay.port);
    expect((await fresh.next("challenge")).t).toBe("challenge");
    expect(relay.stats().clients).toBe(1); // the joined client is still there
  });
});
