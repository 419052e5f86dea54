// The join secret: where it comes from, how strong it is, how to make one.
//
// Promises: a secret is read only from the SMTS_SECRET environment variable or
// a file (never argv, which `ps` shows to every user); surrounding whitespace
// and the trailing newline of a file are ignored; an empty secret, or a file
// that is not UTF-8 text, is an error (decoded leniently, every invalid byte
// would become the same U+FFFD, and different binary secrets would match);
// secretFileExposed() tells whether other users of the machine can read the
// file; generated secrets carry 160 bits from the CSPRNG.
import { randomBytes } from "node:crypto";
import { readFileSync, statSync } from "node:fs";
import { ID_ALPHABET } from "../relay/protocol.ts";

/** Below this many characters a recorded join can be brute-forced offline. */
export const SHORT_SECRET = 16;

export class SecretError extends Error {}

/** The secret from --secret-file or SMTS_SECRET (the file wins), or null if neither is given. */
export function loadSecret(secretFile: string | undefined, env: Record<string, string | undefined> = process.env): string | null {
  let text: string;
  if (secretFile) {
    let bytes: Uint8Array;
    try {
      bytes = readFileSync(secretFile);
    } catch (err) {
      throw new SecretError(`cannot read secret file ${secretFile}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
    }
    try {
      text = new TextDecoder("utf-8", { fatal: true }).decode(bytes);
    } catch {
      throw new SecretError(`secret file ${secretFile} is not UTF-8 text (a secret is text: make one with \`smts relay --generate-secret\`)`);
    }
    text = text.trim();
    if (!text) throw new SecretError(`secret file ${secretFile} is empty`);
    return text;
  }
  const fromEnv = env.SMTS_SECRET;
  if (fromEnv === undefined) return null;
  text = fromEnv.trim();
  if (!text) throw new SecretError("SMTS_SECRET is set but empty");
  return text;
}

/** True when users other than the file's owner (group or others) may read `secretFile` (POSIX modes only). */
export function secretFileExposed(secretFile: string): boolean {
  if (process.platform === "win32") return false; // no POSIX modes there
  try {
    return (statSync(secretFile).mode & 0o044) !== 0;
  } catch {
    return false;
  }
}

export function secretBytes(secret: string): Uint8Array {
  return new TextEncoder().encode(secret);
}

/** 32 characters of Crockford base32 = 160 random bits, grouped for reading. */
export function generateSecret(): string {
  const bytes = randomBytes(32);
  let out = "";
  for (let i = 0; i < 32; i++) {
    if (i && i % 4 === 0) out += "-";
    out += ID_ALPHABET[bytes[i]! & 31];
  }
  return out;
}
