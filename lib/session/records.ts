// Encrypted records of an established session (docs/PROTOCOL.md, "Records").
//
// Each direction has its own chain key CK. Record n uses
//   encKey = HMAC(CK_n, 0x01), macKey = HMAC(CK_n, 0x02), CK_{n+1} = HMAC(CK_n, 0x03)
// and CK_n, encKey, macKey are erased once used (forward secrecy inside the
// session). A record is AES-256-CBC(encKey, random IV, PKCS#7(plaintext)),
// then mac = HMAC(macKey, "smts/1 rec" ‖ u64be(seq) ‖ IV ‖ ciphertext),
// checked in constant time before anything is decrypted.
//
// The receiver accepts only seq ≥ the next expected one: a lower seq is a
// replay or reordering and is rejected; a higher seq (up to MAX_SKIP ahead)
// means records were dropped in transit: it is accepted only if its MAC
// verifies, and the gap is reported. A record that fails leaves the chain
// exactly as it was, so an injected record cannot desynchronise the session.
// The chain keys walked to reach a high seq are kept (at most MAX_SKIP of
// them, all derivable from the current one anyway), so forged records with a
// high seq cost one walk in all, not up to 1024 HMACs each.
import { aesCbcDecrypt, aesCbcEncrypt, equalBytes, hmac, randomBytes, u64be, utf8, wipe } from "../crypto/primitives.ts";

const L_REC = utf8("smts/1 rec");
const ENC = new Uint8Array([1]);
const MAC = new Uint8Array([2]);
const NEXT = new Uint8Array([3]);
export const MAX_SKIP = 1024;

export type RecordFrame = { t: "rec"; v: 1; seq: number; iv: Uint8Array; ct: Uint8Array; mac: Uint8Array };

export function recordMac(macKey: Uint8Array, seq: number, iv: Uint8Array, ct: Uint8Array): Uint8Array {
  return hmac(macKey, L_REC, u64be(seq), iv, ct);
}

export class SendChain {
  private seq = 0;
  constructor(private chain: Uint8Array) {}

  /** `iv` is only ever passed by the protocol's test vectors; real records use a fresh random one. */
  seal(plaintext: Uint8Array, iv: Uint8Array = randomBytes(16)): RecordFrame {
    const encKey = hmac(this.chain, ENC);
    const macKey = hmac(this.chain, MAC);
    const next = hmac(this.chain, NEXT);
    wipe(this.chain);
    this.chain = next;
    const ct = aesCbcEncrypt(encKey, iv, plaintext);
    const mac = recordMac(macKey, this.seq, iv, ct);
    wipe(encKey, macKey);
    return { t: "rec", v: 1, seq: this.seq++, iv, ct, mac };
  }

  erase(): void {
    wipe(this.chain);
  }
}

export type OpenResult =
  | { ok: true; plaintext: Uint8Array; skipped: number }
  | { ok: false; reason: "malformed" | "replayed" | "tampered" | "too_far" };

export class ReceiveChain {
  private next = 0;
  /** ahead[i] = CK_{next+1+i}, computed on demand. */
  private ahead: Uint8Array[] = [];
  constructor(private chain: Uint8Array) {}

  /** CK_n for next ≤ n ≤ next + MAX_SKIP. */
  private chainAt(n: number): Uint8Array {
    while (this.ahead.length < n - this.next) this.ahead.push(hmac(this.ahead.at(-1) ?? this.chain, NEXT));
    return n === this.next ? this.chain : this.ahead[n - this.next - 1]!;
  }

  open(m: Record<string, unknown>): OpenResult {
    const { seq, iv, ct, mac } = m;
    if (m.v !== 1 || !Number.isSafeInteger(seq) || (seq as number) < 0 || !(iv instanceof Uint8Array) || iv.length !== 16 || !(ct instanceof Uint8Array) || ct.length === 0 || ct.length % 16 !== 0 || !(mac instanceof Uint8Array) || mac.length !== 32) {
      return { ok: false, reason: "malformed" };
    }
    const n = seq as number;
    if (n < this.next) return { ok: false, reason: "replayed" };
    if (n - this.next > MAX_SKIP) return { ok: false, reason: "too_far" };
    // The chain only moves once the MAC verified.
    const chain = this.chainAt(n);
    const macKey = hmac(chain, MAC);
    const good = equalBytes(recordMac(macKey, n, iv, ct), mac);
    wipe(macKey);
    if (!good) return { ok: false, reason: "tampered" };
    const encKey = hmac(chain, ENC);
    let plaintext: Uint8Array;
    try {
      plaintext = aesCbcDecrypt(encKey, iv, ct);
    } catch {
      // Authentic but undecryptable: the sender is broken; drop it like a forgery.
      wipe(encKey);
      return { ok: false, reason: "tampered" };
    }
    wipe(encKey);
    const skipped = n - this.next;
    const after = this.chainAt(n + 1); // CK_{n+1}: kept in `ahead` if it was walked already
    const used = this.ahead.splice(0, skipped + 1); // CK_{next+1} … CK_{n+1}
    wipe(this.chain, ...used.filter((c) => c !== after));
    this.chain = after;
    this.next = n + 1;
    return { ok: true, plaintext, skipped };
  }

  erase(): void {
    wipe(this.chain, ...this.ahead);
    this.ahead = [];
  }
}
