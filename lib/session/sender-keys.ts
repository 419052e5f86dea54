// Sender keys for broadcast texts (docs/PROTOCOL.md §34–35, vectors in §40).
// A broadcaster makes one sender key per member list and gives each member,
// inside its pairwise session,
//   skey {kid, key, tk, slot}
// where `key` starts a record chain (§19, the same SendChain/ReceiveChain) and
// `tk` is a tag key for that member alone. Each broadcast record is sealed
// once and uploaded once, with one 32-byte tag per member, in member order:
//   brec {...rec, kid, tags}, tags[slot] = HMAC(tk, "smts/1 btag" ‖ kid ‖ mac)
// The record MAC only shows "made by a holder of the sender key", i.e. by any
// member; the tag shows "made by the broadcaster", because only it and this
// member know `tk`. So a member (with the relay's help) cannot forge or
// pre-empt another member's broadcasts. A receiver checks its tag before the
// record touches the chain.
import { equalBytes, hmac, randomBytes, utf8, wipe } from "../crypto/primitives.ts";
import { ReceiveChain, SendChain, type RecordFrame } from "./records.ts";

const L_TAG = utf8("smts/1 btag");
const L_OWN = utf8("smts/1 own key");
const KID_BYTES = 16;
const TAG_BYTES = 32;

/** Our own sender key for one member list. */
export interface OwnSenderKey {
  kid: Uint8Array;
  chain: SendChain;
  /** The member list it was made for, sorted, joined with ",". */
  members: string;
  /** One tag key per member, in member order. */
  tagKeys: Uint8Array[];
}

/** A peer's sender key as we hold it. */
export interface PeerSenderKey {
  kid: Uint8Array;
  chain: ReceiveChain;
  tk: Uint8Array;
  slot: number;
}

/**
 * A new key for `members` (sorted), the `skey` content for each of them, and
 * the key's check (keyCheck): what the broadcaster keeps to recognise the key
 * if a member hands it back as its own (§34.4), once the key itself is gone.
 */
export function newSenderKey(members: string[]): { key: OwnSenderKey; skeys: Record<string, unknown>[]; check: Uint8Array } {
  const kid = randomBytes(KID_BYTES);
  const key = randomBytes(32);
  const tagKeys = members.map(() => randomBytes(32));
  // Each content gets its own copies: sealing happens later and the originals may be erased first.
  const skeys = members.map((_, slot) => ({ t: "skey", kid, key: key.slice(), tk: tagKeys[slot]!.slice(), slot }));
  return { key: { kid, chain: new SendChain(key), members: members.join(","), tagKeys }, skeys, check: keyCheck(key) };
}

/** How many of its own latest sender keys a broadcaster recognises when handed back. */
export const OWN_KEYS_REMEMBERED = 16;

/** HMAC(key, "smts/1 own key"): identifies a sender key without revealing it. */
export function keyCheck(key: Uint8Array): Uint8Array {
  return hmac(key, L_OWN);
}

/** Is the `key` of this `skey` one of ours (by its check, constant time; not by its `kid`, which the sender picks)? */
export function isOwnKey(checks: Uint8Array[], c: Record<string, unknown>): boolean {
  if (!(c.key instanceof Uint8Array) || c.key.length !== 32) return false;
  const check = keyCheck(c.key);
  let own = false;
  for (const known of checks) own = equalBytes(known, check) || own; // every one compared
  wipe(check);
  return own;
}

export function eraseOwnKey(k: OwnSenderKey | null): void {
  if (!k) return;
  k.chain.erase();
  wipe(...k.tagKeys);
}

function tag(tk: Uint8Array, kid: Uint8Array, mac: Uint8Array): Uint8Array {
  return hmac(tk, L_TAG, kid, mac);
}

/** `brec` for `plaintext` under our key; `iv` is only passed by test vectors. */
export function sealBroadcastRecord(k: OwnSenderKey, plaintext: Uint8Array, iv?: Uint8Array): Omit<RecordFrame, "t"> & { t: "brec"; kid: Uint8Array; tags: Uint8Array } {
  const rec = k.chain.seal(plaintext, iv);
  const tags = new Uint8Array(TAG_BYTES * k.tagKeys.length);
  k.tagKeys.forEach((tk, i) => tags.set(tag(tk, k.kid, rec.mac), i * TAG_BYTES));
  return { ...rec, t: "brec", kid: k.kid, tags };
}

/** Validates an `skey` content; null if malformed. Takes copies, so the caller can wipe the content. */
export function acceptSenderKey(c: Record<string, unknown>): PeerSenderKey | null {
  const { kid, key, tk, slot } = c;
  if (!(kid instanceof Uint8Array) || kid.length !== KID_BYTES || !(key instanceof Uint8Array) || key.length !== 32) return null;
  if (!(tk instanceof Uint8Array) || tk.length !== 32 || !Number.isSafeInteger(slot) || (slot as number) < 0) return null;
  return { kid: kid.slice(), chain: new ReceiveChain(key.slice()), tk: tk.slice(), slot: slot as number };
}

export function erasePeerKey(k: PeerSenderKey | undefined): void {
  if (!k) return;
  k.chain.erase();
  wipe(k.tk);
}

/** Is `m` (a `brec`, or an `skey`) under this key (its `kid`)? Otherwise the receiver has no key for it. */
export function isUnder(k: { kid: Uint8Array }, m: Record<string, unknown>): boolean {
  return m.kid instanceof Uint8Array && equalBytes(m.kid, k.kid);
}

/** Our tag in `m` is the broadcaster's (constant-time); checked before the record is opened. */
export function tagValid(k: PeerSenderKey, m: Record<string, unknown>): boolean {
  const { tags, mac } = m;
  if (!(tags instanceof Uint8Array) || tags.length % TAG_BYTES !== 0 || tags.length < (k.slot + 1) * TAG_BYTES) return false;
  if (!(mac instanceof Uint8Array) || mac.length !== 32) return false;
  return equalBytes(tag(k.tk, k.kid, mac), tags.subarray(k.slot * TAG_BYTES, (k.slot + 1) * TAG_BYTES));
}
