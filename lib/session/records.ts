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
// Every 32nd chain key walked to reach a high seq is kept (all derivable from
// the current one anyway), so a forged record with a high seq costs at most 31
// HMACs after the first walk, not up to 1024, and pins at most 32 keys.
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

/** A receive chain keeps CK_n for every n that is a multiple of this, between its next and next + MAX_SKIP. */
const CHECKPOINT = 32;

export class ReceiveChain {
  private next = 0;
  /**
   * CK_n at the multiples of CHECKPOINT above `next` that a walk has passed.
   * Keeping every key walked made one forged record with a high seq pin 1024 of
   * them, about 146 KiB per session, and a peer can make many sessions (found
   * in audit); this keeps at most 32, and any CK_n is at most 31 HMACs away.
   */
  private checkpoints = new Map<number, Uint8Array>();
  constructor(private chain: Uint8Array) {}

  /** CK_n for next ≤ n ≤ next + MAX_SKIP, and whether the caller must wipe it (it is neither the chain nor a checkpoint). */
  private chainAt(n: number): { key: Uint8Array; own: boolean } {
    let at = this.next;
    let key = this.chain;
    for (let c = n - (n % CHECKPOINT); c > this.next; c -= CHECKPOINT) {
      const kept = this.checkpoints.get(c);
      if (kept) {
        (at = c), (key = kept);
        break;
      }
    }
    while (at < n) {
      const walked = hmac(key, NEXT);
      if (key !== this.chain && !this.checkpoints.has(at)) wipe(key);
      key = walked;
      at++;
      if (at % CHECKPOINT === 0) this.checkpoints.set(at, key);
    }
    return { key, own: key !== this.chain && !this.checkpoints.has(n) };
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
    const { key: chain, own } = this.chainAt(n);
    const macKey = hmac(chain, MAC);
    const good = equalBytes(recordMac(macKey, n, iv, ct), mac);
    wipe(macKey);
    const encKey = good ? hmac(chain, ENC) : null;
    const next = good ? hmac(chain, NEXT) : null; // CK_{n+1}
    if (own) wipe(chain);
    if (!encKey || !next) return { ok: false, reason: "tampered" };
    let plaintext: Uint8Array;
    try {
      plaintext = aesCbcDecrypt(encKey, iv, ct);
    } catch {
      // Authentic but undecryptable: the sender is broken; drop it like a forgery.
      wipe(encKey, next);
      return { ok: false, reason: "tampered" };
    }
    wipe(encKey);
    const skipped = n - this.next;
    // Everything up to CK_{n+1} is behind us now: erased (forward secrecy).
    for (const [at, key] of this.checkpoints) if (at <= n + 1) wipe(key), this.checkpoints.delete(at);
    wipe(this.chain);
    this.chain = next;
    this.next = n + 1;
    return { ok: true, plaintext, skipped };
  }

  erase(): void {
    wipe(this.chain, ...this.checkpoints.values());
    this.checkpoints.clear();
  }
}
