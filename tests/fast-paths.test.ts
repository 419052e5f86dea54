// The hand-written decoders of the hot paths (relay: parseSimpleSend; client:
// parseMsg for relay frames, parseChunk for file chunks) must agree with the
// general msgpack decoder on every input they accept, and decline the rest;
// the hand-built `peers` answer must be byte for byte what encodeFrame writes.
// Checked on the encodings lib/ emits, at every integer and bin width, and
// differentially on every single-byte change (all 256 values) of their
// structural bytes and on truncations.
import { describe, expect, test } from "bun:test";
import { msgFrameHeader, newId, parseMsg, parseSimpleSend, peerItems, peersFrame } from "../lib/relay/protocol.ts";
import { parseChunk, type ChunkFrame } from "../lib/transfer/chunks.ts";
import { decodePayload, encodeFrame, type Frame } from "../lib/wire/frame.ts";
import { pack } from "../lib/wire/msgpack.ts";

/** A decoded value with bins as hex, so results compare by content. */
function plain(v: unknown): unknown {
  if (v instanceof Uint8Array) return `bin:${Buffer.from(v).toString("hex")}`;
  if (v && typeof v === "object") return Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]));
  return v;
}

function general(p: Uint8Array): unknown {
  try {
    return plain(decodePayload(p));
  } catch {
    return "throws";
  }
}

/** Every input the fast path accepts decodes the same way in general; returns how many it accepted. */
function agreesOnMutations(fast: (p: Uint8Array) => object | null, valid: Uint8Array): number {
  let accepted = 0;
  const check = (p: Uint8Array) => {
    const got = fast(p);
    if (got === null) return;
    accepted++;
    expect(plain(got)).toEqual(general(p));
  };
  // Mutate the structure at both ends, not the long bin contents in between (which no parser looks at).
  const positions = [...new Set([...Array(Math.min(valid.length, 96)).keys(), ...[...Array(48).keys()].map((k) => valid.length - 1 - k).filter((i) => i >= 0)])];
  const m = new Uint8Array(valid); // a copy (a Buffer's slice() would be a view)
  for (const i of positions) {
    for (let b = 0; b < 256; b++) {
      m[i] = b;
      check(m);
    }
    m[i] = valid[i]!;
  }
  for (let n = 0; n < valid.length; n += n < 96 ? 1 : 997) check(valid.subarray(0, n));
  check(new Uint8Array([...valid, 0]));
  check(valid);
  return accepted;
}

const bins = [0, 1, 255, 256, 65_535, 65_536, 70_000];

describe("parseMsg (client): the relay's msg frame", () => {
  test("exactly what msgFrameHeader builds, at every bin width, decodes as msgpack does", () => {
    for (const n of bins) {
      const body = new Uint8Array(n).map((_, i) => i * 3);
      const p = Buffer.concat([msgFrameHeader("k3x9pm2q", n), body]).subarray(4);
      expect(plain(parseMsg(p))).toEqual(general(p));
    }
  });

  test("other encodings of a msg take the general path", () => {
    const others: Frame[] = [
      { src: "k3x9pm2q", t: "msg", body: new Uint8Array(1) }, // key order
      { t: "msg", src: "k3x9pm2", body: new Uint8Array(1) }, // 7-character ID
      { t: "msg", src: "k3x9pm2q", body: "text" },
      { t: "msg", src: "k3x9pm2q", body: new Uint8Array(1), extra: 1 },
      { t: "msgs", src: "k3x9pm2q", body: new Uint8Array(1) },
    ];
    for (const o of others) expect(parseMsg(encodeFrame(o).subarray(4))).toBeNull();
    const nonAscii = Buffer.concat([msgFrameHeader("k3x9pm2q", 1), new Uint8Array([7])]).subarray(4);
    nonAscii[13] = 0xc3; // inside the ID: UTF-8 would decode it differently
    expect(parseMsg(nonAscii)).toBeNull();
  });

  test("every single-byte mutation and truncation: declined, or the same as msgpack", () => {
    const valid = Buffer.concat([msgFrameHeader("k3x9pm2q", 300), new Uint8Array(300).fill(9)]).subarray(4);
    expect(agreesOnMutations(parseMsg, valid)).toBeGreaterThan(0);
  });
});

describe("parseSimpleSend (relay): the client's send and bulk frames", () => {
  test("every single-byte mutation and truncation: declined, or the same as msgpack", () => {
    const toFrame = (p: Uint8Array) => {
      const s = parseSimpleSend(p);
      return s && { t: s.bulk ? "bulk" : "send", to: s.to, body: s.body };
    };
    for (const t of ["send", "bulk"]) {
      const valid = encodeFrame({ t, to: "k3x9pm2q", body: new Uint8Array(300).fill(9) }).subarray(4);
      expect(agreesOnMutations(toFrame, valid)).toBeGreaterThan(0);
    }
  });
});

describe("parseChunk (client): a file chunk", () => {
  const chunk = (n: number, last: boolean, ctBytes: number): ChunkFrame => ({
    t: "chunk",
    id: new Uint8Array(16).fill(0xaa),
    n,
    last,
    iv: new Uint8Array(16).fill(0xbb),
    ct: new Uint8Array(ctBytes).map((_, i) => i * 7),
    mac: new Uint8Array(32).fill(0xdd),
  });

  test("exactly what lib/ encodes, at every index width and ct size, decodes as msgpack does", () => {
    for (const n of [0, 127, 128, 255, 256, 65_535, 65_536, 2 ** 32 - 1]) {
      for (const last of [false, true]) {
        const p = pack(chunk(n, last, 16));
        expect(plain(parseChunk(p))).toEqual(general(p));
      }
    }
    for (const size of [...bins, 65_552]) {
      const p = pack(chunk(3, false, size));
      expect(plain(parseChunk(p))).toEqual(general(p));
    }
  });

  test("other encodings take the general path", () => {
    expect(parseChunk(pack(chunk(2 ** 32, false, 16)))).toBeNull(); // uint64
    const { id, ...rest } = chunk(1, false, 16);
    const others: Frame[] = [
      { ...rest, id }, // id after the other keys
      { ...chunk(1, false, 16), extra: 1 },
      { ...chunk(1, false, 16), n: -1 },
      { ...chunk(1, false, 16), n: 1.5 },
      { ...chunk(1, false, 16), last: 1 },
      { ...chunk(1, false, 16), id: new Uint8Array(15) },
      { ...chunk(1, false, 16), iv: new Uint8Array(17) },
      { ...chunk(1, false, 16), mac: new Uint8Array(31) },
      { ...chunk(1, false, 16), ct: "text" },
    ];
    for (const o of others) expect(parseChunk(pack(o))).toBeNull();
  });

  test("every single-byte mutation and truncation: declined, or the same as msgpack", () => {
    expect(agreesOnMutations(parseChunk, pack(chunk(300, true, 300)))).toBeGreaterThan(0);
    expect(agreesOnMutations(parseChunk, pack(chunk(70_000, false, 16)))).toBeGreaterThan(0); // uint32 index
    expect(agreesOnMutations(parseChunk, pack(chunk(5, false, 0)))).toBeGreaterThan(0); // bin8 of 0 bytes
  });
});

describe("peersFrame (relay): the `list` answer", () => {
  test("is byte for byte what encodeFrame writes, at every array width, with and without `more`, leaving out any one ID", () => {
    const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
    for (const n of [0, 1, 15, 16, 17, 255, 256, 4096]) {
      const all = Array.from({ length: n + 1 }, newId); // one more than listed, as the relay keeps
      const items = peerItems(all);
      for (const skip of [-1, 0, Math.floor(n / 2), n - 1, n].filter((k, i, a) => k < n + 1 && a.indexOf(k) === i)) {
        const ids = (skip < 0 ? all : all.filter((_, i) => i !== skip)).slice(0, n);
        for (const more of [false, true]) {
          expect(hex(peersFrame(items, skip, n, more))).toBe(hex(encodeFrame(more ? { t: "peers", ids, more } : { t: "peers", ids })));
        }
      }
    }
  });
});
