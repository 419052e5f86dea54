// docs/PROTOCOL.md, "File layer", and the code must not drift. This file reads
// every file.* test vector from the document and checks it three ways:
//   1. against the reference functions (fileKeys, sealChunk with the vector
//      IVs, chunkMac, openChunk, pack);
//   2. against plain node:crypto written from the document's text;
//   3. against the transfer state machine (createTransfers), fed the
//      document's own bytes: the receiver rules of §28, the names of §29, the
//      sender rules of §27.
//
// The file vectors are named `file.*` (with a dot) so that the relay test's
// "exactly these vectors" check, which matches names of [a-z0-9-] only and
// skips the e2e-* ones, does not count them.
import { afterAll, describe, expect, test } from "bun:test";
import { hkdfSync } from "node:crypto";
import { existsSync, readdirSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { CHUNK_BYTES, chunkMac, doneMac, FILE_ID_BYTES, fileKeys, openChunk, sealChunk } from "../lib/transfer/chunks.ts";
import { numbered, safeName } from "../lib/transfer/names.ts";
import { createTransfers, type TransferEvent } from "../lib/transfer/transfers.ts";
import { DEFAULT_MAX_FILE_SIZE } from "../lib/client/chat-client.ts";
import { decodePayload, encodeFrame, type Frame } from "../lib/wire/frame.ts";
import { pack } from "../lib/wire/msgpack.ts";
import { tempDirs } from "./helpers.ts";
import { doc, docBlock, docVector, listedVectors, aesDecrypt, aesEncrypt, ascii, cat, hex, hmac, range, sha256, u64 } from "./doc-vectors.ts";

const flat = doc.replace(/\s+/g, " ");

// ---- Reading the document (same format as tests/protocol-e2e-doc.test.ts) ------


const VECTORS = [
  "file.enc-key",
  "file.mac-key",
  "file.plaintext-sha256",
  ...[0, 1].flatMap((i) => ["mac-prefix", "ct-head", "ct-tail", "ct-sha256", "mac", "header", "body-sha256"].map((s) => `file.chunk-${i}-${s}`)),
  "file.empty-mac-input",
  "file.empty-ct",
  "file.empty-mac",
  "file.empty-body",
  "file.offer",
  "file.accept",
  "file.done",
];
const v = listedVectors(VECTORS);

// ---- Plain implementations from the document's text ------------------------------


// ---- The document's inputs (§32) -------------------------------------------------

const FILE_KEY = range(0x00, 32);
const FILE_ID = range(0xf0, 16);
const FILE = Uint8Array.from({ length: 135536 }, (_, i) => i % 251);
const IVS = [range(0x00, 16), range(0x10, 16)];
const EMPTY_IV = range(0x20, 16);
const PLAIN = [FILE.subarray(0, 131072), FILE.subarray(131072)];
const LAST = [false, true];
const PEER = "k3x9pm2q";
const MAC_TRAILER = new Uint8Array([0xa3, 0x6d, 0x61, 0x63, 0xc4, 0x20]); // "mac", bin8 32

/** The chunk message of §32 built from the document alone: header ‖ ct (node:crypto) ‖ "mac" ‖ mac. */
function docChunkBody(i: number): Uint8Array {
  const ct = aesEncrypt(v("file.enc-key"), IVS[i]!, PLAIN[i]!);
  return cat(v(`file.chunk-${i}-header`), ct, MAC_TRAILER, v(`file.chunk-${i}-mac`));
}
const docChunk = (i: number): Frame => decodePayload(docChunkBody(i));
const docEmptyChunk = (): Frame => decodePayload(v("file.empty-body"));
const docOffer = (change: Record<string, unknown> = {}): Frame => ({ ...decodePayload(v("file.offer")), ...change });

describe("file-layer test vectors in docs/PROTOCOL.md", () => {
  test("the document has exactly the file vectors checked here, none visible to the other layers' tests", () => {
    const all = [...doc.matchAll(/<!-- vector: (file\.[a-z0-9.-]+) -->/g)].map((m) => m[1]!);
    expect([...all].sort()).toEqual([...VECTORS].sort());
    for (const name of all) docVector(name);
    // tests/protocol-doc.test.ts takes every [a-z0-9-]+ vector that is not e2e-* as a relay vector.
    expect([...doc.matchAll(/<!-- vector: ([a-z0-9-]+) -->/g)].map((m) => m[1]!).filter((n) => n.startsWith("file"))).toEqual([]);
  });

  test("constants quoted in the text", () => {
    expect(CHUNK_BYTES).toBe(131072);
    expect(FILE_ID_BYTES).toBe(16);
    expect(DEFAULT_MAX_FILE_SIZE).toBe(10485760);
    expect(flat).toContain("chunks of **131072 bytes** (128 KiB)");
    expect(flat).toContain("default 10 MiB (10485760 bytes)");
    expect(flat).toContain('info = "smts/1 file keys", L = 64');
    expect(flat).toContain('"smts/1 chunk" ‖ fileId ‖ u64be(n) ‖ L ‖ iv ‖ ct');
    expect(flat).toContain("`.<id>.smts-part`");
    expect(flat).toContain("more than **256 KiB** of chunks is queued");
    expect(flat).toContain("down to **128 KiB**");
    expect(flat).toContain("longer than **200 bytes** of UTF-8");
  });

  test("file keys: HKDF-SHA256(fileKey, salt = fileId, info = 'smts/1 file keys', 64) split enc ‖ mac", () => {
    const okm = new Uint8Array(hkdfSync("sha256", FILE_KEY, FILE_ID, ascii("smts/1 file keys"), 64));
    expect(hex(v("file.enc-key"))).toBe(hex(okm.subarray(0, 32)));
    expect(hex(v("file.mac-key"))).toBe(hex(okm.subarray(32)));
    // The expansion written out in §26.
    const prk = hmac(FILE_ID, FILE_KEY);
    const t1 = hmac(prk, ascii("smts/1 file keys"), new Uint8Array([1]));
    const t2 = hmac(prk, t1, ascii("smts/1 file keys"), new Uint8Array([2]));
    expect(hex(cat(t1, t2))).toBe(hex(okm));
    const keys = fileKeys(FILE_KEY, FILE_ID);
    expect(hex(keys.enc)).toBe(hex(v("file.enc-key")));
    expect(hex(keys.mac)).toBe(hex(v("file.mac-key")));
    expect(hex(v("file.plaintext-sha256"))).toBe(hex(sha256(FILE)));
  });

  for (const i of [0, 1]) {
    test(`chunk ${i}: MAC input, ciphertext, MAC and encoding (sealChunk with the vector IV, and node:crypto from the text)`, () => {
      const keys = fileKeys(FILE_KEY, FILE_ID);
      const c = sealChunk(keys, FILE_ID, i, LAST[i]!, PLAIN[i]!, IVS[i]!);
      // MAC input before ct: label ‖ file ID ‖ u64be(n) ‖ last ‖ iv (53 bytes).
      const prefix = v(`file.chunk-${i}-mac-prefix`);
      expect(prefix.length).toBe(53);
      expect(hex(prefix)).toBe(hex(cat(ascii("smts/1 chunk"), FILE_ID, u64(i), new Uint8Array([LAST[i] ? 1 : 0]), IVS[i]!)));
      // ct: its length, first and last 32 bytes, SHA-256.
      const ct = aesEncrypt(v("file.enc-key"), IVS[i]!, PLAIN[i]!);
      expect(ct.length).toBe([131088, 4480][i]!);
      expect(ct.length).toBe(16 * (Math.floor(PLAIN[i]!.length / 16) + 1));
      expect(hex(c.ct)).toBe(hex(ct));
      expect(hex(v(`file.chunk-${i}-ct-head`))).toBe(hex(ct.subarray(0, 32)));
      expect(hex(v(`file.chunk-${i}-ct-tail`))).toBe(hex(ct.subarray(-32)));
      expect(hex(v(`file.chunk-${i}-ct-sha256`))).toBe(hex(sha256(ct)));
      expect(hex(aesDecrypt(v("file.enc-key"), IVS[i]!, ct))).toBe(hex(PLAIN[i]!));
      // mac.
      expect(hex(v(`file.chunk-${i}-mac`))).toBe(hex(hmac(v("file.mac-key"), prefix, ct)));
      expect(hex(c.mac)).toBe(hex(v(`file.chunk-${i}-mac`)));
      expect(hex(chunkMac(keys, FILE_ID, i, LAST[i]!, IVS[i]!, ct))).toBe(hex(v(`file.chunk-${i}-mac`)));
      // Encoding: header ‖ ct ‖ "mac" ‖ mac, exactly pack's output.
      const body = pack(c);
      const header = v(`file.chunk-${i}-header`);
      expect(header.length).toBe([68, 66][i]!);
      expect(body.length).toBe([131194, 4584][i]!);
      expect(body.length).toBe(101 + (ct.length < 0x100 ? 2 : ct.length < 0x10000 ? 3 : 5) + ct.length);
      expect(hex(body)).toBe(hex(docChunkBody(i)));
      expect(hex(v(`file.chunk-${i}-body-sha256`))).toBe(hex(sha256(body)));
      const m = docChunk(i);
      expect(Object.keys(m)).toEqual(["t", "id", "n", "last", "iv", "ct", "mac"]);
      expect(m).toMatchObject({ t: "chunk", n: i, last: LAST[i] });
      expect(hex(m.id as Uint8Array)).toBe(hex(FILE_ID));
      expect(hex(m.ct as Uint8Array)).toBe(hex(ct));
    });
  }

  test("the empty file: one chunk, n = 0, last = true, empty plaintext, a whole block of padding", () => {
    const keys = fileKeys(FILE_KEY, FILE_ID);
    const ct = aesEncrypt(v("file.enc-key"), EMPTY_IV, new Uint8Array(0));
    expect(hex(ct)).toBe(hex(aesEncrypt(v("file.enc-key"), EMPTY_IV, new Uint8Array(16).fill(16)).subarray(0, 16)));
    expect(hex(v("file.empty-ct"))).toBe(hex(ct));
    const input = v("file.empty-mac-input");
    expect(input.length).toBe(69);
    expect(hex(input)).toBe(hex(cat(ascii("smts/1 chunk"), FILE_ID, u64(0), new Uint8Array([1]), EMPTY_IV, ct)));
    expect(hex(v("file.empty-mac"))).toBe(hex(hmac(v("file.mac-key"), input)));
    const c = sealChunk(keys, FILE_ID, 0, true, new Uint8Array(0), EMPTY_IV);
    expect(hex(c.mac)).toBe(hex(v("file.empty-mac")));
    const body = v("file.empty-body");
    expect(body.length).toBe(119);
    expect(hex(pack(c))).toBe(hex(body));
    const r = openChunk(keys, FILE_ID, 0, decodePayload(body));
    expect(r && r.last).toBe(true);
    expect(r && r.plaintext.length).toBe(0);
  });

  test("control contents: offer, accept and done, as pack encodes them", () => {
    const offer = { t: "offer", id: FILE_ID, name: "report.pdf", size: 135536, key: FILE_KEY };
    const accept = { t: "accept", id: FILE_ID };
    const done = { t: "done", id: FILE_ID, mac: hmac(v("file.mac-key"), ascii("smts/1 done"), FILE_ID, sha256(FILE)) };
    const cases: [string, Frame, number][] = [
      ["file.offer", offer, 94],
      ["file.accept", accept, 31],
      ["file.done", done, 67],
    ];
    for (const [name, value, length] of cases) {
      expect(hex(pack(value))).toBe(hex(v(name)));
      expect(v(name).length).toBe(length);
      expect(decodePayload(v(name))).toEqual(Object.fromEntries(Object.entries(value).map(([k, x]) => [k, x instanceof Uint8Array ? Buffer.from(x) : x])));
    }
    expect(hex(decodePayload(v("file.done")).mac as Uint8Array)).toBe(hex(doneMac(fileKeys(FILE_KEY, FILE_ID), FILE_ID, v("file.plaintext-sha256"))));
    // size from 2^32 on is uint64 (§24).
    expect(hex(pack({ size: 2 ** 32 }))).toBe("81a473697a65cf0000000100000000");
  });

  test("chunk message sizes and the frames around them (§25)", () => {
    expect(flat).toContain("101 bytes of fields around `ct`");
    expect(flat).toContain("a 131194-byte body");
    const full = sealChunk(fileKeys(FILE_KEY, FILE_ID), FILE_ID, 0, false, new Uint8Array(131072), IVS[0]!);
    for (const [n, payload] of [
      [0, 131224],
      [128, 131225],
      [256, 131226],
      [65536, 131228],
    ] as const) {
      const body = pack({ ...full, n });
      expect(encodeFrame({ t: "send", to: PEER, body }).length - 4).toBe(payload);
      expect(flat).toContain(String(payload));
    }
  });
});

describe("openChunk: exactly the expected chunk, nothing else (§26)", () => {
  const keys = () => fileKeys(FILE_KEY, FILE_ID);

  test("each vector chunk opens at its own index, with its plaintext and last flag", () => {
    for (const i of [0, 1]) {
      const r = openChunk(keys(), FILE_ID, i, docChunk(i));
      expect(r).not.toBeNull();
      expect(hex(sha256(r!.plaintext))).toBe(hex(sha256(PLAIN[i]!)));
      expect(r!.last).toBe(LAST[i]!);
    }
  });

  test("rejected at a wrong index, with the last flag flipped, or altered in any field", () => {
    for (const i of [0, 1]) {
      const m = docChunk(i);
      for (const wrong of [1 - i, i + 2, i + 1]) expect(openChunk(keys(), FILE_ID, wrong, m)).toBeNull();
      expect(openChunk(keys(), FILE_ID, i, { ...m, last: !m.last })).toBeNull();
      expect(openChunk(keys(), FILE_ID, i, { ...m, n: 1 - i })).toBeNull();
      const flip = (b: Uint8Array, at: number) => {
        const c = new Uint8Array(b);
        c[at]! ^= 1;
        return c;
      };
      const ct = m.ct as Uint8Array;
      for (const change of [
        { iv: flip(m.iv as Uint8Array, 0) },
        { ct: flip(ct, 0) },
        { ct: flip(ct, ct.length - 1) },
        { ct: ct.subarray(0, ct.length - 16) }, // truncated ciphertext
        { mac: flip(m.mac as Uint8Array, 31) },
        { mac: (m.mac as Uint8Array).subarray(0, 16) },
        { last: LAST[i] ? 1 : 0 }, // not a bool
        { iv: (m.iv as Uint8Array).subarray(0, 15) },
      ]) {
        expect(openChunk(keys(), FILE_ID, i, { ...m, ...change })).toBeNull();
      }
      // Spliced: the same chunk under another file ID (different keys and a different MAC input).
      const other = range(0xe0, 16);
      expect(openChunk(fileKeys(FILE_KEY, other), other, i, { ...m, id: other })).toBeNull();
      // Same keys, different file ID in the MAC input.
      expect(openChunk(keys(), other, i, m)).toBeNull();
    }
    const empty = docEmptyChunk();
    expect(openChunk(keys(), FILE_ID, 0, { ...empty, last: false })).toBeNull();
    expect(openChunk(keys(), FILE_ID, 1, empty)).toBeNull();
  });

  test("ct: at most 131088 bytes (checked before the MAC); up to 131087 bytes of plaintext still fit in that", () => {
    const k = keys();
    const big = sealChunk(k, FILE_ID, 0, false, new Uint8Array(131088), IVS[0]!);
    expect(big.ct.length).toBe(131088 + 16);
    expect(openChunk(k, FILE_ID, 0, big)).toBeNull();
    // openChunk bounds the ciphertext, not the plaintext: 131073..131087 bytes pass (§28 notes the receiver does not check chunk sizes).
    const odd = sealChunk(k, FILE_ID, 0, false, new Uint8Array(131087), IVS[0]!);
    expect(odd.ct.length).toBe(131088);
    expect(openChunk(k, FILE_ID, 0, odd)?.plaintext.length).toBe(131087);
  });
});

// ---- The transfer state machine against the document's bytes ---------------------

const temp = tempDirs("smts-file-doc-");
afterAll(() => temp.removeAll());

interface Harness {
  t: ReturnType<typeof createTransfers>;
  contents: Frame[];
  messages: Frame[];
  events: TransferEvent[];
  dir: string;
  backlog: number;
  drainedCalls: number[];
}

function harness(opts: { maxFileSize?: number; backlog?: number } = {}): Harness {
  const h: Harness = { contents: [], messages: [], events: [], dir: temp.make(), backlog: opts.backlog ?? 0, drainedCalls: [] } as unknown as Harness;
  h.t = createTransfers(
    {
      sendContent: (_peer, item) => void h.contents.push(item),
      sendChunk: (_peer, frame) => void h.messages.push(frame),
      chunkBacklog: () => h.backlog,
      dropChunks() {},
      congested: () => false,
      isBusy: () => false,
      chunksDrained: (bytes) => {
        h.drainedCalls.push(bytes);
        return new Promise(() => {}); // never drains: shows where the sender stops
      },
      emit: (e) => void h.events.push(e),
      maxFrame: () => 256 * 1024,
    },
    { downloadDir: h.dir, maxFileSize: opts.maxFileSize ?? DEFAULT_MAX_FILE_SIZE },
  );
  return h;
}

const TEMP = `.${hex(FILE_ID)}.smts-part`;
const last = <T>(a: T[]) => a[a.length - 1]!;

describe("the receiver rules of §28, fed the document's vectors", () => {
  test("offer → temporary file (exclusive, 0600) and accept; chunks 0 and 1 → report.pdf, done with the MAC of the file's SHA-256", () => {
    const r = harness();
    expect(r.t.onContent(PEER, docOffer())).toBe(true);
    expect(r.contents).toEqual([{ t: "accept", id: expect.anything() }]);
    expect(hex(pack(r.contents[0]!))).toBe(hex(v("file.accept")));
    expect(readdirSync(r.dir)).toEqual([TEMP]);
    expect(statSync(join(r.dir, TEMP)).mode & 0o777).toBe(0o600);
    expect(last(r.events)).toMatchObject({ event: "transfer", id: "f0f1f2f3", direction: "in", name: "report.pdf", size: 135536, state: "receiving" });
    r.t.onChunk(PEER, docChunk(0));
    expect(readdirSync(r.dir)).toEqual([TEMP]); // not under its final name before the last chunk
    expect(statSync(join(r.dir, TEMP)).size).toBe(131072); // written before the next message
    r.t.onChunk(PEER, docChunk(1));
    expect(readdirSync(r.dir)).toEqual(["report.pdf"]);
    expect(hex(sha256(readFileSync(join(r.dir, "report.pdf"))))).toBe(hex(v("file.plaintext-sha256")));
    expect(statSync(join(r.dir, "report.pdf")).mode & 0o777).toBe(0o600);
    expect(hex(pack(last(r.contents)))).toBe(hex(v("file.done")));
    expect(last(r.events)).toMatchObject({ event: "file", from: PEER, id: "f0f1f2f3", name: "report.pdf", size: 135536, sha256: hex(v("file.plaintext-sha256")), broadcast: false });
    // Later chunks for the finished transfer are ignored.
    const before = r.contents.length;
    r.t.onChunk(PEER, docChunk(1));
    expect(r.contents.length).toBe(before);
  });

  test("the empty file of §32.4", () => {
    const r = harness();
    r.t.onContent(PEER, docOffer({ size: 0, name: "empty" }));
    r.t.onChunk(PEER, docEmptyChunk());
    expect(readFileSync(join(r.dir, "empty")).length).toBe(0);
    expect(last(r.contents)).toMatchObject({ t: "done" });
    expect(hex(last(r.contents).mac as Uint8Array)).toBe(hex(hmac(v("file.mac-key"), ascii("smts/1 done"), FILE_ID, sha256(new Uint8Array(0)))));
  });

  const failing: [string, (r: Harness) => void, RegExp][] = [
    ["a missing chunk (1 before 0)", (r) => r.t.onChunk(PEER, docChunk(1)), /^chunk 0 failed verification/],
    ["a duplicated chunk", (r) => (r.t.onChunk(PEER, docChunk(0)), r.t.onChunk(PEER, docChunk(0))), /^chunk 1 failed verification/],
    ["a flipped last flag", (r) => r.t.onChunk(PEER, { ...docChunk(0), last: true }), /^chunk 0 failed verification/],
    ["a tampered ciphertext", (r) => r.t.onChunk(PEER, { ...docChunk(0), ct: new Uint8Array(131088) }), /^chunk 0 failed verification/],
    ["a chunk of another file (the empty file's, other key) spliced in", (r) => (r.t.onChunk(PEER, docChunk(0)), r.t.onChunk(PEER, { ...docEmptyChunk(), n: 1 })), /^chunk 1 failed verification/],
  ];
  for (const [what, act, reason] of failing) {
    test(`${what} fails the transfer: failed sent, temporary file removed`, () => {
      const r = harness();
      r.t.onContent(PEER, docOffer());
      act(r);
      expect(last(r.contents)).toMatchObject({ t: "failed", reason: expect.stringMatching(reason) });
      expect(hex(last(r.contents).id as Uint8Array)).toBe(hex(FILE_ID));
      expect(readdirSync(r.dir)).toEqual([]);
      expect(last(r.events)).toMatchObject({ event: "transfer", id: "f0f1f2f3", state: "failed" });
      expect(r.t.active()).toBe(0);
    });
  }

  test("the offered size is enforced on the bytes received: more data, or less at the last chunk", () => {
    const more = harness();
    more.t.onContent(PEER, docOffer({ size: 131072 }));
    more.t.onChunk(PEER, docChunk(0));
    more.t.onChunk(PEER, docChunk(1));
    expect(last(more.contents)).toMatchObject({ t: "failed", reason: "more data than the 131072 bytes offered" });
    expect(readdirSync(more.dir)).toEqual([]);

    const less = harness();
    less.t.onContent(PEER, docOffer({ size: 135537 }));
    less.t.onChunk(PEER, docChunk(0));
    less.t.onChunk(PEER, docChunk(1));
    expect(last(less.contents)).toMatchObject({ t: "failed", reason: "size mismatch: 135536 bytes received, 135537 offered" });
    expect(readdirSync(less.dir)).toEqual([]);
  });

  test("over the receiver's own limit: declined, nothing created; exactly the limit is accepted", () => {
    const r = harness({ maxFileSize: 135535 });
    r.t.onContent(PEER, docOffer());
    expect(r.contents).toEqual([{ t: "decline", id: expect.anything(), reason: "too large: 132 KiB (135536 bytes), the receiver accepts at most 132 KiB (135535 bytes) (its --max-file-size)" }]);
    expect(readdirSync(r.dir)).toEqual([]);
    const ok = harness({ maxFileSize: 135536 });
    ok.t.onContent(PEER, docOffer());
    expect(ok.contents).toEqual([{ t: "accept", id: expect.anything() }]);
  });

  test("our own offer handed back by the peer we offered it to is a duplicate: declined, and our transfer goes on", async () => {
    const s = harness();
    const path = join(s.dir, "report.pdf");
    writeFileSync(path, FILE);
    void s.t.send(PEER, path).catch(() => {});
    const offer = s.contents[0]!;
    s.t.onContent(PEER, decodePayload(pack(offer)));
    expect(s.contents.slice(1)).toEqual([{ t: "decline", id: offer.id, reason: "duplicate offer" }]);
    expect(readdirSync(s.dir)).toEqual(["report.pdf"]); // no temporary file for it
    s.t.onContent(PEER, { t: "accept", id: offer.id });
    await Bun.sleep(10);
    expect(s.messages.map((m) => m.n)).toEqual([0, 1]);
  });

  test("duplicate offer, malformed offers, an existing temporary file, chunks from another peer, cancel from the sender", () => {
    const r = harness();
    r.t.onContent(PEER, docOffer());
    r.t.onContent(PEER, docOffer());
    expect(last(r.contents)).toMatchObject({ t: "decline", reason: "duplicate offer" });
    expect(r.t.active()).toBe(1);
    r.t.onChunk("zzzzzzzz", docChunk(0)); // someone else's chunk: nothing to attach it to
    expect(r.contents.length).toBe(2);
    r.t.onContent(PEER, { t: "cancel", id: FILE_ID, reason: "cancelled by sender" });
    expect(r.contents.length).toBe(2); // no answer to cancel
    expect(readdirSync(r.dir)).toEqual([]);
    expect(last(r.events)).toMatchObject({ state: "cancelled", reason: `cancelled by ${PEER}` }); // not "...: cancelled by sender" again

    for (const bad of [{ id: FILE_ID.subarray(0, 15) }, { key: FILE_KEY.subarray(1) }, { size: -1 }, { size: 1.5 }, { size: 2 ** 53 }, { name: 7 }]) {
      const m = harness();
      m.t.onContent(PEER, docOffer(bad));
      expect(m.contents).toEqual([]);
      expect(readdirSync(m.dir)).toEqual([]);
      expect(last(m.events)).toMatchObject({ event: "transfer", state: "failed", reason: "malformed offer" });
    }

    const busy = harness();
    writeFileSync(join(busy.dir, TEMP), "someone else's");
    busy.t.onContent(PEER, docOffer());
    // Taken (say, by another recipient of the same broadcast): a suffixed name, the other file untouched.
    expect(busy.contents).toEqual([{ t: "accept", id: expect.anything() }]);
    expect(readFileSync(join(busy.dir, TEMP), "utf8")).toBe("someone else's");
    expect(readdirSync(busy.dir).filter((n) => n !== TEMP)).toEqual([expect.stringMatching(new RegExp(`^\\.${hex(FILE_ID)}\\.[0-9a-f]{8}\\.smts-part$`))]);
  });

  test("names: the offered name is made safe and never overwrites (§29)", () => {
    expect(safeName("../x")).toBe("x");
    expect(safeName("/etc/passwd")).toBe("passwd");
    expect(safeName("C:\\Windows\\x.exe")).toBe("x.exe");
    expect(safeName("con.txt")).toBe("_con.txt");
    expect(safeName("..")).toBe("file");
    expect(safeName("x\u001b[31m\u202e.txt")).toBe("x[31m.txt");
    expect(safeName("a<b>:c.txt")).toBe("a_b__c.txt");
    // Invisible characters and decomposed forms (found in audit: shown as report.pdf, not numbered).
    for (const name of ["report\u00ad.pdf", "re\u034fport.pdf", "report.pdf\ufe0f", "report\u{E0020}.pdf", "report\u180e.pdf", "report.pdf\u3164", "\u200breport.pdf\u2060"]) expect(safeName(name)).toBe("report.pdf");
    expect(safeName("re\u0301sume\u0301.pdf")).toBe("r\u00e9sum\u00e9.pdf");
    expect(Buffer.byteLength(safeName("é".repeat(150) + ".pdf"))).toBeLessThanOrEqual(200);
    expect(safeName("é".repeat(150) + ".pdf").endsWith(".pdf")).toBe(true);
    expect(numbered("report.pdf", 1)).toBe("report (1).pdf");
    expect(numbered("archive.tar.gz", 1)).toBe("archive (1).tar.gz");
    expect(numbered("README", 1)).toBe("README (1)");
    for (const example of ["`report.pdf` → `report (1).pdf`", "`archive.tar.gz` → `archive (1).tar.gz`", "`README` → `README (1)`", "`con.txt` → `_con.txt`"]) {
      expect(flat).toContain(example);
    }

    const r = harness();
    writeFileSync(join(r.dir, "report.pdf"), "mine");
    r.t.onContent(PEER, docOffer({ name: "../../report.pdf" }));
    r.t.onChunk(PEER, docChunk(0));
    r.t.onChunk(PEER, docChunk(1));
    expect(readFileSync(join(r.dir, "report.pdf"), "utf8")).toBe("mine");
    expect(readFileSync(join(r.dir, "report (1).pdf")).length).toBe(135536);
    expect(last(r.events)).toMatchObject({ event: "file", name: "report (1).pdf", path: join(r.dir, "report (1).pdf") });
    // A name that only looks the same (a soft hyphen in it) is numbered too.
    r.t.onContent(PEER, docOffer({ name: "report\u00ad.pdf" }));
    r.t.onChunk(PEER, docChunk(0));
    r.t.onChunk(PEER, docChunk(1));
    expect(last(r.events)).toMatchObject({ event: "file", name: "report (2).pdf" });
    expect(existsSync(join(r.dir, "..", "report.pdf"))).toBe(false);
  });
});

describe("the sender rules of §27", () => {
  test("offer fields, chunks of 131072 bytes then the last, done compared; delivered", async () => {
    const s = harness();
    const path = join(s.dir, "report.pdf");
    writeFileSync(path, FILE);
    const sent = s.t.send(PEER, path);
    const offer = s.contents[0]!;
    expect(Object.keys(offer)).toEqual(["t", "id", "name", "size", "key"]);
    expect(offer).toMatchObject({ t: "offer", name: "report.pdf", size: 135536 });
    expect((offer.id as Uint8Array).length).toBe(16);
    expect((offer.key as Uint8Array).length).toBe(32);
    // Same layout as the document's offer, with this offer's random ID and key.
    expect(pack(offer).length).toBe(v("file.offer").length);
    const shortId = hex(offer.id as Uint8Array).slice(0, 8);
    expect(last(s.events)).toMatchObject({ event: "transfer", id: shortId, direction: "out", state: "offered" });

    // A receiver (another harness) takes it.
    const r = harness();
    r.t.onContent("sender00", decodePayload(pack(offer)));
    s.t.onContent(PEER, r.contents[0]!); // accept
    await Bun.sleep(10);
    expect(s.messages.map((m) => [m.n, m.last, (m.ct as Uint8Array).length])).toEqual([
      [0, false, 131088],
      [1, true, 4480],
    ]);
    for (const m of s.messages) r.t.onChunk("sender00", decodePayload(pack(m)));
    expect(readFileSync(join(r.dir, "report.pdf")).length).toBe(135536);
    s.t.onContent(PEER, last(r.contents)); // done
    await sent;
    expect(last(s.events)).toMatchObject({ event: "delivered", to: PEER, id: shortId, sha256: hex(v("file.plaintext-sha256")) });
  });

  test("a done whose mac is not that of our SHA-256 fails the transfer", async () => {
    const s = harness();
    const path = join(s.dir, "f");
    writeFileSync(path, "abc");
    const sent = s.t.send(PEER, path);
    const id = s.contents[0]!.id as Uint8Array;
    s.t.onContent(PEER, { t: "accept", id });
    await Bun.sleep(10);
    s.t.onContent(PEER, { t: "done", id, mac: new Uint8Array(32) });
    await expect(sent).rejects.toMatchObject({ code: "failed" });
    expect(last(s.events)).toMatchObject({ event: "transfer", state: "failed", reason: "the receiver's SHA-256 differs from ours" });
  });

  test("over its own limit: refused before anything is sent", async () => {
    const s = harness({ maxFileSize: 135535 });
    const path = join(s.dir, "report.pdf");
    writeFileSync(path, FILE);
    await expect(s.t.send(PEER, path)).rejects.toMatchObject({ code: "too_large" });
    expect(s.contents).toEqual([]);
  });

  test("backpressure: above 256 KiB queued, the sender stops after the chunk and waits for 128 KiB", async () => {
    const s = harness({ backlog: 256 * 1024 + 1 });
    const path = join(s.dir, "big");
    writeFileSync(path, new Uint8Array(5 * 131072));
    const sent = s.t.send(PEER, path).catch((e) => e);
    s.t.onContent(PEER, { t: "accept", id: s.contents[0]!.id });
    await Bun.sleep(10);
    expect(s.messages.length).toBe(1);
    expect(s.drainedCalls).toEqual([128 * 1024]);
    s.t.cancel("");
    expect(last(s.contents)).toMatchObject({ t: "cancel", reason: "cancelled by sender" });
    expect(await sent).toMatchObject({ code: "cancelled" });

    const fast = harness({ backlog: 256 * 1024 }); // at the threshold: keeps reading
    const p2 = join(fast.dir, "big");
    writeFileSync(p2, new Uint8Array(5 * 131072));
    const sent2 = fast.t.send(PEER, p2).catch((e) => e);
    fast.t.onContent(PEER, { t: "accept", id: fast.contents[0]!.id });
    await Bun.sleep(10);
    expect(fast.messages.map((m) => m.last)).toEqual([false, false, false, false, true]); // a multiple of 131072: no extra empty chunk
    expect(fast.t.cancel("")).toBe(0); // sent in full: only the receiver's answer ends it
    fast.t.abandon(null, "the test is over");
    expect(await sent2).toMatchObject({ code: "failed" });
  });

  test("decline and failed from the receiver end the transfer; /cancel matches the short ID prefix", async () => {
    const s = harness();
    const path = join(s.dir, "f");
    writeFileSync(path, "abc");
    const a = s.t.send(PEER, path);
    const b = s.t.send(PEER, path);
    const [ida, idb] = [s.contents[0]!.id as Uint8Array, s.contents[1]!.id as Uint8Array];
    s.t.onContent(PEER, { t: "decline", id: ida, reason: "no thanks" });
    await expect(a).rejects.toMatchObject({ code: "declined" });
    expect(s.t.cancel(hex(idb).slice(0, 8))).toBe(1);
    await expect(b).rejects.toMatchObject({ code: "cancelled" });
    expect(last(s.contents)).toMatchObject({ t: "cancel", reason: "cancelled by sender" });
  });
});
