// Encrypted file chunks (docs/PROTOCOL.md, "File layer"), the STREAM idea:
// each file has its own random 32-byte key, sent inside an authenticated
// session record, from which
//   encKey ‖ macKey = HKDF-SHA256(fileKey, salt = fileId, info = "smts/1 file keys", 64)
// Chunk n (plaintext at most CHUNK_BYTES) is AES-256-CBC(encKey, random IV)
// and mac = HMAC(macKey, "smts/1 chunk" ‖ fileId ‖ u64be(n) ‖ last ‖ iv ‖ ct),
// last = 0x01 on the final chunk, else 0x00. Binding the index and the final
// flag detects reordered, duplicated, dropped and truncated chunks; binding
// the file ID detects chunks spliced in from another file. The receiver's
// `done` carries HMAC(macKey, "smts/1 done" ‖ fileId ‖ dn ‖ SHA-256 of what
// it saved), not the hash itself: only the sender can check it, and a session
// that replaced the offer's meanwhile (the relay's, perhaps) learns nothing.
// dn is empty for a private file; a broadcast offer gives each recipient its
// own 16 random bytes, since all of them share the file key: without it one
// recipient's `done` would pass for another's.
import { aesCbcDecrypt, aesCbcEncryptPadInPlace, equalBytes, hkdf, hmac, randomBytes, u64be, utf8 } from "../crypto/primitives.ts";
import { binEndingAt, bytesAt, readU32 } from "../wire/frame.ts";

// 128 KiB: against 64 KiB, about 10 % less CPU per MiB moved across the three
// processes and 1-8 % less wall time (docs/BENCHMARKS.md); still small enough
// that each hop holds only a few chunks.
export const CHUNK_BYTES = 128 * 1024;
export const FILE_ID_BYTES = 16;
const L_KEYS = utf8("smts/1 file keys");
const L_CHUNK = utf8("smts/1 chunk");
const L_DONE = utf8("smts/1 done");
const NO_DN = new Uint8Array(0);
/** The broadcast offer's per-recipient `dn`. */
export const DN_BYTES = 16;
const LAST = new Uint8Array([1]);
const NOT_LAST = new Uint8Array([0]);

export interface FileKeys {
  enc: Uint8Array;
  mac: Uint8Array;
}

export function fileKeys(fileKey: Uint8Array, fileId: Uint8Array): FileKeys {
  const okm = hkdf(fileKey, fileId, L_KEYS, 64);
  return { enc: okm.subarray(0, 32), mac: okm.subarray(32) };
}

export type ChunkFrame = { t: "chunk"; id: Uint8Array; n: number; last: boolean; iv: Uint8Array; ct: Uint8Array; mac: Uint8Array };

export function chunkMac(keys: FileKeys, fileId: Uint8Array, n: number, last: boolean, iv: Uint8Array, ct: Uint8Array): Uint8Array {
  return hmac(keys.mac, L_CHUNK, fileId, u64be(n), last ? LAST : NOT_LAST, iv, ct);
}

/** The `mac` of the receiver's `done`: it saved a file whose SHA-256 is `sha256`; `dn` is the broadcast offer's. */
export function doneMac(keys: FileKeys, fileId: Uint8Array, sha256: Uint8Array, dn: Uint8Array = NO_DN): Uint8Array {
  return hmac(keys.mac, L_DONE, fileId, dn, sha256);
}

/** `iv` is only passed by the protocol's test vectors. */
export function sealChunk(keys: FileKeys, fileId: Uint8Array, n: number, last: boolean, plaintext: Uint8Array, iv = randomBytes(16)): ChunkFrame {
  const buf = new Uint8Array(plaintext.length + PAD_ROOM);
  buf.set(plaintext);
  return sealChunkInPlace(keys, fileId, n, last, buf, plaintext.length, iv);
}

/** Bytes a sender's chunk buffer needs after the plaintext, for the padding. */
export const PAD_ROOM = 16;

/** sealChunk of `buf[0, length)` without copying it: the padding is written into `buf`, which needs PAD_ROOM bytes after the plaintext. */
export function sealChunkInPlace(keys: FileKeys, fileId: Uint8Array, n: number, last: boolean, buf: Uint8Array, length: number, iv = randomBytes(16)): ChunkFrame {
  const ct = aesCbcEncryptPadInPlace(keys.enc, iv, buf, length);
  return { t: "chunk", id: fileId, n, last, iv, ct, mac: chunkMac(keys, fileId, n, last, iv, ct) };
}

/** Verifies (MAC first, constant time) and decrypts chunk `expected`; null if it is not exactly that chunk. */
export function openChunk(keys: FileKeys, fileId: Uint8Array, expected: number, m: Record<string, unknown>): { plaintext: Uint8Array; last: boolean } | null {
  const { n, last, iv, ct, mac } = m;
  if (n !== expected || typeof last !== "boolean" || !(iv instanceof Uint8Array) || iv.length !== 16) return null;
  if (!(ct instanceof Uint8Array) || ct.length === 0 || ct.length % 16 !== 0 || ct.length > CHUNK_BYTES + 16) return null;
  if (!(mac instanceof Uint8Array) || !equalBytes(chunkMac(keys, fileId, expected, last, iv, ct), mac)) return null;
  try {
    return { plaintext: aesCbcDecrypt(keys.enc, iv, ct), last };
  } catch {
    return null;
  }
}

// ---- Fast path for receiving -------------------------------------------------------
// A chunk exactly as lib/ encodes it: fixmap {t:"chunk", id:<bin 16>, n:<uint>,
// last:<bool>, iv:<bin 16>, ct:<bin>, mac:<bin 32>} in this key order. parseChunk
// gives the frame a msgpack decoder would, without one (nearly every byte a
// receiver gets is in chunks); any other encoding returns null and takes the
// general path, with the same result.
const literal = (...parts: (string | number)[]) => new Uint8Array(parts.flatMap((x) => (typeof x === "string" ? [...utf8(x)] : [x])));
const HEAD = literal(0x87, 0xa1, "t", 0xa5, "chunk", 0xa2, "id", 0xc4, FILE_ID_BYTES);
const N_KEY = literal(0xa1, "n");
const LAST_KEY = literal(0xa4, "last");
const IV_KEY = literal(0xa2, "iv", 0xc4, 16);
const CT_KEY = literal(0xa2, "ct");
const MAC_KEY = literal(0xa3, "mac", 0xc4, 32);

export function parseChunk(p: Uint8Array): ChunkFrame | null {
  let at = 0;
  const expect = (bytes: Uint8Array): boolean => bytesAt(p, at, bytes) && ((at += bytes.length), true);
  const take = (n: number): Uint8Array => p.subarray(at, (at += n));
  if (!expect(HEAD) || p.length < at + FILE_ID_BYTES) return null;
  const id = take(FILE_ID_BYTES);
  if (!expect(N_KEY) || p.length < at + 5) return null;
  let n: number;
  const tag = p[at++]!;
  if (tag < 0x80) n = tag;
  else if (tag === 0xcc) n = p[at++]!;
  else if (tag === 0xcd) (n = (p[at]! << 8) | p[at + 1]!), (at += 2);
  else if (tag === 0xce) (n = readU32(p, at)), (at += 4);
  else return null; // uint64 and anything else: the general decoder
  if (!expect(LAST_KEY) || p.length < at + 1) return null;
  const flag = p[at++];
  if (flag !== 0xc2 && flag !== 0xc3) return null;
  if (!expect(IV_KEY) || p.length < at + 16) return null;
  const iv = take(16);
  if (!expect(CT_KEY)) return null;
  const macAt = p.length - MAC_KEY.length - 32; // the ct ends where the mac key starts
  const ctAt = binEndingAt(p, at, macAt);
  if (ctAt < 0) return null;
  at = ctAt;
  const ct = take(macAt - ctAt);
  if (!expect(MAC_KEY)) return null;
  return { t: "chunk", id, n, last: flag === 0xc3, iv, ct, mac: take(32) };
}
