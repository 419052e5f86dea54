// Reads test vectors out of docs/PROTOCOL.md, so the document and the code
// cannot drift apart. A vector is a code block right after a marker
// `<!-- vector: NAME -->` (or `<!-- text: NAME -->` for text); on each line
// the hex bytes come before the first run of two spaces, the rest is comment.
import { readFileSync } from "node:fs";

export const doc = readFileSync(new URL("../docs/PROTOCOL.md", import.meta.url), "utf8");

/** The code block after `<!-- KIND: name -->`; it must appear exactly once. */
export function docBlock(kind: "vector" | "text", name: string): string {
  const marker = `<!-- ${kind}: ${name} -->`;
  const at = doc.indexOf(marker);
  if (at < 0) throw new Error(`no ${kind} ${name} in docs/PROTOCOL.md`);
  if (doc.indexOf(marker, at + 1) >= 0) throw new Error(`${kind} ${name} appears twice`);
  const m = /^\s*```[a-z]*\n([\s\S]*?)\n```/.exec(doc.slice(at + marker.length));
  if (!m) throw new Error(`${kind} ${name} is not followed by a code block`);
  return m[1]!;
}

/** The bytes of a vector: the hex before the first double space of every line. */
export function docVector(name: string): Uint8Array {
  let hex = "";
  for (const line of docBlock("vector", name).split("\n")) {
    const bytes = line.split(/ {2,}|\t/)[0]!.trim();
    if (!/^[0-9a-f]{2}( [0-9a-f]{2})*$/.test(bytes) && !/^([0-9a-f]{2})+$/.test(bytes)) {
      throw new Error(`vector ${name}: cannot read hex bytes in line ${JSON.stringify(line)}`);
    }
    hex += bytes.replaceAll(" ", "");
  }
  return new Uint8Array(Buffer.from(hex, "hex"));
}

/**
 * A lookup for the vectors one test file checks: `names` is that file's list,
 * so a vector read but not listed (and so not checked to exist) fails at once.
 */
export function listedVectors(names: readonly string[]): (name: string) => Uint8Array {
  return (name) => {
    if (!names.includes(name)) throw new Error(`vector ${name} missing from VECTORS`);
    return docVector(name);
  };
}

// ---- Independent byte helpers ---------------------------------------------------
// Written with node:crypto from the document's text, never with lib/, so the
// vector tests check the code against a second implementation.
import { createCipheriv, createDecipheriv, createHash, createHmac } from "node:crypto";

export const hex = (b: Uint8Array) => Buffer.from(b).toString("hex");
export const ascii = (s: string) => new Uint8Array(Buffer.from(s, "utf8"));
export const cat = (...parts: Uint8Array[]) => new Uint8Array(Buffer.concat(parts));
export const range = (start: number, n: number) => Uint8Array.from({ length: n }, (_, i) => start + i);
export const sha256 = (...parts: Uint8Array[]) => new Uint8Array(createHash("sha256").update(cat(...parts)).digest());
export const hmac = (key: Uint8Array, ...parts: Uint8Array[]) => new Uint8Array(createHmac("sha256", key).update(cat(...parts)).digest());
export const u64 = (n: number) => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64BE(BigInt(n));
  return new Uint8Array(b);
};
export const aesEncrypt = (key: Uint8Array, iv: Uint8Array, plain: Uint8Array) => {
  const c = createCipheriv("aes-256-cbc", key, iv);
  return new Uint8Array(Buffer.concat([c.update(plain), c.final()]));
};
export const aesDecrypt = (key: Uint8Array, iv: Uint8Array, ct: Uint8Array) => {
  const d = createDecipheriv("aes-256-cbc", key, iv);
  return new Uint8Array(Buffer.concat([d.update(ct), d.final()]));
};
