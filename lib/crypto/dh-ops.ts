// The Diffie-Hellman operations that dh-worker.ts runs off the main thread,
// kept apart from its messaging so that tests can run them in-process.
//
// Promises: a private exponent comes from the CSPRNG, serves exactly one
// shared secret, and is erased after it whether or not that succeeded; the
// shared secret exists only while `use` runs and is erased after it; between
// operations the DH object holds no exponent (only SCRUB). What BoringSSL frees
// inside setPrivateKey is beyond our reach.
import { createDiffieHellman, getRandomValues, type DiffieHellman } from "node:crypto";
import { P_HEX } from "./group14.ts";

const SCRUB = Buffer.alloc(32); // what the DH object holds between operations

export interface DhOps {
  /** A fresh key pair: a handle to its private exponent, and its public value. */
  keypair(): { handle: number; pub: Uint8Array };
  /** Hands the secret with `peer` to `use`, then erases it and the exponent. Throws on an unknown handle. */
  secret(handle: number, peer: Uint8Array, use: (secret: Uint8Array) => void): void;
  /** Erases an unused private exponent. */
  forget(handle: number): void;
}

/** `dh`: built once and reused (construction costs ~0.5 s in Bun 1.4, notes §1). */
export function dhOps(dh: DiffieHellman = createDiffieHellman(Buffer.from(P_HEX, "hex"), Buffer.from([2])), privates = new Map<number, Buffer>()): DhOps {
  let nextHandle = 1;
  return {
    keypair() {
      // 256-bit exponent: ≥ 2× the group's ~112-bit security level; a 2048-bit one costs 7× more.
      const priv = getRandomValues(Buffer.alloc(32));
      try {
        dh.setPrivateKey(priv);
        dh.generateKeys(); // from the exponent just set
        const pub = new Uint8Array(dh.getPublicKey());
        const handle = nextHandle++;
        privates.set(handle, priv);
        return { handle, pub };
      } finally {
        dh.setPrivateKey(SCRUB);
      }
    },
    secret(handle, peer, use) {
      const priv = privates.get(handle);
      if (!priv) throw new Error("unknown key handle");
      privates.delete(handle); // one exchange per private exponent
      let secret: Buffer | null = null;
      let copy: Uint8Array | null = null;
      try {
        dh.setPrivateKey(priv);
        secret = dh.computeSecret(Buffer.from(peer));
        copy = new Uint8Array(secret); // its own buffer: a slice of a shared pool must not be posted whole
        use(copy);
      } finally {
        priv.fill(0);
        secret?.fill(0);
        copy?.fill(0);
        dh.setPrivateKey(SCRUB);
      }
    },
    forget(handle) {
      privates.get(handle)?.fill(0);
      privates.delete(handle);
    },
  };
}
