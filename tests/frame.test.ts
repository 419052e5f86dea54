import { describe, expect, test } from "bun:test";
import { decodePayload, encodeFrame, FrameDecoder, FrameError, wholeFrame } from "../lib/wire/frame.ts";

const hex = (s: string) => new Uint8Array(Buffer.from(s.replace(/\s+/g, ""), "hex"));
const toHex = (b: Uint8Array) => Buffer.from(b).toString("hex");
const prefixed = (payloadHex: string) => {
  const p = hex(payloadHex);
  const out = new Uint8Array(4 + p.length);
  new DataView(out.buffer).setUint32(0, p.length);
  out.set(p, 4);
  return out;
};

describe("msgpack interoperability with bytes written by hand from the spec", () => {
  test("fixmap, fixstr, positive fixint, true", () => {
    // 82 = fixmap(2); a1 74 = "t"; a4 70 69 6e 67 = "ping"; a1 6e = "n"; 05 = 5
    expect(decodePayload(hex("82 a1 74 a4 70696e67 a1 6e 05"))).toEqual({ t: "ping", n: 5 });
    expect(decodePayload(hex("81 a1 62 c3"))).toEqual({ b: true });
  });

  test("map16, str8, bin8/bin16/bin32, uint8/16/32/64, negative fixint, int32, nil, array16", () => {
    const s40 = "x".repeat(40);
    const value = decodePayload(
      hex(
        "de 0009" +
          "a1 61 d9 28" + Buffer.from(s40).toString("hex") + // str8 of 40 chars
          "a1 62 c4 03 010203" + // bin8
          "a1 63 c5 0004 0a0b0c0d" + // bin16
          "a1 64 c6 00000002 eeff" + // bin32
          "a1 65 cc ff" + // uint8 255
          "a1 66 cd 1234" + // uint16
          "a1 67 ce 00010000" + // uint32 65536
          "a1 68 93 ff d2 fffffffe c0" + // fixarray [-1, -2, nil]
          "a1 69 dc 0002 cf 0000000100000000 a0", // array16 [2^32, ""]
      ),
    );
    expect(value.a).toBe(s40);
    expect([...(value.b as Uint8Array)]).toEqual([1, 2, 3]);
    expect([...(value.c as Uint8Array)]).toEqual([10, 11, 12, 13]);
    expect([...(value.d as Uint8Array)]).toEqual([0xee, 0xff]);
    expect(value.e).toBe(255);
    expect(value.f).toBe(0x1234);
    expect(value.g).toBe(65536);
    expect(value.h).toEqual([-1, -2, null]);
    expect(value.i).toEqual([2 ** 32, ""]);
  });

  test("encodeFrame emits standard msgpack (no records, no extensions)", () => {
    // {t:"send", to:"abcdefgh", body:bin(01 02 03)}
    expect(toHex(encodeFrame({ t: "send", to: "abcdefgh", body: new Uint8Array([1, 2, 3]) }))).toBe(
      "0000001e" + "83" + "a174" + "a473656e64" + "a2746f" + "a8" + Buffer.from("abcdefgh").toString("hex") + "a4626f6479" + "c403010203",
    );
    // Same object twice: must not switch to a record extension (msgpackr's d4 72 ..) the second time.
    const a = encodeFrame({ t: "pong" });
    const b = encodeFrame({ t: "pong" });
    expect(toHex(b)).toBe(toHex(a));
    expect(toHex(a)).toBe("00000008" + "81a174a4706f6e67");
  });
});

describe("FrameDecoder", () => {
  const frames = [encodeFrame({ t: "a", n: 1 }), encodeFrame({ t: "b", body: new Uint8Array(1000).fill(7) }), encodeFrame({ t: "c" })];
  const stream = Buffer.concat(frames);

  test("many frames in one read", () => {
    const out = new FrameDecoder(1 << 20).push(stream);
    expect(out.map((p) => decodePayload(p).t)).toEqual(["a", "b", "c"]);
  });

  test("a frame split across many reads, one byte at a time", () => {
    const d = new FrameDecoder(1 << 20);
    const out: Uint8Array[] = [];
    for (let i = 0; i < stream.length; i++) out.push(...d.push(stream.subarray(i, i + 1)));
    expect(out.map((p) => decodePayload(p).t)).toEqual(["a", "b", "c"]);
    expect([...(decodePayload(out[1]!).body as Uint8Array)].every((x) => x === 7)).toBe(true);
    expect(d.buffered).toBe(0);
  });

  test("every split point of the stream gives the same frames, each with its length prefix in front", () => {
    for (let cut = 1; cut < stream.length; cut++) {
      const d = new FrameDecoder(1 << 20);
      // Each read in a buffer of its own, with other bytes before it, as a socket's reads may be.
      const read = (bytes: Uint8Array) => d.push(Buffer.concat([Buffer.alloc(8, 0xee), bytes]).subarray(8));
      const out = [...read(stream.subarray(0, cut)), ...read(stream.subarray(cut))];
      expect(out.map((p) => toHex(p))).toEqual(frames.map((f) => toHex(f.subarray(4))));
      expect(out.map((p) => toHex(wholeFrame(p)))).toEqual(frames.map(toHex));
    }
  });

  test("a large frame assembled from 1,000 reads equals the original", () => {
    const body = new Uint8Array(200_000).map((_, i) => i * 31);
    const frame = encodeFrame({ t: "big", body });
    const d = new FrameDecoder(1 << 20);
    const out: Uint8Array[] = [];
    const step = Math.ceil(frame.length / 1000);
    for (let i = 0; i < frame.length; i += step) out.push(...d.push(frame.subarray(i, i + step)));
    expect(out.length).toBe(1);
    expect(Buffer.compare(decodePayload(out[0]!).body as Uint8Array, body)).toBe(0);
  });

  test("every payload is preceded by its own length prefix: wholeFrame gives back the frame, read whole or assembled", () => {
    const big = encodeFrame({ t: "big", body: new Uint8Array(70_000).map((_, i) => i * 13) });
    const all = Buffer.concat([...frames, big]);
    for (const step of [1, 3, 1000, 65_536, all.length]) {
      const d = new FrameDecoder(1 << 20);
      const out: Uint8Array[] = [];
      for (let i = 0; i < all.length; i += step) out.push(...d.push(all.subarray(i, i + step)));
      expect(out.map((p) => toHex(wholeFrame(p)))).toEqual([...frames, big].map(toHex));
    }
  });

  test("an empty payload whose prefix was split across reads is handed on at once", () => {
    const d = new FrameDecoder(1024);
    expect(d.push(hex("0000"))).toEqual([]);
    const out = d.push(hex("0000"));
    expect(out.map((p) => toHex(wholeFrame(p)))).toEqual(["00000000"]);
    expect(d.buffered).toBe(0);
  });

  test("oversize length prefix is rejected from the prefix alone, before buffering", () => {
    const d = new FrameDecoder(1024);
    expect(() => d.push(hex("00000401"))).toThrow(FrameError); // 1025 > 1024
    const d2 = new FrameDecoder(1024);
    d2.push(hex("ff ff")); // half a prefix: nothing to decide yet
    let err: unknown;
    try {
      d2.push(hex("ff ff"));
    } catch (e) {
      err = e;
    }
    expect(err).toBeInstanceOf(FrameError);
    expect((err as FrameError).code).toBe("frame_too_large");
    expect(new FrameDecoder(1024).push(prefixed("81a174a161")).length).toBe(1); // at the limit side: fine
  });

  test("a truncated frame yields nothing and stays buffered", () => {
    const d = new FrameDecoder(1 << 20);
    const f = frames[1]!;
    expect(d.push(f.subarray(0, f.length - 1))).toEqual([]);
    expect(d.buffered).toBe(f.length - 5);
    expect(d.push(f.subarray(f.length - 1)).length).toBe(1);
  });

  test("garbage payloads are FrameErrors", () => {
    const bad = ["", "c1", "81a174", "81a174a161c0", "93010203", "c403010203", "a474657374", "d47200", "81"];
    for (const b of bad) {
      let err: unknown;
      try {
        decodePayload(hex(b));
      } catch (e) {
        err = e;
      }
      expect(err, b).toBeInstanceOf(FrameError);
      expect((err as FrameError).code).toBe("bad_frame");
    }
  });
});
