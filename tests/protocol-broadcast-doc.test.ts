// docs/PROTOCOL.md, "Broadcast layer", and the code must not drift. This file
// reads every bcast.* test vector from the document and checks it
//   1. against the reference functions (SendChain.seal with the vector IV,
//      ReceiveChain.open, pack, encodeFrame);
//   2. against plain node:crypto written from the document's text;
//   3. against the transfer state machine (createTransfers) for the broadcast
//      offer, on both the sender's and the receiver's side;
//   4. live: a real relay, a real broadcasting client behind a recording TCP
//      proxy (which sees, and can inject, exactly what the relay sees), and
//      real recipients: one `brec` per broadcast addressed to the sorted
//      member list, `skey` records before the first `brec` of each key, a new
//      key for every membership change, `no_key` and `replayed` for records
//      the relay replays, and each broadcast file chunk sent once to the list.
//
// The vectors are named `bcast.*` (with a dot) so that the relay test's
// "exactly these vectors" check, which matches names of [a-z0-9-] only and
// skips the e2e-* ones, does not count them, and neither does the file test
// (which takes file.* names).
import { afterAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { readdirSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Socket } from "bun";
import { startChat, type ChatClient, type ChatEvent } from "../lib/client/chat-client.ts";
import { startDhEngine } from "../lib/crypto/dh.ts";
import { startRelay } from "../lib/relay/server.ts";
import { ReceiveChain, SendChain } from "../lib/session/records.ts";
import { acceptSenderKey, newSenderKey, sealBroadcastRecord, tagValid } from "../lib/session/sender-keys.ts";
import { fileKeys, sealChunk } from "../lib/transfer/chunks.ts";
import { createTransfers, type TransferEvent } from "../lib/transfer/transfers.ts";
import { decodePayload, encodeFrame, FrameDecoder, type Frame } from "../lib/wire/frame.ts";
import { pack } from "../lib/wire/msgpack.ts";
import { tempDirs } from "./helpers.ts";
import { doc, docBlock, docVector, listedVectors, aesEncrypt, ascii, cat, hex, hmac, range, sha256 } from "./doc-vectors.ts";

setDefaultTimeout(30_000);

const flat = doc.replace(/\s+/g, " ");

// ---- Reading the document (same format as the other protocol-*-doc tests) ------


const VECTORS = [
  "bcast.skey",
  "bcast.plaintext",
  "bcast.enc-key-0",
  "bcast.mac-key-0",
  "bcast.chain-key-1",
  "bcast.ct",
  "bcast.mac-input",
  "bcast.mac",
  "bcast.tag-input",
  "bcast.tags",
  "bcast.brec",
  "bcast.send-frame",
  "bcast.offer",
  "bcast.done",
];
const v = listedVectors(VECTORS);

// ---- Plain implementations from the document's text ------------------------------

/** Bytes of a string of code points 0..255 (msgpack headers written as \xNN). */
const bin = (s: string) => new Uint8Array(Buffer.from(s, "latin1"));
const byte = (b: number) => new Uint8Array([b]);

// ---- The document's inputs (§40) ------------------------------------------------

const SENDER_KEY = range(0x00, 32);
const KID = range(0xa0, 16);
const IV = range(0x00, 16);
const MEMBERS = ["abcdefgh", "k3x9pm2q"];
const TAG_KEYS = [range(0xb0, 32), range(0xd0, 32)];
// The file of §32, for the broadcast offer.
const FILE_KEY = range(0x00, 32);
const DN = range(0xd0, 16); // the member's dn in the offer of §40.3
const FILE_ID = range(0xf0, 16);
const FILE = Uint8Array.from({ length: 135536 }, (_, i) => i % 251);

const temp = tempDirs("smts-bcast-doc-");
afterAll(() => temp.removeAll());

describe("broadcast-layer test vectors in docs/PROTOCOL.md", () => {
  test("the document has exactly the bcast vectors checked here, none visible to the other layers' tests", () => {
    const all = [...doc.matchAll(/<!-- vector: (bcast\.[a-z0-9.-]+) -->/g)].map((m) => m[1]!);
    expect([...all].sort()).toEqual([...VECTORS].sort());
    for (const name of all) docVector(name);
    // tests/protocol-doc.test.ts takes every vector named [a-z0-9-]+ that is not e2e-* as a relay vector,
    // tests/protocol-e2e-doc.test.ts every e2e-[a-z0-9-]+, tests/protocol-file-doc.test.ts every file.*:
    const relayLike = [...doc.matchAll(/<!-- vector: ([a-z0-9-]+) -->/g)].map((m) => m[1]!);
    expect(relayLike.filter((n) => n.startsWith("bcast"))).toEqual([]);
    expect([...doc.matchAll(/<!-- vector: (e2e-[a-z0-9-]+|file\.[a-z0-9.-]+) -->/g)].map((m) => m[1]!).filter((n) => n.includes("bcast"))).toEqual([]);
    // The layer is no longer a placeholder, and the message tables name the new types.
    expect(doc).not.toContain("(to be specified)");
    expect(flat).toContain("| `brec` | the sender of a broadcast |");
    expect(flat).toContain("| `skey` | `kid`: bin 16, `key`: bin 32, `tk`: bin 32, `slot`: uint |");
    expect(flat).toContain('tag_j = HMAC(key = tk_j, "smts/1 btag" ‖ kid ‖ mac)');
    expect(flat).toContain('mac = HMAC(key = macKey_n, "smts/1 rec" ‖ u64be(n) ‖ iv ‖ ct)');
  });

  test("skey and the plaintext: pack of the documented values, and newSenderKey's contents have that shape", () => {
    const skey = { t: "skey", kid: KID, key: SENDER_KEY, tk: TAG_KEYS[0]!, slot: 0 };
    expect(hex(pack(skey))).toBe(hex(v("bcast.skey")));
    expect(v("bcast.skey").length).toBe(111);
    expect(decodePayload(v("bcast.skey"))).toEqual(skey);
    // The reference: one content per member, same kid and key, own tag key, slot = place in the list.
    const made = newSenderKey(MEMBERS);
    expect(made.skeys.map((c) => Object.keys(c))).toEqual([Object.keys(skey), Object.keys(skey)]);
    expect(made.skeys.map((c) => c.slot)).toEqual([0, 1]);
    expect(hex(made.skeys[0]!.key as Uint8Array)).toBe(hex(made.skeys[1]!.key as Uint8Array));
    expect(hex(made.skeys[0]!.tk as Uint8Array)).not.toBe(hex(made.skeys[1]!.tk as Uint8Array));
    expect(made.key.members).toBe(MEMBERS.join(","));
    expect(hex(pack({ t: "text", text: "hi all" }))).toBe(hex(v("bcast.plaintext")));
  });

  test("the broadcast chain is §19.1's chain from the sender key (node:crypto from the document's text)", () => {
    expect(hex(hmac(SENDER_KEY, byte(1)))).toBe(hex(v("bcast.enc-key-0")));
    expect(hex(hmac(SENDER_KEY, byte(2)))).toBe(hex(v("bcast.mac-key-0")));
    expect(hex(hmac(SENDER_KEY, byte(3)))).toBe(hex(v("bcast.chain-key-1")));
    const ct = aesEncrypt(v("bcast.enc-key-0"), IV, v("bcast.plaintext"));
    expect(hex(ct)).toBe(hex(v("bcast.ct")));
    expect(hex(cat(ascii("smts/1 rec"), new Uint8Array(8), IV, ct))).toBe(hex(v("bcast.mac-input")));
    expect(hex(hmac(v("bcast.mac-key-0"), v("bcast.mac-input")))).toBe(hex(v("bcast.mac")));
    expect(hex(cat(ascii("smts/1 btag"), KID, v("bcast.mac")))).toBe(hex(v("bcast.tag-input")));
    expect(hex(cat(...TAG_KEYS.map((tk) => hmac(tk, v("bcast.tag-input")))))).toBe(hex(v("bcast.tags")));
    // The brec body assembled by hand from the field table of §35.1.
    const byHand = cat(
      byte(0x88),
      bin("\xa1t\xa4brec\xa1v"),
      byte(1),
      bin("\xa3seq"),
      byte(0),
      bin("\xa2iv"),
      byte(0xc4),
      byte(16),
      IV,
      bin("\xa2ct"),
      byte(0xc4),
      byte(32),
      ct,
      bin("\xa3mac"),
      byte(0xc4),
      byte(32),
      v("bcast.mac"),
      bin("\xa3kid"),
      byte(0xc4),
      byte(16),
      KID,
      bin("\xa4tags"),
      byte(0xc4),
      byte(64),
      v("bcast.tags"),
    );
    expect(hex(byHand)).toBe(hex(v("bcast.brec")));
  });

  test("sealBroadcastRecord with the vector keys and IV reproduces brec and the send frame", () => {
    const own = { kid: KID, chain: new SendChain(SENDER_KEY.slice()), members: MEMBERS.join(","), tagKeys: TAG_KEYS.map((k) => k.slice()) };
    const brec = sealBroadcastRecord(own, v("bcast.plaintext"), IV);
    expect(brec.seq).toBe(0);
    expect(Object.keys(brec)).toEqual(["t", "v", "seq", "iv", "ct", "mac", "kid", "tags"]);
    const body = pack(brec);
    expect(hex(body)).toBe(hex(v("bcast.brec")));
    expect(body.length).toBe(205);
    expect(hex(encodeFrame({ t: "send", to: MEMBERS, body }))).toBe(hex(v("bcast.send-frame")));
    expect(v("bcast.send-frame").length).toBe(246);
    // Sequence numbers go on from 0 under the same key.
    expect(sealBroadcastRecord(own, v("bcast.plaintext")).seq).toBe(1);
  });

  test("each member's tag: both slots accept the brec; a record re-MACed by a member (it holds the sender key) is rejected before the chain moves (§35.4)", () => {
    const m = decodePayload(v("bcast.brec"));
    const keyFor = (slot: number) => acceptSenderKey({ t: "skey", kid: KID, key: SENDER_KEY, tk: TAG_KEYS[slot]!, slot })!;
    for (const slot of [0, 1]) expect(tagValid(keyFor(slot), m)).toBe(true);
    // Slot 1 with slot 0's tag key, or a tag list too short for the slot: rejected.
    expect(tagValid(acceptSenderKey({ t: "skey", kid: KID, key: SENDER_KEY, tk: TAG_KEYS[0]!, slot: 1 })!, m)).toBe(false);
    expect(tagValid(keyFor(1), { ...m, tags: (m.tags as Uint8Array).subarray(0, 32) })).toBe(false);
    expect(tagValid(keyFor(0), { ...m, tags: (m.tags as Uint8Array).subarray(0, 40) })).toBe(false);
    // An insider seals its own text under the sender key: a valid record MAC, and the old tags.
    const insider = new SendChain(SENDER_KEY.slice()).seal(pack({ t: "text", text: "forged" }));
    const forged = { ...m, ...insider, t: "brec" };
    const rx = keyFor(1);
    expect(tagValid(rx, forged)).toBe(false);
    expect(new ReceiveChain(SENDER_KEY.slice()).open({ ...forged, t: "rec" }).ok).toBe(true); // the MAC alone would accept it
    expect(rx.chain.open({ ...m, t: "rec" }).ok).toBe(true); // the genuine record 0 still opens: nothing was used up
    // Malformed sender keys.
    for (const bad of [{ tk: new Uint8Array(31) }, { tk: undefined }, { slot: -1 }, { slot: 1.5 }, { slot: "0" }, { key: new Uint8Array(16) }, { kid: new Uint8Array(15) }]) {
      expect(acceptSenderKey({ t: "skey", kid: KID, key: SENDER_KEY, tk: TAG_KEYS[0]!, slot: 0, ...bad })).toBeNull();
    }
  });

  test("ReceiveChain over the sender key opens the brec as a rec (§35.4), with the rules of §19.3", () => {
    const m = decodePayload(v("bcast.brec"));
    expect(m.t).toBe("brec");
    expect(hex(m.kid as Uint8Array)).toBe(hex(KID));
    const rx = new ReceiveChain(SENDER_KEY.slice());
    const r = rx.open({ ...m, t: "rec" });
    expect(r.ok).toBe(true);
    if (r.ok) {
      expect(hex(r.plaintext)).toBe(hex(v("bcast.plaintext")));
      expect(r.skipped).toBe(0);
      expect(decodePayload(r.plaintext)).toEqual({ t: "text", text: "hi all" });
    }
    expect(rx.open({ ...m, t: "rec" })).toEqual({ ok: false, reason: "replayed" });
    // Tampering with any authenticated field fails on a fresh chain; the chain is not moved.
    const fresh = new ReceiveChain(SENDER_KEY.slice());
    const flip = (b: Uint8Array) => {
      const c = new Uint8Array(b);
      c[0]! ^= 1;
      return c;
    };
    for (const change of [{ iv: flip(m.iv as Uint8Array) }, { ct: flip(m.ct as Uint8Array) }, { mac: flip(m.mac as Uint8Array) }, { seq: 1 }]) {
      expect(fresh.open({ ...m, ...change })).toEqual({ ok: false, reason: "tampered" });
    }
    expect(fresh.open({ ...m, seq: 2000 })).toEqual({ ok: false, reason: "too_far" });
    expect(fresh.open(m).ok).toBe(true); // still at 0; kid and t are not in the MAC
    // The same record under any other key (a pairwise chain, another sender key) is a forgery.
    expect(new ReceiveChain(range(0x01, 32)).open(m)).toEqual({ ok: false, reason: "tampered" });
  });
});

// ---- Broadcast files (§36) -----------------------------------------------------

function transfersHarness(dir: string) {
  const contents: { peer: string; item: Frame }[] = [];
  const messages: { to: string | string[]; frame: Frame }[] = [];
  const events: TransferEvent[] = [];
  const t = createTransfers(
    {
      sendContent: (peer, item) => void contents.push({ peer, item }),
      sendChunk: (to, frame) => void messages.push({ to, frame }),
      chunkBacklog: () => 0,
      dropChunks() {},
      congested: () => false,
      isBusy: () => false,
      chunksDrained: async () => {},
      emit: (e) => void events.push(e),
      maxFrame: () => 256 * 1024,
    },
    { downloadDir: dir, maxFileSize: 10 * 1024 * 1024 },
  );
  return { t, contents, messages, events, dir };
}

const docChunks = () => {
  const keys = fileKeys(FILE_KEY, FILE_ID);
  return [sealChunk(keys, FILE_ID, 0, false, FILE.subarray(0, 131072), range(0x00, 16)), sealChunk(keys, FILE_ID, 1, true, FILE.subarray(131072), range(0x10, 16))];
};

describe("broadcast offers (§36) against the transfer state machine", () => {
  test("the sender offers the same file ID and key to every member, with bc: true and the file's SHA-256", async () => {
    const dir = temp.make();
    const path = join(dir, "report.pdf");
    writeFileSync(path, FILE);
    const s = transfersHarness(dir);
    const done = s.t.send(MEMBERS, path, true).catch((e: Error) => e);
    expect(s.contents.map((c) => c.peer)).toEqual(MEMBERS);
    const [a, b] = s.contents.map((c) => c.item);
    expect(Object.keys(a!)).toEqual(["t", "id", "name", "size", "key", "bc", "sha256", "dn"]);
    expect((a!.dn as Uint8Array).length).toBe(16);
    expect(hex(a!.dn as Uint8Array)).not.toBe(hex(b!.dn as Uint8Array)); // drawn for each member
    expect(hex(a!.id as Uint8Array)).toBe(hex(b!.id as Uint8Array));
    expect(hex(a!.key as Uint8Array)).toBe(hex(b!.key as Uint8Array));
    expect(a!.key).not.toBe(b!.key); // each offer holds its own copy
    // Equal to the document's offer once the random file ID, key and dn are replaced by the vector's.
    expect(hex(pack({ ...a!, id: FILE_ID, key: FILE_KEY, dn: DN }))).toBe(hex(v("bcast.offer")));
    expect(hex(a!.sha256 as Uint8Array)).toBe(hex(sha256(FILE)));
    // Both accept: each chunk is sealed once and sent once, to the list.
    for (const peer of MEMBERS) s.t.onContent(peer, { t: "accept", id: a!.id });
    for (let i = 0; i < 100 && s.messages.length < 2; i++) await Bun.sleep(5);
    expect(s.messages.map((m) => [m.to, m.frame.n, m.frame.last])).toEqual([
      [MEMBERS, 0, false],
      [MEMBERS, 1, true],
    ]);
    expect(s.t.cancel("")).toBe(0); // sent in full: only the recipients' answers end it
    s.t.abandon(null, "the test is over");
    expect(await done).toBeInstanceOf(Error);
  });

  test("the receiver: the document's offer and the §32 chunks give a file marked broadcast; a wrong sha256 fails it", () => {
    const peer = "k3x9pm2q";
    const ok = transfersHarness(temp.make());
    expect(ok.t.onContent(peer, decodePayload(v("bcast.offer")))).toBe(true);
    expect(ok.contents.map((c) => c.item.t)).toEqual(["accept"]);
    for (const c of docChunks()) ok.t.onChunk(peer, c);
    expect(ok.contents.map((c) => c.item.t)).toEqual(["accept", "done"]);
    // Its done is the document's: the mac over the member's dn, from the text with node:crypto too.
    expect(hex(pack(ok.contents[1]!.item))).toBe(hex(v("bcast.done")));
    const macKey = fileKeys(FILE_KEY, FILE_ID).mac;
    expect(hex(decodePayload(v("bcast.done")).mac as Uint8Array)).toBe(hex(hmac(macKey, ascii("smts/1 done"), FILE_ID, DN, sha256(FILE))));
    expect(ok.events.at(-1)).toMatchObject({ event: "file", from: peer, name: "report.pdf", size: 135536, sha256: hex(sha256(FILE)), broadcast: true });

    // Each offer fresh from the document: the receiver erases the key bytes of an offer it accepts.
    const offer = () => decodePayload(v("bcast.offer"));
    const bad = transfersHarness(temp.make());
    bad.t.onContent(peer, { ...offer(), sha256: new Uint8Array(32) });
    for (const c of docChunks()) bad.t.onChunk(peer, c);
    expect(bad.contents.at(-1)!.item).toMatchObject({ t: "failed", reason: "content does not match the SHA-256 in the sender's offer" });
    expect(readdirSync(bad.dir)).toEqual([]); // the temporary file is gone, nothing was saved

    // bc: true without a 32-byte sha256 or a 16-byte dn is malformed: nothing sent, nothing created.
    for (const change of [{ sha256: undefined }, { sha256: new Uint8Array(31) }, { sha256: "x" }, { dn: undefined }, { dn: new Uint8Array(15) }, { dn: "x" }]) {
      const m = transfersHarness(temp.make());
      m.t.onContent(peer, { ...offer(), ...change });
      expect(m.contents).toEqual([]);
      expect(m.events.at(-1)).toMatchObject({ state: "failed", reason: "malformed offer" });
    }
    // Without bc the offer is an ordinary one, whatever sha256 holds.
    const plain = transfersHarness(temp.make());
    plain.t.onContent(peer, { ...offer(), bc: undefined, sha256: new Uint8Array(32) });
    for (const c of docChunks()) plain.t.onChunk(peer, c);
    expect(plain.events.at(-1)).toMatchObject({ event: "file", broadcast: false });
  });
});

// ---- Live: what the relay sees from a broadcasting client ---------------------------

/** A TCP proxy for one client connection: forwards whole frames, records what the client sends, and can inject frames. */
async function recordingProxy(upstreamPort: number) {
  const sent: Frame[] = [];
  let toRelay: Pipe | null = null;
  class Pipe {
    private queue: Uint8Array[] = [];
    socket: Socket<unknown> | null = null;
    push(b: Uint8Array) {
      this.queue.push(b);
      this.flush();
    }
    flush() {
      while (this.socket && this.queue.length) {
        const b = this.queue[0]!;
        const n = this.socket.write(b);
        if (n < b.length) {
          this.queue[0] = b.subarray(Math.max(0, n));
          return;
        }
        this.queue.shift();
      }
    }
  }
  const server = Bun.listen<{ up: Pipe; down: Pipe; decoder: FrameDecoder; upstream?: Socket<unknown> }>({
    hostname: "127.0.0.1",
    port: 0,
    socket: {
      open(client) {
        const up = new Pipe();
        const down = new Pipe();
        down.socket = client as Socket<unknown>;
        client.data = { up, down, decoder: new FrameDecoder(64 * 1024 * 1024) };
        toRelay = up;
        void Bun.connect({
          hostname: "127.0.0.1",
          port: upstreamPort,
          socket: {
            open(s) {
              up.socket = s as Socket<unknown>;
              client.data.upstream = s as Socket<unknown>;
              up.flush();
            },
            data(_s, chunk) {
              down.push(new Uint8Array(chunk));
            },
            drain() {
              up.flush();
            },
            close() {
              client.end();
            },
          },
        });
      },
      data(client, chunk) {
        // Whole frames only, so that injected frames never land inside one.
        client.data.decoder.each(new Uint8Array(chunk), (payload) => {
          sent.push(decodePayload(payload));
          const framed = new Uint8Array(4 + payload.length);
          new DataView(framed.buffer).setUint32(0, payload.length);
          framed.set(payload, 4);
          client.data.up.push(framed);
        });
      },
      drain(client) {
        client.data.down.flush();
      },
      close(client) {
        client.data.upstream?.end();
      },
    },
  });
  return {
    port: server.port,
    sent,
    /** Sends `frame` to the relay as if the client had (what a relay, or the network, can do). */
    inject: (frame: Frame) => toRelay!.push(encodeFrame(frame)),
    stop: () => server.stop(true),
  };
}

describe("live: a broadcasting client as the relay sees it", () => {
  test("brec once per broadcast to the sorted members, skey first, a new key per membership, replays rejected, file chunks once to the list", async () => {
    const quiet = { info() {}, warn() {}, debug() {} };
    const relay = startRelay({ host: "127.0.0.1", port: 0, secret: null, log: quiet });
    const proxy = await recordingProxy(relay.port);
    const dh = startDhEngine();
    const clients: ChatClient[] = [];
    let closedC: ChatClient | null = null;
    const events = new Map<string, ChatEvent[]>();
    const joinChat = async (port: number, name: string) => {
      const list: ChatEvent[] = [];
      const c = await startChat({ host: "127.0.0.1", port, secret: null, dh, onEvent: (e) => void list.push(e), downloadDir: temp.make() });
      events.set(name, list);
      clients.push(c);
      return c;
    };
    const waitFor = async (what: string, check: () => boolean) => {
      for (const deadline = performance.now() + 10_000; !check(); await Bun.sleep(5)) {
        if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
      }
    };
    const got = (name: string, match: (e: ChatEvent) => boolean) => events.get(name)!.some(match);
    const message = (text: string) => (e: ChatEvent) => e.event === "message" && e.text === text && e.broadcast === true;
    /** The end-to-end messages the client sent since `from`, with their relay `to`. */
    const e2e = (from: number) =>
      proxy.sent
        .slice(from)
        .filter((f) => f.t === "send" || f.t === "bulk") // bulk: file chunks (§5.4)
        .map((f) => ({ to: f.to as string | string[], m: decodePayload(f.body as Uint8Array) }));

    try {
      const a = await joinChat(proxy.port, "A");
      const b = await joinChat(relay.port, "B");
      const c = await joinChat(relay.port, "C");
      const d = await joinChat(relay.port, "D");
      await a.connect(b.id);
      await a.connect(c.id);

      // One broadcast: skey records to B and C, then one brec to [B, C] (sorted), seq 0.
      let mark = proxy.sent.length;
      a.broadcastText("one");
      await waitFor("one at B and C", () => got("B", message("one")) && got("C", message("one")));
      let sends = e2e(mark);
      let brecs = sends.filter((s) => s.m.t === "brec");
      expect(brecs.length).toBe(1);
      expect(brecs[0]!.to).toEqual([b.id, c.id].sort());
      expect(brecs[0]!.m.seq).toBe(0);
      expect((brecs[0]!.m.tags as Uint8Array).length).toBe(2 * 32); // one tag per member
      const kid1 = hex(brecs[0]!.m.kid as Uint8Array);
      expect(kid1).toHaveLength(32);
      const first = sends.indexOf(brecs[0]!);
      for (const p of [b.id, c.id]) expect(sends.findIndex((s) => s.to === p && s.m.t === "rec")).toBeLessThan(first);
      const oldBrec = pack(brecs[0]!.m);

      // Same members: same key, next seq, no pairwise record.
      mark = proxy.sent.length;
      a.broadcastText("two");
      await waitFor("two at B and C", () => got("B", message("two")) && got("C", message("two")));
      sends = e2e(mark);
      expect(sends.map((s) => [s.m.t, s.m.seq, hex(s.m.kid as Uint8Array)])).toEqual([["brec", 1, kid1]]);

      // A newcomer: a new key, seq 0 again, skey to every member before the brec.
      await d.connect(a.id);
      await a.waitSession(d.id, 5000);
      a.verify(d.id); // D started the session: in A's broadcasts once A's user verified it
      mark = proxy.sent.length;
      a.broadcastText("three");
      await waitFor("three at B, C and D", () => ["B", "C", "D"].every((n) => got(n, message("three"))));
      expect(got("D", message("one")) || got("D", message("two"))).toBe(false);
      sends = e2e(mark);
      brecs = sends.filter((s) => s.m.t === "brec");
      expect(brecs.length).toBe(1);
      expect(brecs[0]!.to).toEqual([b.id, c.id, d.id].sort());
      expect(brecs[0]!.m.seq).toBe(0);
      const kid2 = hex(brecs[0]!.m.kid as Uint8Array);
      expect(kid2).not.toBe(kid1);
      for (const p of [b.id, c.id, d.id]) expect(sends.findIndex((s) => s.to === p && s.m.t === "rec")).toBeLessThan(sends.indexOf(brecs[0]!));
      const currentBrec = pack(brecs[0]!.m);

      // The relay replays: a brec under the old key is no_key, the current one again is replayed.
      proxy.inject({ t: "send", to: d.id, body: oldBrec });
      await waitFor("no_key at D", () => got("D", (e) => e.event === "error" && e.code === "no_key"));
      proxy.inject({ t: "send", to: b.id, body: currentBrec });
      await waitFor("replayed at B", () => got("B", (e) => e.event === "error" && e.code === "replayed"));
      // Delivered to a client without a session with the sender, it is no_key too.
      const stranger = await joinChat(relay.port, "E");
      proxy.inject({ t: "send", to: stranger.id, body: currentBrec });
      await waitFor("no_key at E", () => got("E", (e) => e.event === "error" && e.code === "no_key"));
      expect(got("E", (e) => e.event === "message")).toBe(false);

      // A member leaves: a new key for the others; the departed one is not addressed.
      closedC = c;
      await c.close();
      await waitFor("A drops C", () => !a.hasSession(c.id));
      mark = proxy.sent.length;
      a.broadcastText("four");
      await waitFor("four at B and D", () => got("B", message("four")) && got("D", message("four")));
      expect(got("C", message("four"))).toBe(false);
      sends = e2e(mark);
      brecs = sends.filter((s) => s.m.t === "brec");
      expect(brecs.map((s) => s.to)).toEqual([[b.id, d.id].sort()]);
      expect(brecs[0]!.m.seq).toBe(0);
      expect([kid1, kid2]).not.toContain(hex(brecs[0]!.m.kid as Uint8Array));

      // A broadcast file: offers travel in pairwise records; each chunk is sent once, to the list.
      const dir = temp.make();
      const path = join(dir, "report.pdf");
      writeFileSync(path, FILE);
      mark = proxy.sent.length;
      await a.broadcastFile(path);
      sends = e2e(mark);
      const chunks = sends.filter((s) => s.m.t === "chunk");
      expect(chunks.map((s) => [s.to, s.m.n, s.m.last])).toEqual([
        [[b.id, d.id].sort(), 0, false],
        [[b.id, d.id].sort(), 1, true],
      ]);
      expect(sends.some((s) => s.m.t === "offer")).toBe(false); // never in the clear
      for (const n of ["B", "D"]) {
        const f = events.get(n)!.find((e) => e.event === "file");
        expect(f).toMatchObject({ event: "file", name: "report.pdf", size: 135536, sha256: hex(sha256(FILE)), broadcast: true });
      }
      expect(events.get("A")!.filter((e) => e.event === "delivered").map((e) => (e as { to: string }).to).sort()).toEqual([b.id, d.id].sort());
    } finally {
      for (const x of clients) if (x !== closedC) await x.close().catch(() => {});
      dh.close();
      proxy.stop();
      await relay.stop();
    }
  });
});
