// The relay layer of the smts wire protocol (docs/PROTOCOL.md, "Relay layer").
// Shared by the relay and by clients: message names, error codes, limits,
// the join proofs, temporary IDs, and the one frame the relay builds by hand
// (the forwarded `msg`), so the hot path never re-encodes a payload.
import { createHmac, randomBytes, timingSafeEqual } from "node:crypto";
import { binEndingAt, bytesAt, LENGTH_PREFIX, writeU32 } from "../wire/frame.ts";

export const RELAY_PROTOCOL_VERSION = 1;
export const DEFAULT_PORT = 5555;
export const NONCE_BYTES = 32;
export const PROOF_BYTES = 32;
/** The largest `maxFrame` a relay may announce (and `smts relay --max-frame` accepts): a client never buffers more for one frame. */
export const MAX_FRAME_LIMIT = 64 * 1024 * 1024;

/** Error codes the relay sends in `error` frames. `fatal` ones are followed by a close. */
export const ERRORS = {
  bad_frame: { fatal: true, text: "malformed frame" },
  frame_too_large: { fatal: true, text: "frame larger than the relay's limit" },
  not_joined: { fatal: true, text: "join first" },
  version: { fatal: true, text: "unsupported protocol version" },
  auth_failed: { fatal: true, text: "wrong join secret" },
  join_timeout: { fatal: true, text: "did not join in time" },
  relay_full: { fatal: true, text: "relay is full" },
  slow_consumer: { fatal: true, text: "not reading fast enough" },
  idle_timeout: { fatal: true, text: "no traffic, connection presumed dead" },
  shutdown: { fatal: true, text: "relay is shutting down" },
  unknown_peer: { fatal: false, text: "no such peer online" },
  recipient_full: { fatal: false, text: "recipient is not reading: frame dropped" },
  bad_request: { fatal: false, text: "request not understood" },
} as const;
export type ErrorCode = keyof typeof ERRORS;

// ---- Join proofs -----------------------------------------------------------
// proof = HMAC-SHA256(secret, label ‖ relayNonce ‖ clientNonce); both nonces
// are 32 bytes, so the concatenation is unambiguous. The relay's nonce is
// fresh per connection, so a recorded proof is useless on the next one; the
// relay answers with its own proof under a different label, so a client can
// tell a relay that knows the secret from an impostor.
const CLIENT_LABEL = new TextEncoder().encode("smts/1 join client");
const RELAY_LABEL = new TextEncoder().encode("smts/1 join relay");

function proof(label: Uint8Array, secret: Uint8Array, relayNonce: Uint8Array, clientNonce: Uint8Array): Uint8Array {
  return new Uint8Array(createHmac("sha256", secret).update(label).update(relayNonce).update(clientNonce).digest());
}
export const clientProof = (secret: Uint8Array, relayNonce: Uint8Array, clientNonce: Uint8Array) =>
  proof(CLIENT_LABEL, secret, relayNonce, clientNonce);
export const relayProof = (secret: Uint8Array, relayNonce: Uint8Array, clientNonce: Uint8Array) =>
  proof(RELAY_LABEL, secret, relayNonce, clientNonce);

/** Constant-time equality for MACs and proofs (length is not secret). */
export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  return a.length === b.length && timingSafeEqual(a, b);
}

export function newNonce(): Uint8Array {
  return new Uint8Array(randomBytes(NONCE_BYTES));
}

// ---- Temporary IDs -----------------------------------------------------------
// 8 characters of Crockford base32 (no i, l, o, u): 40 random bits from the
// CSPRNG, lower case, easy to read aloud and type. Input is normalised the
// Crockford way (case-insensitive, i/l → 1, o → 0, dashes and spaces ignored).
export const ID_ALPHABET = "0123456789abcdefghjkmnpqrstvwxyz";
export const ID_LENGTH = 8;
const ID_PATTERN = /^[0-9a-hjkmnp-tv-z]{8}$/;

export function newId(): string {
  const bytes = randomBytes(5); // 40 bits = 8 × 5 bits
  let bits = 0n;
  for (const b of bytes) bits = (bits << 8n) | BigInt(b);
  let id = "";
  for (let i = ID_LENGTH - 1; i >= 0; i--) id += ID_ALPHABET[Number((bits >> BigInt(i * 5)) & 31n)];
  return id;
}

/** `host:port` as one types it, an IPv6 address in brackets (`[::1]:5555`). */
export const hostPort = (host: string, port: number) => (host.includes(":") ? `[${host}]:${port}` : `${host}:${port}`);

/** Canonical form of a typed ID, or null if it cannot be one. */
export function normalizeId(input: string): string | null {
  const id = input.toLowerCase().replace(/[\s-]/g, "").replace(/[il]/g, "1").replace(/o/g, "0");
  return ID_PATTERN.test(id) ? id : null;
}

export function isId(value: unknown): value is string {
  return typeof value === "string" && ID_PATTERN.test(value);
}

// ---- The forwarded message, built by hand ----------------------------------------
// {t:"msg", src:<id>, body:<bin>} as a standard msgpack fixmap. Building it
// directly avoids decoding and re-encoding the payload on the relay's hot path.
// Its header is exactly as long as that of the simple `send` below (the same
// map with {t:"send", to:<id>}), so the relay turns a simple `send` into the
// `msg` in place and forwards the frame as it arrived, in one piece.
const MSG_HEAD = new Uint8Array([0x83, 0xa1, 0x74, 0xa3, 0x6d, 0x73, 0x67, 0xa3, 0x73, 0x72, 0x63]);
const BODY_KEY = new Uint8Array([0xa4, 0x62, 0x6f, 0x64, 0x79]);

/** Header bytes of a `msg` frame (length prefix included) for a body of `bodyLength` bytes. */
export function msgFrameHeader(from: string, bodyLength: number): Uint8Array {
  const binHeader = bodyLength < 0x100 ? 2 : bodyLength < 0x10000 ? 3 : 5;
  const headLength = MSG_HEAD.length + 1 + from.length + BODY_KEY.length + binHeader;
  const out = new Uint8Array(LENGTH_PREFIX + headLength);
  writeU32(out, 0, headLength + bodyLength);
  let at = LENGTH_PREFIX;
  out.set(MSG_HEAD, at);
  at += MSG_HEAD.length;
  out[at++] = 0xa0 | from.length; // fixstr: IDs are ASCII and shorter than 32
  for (let i = 0; i < from.length; i++) out[at++] = from.charCodeAt(i);
  out.set(BODY_KEY, at);
  at += BODY_KEY.length;
  if (binHeader === 2) {
    out[at++] = 0xc4;
    out[at++] = bodyLength;
  } else if (binHeader === 3) {
    out[at++] = 0xc5;
    out[at++] = bodyLength >>> 8;
    out[at++] = bodyLength & 0xff;
  } else {
    out[at++] = 0xc6;
    writeU32(out, at, bodyLength);
  }
  return out;
}

// ---- Fast path for `send` ----------------------------------------------------------
// Nearly every frame a relay sees is a `send` to one ID, encoded the way the
// reference client encodes it: fixmap {t:"send", to:<8-char ID>, body:<bin>}.
// Recognising exactly that byte pattern skips a general msgpack decode on the
// hot path; anything else (other key order, a list of IDs, `ref`, other
// encodings) returns null and takes the general path, with the same result.
// A `bulk` frame (§5.4) is the same map with t:"bulk", as long as "send".
const SEND_PREFIX = new Uint8Array([0x83, 0xa1, 0x74, 0xa4, 0x73, 0x65, 0x6e, 0x64, 0xa2, 0x74, 0x6f, 0xa8]);
const BULK_PREFIX = new Uint8Array([0x83, 0xa1, 0x74, 0xa4, 0x62, 0x75, 0x6c, 0x6b, 0xa2, 0x74, 0x6f, 0xa8]);
const BODY_AT = SEND_PREFIX.length + ID_LENGTH; // where the "body" key starts

export function parseSimpleSend(p: Uint8Array): { to: string; body: Uint8Array; bulk: boolean } | null {
  const bulk = !bytesAt(p, 0, SEND_PREFIX);
  if (bulk && !bytesAt(p, 0, BULK_PREFIX)) return null;
  const at = bodyStart(p);
  const to = ascii(p, SEND_PREFIX.length, BODY_AT);
  return at < 0 || to === null ? null : { to, body: p.subarray(at), bulk };
}

/**
 * The client's fast path: a `msg` exactly as the relay writes it (msgFrameHeader)
 * gives the frame a msgpack decoder would, without one; anything else is null.
 */
export function parseMsg(p: Uint8Array): { t: "msg"; src: string; body: Uint8Array } | null {
  if (!bytesAt(p, 0, MSG_HEAD) || p[MSG_HEAD.length] !== (0xa0 | ID_LENGTH)) return null;
  const at = bodyStart(p);
  const src = ascii(p, MSG_HEAD.length + 1, BODY_AT);
  return at < 0 || src === null ? null : { t: "msg", src, body: p.subarray(at) };
}

/** Where the body of a `send` or `msg` payload starts (the "body" key at BODY_AT, then a bin running exactly to the end); else -1. */
function bodyStart(p: Uint8Array): number {
  return bytesAt(p, BODY_AT, BODY_KEY) ? binEndingAt(p, BODY_AT + BODY_KEY.length, p.length) : -1;
}

/** Bytes [from, to) as a string if they are ASCII (then UTF-8 decoding gives the same), else null. */
function ascii(p: Uint8Array, from: number, to: number): string | null {
  let s = "";
  for (let i = from; i < to; i++) {
    if (p[i]! >= 0x80) return null;
    s += String.fromCharCode(p[i]!);
  }
  return s;
}

/**
 * Turns the payload of a simple `send` (parseSimpleSend accepted it) into
 * that of the `msg` from `from`, in place: only the first BODY_AT bytes
 * change, and the length prefix stays valid.
 */
export function rewriteSendAsMsg(p: Uint8Array, from: string): void {
  p.set(MSG_HEAD, 0);
  p[MSG_HEAD.length] = 0xa0 | ID_LENGTH;
  for (let i = 0; i < ID_LENGTH; i++) p[MSG_HEAD.length + 1 + i] = from.charCodeAt(i);
}

// ---- The `peers` answer, built by hand ---------------------------------------------
// {t:"peers", ids:[...], more?:true} as encodeFrame writes it (fixmap; fixarray up
// to 15 IDs, array16 beyond; each ID a fixstr). A relay with thousands of
// clients answers `list` with up to MAX_LISTED IDs: encoded afresh for every
// request (0.7 ms with the general encoder), one client asking over and over
// kept a relay busy. So the relay encodes the IDs once (peerItems) and builds
// each answer from those bytes, leaving out the asker's own ID.
const PEERS_HEAD = new Uint8Array([0xa1, 0x74, 0xa5, 0x70, 0x65, 0x65, 0x72, 0x73, 0xa3, 0x69, 0x64, 0x73]); // "t" "peers" "ids"
const MORE_TRUE = new Uint8Array([0xa4, 0x6d, 0x6f, 0x72, 0x65, 0xc3]); // "more" true
const ITEM = 1 + ID_LENGTH;

/** The msgpack bytes of `ids` (relay-made IDs) as array items, ITEM bytes each. */
export function peerItems(ids: string[]): Uint8Array {
  const out = new Uint8Array(ids.length * ITEM);
  let at = 0;
  for (const id of ids) {
    out[at++] = 0xa0 | ID_LENGTH;
    for (let i = 0; i < ID_LENGTH; i++) out[at++] = id.charCodeAt(i);
  }
  return out;
}

/**
 * The `peers` frame (length prefix included) listing the first `count` IDs of
 * `items` (peerItems) other than the one at index `skip` (-1: none), with
 * `more` when the list was cut.
 */
export function peersFrame(items: Uint8Array, skip: number, count: number, more: boolean): Uint8Array {
  const arrayHeader = count < 16 ? 1 : 3;
  const length = 1 + PEERS_HEAD.length + arrayHeader + count * ITEM + (more ? MORE_TRUE.length : 0);
  const out = new Uint8Array(LENGTH_PREFIX + length);
  writeU32(out, 0, length);
  let at = LENGTH_PREFIX;
  out[at++] = more ? 0x83 : 0x82;
  out.set(PEERS_HEAD, at);
  at += PEERS_HEAD.length;
  if (arrayHeader === 1) out[at++] = 0x90 | count;
  else (out[at++] = 0xdc), (out[at++] = count >>> 8), (out[at++] = count & 0xff);
  if (skip < 0 || skip >= count) out.set(items.subarray(0, count * ITEM), at);
  else {
    out.set(items.subarray(0, skip * ITEM), at);
    out.set(items.subarray((skip + 1) * ITEM, (count + 1) * ITEM), at + skip * ITEM);
  }
  if (more) out.set(MORE_TRUE, LENGTH_PREFIX + length - MORE_TRUE.length);
  return out;
}
