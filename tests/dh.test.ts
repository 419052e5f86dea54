// What the Diffie-Hellman code erases, and when it refuses to compute (found
// in audit): lib/crypto/dh-ops.ts run in-process on a real group-14 DH object,
// and the handshake's check of a peer value against a real DH worker.
import { afterAll, describe, expect, test } from "bun:test";
import { createDiffieHellman } from "node:crypto";
import { dhOps } from "../lib/crypto/dh-ops.ts";
import { startDhEngine, type DhEngine } from "../lib/crypto/dh.ts";
import { GROUP_BYTES, isValidPublic, P, P_HEX } from "../lib/crypto/group14.ts";
import { E2E_VERSION, HandshakeError, initiatorFinish, startInitiator } from "../lib/session/handshake.ts";

const allZero = (b: Uint8Array) => b.every((x) => x === 0);
const toBytes = (n: bigint) => Uint8Array.from(Buffer.from(n.toString(16).padStart(GROUP_BYTES * 2, "0"), "hex"));

describe("dh-ops: exponents and secrets are erased", () => {
  const dh = createDiffieHellman(Buffer.from(P_HEX, "hex"), Buffer.from([2])); // one object, as in the worker
  const privates = new Map<number, Buffer>();
  const a = dhOps(dh, privates);
  const b = dhOps(dh);

  test("both sides get the same secret; after it, the exponent, the secret handed out and the DH object hold nothing", () => {
    const ka = a.keypair();
    expect(allZero(dh.getPrivateKey())).toBe(true); // between operations: no exponent in the DH object
    const kb = b.keypair();
    const exponent = privates.get(ka.handle)!;
    expect(exponent.length).toBe(32);
    expect(allZero(exponent)).toBe(false);
    let seenA: Uint8Array | null = null;
    let copyA = "";
    let copyB = "";
    a.secret(ka.handle, kb.pub, (z) => ((seenA = z), (copyA = Buffer.from(z).toString("hex"))));
    b.secret(kb.handle, ka.pub, (z) => void (copyB = Buffer.from(z).toString("hex")));
    expect(copyA).toBe(copyB);
    expect(copyA.length).toBeGreaterThan(400);
    expect(allZero(seenA!)).toBe(true);
    expect(allZero(exponent)).toBe(true);
    expect(privates.has(ka.handle)).toBe(false);
    expect(allZero(dh.getPrivateKey())).toBe(true);
    expect(() => a.secret(ka.handle, kb.pub, () => {})).toThrow("unknown key handle"); // one secret per exponent
  });

  test("a value the DH code refuses still uses up and erases the exponent", () => {
    const ka = a.keypair();
    const exponent = privates.get(ka.handle)!;
    let used = false;
    expect(() => a.secret(ka.handle, toBytes(P - 1n), () => void (used = true))).toThrow();
    expect(used).toBe(false);
    expect(allZero(exponent)).toBe(true);
    expect(privates.has(ka.handle)).toBe(false);
    expect(allZero(dh.getPrivateKey())).toBe(true);
  });

  test("forget erases an unused exponent", () => {
    const ka = a.keypair();
    const exponent = privates.get(ka.handle)!;
    a.forget(ka.handle);
    expect(allZero(exponent)).toBe(true);
    expect(privates.has(ka.handle)).toBe(false);
  });
});

describe("handshake: a peer value is checked before any secret is computed (PROTOCOL §20)", () => {
  const engine = startDhEngine();
  afterAll(() => engine.close());
  const asked: Uint8Array[] = [];
  const forgotten: number[] = [];
  const recording: DhEngine = {
    keypair: () => engine.keypair(),
    secret: (handle, peer) => (asked.push(peer), engine.secret(handle, peer)),
    forget: (handle) => (forgotten.push(handle), engine.forget(handle)),
    close: () => {},
  };

  // In range but outside the order-q subgroup (Jacobi symbol −1: p ≡ 7 mod 8, so 2 is a residue and −1 is not).
  const nonResidue = toBytes(P - 2n);
  for (const [what, pub] of [
    ["p − 1", toBytes(P - 1n)],
    ["a value outside the prime-order subgroup", nonResidue],
  ] as const) {
    test(`${what}: bad_public, the worker never sees it, the exponent is forgotten`, async () => {
      expect(isValidPublic(pub)).toBe(false);
      asked.length = forgotten.length = 0;
      const { state } = await startInitiator(recording, "alice", "bob");
      const err = await initiatorFinish(recording, state, { t: "reply", v: E2E_VERSION, pub, nonce: new Uint8Array(32) }).then(
        () => null,
        (e: unknown) => e,
      );
      expect(err).toBeInstanceOf(HandshakeError);
      expect((err as HandshakeError).code).toBe("bad_public");
      expect(asked).toEqual([]);
      expect(forgotten).toEqual([state.kp.handle]);
    });
  }
});
