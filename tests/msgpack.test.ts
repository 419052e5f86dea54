// The msgpack encoder against the spec's encodings at every size boundary,
// and against an independent decoder (msgpackr) on random values.
import { describe, expect, test } from "bun:test";
import { Unpackr } from "msgpackr";
import { pack, PackedBin } from "../lib/wire/msgpack.ts";

const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const decode = (b: Uint8Array) => new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: "auto" as never }).unpack(b);

describe("shortest standard encodings at each boundary", () => {
  const cases: [unknown, string][] = [
    [null, "c0"], [false, "c2"], [true, "c3"],
    [0, "00"], [127, "7f"], [128, "cc80"], [255, "ccff"], [256, "cd0100"], [65535, "cdffff"], [65536, "ce00010000"],
    [2 ** 32 - 1, "ceffffffff"], [2 ** 32, "cf0000000100000000"], [Number.MAX_SAFE_INTEGER, "cf001fffffffffffff"],
    [-1, "ff"], [-32, "e0"], [-33, "d0df"], [-128, "d080"], [-129, "d1ff7f"], [-32768, "d18000"], [-32769, "d2ffff7fff"],
    [-(2 ** 31), "d280000000"], [-(2 ** 31) - 1, "d3ffffffff7fffffff"],
    [1.5, "cb3ff8000000000000"],
    ["", "a0"], ["a", "a161"], ["x".repeat(31), "bf" + "78".repeat(31)], ["x".repeat(32), "d920" + "78".repeat(32)],
    ["x".repeat(256), "da0100" + "78".repeat(256)], ["é", "a2c3a9"],
    [new Uint8Array([]), "c400"], [new Uint8Array([1, 2]), "c4020102"], [new Uint8Array(256).fill(7), "c50100" + "07".repeat(256)],
    [[], "90"], [[1, "a"], "9201a161"], [Array(16).fill(0), "dc0010" + "00".repeat(16)],
    [{}, "80"], [{ a: 1 }, "81a16101"], [{ a: 1, skip: undefined }, "81a16101"],
  ];
  for (const [value, expected] of cases) {
    test(`${JSON.stringify(value, (_k, v) => (v instanceof Uint8Array ? `bin(${v.length})` : v))?.slice(0, 40)}`, () => {
      expect(hex(pack(value))).toBe(expected);
    });
  }

  test("32-bit length forms", () => {
    const bin = pack(new Uint8Array(70_000));
    expect(hex(bin.subarray(0, 5))).toBe("c600011170");
    const str = pack("y".repeat(70_000));
    expect(hex(str.subarray(0, 5))).toBe("db00011170");
    const map = pack(Object.fromEntries(Array.from({ length: 16 }, (_, i) => [`k${i}`, i])));
    expect(hex(map.subarray(0, 3))).toBe("de0010");
  });

  test("the offset leaves room for a length prefix", () => {
    expect(hex(pack({ t: "ping" }, 4))).toBe("00000000" + "81a174a470696e67");
  });

  test("the result is a plain Uint8Array: its slice() copies (a Buffer's would be a view)", () => {
    const out = pack({ t: "text", text: "hello" });
    expect(Buffer.isBuffer(out)).toBe(false);
    const copy = out.slice();
    out.fill(0);
    expect(hex(copy)).toBe("82a174a474657874a474657874a568656c6c6f");
  });
});

test("random nested values decode to themselves with msgpackr", () => {
  let seed = 42;
  const rand = () => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) / 0x7fffffff;
  const randomValue = (depth: number): unknown => {
    const kind = Math.floor(rand() * (depth > 2 ? 6 : 8));
    switch (kind) {
      case 0: return Math.floor((rand() - 0.5) * 2 ** (rand() * 53));
      case 1: return Array.from({ length: Math.floor(rand() * 40) }, () => String.fromCharCode(32 + Math.floor(rand() * 500))).join("");
      case 2: return new Uint8Array(Math.floor(rand() * 300)).map(() => Math.floor(rand() * 256));
      case 3: return rand() < 0.5;
      case 4: return null;
      case 5: return rand() * 1e6;
      case 6: return Array.from({ length: Math.floor(rand() * 20) }, () => randomValue(depth + 1));
      default: return Object.fromEntries(Array.from({ length: Math.floor(rand() * 20) }, (_, i) => [`k${i}${Math.floor(rand() * 9)}`, randomValue(depth + 1)]));
    }
  };
  for (let i = 0; i < 500; i++) {
    const v = randomValue(0);
    const back = decode(pack(v));
    expect(back instanceof Uint8Array ? new Uint8Array(back) : back).toEqual(v instanceof Uint8Array ? v : normalise(v));
  }
});

test("a PackedBin encodes exactly as packing its value and embedding the bytes as bin, at every bin size boundary", () => {
  const packedSizes = new Set<number>();
  for (const length of [0, 1, 248, 249, 250, 251, 65_527, 65_528, 65_529, 65_530, 70_000]) {
    const value = { ct: new Uint8Array(length).map((_, i) => i * 7) }; // packs to 6 + length bytes below 256, else 7 + length
    const inner = pack(value);
    packedSizes.add(inner.length);
    expect(hex(pack({ t: "send", to: ["A", "B"], body: new PackedBin(value) }, 4))).toBe(hex(pack({ t: "send", to: ["A", "B"], body: inner }, 4)));
  }
  // The cases above really straddle bin8/bin16/bin32.
  for (const edge of [255, 256, 65_535, 65_536]) expect(packedSizes.has(edge)).toBe(true);
});

/** msgpackr decodes bin to Buffer; compare as plain Uint8Array. */
function normalise(v: unknown): unknown {
  if (v instanceof Uint8Array) return Buffer.from(v);
  if (Array.isArray(v)) return v.map(normalise);
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, normalise(x)]));
  return v;
}
