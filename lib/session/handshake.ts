// The end-to-end key exchange (docs/PROTOCOL.md, "Key exchange").
//
//   initiator I                                   responder R
//   hello  {commit = SHA-256("smts/1 commit" ‖ yI), nonceI}  →
//                          ←  reply  {yR, nonceR}
//   reveal {yI, confirmI}  →            (R checks the commitment, validates yI)
//                          ←  confirm {confirmR}
//
// I commits to its public value before seeing R's, so a relay in the middle
// cannot search for values that give both victims the same fingerprint. Both
// public values are validated (group14.isValidPublic). Keys come from
// HKDF-SHA256(Z, salt = transcript hash, info = "smts/1 session keys"), which
// binds protocol version, both IDs, both nonces and both public values.
// Each side proves it holds the keys with a MAC over the transcript hash.
import type { DhEngine, KeyPair } from "../crypto/dh.ts";
import { GROUP_BYTES, isValidPublic } from "../crypto/group14.ts";
import { concat, equalBytes, hkdf, hmac, randomBytes, sha256, utf8, wipe } from "../crypto/primitives.ts";

export const E2E_VERSION = 1;
const NONCE = 32;
const L_COMMIT = utf8("smts/1 commit");
const L_TRANSCRIPT = utf8("smts/1 transcript");
const L_KEYS = utf8("smts/1 session keys");
const L_CONFIRM = utf8("smts/1 confirm");

export class HandshakeError extends Error {
  constructor(
    readonly code: "bad_message" | "bad_public" | "bad_commit" | "bad_confirm",
    message: string,
  ) {
    super(message);
  }
}

export interface SessionKeys {
  /** Chain key for records this side sends. */
  sendChain: Uint8Array;
  /** Chain key for records this side receives. */
  receiveChain: Uint8Array;
  /** 32 bytes, identical on both sides; shown to users for comparison. */
  fingerprint: Uint8Array;
  transcript: Uint8Array;
}

export type Hello = { t: "hello"; v: number; commit: Uint8Array; nonce: Uint8Array };
export type Reply = { t: "reply"; v: number; pub: Uint8Array; nonce: Uint8Array };
export type Reveal = { t: "reveal"; v: number; pub: Uint8Array; confirm: Uint8Array };
export type Confirm = { t: "confirm"; v: number; confirm: Uint8Array };

export interface InitiatorState {
  me: string;
  peer: string;
  nonce: Uint8Array;
  kp: KeyPair;
}
export interface ResponderState {
  me: string;
  peer: string;
  commit: Uint8Array;
  peerNonce: Uint8Array;
  nonce: Uint8Array;
  kp: KeyPair;
}
export interface PendingConfirm {
  keys: SessionKeys;
  expected: Uint8Array;
}

const isBytes = (v: unknown, n: number): v is Uint8Array => v instanceof Uint8Array && v.length === n;

export function commitment(pub: Uint8Array): Uint8Array {
  return sha256(L_COMMIT, pub);
}

export function transcriptHash(idI: string, idR: string, nonceI: Uint8Array, nonceR: Uint8Array, pubI: Uint8Array, pubR: Uint8Array): Uint8Array {
  const a = utf8(idI);
  const b = utf8(idR);
  return sha256(L_TRANSCRIPT, new Uint8Array([E2E_VERSION, a.length]), a, new Uint8Array([b.length]), b, nonceI, nonceR, pubI, pubR);
}

/** Splits HKDF output into the per-direction, per-purpose keys. */
export function deriveKeys(shared: Uint8Array, transcript: Uint8Array, role: "initiator" | "responder") {
  const okm = hkdf(shared, transcript, L_KEYS, 160);
  const k = (i: number) => okm.slice(i * 32, i * 32 + 32);
  const [chainIR, chainRI, confirmI, confirmR, fingerprint] = [k(0), k(1), k(2), k(3), k(4)];
  wipe(okm);
  const macI = hmac(confirmI, L_CONFIRM, transcript);
  const macR = hmac(confirmR, L_CONFIRM, transcript);
  wipe(confirmI, confirmR);
  const mine = role === "initiator";
  const keys: SessionKeys = { sendChain: mine ? chainIR : chainRI, receiveChain: mine ? chainRI : chainIR, fingerprint, transcript };
  return { keys, myConfirm: mine ? macI : macR, peerConfirm: mine ? macR : macI };
}

/**
 * The shared secret with a peer value that passes group14.isValidPublic,
 * checked first so that an invalid value never reaches the worker (PROTOCOL
 * §20). The private exponent is used up either way.
 */
async function validatedSecret(dh: DhEngine, handle: number, peer: Uint8Array): Promise<Uint8Array> {
  if (!isValidPublic(peer)) {
    dh.forget(handle);
    throw new HandshakeError("bad_public", "peer sent an invalid Diffie-Hellman value");
  }
  return dh.secret(handle, peer);
}

export async function startInitiator(dh: DhEngine, me: string, peer: string) {
  const kp = await dh.keypair();
  const nonce = randomBytes(NONCE);
  const state: InitiatorState = { me, peer, nonce, kp };
  const hello: Hello = { t: "hello", v: E2E_VERSION, commit: commitment(kp.pub), nonce };
  return { state, hello };
}

export function parseHello(m: Record<string, unknown>): Hello {
  if (m.v !== E2E_VERSION || !isBytes(m.commit, 32) || !isBytes(m.nonce, NONCE)) throw new HandshakeError("bad_message", "malformed hello");
  return m as Hello;
}

export async function respond(dh: DhEngine, me: string, peer: string, hello: Hello) {
  return replyTo(await dh.keypair(), me, peer, hello);
}

/** respond() with a key pair already made (the chat client answers only the newest of several hellos). */
export function replyTo(kp: KeyPair, me: string, peer: string, hello: Hello) {
  const nonce = randomBytes(NONCE);
  const state: ResponderState = { me, peer, commit: hello.commit, peerNonce: hello.nonce, nonce, kp };
  const reply: Reply = { t: "reply", v: E2E_VERSION, pub: kp.pub, nonce };
  return { state, reply };
}

/** Initiator, on the responder's reply: validate, compute keys, reveal our value. */
export async function initiatorFinish(dh: DhEngine, s: InitiatorState, m: Record<string, unknown>) {
  if (m.v !== E2E_VERSION || !isBytes(m.pub, GROUP_BYTES) || !isBytes(m.nonce, NONCE)) {
    dh.forget(s.kp.handle);
    throw new HandshakeError("bad_message", "malformed reply");
  }
  const shared = await validatedSecret(dh, s.kp.handle, m.pub);
  const transcript = transcriptHash(s.me, s.peer, s.nonce, m.nonce, s.kp.pub, m.pub);
  const { keys, myConfirm, peerConfirm } = deriveKeys(shared, transcript, "initiator");
  wipe(shared);
  const reveal: Reveal = { t: "reveal", v: E2E_VERSION, pub: s.kp.pub, confirm: myConfirm };
  const pending: PendingConfirm = { keys, expected: peerConfirm };
  return { reveal, pending };
}

/** Responder, on the initiator's reveal: check commitment and value, compute and confirm keys. */
export async function responderFinish(dh: DhEngine, s: ResponderState, m: Record<string, unknown>) {
  const fail = (code: HandshakeError["code"], message: string) => {
    dh.forget(s.kp.handle);
    return new HandshakeError(code, message);
  };
  if (m.v !== E2E_VERSION || !isBytes(m.pub, GROUP_BYTES) || !isBytes(m.confirm, 32)) throw fail("bad_message", "malformed reveal");
  if (!equalBytes(commitment(m.pub), s.commit)) throw fail("bad_commit", "peer's value does not match its commitment");
  const shared = await validatedSecret(dh, s.kp.handle, m.pub);
  const transcript = transcriptHash(s.peer, s.me, s.peerNonce, s.nonce, m.pub, s.kp.pub);
  const { keys, myConfirm, peerConfirm } = deriveKeys(shared, transcript, "responder");
  wipe(shared);
  if (!equalBytes(m.confirm, peerConfirm)) {
    wipe(keys.sendChain, keys.receiveChain);
    throw new HandshakeError("bad_confirm", "key confirmation failed (a different key on each side: man in the middle?)");
  }
  const confirm: Confirm = { t: "confirm", v: E2E_VERSION, confirm: myConfirm };
  return { keys, confirm };
}

/** Initiator, on the responder's confirm. */
export function initiatorConfirm(p: PendingConfirm, m: Record<string, unknown>): SessionKeys {
  if (m.v !== E2E_VERSION || !isBytes(m.confirm, 32)) throw new HandshakeError("bad_message", "malformed confirm");
  if (!equalBytes(m.confirm, p.expected)) {
    wipe(p.keys.sendChain, p.keys.receiveChain);
    throw new HandshakeError("bad_confirm", "key confirmation failed (a different key on each side: man in the middle?)");
  }
  return p.keys;
}

/** Short form for comparing aloud: 12 hex digits (48 bits) in groups of 4. */
export function shortFingerprint(fp: Uint8Array): string {
  return Buffer.from(fp.subarray(0, 6)).toString("hex").replace(/(.{4})(?!$)/g, "$1-");
}
/** Full 256-bit form, for careful comparison. */
export function longFingerprint(fp: Uint8Array): string {
  return Buffer.from(fp).toString("hex").replace(/(.{4})(?!$)/g, "$1 ");
}
