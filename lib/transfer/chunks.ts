// Encrypted file chunks (docs/PROTOCOL.md, "File layer"), the STREAM idea:
// each file has its own random 32-byte key, sent inside an authenticated
// session record, from which
//   encKey ‖ macKey = HKDF-SHA256(fileKey, salt = fileId, info = "smts/1 file keys", 64)
// Chunk n (plaintext at most CHUNK_BYTES) is AES-256-CBC(encKey, random IV)
// and mac = HMAC(macKey, "smts/1 chunk" ‖ fileId ‖ u64be(n) ‖ last ‖ iv ‖ ct),
// last = 0x01 on the final chunk, else 0x00. Binding the index and the final
// flag detects reordered, duplicated, dropped and truncated chunks; binding
// the file ID detects chunks spliced in from another file.
import { aesCbcDecrypt, aesCbcEncrypt, equalBytes, hkdf, hmac, randomBytes, u64be, utf8 } from "../crypto/primitives.ts";

export const CHUNK_BYTES = 64 * 1024;
export const FILE_ID_BYTES = 16;
const L_KEYS = utf8("smts/1 file keys");
const L_CHUNK = utf8("smts/1 chunk");
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

/** `iv` is only passed by the protocol's test vectors. */
export function sealChunk(keys: FileKeys, fileId: Uint8Array, n: number, last: boolean, plaintext: Uint8Array, iv = randomBytes(16)): ChunkFrame {
  const ct = aesCbcEncrypt(keys.enc, iv, plaintext);
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
