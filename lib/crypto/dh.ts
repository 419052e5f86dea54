// Diffie-Hellman over RFC 3526 group 14, run in a worker (dh-worker.ts) so
// the one-time ~0.5 s setup never blocks the main thread, with one ephemeral
// key pair always generated ahead of need so /connect never waits for it.
//
// Promises: private exponents are 256 bits from the CSPRNG, stay inside the
// worker, and are used for exactly one shared secret; secrets come back
// left-padded to 256 bytes; peer values are NOT fully validated here
// (BoringSSL refuses only 0, 1, p-1 and p): callers check
// group14.isValidPublic first, so a bad value never reaches the worker.
import { padToGroup } from "./group14.ts";
import { wipe } from "./primitives.ts";
import type { DhRequest, DhResponse } from "./dh-worker.ts";

export interface KeyPair {
  handle: number;
  pub: Uint8Array; // 256 bytes, big-endian
}

export interface DhEngine {
  /** A fresh key pair (usually already waiting). */
  keypair(): Promise<KeyPair>;
  /** The shared secret with `peer`; consumes the key pair's private exponent. */
  secret(handle: number, peer: Uint8Array): Promise<Uint8Array>;
  /** Erases an unused private exponent. */
  forget(handle: number): void;
  close(): void;
}

// Set only in `bun build --compile` binaries (scripts/release.ts): the worker's
// name inside the executable. There every module's import.meta.url is the
// executable's own entry (file:///$bunfs/root/NAME), so "./dh-worker.ts"
// would not be found; the worker is embedded as a second entry point.
declare const SMTS_DH_WORKER: string | undefined;

export function startDhEngine(): DhEngine {
  const url = typeof SMTS_DH_WORKER === "string" ? new URL(SMTS_DH_WORKER, import.meta.url) : new URL("./dh-worker.ts", import.meta.url);
  const worker = new Worker(url.href);
  // Not unref()'d: Bun delivers an unref'd worker's messages late (measured:
  // keypair + secret 2.0 ms instead of 1.0 ms). Owners call close() instead.
  const pending = new Map<number, (r: DhResponse) => void>();
  let nextId = 1;
  worker.onmessage = (event: MessageEvent<DhResponse>) => {
    const r = event.data;
    const done = pending.get(r.id);
    if (done) pending.delete(r.id), done(r);
  };
  // A worker that cannot load (say, a binary built without it) or dies fails
  // every pending and later call, instead of leaving a /connect waiting forever.
  let broken: string | null = null;
  worker.onerror = (event: ErrorEvent) => {
    broken = event.message || "the DH worker failed";
    for (const done of pending.values()) done({ id: 0, error: broken });
    pending.clear();
  };
  type Request = DhRequest extends infer R ? (R extends DhRequest ? Omit<R, "id"> : never) : never;
  const call = (req: Request): Promise<DhResponse> =>
    new Promise((resolve, reject) => {
      if (broken) return reject(new Error(`DH: ${broken}`));
      const id = nextId++;
      pending.set(id, (r) => (r.error ? reject(new Error(`DH: ${r.error}`)) : resolve(r)));
      worker.postMessage({ id, ...req });
    });
  const generate = (): Promise<KeyPair> => call({ op: "keypair" }).then((r) => ({ handle: r.handle!, pub: padToGroup(r.value!) }));
  // One key pair is kept ready. It is replaced after the next secret() rather
  // than at once, so that computing it never delays the secret the handshake
  // is about to ask for (the worker does one thing at a time).
  let spare: Promise<KeyPair> | null = generate();
  spare.catch(() => {});
  const refill = () => {
    if (!spare) (spare = generate()).catch(() => {});
  };

  return {
    keypair() {
      const next = spare ?? generate();
      spare = null;
      return next;
    },
    async secret(handle, peer) {
      try {
        const value = (await call({ op: "secret", handle, peer })).value!;
        const padded = padToGroup(value);
        if (padded !== value) wipe(value);
        return padded;
      } finally {
        refill();
      }
    },
    forget(handle) {
      void call({ op: "forget", handle }).catch(() => {});
    },
    close() {
      worker.terminate();
    },
  };
}
