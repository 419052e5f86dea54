// Worker side of lib/crypto/dh.ts. Building a DH object costs ~0.5 s in Bun
// 1.4 (BoringSSL runs DH_check on construction, notes §1), so it is built once
// here, off the main thread, and reused. Private exponents are generated here
// and never leave this worker: the main thread only sees handles.
import { createDiffieHellman, getRandomValues } from "node:crypto";
import { P_HEX } from "./group14.ts";

declare const self: Worker;

const dh = createDiffieHellman(Buffer.from(P_HEX, "hex"), Buffer.from([2]));
const privates = new Map<number, Buffer>();
let nextHandle = 1;

export type DhRequest = { id: number; op: "keypair" } | { id: number; op: "secret"; handle: number; peer: Uint8Array } | { id: number; op: "forget"; handle: number };
export type DhResponse = { id: number; handle?: number; value?: Uint8Array; error?: string };

self.onmessage = (event: MessageEvent<DhRequest>) => {
  const req = event.data;
  const reply = (r: Omit<DhResponse, "id">) => self.postMessage({ id: req.id, ...r });
  try {
    if (req.op === "keypair") {
      // 256-bit exponent: ≥ 2× the group's ~112-bit security level; a 2048-bit one costs 7× more.
      const priv = getRandomValues(Buffer.alloc(32));
      dh.setPrivateKey(priv);
      dh.generateKeys();
      const handle = nextHandle++;
      privates.set(handle, priv);
      reply({ handle, value: new Uint8Array(dh.getPublicKey()) });
    } else if (req.op === "secret") {
      const priv = privates.get(req.handle);
      if (!priv) return reply({ error: "unknown key handle" });
      privates.delete(req.handle); // one exchange per private exponent
      dh.setPrivateKey(priv);
      const secret = dh.computeSecret(Buffer.from(req.peer));
      priv.fill(0);
      reply({ value: new Uint8Array(secret) });
    } else {
      privates.get(req.handle)?.fill(0);
      privates.delete(req.handle);
      reply({});
    }
  } catch (err) {
    reply({ error: (err as Error).message });
  }
};
self.postMessage({ id: 0 }); // ready
