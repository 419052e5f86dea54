// Session records (lib/session/records.ts): the receive chain across gaps, and
// what a forged record with a far sequence number costs it.
import { expect, test } from "bun:test";
import { randomBytes } from "../lib/crypto/primitives.ts";
import { MAX_SKIP, ReceiveChain, SendChain, type RecordFrame } from "../lib/session/records.ts";

const text = (n: number) => new TextEncoder().encode(`record ${n}`);
const keptKeys = (r: ReceiveChain) => (r as unknown as { checkpoints: Map<number, Uint8Array> }).checkpoints;

/** Records 0 … count−1 of one chain, sealed in order. */
function sealed(count: number): { key: Uint8Array; records: RecordFrame[] } {
  const key = randomBytes(32);
  const send = new SendChain(new Uint8Array(key));
  return { key, records: Array.from({ length: count }, (_, n) => send.seal(text(n))) };
}

test("records arriving with gaps of every size up to MAX_SKIP open in order, each gap reported; a replayed one and one past MAX_SKIP are refused", () => {
  const { key, records } = sealed(4000);
  const receive = new ReceiveChain(new Uint8Array(key));
  let next = 0;
  for (const gap of [0, 1, 30, 31, 32, 33, 63, 64, 65, 500, MAX_SKIP, 0, 7]) {
    const r = receive.open(records[next + gap]!);
    expect(r).toEqual({ ok: true, plaintext: text(next + gap), skipped: gap });
    next += gap + 1;
  }
  expect(receive.open(records[next - 1]!)).toEqual({ ok: false, reason: "replayed" });
  expect(receive.open(records[next + MAX_SKIP + 1]!)).toEqual({ ok: false, reason: "too_far" });
  expect(receive.open(records[next]!).ok).toBe(true); // neither moved the chain
});

test("forged records with far sequence numbers change nothing and pin at most MAX_SKIP / 32 chain keys (found in audit: all 1024 were kept, 146 KiB a session)", () => {
  const { key, records } = sealed(1200);
  const receive = new ReceiveChain(new Uint8Array(key));
  expect(receive.open(records[0]!).ok).toBe(true);
  const forged = (seq: number) => ({ ...records[1]!, seq, mac: randomBytes(32) });
  for (const seq of [1 + MAX_SKIP, 700, 1 + MAX_SKIP, 5, 999]) {
    expect(receive.open(forged(seq))).toEqual({ ok: false, reason: "tampered" });
    expect(keptKeys(receive).size).toBeLessThanOrEqual(MAX_SKIP / 32);
  }
  expect(keptKeys(receive).size).toBeGreaterThan(0); // the walk is remembered, in part
  // The genuine records still open, from any point the forgeries walked through.
  expect(receive.open(records[40]!)).toEqual({ ok: true, plaintext: text(40), skipped: 39 });
  expect([...keptKeys(receive).keys()].every((at) => at > 41)).toBe(true); // the keys behind us are gone
  expect(receive.open(records[41]!)).toEqual({ ok: true, plaintext: text(41), skipped: 0 });
  expect(receive.open(records[1000]!)).toEqual({ ok: true, plaintext: text(1000), skipped: 958 });
  const kept = [...keptKeys(receive).values()];
  receive.erase();
  expect(keptKeys(receive).size).toBe(0);
  for (const k of kept) expect(k.every((b) => b === 0)).toBe(true);
});
