// Worker side of lib/crypto/dh.ts: runs dh-ops.ts on request. Private
// exponents are generated here and never leave this worker: the main thread
// only sees handles. A shared secret is posted (postMessage copies it) and
// then erased here.
import { dhOps } from "./dh-ops.ts";

declare const self: Worker;

export type DhRequest = { id: number; op: "keypair" } | { id: number; op: "secret"; handle: number; peer: Uint8Array } | { id: number; op: "forget"; handle: number };
export type DhResponse = { id: number; handle?: number; value?: Uint8Array; error?: string };

const ops = dhOps();

self.onmessage = (event: MessageEvent<DhRequest>) => {
  const req = event.data;
  const reply = (r: Omit<DhResponse, "id">) => self.postMessage({ id: req.id, ...r });
  try {
    if (req.op === "keypair") {
      const { handle, pub } = ops.keypair();
      reply({ handle, value: pub });
    } else if (req.op === "secret") {
      ops.secret(req.handle, req.peer, (value) => reply({ value }));
    } else {
      ops.forget(req.handle);
      reply({});
    }
  } catch (err) {
    reply({ error: (err as Error).message });
  }
};
self.postMessage({ id: 0 }); // ready
