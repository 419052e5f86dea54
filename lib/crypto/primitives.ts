// The only primitives smts uses, as thin wrappers over node:crypto / Bun:
// SHA-256, HMAC-SHA256 (RFC 2104), HKDF-SHA256 (RFC 5869), AES-256-CBC with
// PKCS#7 padding (NIST SP 800-38A), the CSPRNG, and constant-time comparison.
// Known-answer tests for each are in tests/crypto.kat.test.ts.
import { createCipheriv, createDecipheriv, timingSafeEqual } from "node:crypto";

export function randomBytes(n: number): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(n)); // Web Crypto CSPRNG
}

export function sha256(...parts: Uint8Array[]): Uint8Array {
  const h = new Bun.CryptoHasher("sha256");
  for (const p of parts) h.update(p);
  return h.digest(); // a fresh 32-byte Buffer (a Uint8Array)
}

export function hmac(key: Uint8Array, ...parts: Uint8Array[]): Uint8Array {
  const h = new Bun.CryptoHasher("sha256", key);
  for (const p of parts) h.update(p);
  return h.digest();
}

/** HKDF-SHA256 (RFC 5869): extract with `salt`, expand with `info` to `length` bytes. */
export function hkdf(ikm: Uint8Array, salt: Uint8Array, info: Uint8Array, length: number): Uint8Array {
  if (!(length >= 0 && length <= 255 * 32)) throw new RangeError("HKDF-SHA256 output is limited to 8160 bytes");
  const prk = hmac(salt.length ? salt : new Uint8Array(32), ikm);
  const out = new Uint8Array(length);
  let block: Uint8Array = new Uint8Array(0);
  for (let i = 1, at = 0; at < length; i++) {
    const previous = block;
    block = hmac(prk, previous, info, new Uint8Array([i]));
    wipe(previous); // each block is key material (found in audit)
    out.set(block.subarray(0, length - at), at);
    at += block.length;
  }
  wipe(prk, block);
  return out;
}

/** AES-256-CBC with PKCS#7 padding added. */
export function aesCbcEncrypt(key: Uint8Array, iv: Uint8Array, plaintext: Uint8Array): Uint8Array {
  return runCipher(createCipheriv("aes-256-cbc", key, iv), plaintext);
}

/**
 * The same AES-256-CBC with PKCS#7 padding, of `buf[0, length)`, for the file
 * chunks' hot path: the padding (1 to 16 bytes, each equal to its length) is
 * written into `buf` itself, after the data, so the cipher returns the whole
 * ciphertext at once and it is never concatenated (a chunk-sized allocation and
 * copy per chunk). `buf` must have room for the padding.
 */
export function aesCbcEncryptPadInPlace(key: Uint8Array, iv: Uint8Array, buf: Uint8Array, length: number): Uint8Array {
  const padded = length + 16 - (length % 16);
  if (!(length >= 0 && padded <= buf.length)) throw new RangeError("no room for the padding after the plaintext");
  buf.fill(padded - length, length, padded);
  return runCipher(createCipheriv("aes-256-cbc", key, iv).setAutoPadding(false), buf.subarray(0, padded));
}

/** Decrypts and strips PKCS#7 padding; throws on bad padding. Call only after the MAC verified. */
export function aesCbcDecrypt(key: Uint8Array, iv: Uint8Array, ciphertext: Uint8Array): Uint8Array {
  return runCipher(createDecipheriv("aes-256-cbc", key, iv), ciphertext);
}

function runCipher(c: { update(data: Uint8Array): Buffer; final(): Buffer }, data: Uint8Array): Uint8Array {
  const a = c.update(data);
  const b = c.final();
  if (b.length === 0) return new Uint8Array(a.buffer, a.byteOffset, a.length);
  const whole = concat(a, b);
  wipe(a, b); // decrypting, they are plaintext
  return whole;
}

/** Constant-time equality for MACs and secrets (lengths are public). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

/** Overwrites key material we are done with. */
export function wipe(...bufs: (Uint8Array | null | undefined)[]): void {
  for (const b of bufs) b?.fill(0);
}

const encoder = new TextEncoder();
export const utf8 = (s: string): Uint8Array => encoder.encode(s);

export function concat(...parts: Uint8Array[]): Uint8Array {
  let n = 0;
  for (const p of parts) n += p.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const p of parts) out.set(p, at), (at += p.length);
  return out;
}

/** 8-byte big-endian encoding of a safe integer. */
export function u64be(n: number): Uint8Array {
  const out = new Uint8Array(8);
  const high = Math.floor(n / 2 ** 32);
  const low = n >>> 0;
  out[0] = high >>> 24, out[1] = (high >>> 16) & 0xff, out[2] = (high >>> 8) & 0xff, out[3] = high & 0xff;
  out[4] = low >>> 24, out[5] = (low >>> 16) & 0xff, out[6] = (low >>> 8) & 0xff, out[7] = low & 0xff;
  return out;
}
