// The subset of msgpack that frames are made of, checked before any decoder
// builds objects from a peer's bytes.
//
// Promises: standardProblem(p) is null exactly when `p` holds one msgpack
// value, and nothing after it, made only of nil, booleans, integers, floats,
// str, bin, arrays and maps, nested at most MAX_DEPTH deep, at most MAX_VALUES
// values in all (map keys count). Otherwise it names
// the first problem. It reads each header once, never recurses and allocates
// nothing, so any input costs time linear in its length.
//
// Why: msgpackr also decodes its own extension types, and some of them are
// shared references (structured clone), with which a few hundred bytes can
// describe a structure of 2^n nodes; one such frame froze a relay for 88 s.
// No frame of this protocol uses an extension type (docs/PROTOCOL.md §3).

/** Deeper than any frame of the protocol nests (3 levels); bounds what a decoder recurses into. */
export const MAX_DEPTH = 32;
/**
 * More values than any frame of the protocol holds (the largest, a `peers`
 * answer, has about 4,100). A decoder builds an object for each: one 24 MiB
 * frame of empty arrays cost a client 1.8 GB and 2.4 s (found in audit).
 */
export const MAX_VALUES = 65_536;

export function standardProblem(p: Uint8Array): string | null {
  let at = 0;
  let pending = 1; // values still to read at this level
  let values = 0; // read so far, at every level
  const outer: number[] = []; // the same for each enclosing level
  const len = (bytes: number) => {
    let n = 0;
    for (let i = 0; i < bytes; i++) n = n * 256 + (p[at + i] ?? 0);
    at += bytes;
    return n;
  };
  const skip = (bytes: number) => void (at += bytes); // not `at += len(k)`: that reads `at` before len() moves it
  for (;;) {
    if (pending === 0) {
      if (!outer.length) break;
      pending = outer.pop()!;
      continue;
    }
    if (at >= p.length) return "truncated";
    pending--;
    if (++values > MAX_VALUES) return `more than ${MAX_VALUES} values`;
    const b = p[at++]!;
    let items = 0;
    if (b <= 0x7f || b >= 0xe0) continue; // fixint
    else if (b <= 0x8f) items = (b & 0x0f) * 2; // fixmap
    else if (b <= 0x9f) items = b & 0x0f; // fixarray
    else if (b <= 0xbf) at += b & 0x1f; // fixstr
    else
      switch (b) {
        case 0xc0: // nil
        case 0xc2: // false
        case 0xc3: // true
          break;
        case 0xc4: // bin 8
        case 0xd9: // str 8
          skip(len(1));
          break;
        case 0xc5: // bin 16
        case 0xda: // str 16
          skip(len(2));
          break;
        case 0xc6: // bin 32
        case 0xdb: // str 32
          skip(len(4));
          break;
        case 0xcc: // uint 8
        case 0xd0: // int 8
          at += 1;
          break;
        case 0xcd: // uint 16
        case 0xd1: // int 16
          at += 2;
          break;
        case 0xca: // float 32
        case 0xce: // uint 32
        case 0xd2: // int 32
          at += 4;
          break;
        case 0xcb: // float 64
        case 0xcf: // uint 64
        case 0xd3: // int 64
          at += 8;
          break;
        case 0xdc: // array 16
          items = len(2);
          break;
        case 0xdd: // array 32
          items = len(4);
          break;
        case 0xde: // map 16
          items = len(2) * 2;
          break;
        case 0xdf: // map 32
          items = len(4) * 2;
          break;
        case 0xc1:
          return "the never-used byte 0xc1";
        default: // 0xc7-0xc9, 0xd4-0xd8
          return `an extension type (byte 0x${b.toString(16)}), which frames never use`;
      }
    if (at > p.length) return "truncated";
    if (items === 0) continue;
    if (items > p.length - at) return "truncated"; // each item takes at least a byte
    if (outer.length === MAX_DEPTH) return `nested deeper than ${MAX_DEPTH} levels`;
    outer.push(pending);
    pending = items;
  }
  return at === p.length ? null : `${p.length - at} bytes after the value`;
}
