// A hand-driven protocol peer for end-to-end tests: it joins a relay as a bare
// link, runs the real key exchange (as initiator) with a chat client, and then
// lets a test read what that client sent it (pairwise record contents, the
// sender keys it was given, broadcast records, file chunks) and send whatever
// it likes: any record content, and file offers with any name and any size,
// followed by more (or fewer) hand-sealed chunks than it offered.
import type { ChatClient } from "../lib/client/chat-client.ts";
import type { DhEngine } from "../lib/crypto/dh.ts";
import { randomBytes } from "../lib/crypto/primitives.ts";
import { joinRelay, type Link } from "../lib/link/relay-link.ts";
import { initiatorConfirm, initiatorFinish, startInitiator } from "../lib/session/handshake.ts";
import { ReceiveChain, SendChain, type OpenResult } from "../lib/session/records.ts";
import { CHUNK_BYTES, doneMac, fileKeys, sealChunk } from "../lib/transfer/chunks.ts";
import { decodePayload, type Frame } from "../lib/wire/frame.ts";
import { pack } from "../lib/wire/msgpack.ts";
import { SECRET, waitFor } from "./helpers.ts";
import { e2eOf, isE2E } from "./mitm.ts";

const LONG = 30_000; // generous: a busy 2-core machine
const hex = (b: unknown) => Buffer.from(b as Uint8Array).toString("hex");
const sameId = (a: unknown, b: Uint8Array) => Buffer.from(a as Uint8Array).equals(Buffer.from(b));

export interface RawPeer {
  id: string;
  link: Link;
  /** Every frame the relay sent us. */
  inbox: Frame[];
  /** Pairwise record contents from the victim (decrypted, batches unpacked), in order. */
  contents: Frame[];
  /** Sender keys (`skey`) the victim gave us: kid (hex) → a copy of the 32-byte key. */
  keys: Map<string, Uint8Array>;
  /** Decrypts pending pairwise records; returns the contents. */
  pump(): Frame[];
  /** Waits for a pairwise record content matching `match`. */
  content(match: (c: Frame) => boolean, what: string): Promise<Frame>;
  /** Broadcast records (`brec`) the victim sent us, in arrival order. */
  brecs(): Frame[];
  /** Chunk messages the victim sent us, in arrival order. */
  chunks(): Frame[];
  /** Opens `brec` with a fresh ReceiveChain on the key we hold for its kid (or on `key`). */
  open(brec: Frame, key?: Uint8Array): OpenResult;
  /** Sends a pairwise record to the victim. */
  record(content: Frame): void;
  /** Offers a file (any name, any size); returns what is needed to send its chunks. */
  offer(name: string, size: number): RawOffer;
  /**
   * Runs a new key exchange (a re-key the victim sees as started by its peer),
   * calling `between` after the victim's `reply` and before our `reveal`; the
   * records the victim sent until then (`between`'s too) are read under the
   * old keys, as the victim seals nothing under the new ones before `reveal`
   * (so `between` waits for what it makes the victim send).
   */
  rekey(between?: () => Promise<void>): Promise<void>;
}

export interface RawOffer {
  id: Uint8Array;
  /** The victim's `accept` or `decline` of this offer. */
  answer(): Promise<Frame>;
  /** The victim's `done`, `failed` or `cancel` for this transfer. */
  outcome(): Promise<Frame>;
  /** Sends chunk `n`, correctly sealed. */
  chunk(n: number, last: boolean, plain: Uint8Array): void;
  /** Sends `bytes` as correctly sealed chunks 0..k, the last one flagged final. */
  sendAll(bytes: Uint8Array): void;
  /** The `mac` a `done` for a file with SHA-256 `sha256` carries (chunks.ts doneMac). */
  doneMac(sha256: Uint8Array): Uint8Array;
}

/**
 * Joins the relay on `port` and runs the key exchange with `victim`. The link
 * is pushed onto `track` as soon as it exists, so the caller's cleanup closes
 * it even if the exchange fails.
 */
export async function startRawPeer(
  victim: { id: string; chat: Pick<ChatClient, "waitSession"> },
  opts: { port: number; dh: DhEngine; track: Link[] },
): Promise<RawPeer> {
  const inbox: Frame[] = [];
  const link = await joinRelay({ host: "127.0.0.1", port: opts.port, secret: SECRET, watch: false, onFrame: (f) => void inbox.push(f) });
  opts.track.push(link);
  const next = async (t: string) => {
    const i = await waitFor(() => inbox.findIndex((f) => isE2E(f, t, victim.id)) + 1, `${t} from the victim`, LONG);
    return e2eOf(inbox.splice(i - 1, 1)[0]!)!;
  };
  /** One key exchange with the victim, we the initiator; `beforeReveal` runs between its `reply` and our `reveal`. */
  const exchange = async (beforeReveal = async () => {}) => {
    const { state, hello } = await startInitiator(opts.dh, link.id, victim.id);
    link.send(victim.id, pack(hello));
    const { reveal, pending } = await initiatorFinish(opts.dh, state, await next("reply"));
    await beforeReveal();
    link.send(victim.id, pack(reveal));
    const keys = initiatorConfirm(pending, await next("confirm"));
    return { send: new SendChain(keys.sendChain), receive: new ReceiveChain(keys.receiveChain) };
  };
  let { send, receive } = await exchange();
  await victim.chat.waitSession(link.id, LONG);

  const contents: Frame[] = [];
  const keys = new Map<string, Uint8Array>();
  const pump = () => {
    for (let i = 0; i < inbox.length; i++) {
      if (!isE2E(inbox[i]!, "rec", victim.id)) continue;
      const r = receive.open(e2eOf(inbox.splice(i--, 1)[0]!)!);
      if (!r.ok) throw new Error(`raw peer: bad pairwise record (${r.reason})`);
      const inner = decodePayload(r.plaintext);
      for (const item of inner.t === "batch" ? (inner.items as Frame[]) : [inner]) {
        contents.push(item);
        if (item.t === "skey") keys.set(hex(item.kid), new Uint8Array(item.key as Uint8Array));
      }
    }
    return contents;
  };
  const fromVictim = (t: string) => inbox.filter((f) => isE2E(f, t, victim.id)).map((f) => e2eOf(f)!);

  const peer: RawPeer = {
    id: link.id,
    link,
    inbox,
    contents,
    keys,
    pump,
    content: (match, what) => waitFor(() => (pump(), contents.find(match)), what, LONG),
    brecs: () => fromVictim("brec"),
    chunks: () => fromVictim("chunk"),
    open(brec, key) {
      pump();
      const k = key ?? keys.get(hex(brec.kid));
      if (!k) throw new Error(`raw peer holds no key for kid ${hex(brec.kid)}`);
      return new ReceiveChain(new Uint8Array(k)).open(brec);
    },
    record(content) {
      link.send(victim.id, pack(send.seal(pack(content))));
    },
    async rekey(between) {
      ({ send, receive } = await exchange(async () => void (await between?.(), pump())));
    },
    offer(name, size) {
      const id = randomBytes(16);
      const key = randomBytes(32);
      const fk = fileKeys(new Uint8Array(key), id);
      peer.record({ t: "offer", id, name, size, key });
      const about = (kinds: string[]) => (c: Frame) => kinds.includes(c.t as string) && sameId(c.id, id);
      return {
        id,
        answer: () => peer.content(about(["accept", "decline"]), "accept or decline"),
        outcome: () => peer.content(about(["done", "failed", "cancel"]), "done or failed"),
        chunk(n, last, plain) {
          link.send(victim.id, pack(sealChunk(fk, id, n, last, plain)));
        },
        doneMac: (sha256) => doneMac(fk, id, sha256),
        sendAll(bytes) {
          for (let n = 0, at = 0; ; n++) {
            const piece = bytes.subarray(at, at + CHUNK_BYTES);
            at += piece.length;
            this.chunk(n, at >= bytes.length, piece);
            if (at >= bytes.length) break;
          }
        },
      };
    },
  };
  return peer;
}
