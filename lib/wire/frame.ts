// Wire framing: every frame is a 4-byte big-endian payload length followed by
// that many bytes of standard msgpack (no msgpackr records or extensions are
// emitted, so any msgpack implementation can read and write these frames).
//
// FrameDecoder promises:
//   - frames split across any number of reads, or many frames in one read, are
//     reassembled with every byte copied at most once (no quadratic re-copying);
//   - every payload it hands on is preceded in memory by its own length prefix,
//     so a whole frame can be forwarded as one piece (wholeFrame) without a copy;
//   - a length prefix above the limit is rejected as soon as the 4 prefix bytes
//     are seen, before any of the payload is buffered;
//   - malformed msgpack, trailing bytes, extension types, nesting deeper than
//     32 levels, or a payload that is not a map is a FrameError; the caller
//     closes that one connection.
import { Unpackr } from "msgpackr";
import { pack } from "./msgpack.ts";
import { standardProblem } from "./standard.ts";

export const LENGTH_PREFIX = 4;

// 64-bit integers become numbers when exactly representable, BigInt otherwise
// (which every field check then rejects).
const unpackr = new Unpackr({ useRecords: false, mapsAsObjects: true, int64AsType: "auto" as never }); // "auto" works but is missing from msgpackr's typings

export type FrameErrorCode = "frame_too_large" | "bad_frame";

export class FrameError extends Error {
  constructor(
    readonly code: FrameErrorCode,
    message: string,
  ) {
    super(message);
  }
}

/** A decoded frame: a msgpack map with string keys. */
export type Frame = Record<string, unknown>;

/** Encodes a value as a complete frame: length prefix + msgpack payload. */
export function encodeFrame(value: Frame): Uint8Array {
  const out = pack(value, LENGTH_PREFIX);
  writeU32(out, 0, out.length - LENGTH_PREFIX);
  return out;
}

/** Decodes one msgpack payload (without the length prefix) into a frame map. */
export function decodePayload(payload: Uint8Array): Frame {
  const problem = standardProblem(payload); // before msgpackr builds anything (lib/wire/standard.ts)
  if (problem) throw new FrameError("bad_frame", `malformed msgpack: ${problem}`);
  let value: unknown;
  try {
    value = unpackr.unpack(payload);
  } catch (err) {
    throw new FrameError("bad_frame", `malformed msgpack: ${(err as Error).message}`);
  }
  // Only a plain map is a frame (msgpackr turns some reserved bytes and
  // extension types into other objects: Date, C1Type, ...).
  const proto = value !== null && typeof value === "object" ? Object.getPrototypeOf(value) : undefined;
  if (proto !== Object.prototype && proto !== null) {
    throw new FrameError("bad_frame", "frame payload is not a msgpack map");
  }
  return value as Frame;
}

export function writeU32(buf: Uint8Array, offset: number, n: number): void {
  buf[offset] = n >>> 24;
  buf[offset + 1] = (n >>> 16) & 0xff;
  buf[offset + 2] = (n >>> 8) & 0xff;
  buf[offset + 3] = n & 0xff;
}

export function readU32(buf: Uint8Array, offset: number): number {
  return ((buf[offset]! << 24) >>> 0) + (buf[offset + 1]! << 16) + (buf[offset + 2]! << 8) + buf[offset + 3]!;
}

// ---- For the hand-written decoders of the hot paths -------------------------------
// (the relay's `send`, the client's `msg` and file chunks): each reads exactly
// the bytes lib/ writes and leaves anything else to decodePayload.

/** Does `p` hold exactly `bytes` at `at`? */
export function bytesAt(p: Uint8Array, at: number, bytes: Uint8Array): boolean {
  if (p.length < at + bytes.length) return false;
  for (let i = 0; i < bytes.length; i++) if (p[at + i] !== bytes[i]) return false;
  return true;
}

/** Where the bytes of the msgpack bin (bin8/16/32) whose header is at `at` start, if they end exactly at `end` (≤ p.length); else -1. */
export function binEndingAt(p: Uint8Array, at: number, end: number): number {
  if (end > p.length) return -1;
  const tag = p[at];
  let start: number;
  let length: number;
  if (tag === 0xc4 && end >= at + 2) (length = p[at + 1]!), (start = at + 2);
  else if (tag === 0xc5 && end >= at + 3) (length = (p[at + 1]! << 8) | p[at + 2]!), (start = at + 3);
  else if (tag === 0xc6 && end >= at + 5) (length = readU32(p, at + 1)), (start = at + 5);
  else return -1;
  return start + length === end ? start : -1;
}

/**
 * Incremental decoder. Feed it socket reads with push(); it returns the raw
 * payloads completed by that read (decode each with decodePayload, or look at
 * the bytes directly). Payloads that fit inside one read are zero-copy views
 * of it; Bun hands every `data` callback a fresh buffer, so views stay valid.
 */
export class FrameDecoder {
  private readonly header = new Uint8Array(LENGTH_PREFIX);
  private headerFill = 0;
  private partial: Uint8Array | null = null; // payload being assembled
  private partialFill = 0;
  /** When the payload being assembled began to arrive (performance.now()), or null: the relay gives a frame only so long. */
  partialSince: number | null = null;

  constructor(public maxPayload: number) {}

  /** Length of the payload being assembled (0 if none). */
  get partialLength(): number {
    return this.partial?.length ?? 0;
  }

  /** Bytes held for an incomplete frame (bounded by maxPayload + 4). */
  get buffered(): number {
    return this.headerFill + this.partialFill;
  }

  /** Returns the payloads completed by this read. */
  push(chunk: Uint8Array): Uint8Array[] {
    const out: Uint8Array[] = [];
    this.each(chunk, (p) => void out.push(p));
    return out;
  }

  /**
   * Calls `onFrame` for each payload completed by this read, in order. The
   * limit is read afresh at each length prefix, so a handler may change
   * `maxPayload` (the relay raises it once a client has joined) and the
   * frames after it in the same read are judged by the new limit. A handler
   * that returns false stops the walk after its frame (the relay pausing a
   * sender); the return value is how much of `chunk` was used, and the
   * caller passes the rest in again later.
   */
  each(chunk: Uint8Array, onFrame: (payload: Uint8Array) => boolean | void): number {
    let pos = 0;
    const end = chunk.length;
    while (pos < end) {
      if (this.partial) {
        const take = Math.min(this.partial.length - this.partialFill, end - pos);
        this.partial.set(chunk.subarray(pos, pos + take), this.partialFill);
        this.partialFill += take;
        pos += take;
        if (this.partialFill === this.partial.length) {
          const done = this.partial;
          this.partial = null;
          this.partialFill = 0;
          this.partialSince = null;
          if (onFrame(done) === false) return pos;
        }
        continue;
      }
      let length: number;
      // A payload is handed on as a view of the read only if its prefix is in the same read, just before it.
      let prefixInRead = false;
      if (this.headerFill === 0 && end - pos >= LENGTH_PREFIX) {
        length = readU32(chunk, pos);
        pos += LENGTH_PREFIX;
        prefixInRead = true;
      } else {
        const take = Math.min(LENGTH_PREFIX - this.headerFill, end - pos);
        this.header.set(chunk.subarray(pos, pos + take), this.headerFill);
        this.headerFill += take;
        pos += take;
        if (this.headerFill < LENGTH_PREFIX) break;
        this.headerFill = 0;
        length = readU32(this.header, 0);
      }
      if (length > this.maxPayload) {
        throw new FrameError("frame_too_large", `frame of ${length} bytes exceeds the limit of ${this.maxPayload}`);
      }
      if (prefixInRead && end - pos >= length) {
        pos += length;
        if (onFrame(chunk.subarray(pos - length, pos)) === false) return pos;
      } else {
        // Not zero-filled: every byte is written before the payload is handed on.
        const frame = Buffer.allocUnsafe(LENGTH_PREFIX + length);
        writeU32(frame, 0, length);
        this.partialFill = 0;
        if (length > 0) (this.partial = frame.subarray(LENGTH_PREFIX)), (this.partialSince = performance.now());
        else if (onFrame(frame.subarray(LENGTH_PREFIX)) === false) return pos; // complete already, even at the end of the read
      }
    }
    return end;
  }
}

/** The complete frame (length prefix + payload) around a payload handed on by a FrameDecoder. */
export function wholeFrame(payload: Uint8Array): Uint8Array {
  return new Uint8Array(payload.buffer, payload.byteOffset - LENGTH_PREFIX, LENGTH_PREFIX + payload.length);
}

/** An untrusted decoded value as short text for messages, safe to print (controls replaced); never calls methods of the value. */
export function safeText(v: unknown, max = 200): string {
  const text = typeof v === "string" ? v.slice(0, max) : typeof v === "number" || typeof v === "boolean" ? String(v) : `(${typeof v})`;
  return text.replace(UNSAFE, "\ufffd");
}
/** Bidirectional-text controls: they reorder what follows them on the line. */
export const BIDI_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069";
// C0 and C1 controls, DEL, line and paragraph separators, bidi controls: a
// relay's text (an error message, say) could otherwise recolour the terminal,
// set its title or clipboard, or fake a line of ours (found in audit).
const UNSAFE = new RegExp(`[\\u0000-\\u001f\\u007f-\\u009f\\u2028\\u2029${BIDI_CONTROLS}]`, "g");
