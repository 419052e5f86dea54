// docs/PROTOCOL.md, "End-to-end layer", and the code must not drift. This file
// reads every e2e-* test vector (and the fingerprint text blocks) from the
// document and checks them three ways:
//   1. against the reference functions (group14, handshake, records);
//   2. against plain node:crypto / BigInt arithmetic written from the document;
//   3. live: a client written only from the document (node:crypto + msgpack,
//      no lib/session or lib/crypto) runs key exchanges and records with the
//      real chat client through a real relay, in both roles.
import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { createCipheriv, createDiffieHellman, hkdfSync, randomBytes } from "node:crypto";
import { Packr } from "msgpackr";
import { startChat, type ChatClient, type ChatEvent } from "../lib/client/chat-client.ts";
import type { DhEngine } from "../lib/crypto/dh.ts";
import { startDhEngine } from "../lib/crypto/dh.ts";
import { G, GROUP_BYTES, isValidPublic, P, P_HEX, Q, toBigInt, toFixedBytes } from "../lib/crypto/group14.ts";
import { hmac } from "../lib/crypto/primitives.ts";
import { joinRelay, type Link } from "../lib/link/relay-link.ts";
import { startRelay, type Relay } from "../lib/relay/server.ts";
import {
  commitment,
  deriveKeys,
  E2E_VERSION,
  HandshakeError,
  initiatorConfirm,
  initiatorFinish,
  longFingerprint,
  parseHello,
  respond,
  responderFinish,
  shortFingerprint,
  startInitiator,
  transcriptHash,
} from "../lib/session/handshake.ts";
import { MAX_SKIP, ReceiveChain, recordMac, SendChain } from "../lib/session/records.ts";
import { decodePayload, encodeFrame, type Frame } from "../lib/wire/frame.ts";
import { doc, docBlock, docVector, listedVectors, aesDecrypt, aesEncrypt, ascii, cat, hex, hmac as mac, range, sha256, u64 } from "./doc-vectors.ts";

setDefaultTimeout(30_000); // the DH worker takes ~0.5 s to start, more on a busy machine


// ---- Reading the document (same format as tests/protocol-doc.test.ts) ---------


/** Every e2e vector checked below; the document must have exactly these. */
const VECTORS = [
  "e2e-group14-prime",
  "e2e-public-initiator",
  "e2e-public-responder",
  "e2e-shared-secret",
  "e2e-commitment",
  "e2e-transcript-input-head",
  "e2e-transcript-hash",
  "e2e-hkdf-prk",
  "e2e-hkdf-okm",
  "e2e-confirm-input",
  "e2e-confirm-initiator",
  "e2e-confirm-responder",
  "e2e-hello-body",
  "e2e-hello-send-frame",
  "e2e-reply-body",
  "e2e-reveal-body",
  "e2e-confirm-body",
  "e2e-record-plaintext",
  ...[0, 1].flatMap((i) => [
    `e2e-record-${i}-enc-key`,
    `e2e-record-${i}-mac-key`,
    `e2e-chain-key-${i + 1}`,
    `e2e-record-${i}-ct`,
    `e2e-record-${i}-mac-input`,
    `e2e-record-${i}-mac`,
    `e2e-record-${i}-body`,
  ]),
];
const v = listedVectors(VECTORS);

// ---- Plain implementations from the document's text ------------------------------

function modpow(base: bigint, exp: bigint, m: bigint): bigint {
  let r = 1n;
  base %= m;
  for (; exp > 0n; exp >>= 1n, base = (base * base) % m) if (exp & 1n) r = (r * base) % m;
  return r;
}
const big = (b: Uint8Array) => BigInt("0x" + (hex(b) || "0"));
const bytes256 = (n: bigint) => new Uint8Array(Buffer.from(n.toString(16).padStart(512, "0"), "hex"));
/** The packer the reference client uses for bodies and record plaintexts. */
const packr = new Packr({ useRecords: false, variableMapSize: true });
const pack = (value: unknown) => new Uint8Array(packr.pack(value));

// The group, read from the document (not from lib/).
const DOC_P = big(docVector("e2e-group14-prime"));
const DOC_Q = (DOC_P - 1n) / 2n;

// ---- The document's inputs -----------------------------------------------------

const X_I = range(0x01, 32);
const X_R = range(0x21, 32);
const ID_I = "abcdefgh";
const ID_R = "k3x9pm2q";
const N_I = range(0xa0, 32);
const N_R = range(0xc0, 32);
const IVS = [range(0x00, 16), range(0x10, 16)];
const PLAINTEXT = { t: "text", text: "hi" };

const L = {
  commit: ascii("smts/1 commit"),
  transcript: ascii("smts/1 transcript"),
  keys: ascii("smts/1 session keys"),
  confirm: ascii("smts/1 confirm"),
  rec: ascii("smts/1 rec"),
};

/** A DhEngine with a fixed private exponent, so the reference handshake functions reproduce the vectors. */
function fixedDh(x: Uint8Array): DhEngine {
  return {
    keypair: async () => ({ handle: 1, pub: toFixedBytes(modpow(G, big(x), P)) }),
    secret: async (_handle, peer) => toFixedBytes(modpow(toBigInt(peer), big(x), P)),
    forget() {},
    close() {},
  };
}

describe("e2e test vectors in docs/PROTOCOL.md", () => {
  test("the document has exactly the e2e vectors checked here", () => {
    const all = [...doc.matchAll(/<!-- vector: (e2e-[a-z0-9-]+) -->/g)].map((m) => m[1]!);
    expect([...all].sort()).toEqual([...VECTORS].sort());
    for (const name of all) docVector(name);
    expect([...doc.matchAll(/<!-- text: ([a-z0-9-]+) -->/g)].map((m) => m[1])).toEqual(["e2e-fingerprint-short", "e2e-fingerprint-long"]);
  });

  test("the group: RFC 3526 group 14, g = 2, 256-byte encoding", () => {
    expect(hex(v("e2e-group14-prime"))).toBe(P_HEX.toLowerCase());
    expect(DOC_P).toBe(P);
    expect(Q).toBe(DOC_Q);
    expect(G).toBe(2n);
    expect(GROUP_BYTES).toBe(256);
    // p = 2^2048 − 2^1984 − 1 + 2^64 × (⌊2^1918 π⌋ + 124476), with π from Machin's formula.
    const one = 1n << 2200n;
    const arctanInv = (x: bigint) => {
      let sum = one / x;
      let term = sum;
      for (let n = 3n, sign = -1n; term !== 0n; n += 2n, sign = -sign) {
        term /= x * x;
        sum += (sign * term) / n;
      }
      return sum;
    };
    const pi = 4n * (4n * arctanInv(5n) - arctanInv(239n)); // π × 2^2200
    expect(2n ** 2048n - 2n ** 1984n - 1n + 2n ** 64n * ((pi >> (2200n - 1918n)) + 124476n)).toBe(DOC_P);
    expect(doc).toContain(`end-to-end protocol version **${E2E_VERSION}**`);
  });

  test("public values and shared secret (BigInt, node:crypto DH, validation)", () => {
    const yI = v("e2e-public-initiator");
    const yR = v("e2e-public-responder");
    const z = v("e2e-shared-secret");
    expect(hex(bytes256(modpow(2n, big(X_I), DOC_P)))).toBe(hex(yI));
    expect(hex(bytes256(modpow(2n, big(X_R), DOC_P)))).toBe(hex(yR));
    expect(hex(bytes256(modpow(big(yR), big(X_I), DOC_P)))).toBe(hex(z));
    expect(hex(bytes256(modpow(big(yI), big(X_R), DOC_P)))).toBe(hex(z));
    // The engine the reference DH worker uses, with the exponent set the same way.
    const dh = createDiffieHellman(Buffer.from(P_HEX, "hex"), Buffer.from([2]));
    dh.setPrivateKey(Buffer.from(X_I));
    dh.generateKeys();
    expect(hex(dh.getPublicKey())).toBe(hex(yI));
    expect(hex(dh.computeSecret(Buffer.from(yR)))).toBe(hex(z));
    // Validation as the document states it, and as the code does it.
    for (const y of [yI, yR]) {
      expect(modpow(big(y), DOC_Q, DOC_P)).toBe(1n);
      expect(isValidPublic(y)).toBe(true);
    }
    const docValid = (y: bigint) => y > 1n && y < DOC_P - 1n && modpow(y, DOC_Q, DOC_P) === 1n;
    const samples = [0n, 1n, 2n, 3n, 4n, 5n, DOC_P - 2n, DOC_P - 1n, DOC_P, DOC_P + 4n, 2n ** 2048n - 1n, big(yI) * 2n % DOC_P];
    for (let i = 0; i < 16; i++) samples.push(big(new Uint8Array(randomBytes(256))));
    for (const y of samples) {
      if (y >= 2n ** 2048n) continue;
      expect(isValidPublic(bytes256(y))).toBe(docValid(y));
    }
    expect(isValidPublic(yI.subarray(1))).toBe(false); // not 256 bytes
  });

  test("commitment and transcript hash", () => {
    const yI = v("e2e-public-initiator");
    const yR = v("e2e-public-responder");
    expect(hex(commitment(yI))).toBe(hex(v("e2e-commitment")));
    expect(hex(sha256(L.commit, yI))).toBe(hex(v("e2e-commitment")));
    const head = v("e2e-transcript-input-head");
    expect(head.length).toBe(100);
    expect(hex(head)).toBe(hex(cat(L.transcript, Uint8Array.of(1, 8), ascii(ID_I), Uint8Array.of(8), ascii(ID_R), N_I, N_R)));
    expect(hex(sha256(head, yI, yR))).toBe(hex(v("e2e-transcript-hash")));
    expect(hex(transcriptHash(ID_I, ID_R, N_I, N_R, yI, yR))).toBe(hex(v("e2e-transcript-hash")));
  });

  test("HKDF output, its split, the confirm MACs and the fingerprint", () => {
    const z = v("e2e-shared-secret");
    const th = v("e2e-transcript-hash");
    const okm = v("e2e-hkdf-okm");
    expect(okm.length).toBe(160);
    expect(hex(mac(th, z))).toBe(hex(v("e2e-hkdf-prk")));
    expect(hex(new Uint8Array(hkdfSync("sha256", z, th, L.keys, 160)))).toBe(hex(okm));
    // RFC 5869 expand by hand from the PRK.
    let t = new Uint8Array(0);
    const out: Uint8Array[] = [];
    for (let i = 1; i <= 5; i++) out.push((t = mac(v("e2e-hkdf-prk"), t, L.keys, Uint8Array.of(i))));
    expect(hex(cat(...out))).toBe(hex(okm));

    const input = v("e2e-confirm-input");
    expect(hex(input)).toBe(hex(cat(L.confirm, th)));
    expect(hex(mac(okm.subarray(64, 96), input))).toBe(hex(v("e2e-confirm-initiator")));
    expect(hex(mac(okm.subarray(96, 128), input))).toBe(hex(v("e2e-confirm-responder")));

    const i = deriveKeys(z, th, "initiator");
    expect(hex(i.keys.sendChain)).toBe(hex(okm.subarray(0, 32)));
    expect(hex(i.keys.receiveChain)).toBe(hex(okm.subarray(32, 64)));
    expect(hex(i.keys.fingerprint)).toBe(hex(okm.subarray(128, 160)));
    expect(hex(i.myConfirm)).toBe(hex(v("e2e-confirm-initiator")));
    expect(hex(i.peerConfirm)).toBe(hex(v("e2e-confirm-responder")));
    const r = deriveKeys(z, th, "responder");
    expect(hex(r.keys.sendChain)).toBe(hex(okm.subarray(32, 64)));
    expect(hex(r.keys.receiveChain)).toBe(hex(okm.subarray(0, 32)));
    expect(hex(r.keys.fingerprint)).toBe(hex(okm.subarray(128, 160)));
    expect(hex(r.myConfirm)).toBe(hex(v("e2e-confirm-responder")));
    expect(hex(r.peerConfirm)).toBe(hex(v("e2e-confirm-initiator")));

    const fp = okm.subarray(128, 160);
    const short = docBlock("text", "e2e-fingerprint-short");
    const long = docBlock("text", "e2e-fingerprint-long");
    expect(shortFingerprint(fp)).toBe(short);
    expect(longFingerprint(fp)).toBe(long);
    // The forms as the document describes them.
    expect(short).toBe(hex(fp.subarray(0, 6)).match(/.{4}/g)!.join("-"));
    expect(long).toBe(hex(fp).match(/.{4}/g)!.join(" "));
  });

  test("handshake bodies: msgpack encoding, and the relay send frame around hello", () => {
    const hello = { t: "hello", v: 1, commit: v("e2e-commitment"), nonce: N_I };
    const reply = { t: "reply", v: 1, pub: v("e2e-public-responder"), nonce: N_R };
    const reveal = { t: "reveal", v: 1, pub: v("e2e-public-initiator"), confirm: v("e2e-confirm-initiator") };
    const confirm = { t: "confirm", v: 1, confirm: v("e2e-confirm-responder") };
    const bodies: [string, Frame, number][] = [
      ["e2e-hello-body", hello, 93],
      ["e2e-reply-body", reply, 315],
      ["e2e-reveal-body", reveal, 318],
      ["e2e-confirm-body", confirm, 56],
    ];
    for (const [name, value, length] of bodies) {
      expect(hex(pack(value))).toBe(hex(v(name)));
      expect(v(name).length).toBe(length);
      expect(decodePayload(v(name))).toEqual(Object.fromEntries(Object.entries(value).map(([k, x]) => [k, x instanceof Uint8Array ? Buffer.from(x) : x])));
    }
    expect(hex(encodeFrame({ t: "send", to: ID_R, body: v("e2e-hello-body") }))).toBe(hex(v("e2e-hello-send-frame")));
  });

  test("the reference handshake functions reproduce every handshake vector", async () => {
    const dhI = fixedDh(X_I);
    const dhR = fixedDh(X_R);
    const start = await startInitiator(dhI, ID_I, ID_R);
    start.state.nonce.set(N_I); // the hello shares this array
    expect(hex(pack(start.hello))).toBe(hex(v("e2e-hello-body")));

    const hello = parseHello(decodePayload(v("e2e-hello-body")));
    const resp = await respond(dhR, ID_R, ID_I, hello);
    resp.state.nonce.set(N_R);
    expect(hex(pack(resp.reply))).toBe(hex(v("e2e-reply-body")));

    const fin = await initiatorFinish(dhI, start.state, decodePayload(v("e2e-reply-body")));
    expect(hex(pack(fin.reveal))).toBe(hex(v("e2e-reveal-body")));

    const done = await responderFinish(dhR, resp.state, decodePayload(v("e2e-reveal-body")));
    expect(hex(pack(done.confirm))).toBe(hex(v("e2e-confirm-body")));
    const keysI = initiatorConfirm(fin.pending, decodePayload(v("e2e-confirm-body")));

    const okm = v("e2e-hkdf-okm");
    expect(hex(keysI.sendChain)).toBe(hex(okm.subarray(0, 32)));
    expect(hex(done.keys.sendChain)).toBe(hex(okm.subarray(32, 64)));
    expect(hex(keysI.fingerprint)).toBe(hex(done.keys.fingerprint));
    expect(shortFingerprint(keysI.fingerprint)).toBe(docBlock("text", "e2e-fingerprint-short"));
  });

  test("the documented failures of §17.4", async () => {
    const code = async (p: Promise<unknown> | (() => unknown)) => {
      try {
        await (typeof p === "function" ? p() : p);
      } catch (err) {
        return err instanceof HandshakeError ? err.code : `other: ${(err as Error).message}`;
      }
      return "no error";
    };
    const body = (name: string, change: Record<string, unknown> = {}): Frame => ({ ...decodePayload(v(name)), ...change });
    // hello: v must be 1, commit and nonce 32-byte bins.
    expect(await code(() => parseHello(body("e2e-hello-body", { v: 2 })))).toBe("bad_message");
    expect(await code(() => parseHello(body("e2e-hello-body", { commit: new Uint8Array(31) })))).toBe("bad_message");
    expect(await code(() => parseHello(body("e2e-hello-body", { nonce: "x".repeat(32) })))).toBe("bad_message");
    expect(parseHello(body("e2e-hello-body", { extra: 1 })).t).toBe("hello"); // unknown keys are ignored

    const initiator = async () => {
      const s = await startInitiator(fixedDh(X_I), ID_I, ID_R);
      s.state.nonce.set(N_I);
      return s.state;
    };
    const responder = async () => {
      const r = await respond(fixedDh(X_R), ID_R, ID_I, parseHello(body("e2e-hello-body")));
      r.state.nonce.set(N_R);
      return r.state;
    };
    const pMinus1 = toFixedBytes(P - 1n);
    // reply: malformed, then an invalid public value.
    expect(await code(initiatorFinish(fixedDh(X_I), await initiator(), body("e2e-reply-body", { pub: v("e2e-public-responder").subarray(1) })))).toBe("bad_message");
    expect(await code(initiatorFinish(fixedDh(X_I), await initiator(), body("e2e-reply-body", { pub: pMinus1 })))).toBe("bad_public");
    // reveal: malformed; a value that is not the committed one (checked before validity); a wrong MAC.
    expect(await code(responderFinish(fixedDh(X_R), await responder(), body("e2e-reveal-body", { confirm: new Uint8Array(16) })))).toBe("bad_message");
    expect(await code(responderFinish(fixedDh(X_R), await responder(), body("e2e-reveal-body", { pub: pMinus1 })))).toBe("bad_commit");
    expect(await code(responderFinish(fixedDh(X_R), await responder(), body("e2e-reveal-body", { confirm: v("e2e-confirm-responder") })))).toBe("bad_confirm");
    // confirm: malformed; the initiator's own MAC reflected back.
    const pending = async () => (await initiatorFinish(fixedDh(X_I), await initiator(), body("e2e-reply-body"))).pending;
    expect(await code(async () => initiatorConfirm(await pending(), body("e2e-confirm-body", { v: "1" })))).toBe("bad_message");
    expect(await code(async () => initiatorConfirm(await pending(), body("e2e-confirm-body", { confirm: v("e2e-confirm-initiator") })))).toBe("bad_confirm");
  });

  test("records I → R: chain keys, ciphertext, MAC, bodies (SendChain.seal with the vector IVs)", () => {
    const okm = v("e2e-hkdf-okm");
    const plain = v("e2e-record-plaintext");
    expect(hex(pack(PLAINTEXT))).toBe(hex(plain));
    expect(decodePayload(plain)).toEqual(PLAINTEXT);
    const chain = new SendChain(okm.slice(0, 32));
    let ck: Uint8Array = okm.slice(0, 32);
    for (const i of [0, 1]) {
      const encKey = v(`e2e-record-${i}-enc-key`);
      const macKey = v(`e2e-record-${i}-mac-key`);
      expect(hex(mac(ck, Uint8Array.of(1)))).toBe(hex(encKey));
      expect(hex(mac(ck, Uint8Array.of(2)))).toBe(hex(macKey));
      expect(hex(hmac(ck, Uint8Array.of(3)))).toBe(hex(v(`e2e-chain-key-${i + 1}`)));
      ck = v(`e2e-chain-key-${i + 1}`);

      const ct = v(`e2e-record-${i}-ct`);
      expect(hex(aesEncrypt(encKey, IVS[i]!, plain))).toBe(hex(ct));
      expect(ct.length).toBe(32); // a whole block of padding
      expect(hex(aesDecrypt(encKey, IVS[i]!, ct))).toBe(hex(plain));
      const input = v(`e2e-record-${i}-mac-input`);
      expect(hex(input)).toBe(hex(cat(L.rec, u64(i), IVS[i]!, ct)));
      expect(hex(mac(macKey, input))).toBe(hex(v(`e2e-record-${i}-mac`)));
      expect(hex(recordMac(macKey, i, IVS[i]!, ct))).toBe(hex(v(`e2e-record-${i}-mac`)));

      const rec = chain.seal(plain, IVS[i]);
      expect(rec.seq).toBe(i);
      expect(hex(rec.ct)).toBe(hex(ct));
      expect(hex(rec.mac)).toBe(hex(v(`e2e-record-${i}-mac`)));
      expect(hex(pack(rec))).toBe(hex(v(`e2e-record-${i}-body`)));
      expect(v(`e2e-record-${i}-body`).length).toBe(111);
    }
  });

  test("records: ReceiveChain.open of the vector bodies, and the sequence rules of §19.3", () => {
    const ck0 = () => v("e2e-hkdf-okm").slice(0, 32);
    const rec = (i: number, change: Record<string, unknown> = {}): Frame => ({ ...decodePayload(v(`e2e-record-${i}-body`)), ...change });
    const plain = hex(v("e2e-record-plaintext"));

    const inOrder = new ReceiveChain(ck0());
    for (const i of [0, 1]) {
      const r = inOrder.open(rec(i));
      expect(r.ok && hex(r.plaintext)).toBe(plain);
      expect(r.ok && r.skipped).toBe(0);
    }
    expect(inOrder.open(rec(0))).toEqual({ ok: false, reason: "replayed" });
    expect(inOrder.open(rec(1))).toEqual({ ok: false, reason: "replayed" });

    const skipping = new ReceiveChain(ck0());
    const r1 = skipping.open(rec(1));
    expect(r1.ok && hex(r1.plaintext)).toBe(plain);
    expect(r1.ok && r1.skipped).toBe(1);
    expect(skipping.open(rec(0))).toEqual({ ok: false, reason: "replayed" });

    // Failures leave the chain unchanged: the genuine record still opens afterwards.
    const careful = new ReceiveChain(ck0());
    const ct = new Uint8Array(v("e2e-record-0-ct"));
    ct[0]! ^= 1;
    expect(careful.open(rec(0, { ct }))).toEqual({ ok: false, reason: "tampered" });
    expect(careful.open(rec(0, { seq: 1 }))).toEqual({ ok: false, reason: "tampered" }); // seq is under the MAC
    expect(careful.open(rec(0, { seq: MAX_SKIP }))).toEqual({ ok: false, reason: "tampered" });
    expect(careful.open(rec(0, { seq: MAX_SKIP + 1 }))).toEqual({ ok: false, reason: "too_far" });
    expect(careful.open(rec(0, { iv: new Uint8Array(15) }))).toEqual({ ok: false, reason: "malformed" });
    expect(careful.open(rec(0, { ct: new Uint8Array(0) }))).toEqual({ ok: false, reason: "malformed" });
    expect(careful.open(rec(0, { ct: new Uint8Array(33) }))).toEqual({ ok: false, reason: "malformed" });
    expect(careful.open(rec(0, { v: 2 }))).toEqual({ ok: false, reason: "malformed" });
    expect(careful.open(rec(0, { seq: -1 }))).toEqual({ ok: false, reason: "malformed" });
    // A valid MAC over a ciphertext with bad padding is reported like a forgery.
    const encKey = v("e2e-record-0-enc-key");
    const unpadded = createCipheriv("aes-256-cbc", encKey, IVS[0]!).setAutoPadding(false);
    const badCt = new Uint8Array(Buffer.concat([unpadded.update(new Uint8Array(16).fill(0x41)), unpadded.final()]));
    const badMac = mac(v("e2e-record-0-mac-key"), L.rec, u64(0), IVS[0]!, badCt);
    expect(careful.open(rec(0, { ct: badCt, mac: badMac }))).toEqual({ ok: false, reason: "tampered" });
    const ok = careful.open(rec(0));
    expect(ok.ok && hex(ok.plaintext)).toBe(plain);
  });

  // The receiver keeps the chain keys it walked for a high seq (a forged record
  // with seq next + 1024 cost 1024 HMACs each time, found in review); these
  // mixes of forged and genuine records check that the kept keys are the right ones.
  test("records: forged records with high seqs between genuine ones, out to MAX_SKIP, leave every genuine record readable", () => {
    const key = new Uint8Array(32).fill(9);
    const send = new SendChain(key.slice());
    const recv = new ReceiveChain(key.slice());
    const sealed = Array.from({ length: 2 * MAX_SKIP + 702 }, (_, i) => send.seal(ascii(`record ${i}`)));
    const forged = (seq: number) => ({ ...sealed[0]!, seq, mac: new Uint8Array(32) });
    // [record, seq, expected]: the receiver's next seq is 1 + the last genuine one.
    const steps: [kind: "forged" | "genuine", seq: number, expected: string | number][] = [
      ["forged", MAX_SKIP, "tampered"], // walks CK_1 … CK_1024
      ["genuine", 0, 0],
      ["forged", 500, "tampered"],
      ["genuine", 30, 29],
      ["genuine", 31, 0],
      ["forged", 32 + MAX_SKIP, "tampered"],
      ["forged", 32 + MAX_SKIP + 1, "too_far"],
      ["genuine", 700, 668],
      ["genuine", 700 + MAX_SKIP, MAX_SKIP - 1],
      ["forged", 2 * MAX_SKIP + 700, "tampered"],
      ["genuine", 2 * MAX_SKIP + 700, MAX_SKIP - 1],
      ["genuine", 2 * MAX_SKIP + 701, 0],
    ];
    for (const [kind, seq, expected] of steps) {
      const r = recv.open(kind === "forged" ? forged(seq) : sealed[seq]!);
      const got: unknown = r.ok ? [Buffer.from(r.plaintext).toString(), r.skipped] : r.reason;
      expect({ kind, seq, got }).toEqual({ kind, seq, got: kind === "forged" ? expected : [`record ${seq}`, expected] });
    }
  });
});

// ---- Live: a client written from the document against the real chat client -----

const SECRET = ascii("protocol e2e doc test secret");

/** One side of the end-to-end layer, using only the document (and msgpack). */
class DocPeer {
  frames: Frame[] = [];
  private constructor(
    readonly link: Link,
    readonly id: string,
  ) {}

  static async join(port: number): Promise<DocPeer> {
    let peer: DocPeer | null = null;
    const early: Frame[] = [];
    const link = await joinRelay({ host: "127.0.0.1", port, secret: SECRET, watch: false, onFrame: (f) => (peer ? peer.frames : early).push(f) });
    peer = new DocPeer(link, link.id);
    peer.frames.push(...early);
    return peer;
  }

  /** The next end-to-end body from `from`, raw and decoded. */
  async next(from: string): Promise<{ raw: Uint8Array; m: Frame }> {
    const deadline = performance.now() + 10_000;
    for (;;) {
      const i = this.frames.findIndex((f) => f.t === "msg" && f.src === from);
      if (i >= 0) {
        const raw = new Uint8Array(this.frames.splice(i, 1)[0]!.body as Uint8Array);
        return { raw, m: decodePayload(raw) };
      }
      if (performance.now() > deadline) throw new Error(`no end-to-end message from ${from}; got ${JSON.stringify(this.frames.map((f) => f.t))}`);
      await Bun.sleep(5);
    }
  }

  send(to: string, body: Frame): void {
    this.link.send(to, pack(body));
  }
}

/** Session keys as §17.3 derives them. */
function docKeys(z: Uint8Array, th: Uint8Array) {
  const okm = new Uint8Array(hkdfSync("sha256", z, th, L.keys, 160));
  return {
    ckIR: okm.slice(0, 32),
    ckRI: okm.slice(32, 64),
    macI: mac(okm.subarray(64, 96), L.confirm, th),
    macR: mac(okm.subarray(96, 128), L.confirm, th),
    fp: okm.slice(128, 160),
  };
}
const docShort = (fp: Uint8Array) => hex(fp.subarray(0, 6)).match(/.{4}/g)!.join("-");

/** §19: seals the next record of a chain. */
function docSeal(chain: { ck: Uint8Array; seq: number }, plaintext: Uint8Array): Frame {
  const encKey = mac(chain.ck, Uint8Array.of(1));
  const macKey = mac(chain.ck, Uint8Array.of(2));
  chain.ck = mac(chain.ck, Uint8Array.of(3));
  const iv = new Uint8Array(randomBytes(16));
  const ct = aesEncrypt(encKey, iv, plaintext);
  const seq = chain.seq++;
  return { t: "rec", v: 1, seq, iv, ct, mac: mac(macKey, L.rec, u64(seq), iv, ct) };
}
/** §19.3, for in-order records only. */
function docOpen(chain: { ck: Uint8Array; seq: number }, m: Frame): Uint8Array {
  expect(m.seq).toBe(chain.seq);
  const macKey = mac(chain.ck, Uint8Array.of(2));
  expect(hex(m.mac as Uint8Array)).toBe(hex(mac(macKey, L.rec, u64(chain.seq), m.iv as Uint8Array, m.ct as Uint8Array)));
  const plain = aesDecrypt(mac(chain.ck, Uint8Array.of(1)), m.iv as Uint8Array, m.ct as Uint8Array);
  chain.ck = mac(chain.ck, Uint8Array.of(3));
  chain.seq++;
  return plain;
}

/** `vec` with each [from, to] byte string (same length) replaced once; asserts each is found. */
function substitute(vec: Uint8Array, ...pairs: [Uint8Array, Uint8Array][]): string {
  let h = hex(vec);
  for (const [from, to] of pairs) {
    expect(to.length).toBe(from.length);
    expect(h.includes(hex(from))).toBe(true);
    h = h.replace(hex(from), hex(to));
  }
  return h;
}

const docValid = (y: Uint8Array) => y.length === 256 && big(y) > 1n && big(y) < DOC_P - 1n && modpow(big(y), DOC_Q, DOC_P) === 1n;
const randomExponent = () => new Uint8Array(randomBytes(32));

describe("live: a client written from the document talks to the real chat client", () => {
  let relay: Relay;
  let dh: DhEngine;
  let chat: ChatClient;
  const events: ChatEvent[] = [];
  beforeAll(async () => {
    relay = startRelay({ host: "127.0.0.1", port: 0, secret: SECRET, log: { info() {}, warn() {}, debug() {} } });
    dh = startDhEngine();
    chat = await startChat({ host: "127.0.0.1", port: relay.port, secret: SECRET, dh, onEvent: (e) => void events.push(e) });
  });
  afterAll(async () => {
    await chat.close();
    dh.close();
    await relay.stop();
  });
  const waitEvent = async <T extends ChatEvent>(match: (e: ChatEvent) => e is T): Promise<T> => {
    const deadline = performance.now() + 10_000;
    for (;;) {
      const i = events.findIndex(match);
      if (i >= 0) return events.splice(i, 1)[0] as T;
      if (performance.now() > deadline) throw new Error(`event not seen; got ${JSON.stringify(events)}`);
      await Bun.sleep(5);
    }
  };

  test("the real client initiates; the document's responder completes it and exchanges records", async () => {
    const b = await DocPeer.join(relay.port);
    const connected = chat.connect(b.id);

    // hello: exactly the documented layout, with this exchange's commitment and nonce.
    const hello = await b.next(chat.id);
    const commit = hello.m.commit as Uint8Array;
    const nI = hello.m.nonce as Uint8Array;
    expect(hex(hello.raw)).toBe(substitute(v("e2e-hello-body"), [v("e2e-commitment"), commit], [N_I, nI]));

    const xR = randomExponent();
    const yR = bytes256(modpow(2n, big(xR), DOC_P));
    const nR = new Uint8Array(randomBytes(32));
    b.send(chat.id, { t: "reply", v: 1, pub: yR, nonce: nR });

    const reveal = await b.next(chat.id);
    const yI = reveal.m.pub as Uint8Array;
    expect(hex(reveal.raw)).toBe(substitute(v("e2e-reveal-body"), [v("e2e-public-initiator"), yI], [v("e2e-confirm-initiator"), reveal.m.confirm as Uint8Array]));
    expect(hex(sha256(L.commit, yI))).toBe(hex(commit));
    expect(docValid(yI)).toBe(true);
    const z = bytes256(modpow(big(yI), big(xR), DOC_P));
    const th = sha256(L.transcript, Uint8Array.of(1, 8), ascii(chat.id), Uint8Array.of(8), ascii(b.id), nI, nR, yI, yR);
    const k = docKeys(z, th);
    expect(hex(reveal.m.confirm as Uint8Array)).toBe(hex(k.macI));
    b.send(chat.id, { t: "confirm", v: 1, confirm: k.macR });

    await connected;
    const established = await waitEvent((e): e is Extract<ChatEvent, { event: "session" }> => e.event === "session" && e.peer === b.id);
    expect(established).toMatchObject({ state: "established", fingerprint: docShort(k.fp), verified: false });
    expect(chat.fingerprint(b.id, true)).toBe(hex(k.fp).match(/.{4}/g)!.join(" "));

    // A record from the real client, opened as §19 says.
    const fromI = { ck: k.ckIR, seq: 0 };
    chat.sendText(b.id, "hi");
    const rec = await b.next(chat.id);
    expect(hex(rec.raw)).toBe(
      substitute(v("e2e-record-0-body"), [IVS[0]!, rec.m.iv as Uint8Array], [v("e2e-record-0-ct"), rec.m.ct as Uint8Array], [v("e2e-record-0-mac"), rec.m.mac as Uint8Array]),
    );
    expect(hex(docOpen(fromI, rec.m))).toBe(hex(v("e2e-record-plaintext")));

    // Records to the real client, sealed as §19 says: shown in order; a replay is rejected.
    const toI = { ck: k.ckRI, seq: 0 };
    const first = docSeal(toI, pack({ t: "text", text: "hello from the document" }));
    b.send(chat.id, first);
    expect(await waitEvent((e): e is Extract<ChatEvent, { event: "message" }> => e.event === "message")).toEqual({
      event: "message",
      from: b.id,
      text: "hello from the document",
      broadcast: false,
      verified: false,
    });
    b.send(chat.id, first);
    expect((await waitEvent((e): e is Extract<ChatEvent, { event: "error" }> => e.event === "error")).code).toBe("replayed");
    docSeal(toI, pack({ t: "text", text: "never sent" }));
    b.send(chat.id, docSeal(toI, pack({ t: "text", text: "after a gap" })));
    expect((await waitEvent((e): e is Extract<ChatEvent, { event: "error" }> => e.event === "error")).code).toBe("lost");
    expect((await waitEvent((e): e is Extract<ChatEvent, { event: "message" }> => e.event === "message")).text).toBe("after a gap");
    b.link.close();
    await waitEvent((e): e is Extract<ChatEvent, { event: "session" }> => e.event === "session" && e.peer === b.id && e.state === "closed").catch(() => {});
  });

  test("the document's initiator starts; the real client responds; a second exchange is announced as rekeyed", async () => {
    const a = await DocPeer.join(relay.port);
    const run = async () => {
      const xI = randomExponent();
      const yI = bytes256(modpow(2n, big(xI), DOC_P));
      const nI = new Uint8Array(randomBytes(32));
      a.send(chat.id, { t: "hello", v: 1, commit: sha256(L.commit, yI), nonce: nI });

      const reply = await a.next(chat.id);
      const yR = reply.m.pub as Uint8Array;
      const nR = reply.m.nonce as Uint8Array;
      expect(hex(reply.raw)).toBe(substitute(v("e2e-reply-body"), [v("e2e-public-responder"), yR], [N_R, nR]));
      expect(docValid(yR)).toBe(true);
      const z = bytes256(modpow(big(yR), big(xI), DOC_P));
      const th = sha256(L.transcript, Uint8Array.of(1, 8), ascii(a.id), Uint8Array.of(8), ascii(chat.id), nI, nR, yI, yR);
      const k = docKeys(z, th);
      a.send(chat.id, { t: "reveal", v: 1, pub: yI, confirm: k.macI });

      const confirm = await a.next(chat.id);
      expect(hex(confirm.raw)).toBe(substitute(v("e2e-confirm-body"), [v("e2e-confirm-responder"), k.macR]));
      return k;
    };

    const k1 = await run();
    const first = await waitEvent((e): e is Extract<ChatEvent, { event: "session" }> => e.event === "session" && e.peer === a.id);
    expect(first).toMatchObject({ state: "established", fingerprint: docShort(k1.fp) });
    chat.verify(a.id);

    // The real client (responder) sends on the R → I chain.
    chat.sendText(a.id, "to the initiator");
    const rec = await a.next(chat.id);
    expect(new TextDecoder().decode(docOpen({ ck: k1.ckRI, seq: 0 }, rec.m))).toContain("to the initiator");

    const k2 = await run();
    const second = await waitEvent((e): e is Extract<ChatEvent, { event: "session" }> => e.event === "session" && e.peer === a.id);
    expect(second).toMatchObject({ state: "rekeyed", fingerprint: docShort(k2.fp), verified: false });
    expect(docShort(k2.fp)).not.toBe(docShort(k1.fp));
    expect(chat.peers().find((p) => p.id === a.id)).toMatchObject({ session: "established", verified: false });

    // Records now use the new chains, from seq 0.
    a.send(chat.id, docSeal({ ck: k2.ckIR, seq: 0 }, pack({ t: "text", text: "under the new keys" })));
    expect((await waitEvent((e): e is Extract<ChatEvent, { event: "message" }> => e.event === "message")).text).toBe("under the new keys");
    a.link.close();
  });

  test("simultaneous hello: the smaller ID stays initiator (§18)", async () => {
    const c = await DocPeer.join(relay.port);
    const xC = randomExponent();
    const yC = bytes256(modpow(2n, big(xC), DOC_P));
    const nC = new Uint8Array(randomBytes(32));
    const connected = chat.connect(c.id);
    const theirHello = await c.next(chat.id);
    c.send(chat.id, { t: "hello", v: 1, commit: sha256(L.commit, yC), nonce: nC });
    if (c.id < chat.id) {
      // We keep the initiator role: the real client must abandon its hello and reply to ours.
      const reply = await c.next(chat.id);
      expect(reply.m.t).toBe("reply");
      const yR = reply.m.pub as Uint8Array;
      const nR = reply.m.nonce as Uint8Array;
      const k = docKeys(bytes256(modpow(big(yR), big(xC), DOC_P)), sha256(L.transcript, Uint8Array.of(1, 8), ascii(c.id), Uint8Array.of(8), ascii(chat.id), nC, nR, yC, yR));
      c.send(chat.id, { t: "reveal", v: 1, pub: yC, confirm: k.macI });
      expect(hex((await c.next(chat.id)).m.confirm as Uint8Array)).toBe(hex(k.macR));
      await connected;
      expect(chat.fingerprint(c.id)).toBe(docShort(k.fp));
    } else {
      // The real client keeps the initiator role and ignores our hello: we answer its hello.
      const xR = randomExponent(); // a fresh exponent for the exchange we now answer
      const yR = bytes256(modpow(2n, big(xR), DOC_P));
      const nR = new Uint8Array(randomBytes(32));
      c.send(chat.id, { t: "reply", v: 1, pub: yR, nonce: nR });
      const reveal = await c.next(chat.id);
      expect(reveal.m.t).toBe("reveal");
      const yI = reveal.m.pub as Uint8Array;
      expect(hex(sha256(L.commit, yI))).toBe(hex(theirHello.m.commit as Uint8Array));
      const nI = theirHello.m.nonce as Uint8Array;
      const k = docKeys(bytes256(modpow(big(yI), big(xR), DOC_P)), sha256(L.transcript, Uint8Array.of(1, 8), ascii(chat.id), Uint8Array.of(8), ascii(c.id), nI, nR, yI, yR));
      expect(hex(reveal.m.confirm as Uint8Array)).toBe(hex(k.macI));
      c.send(chat.id, { t: "confirm", v: 1, confirm: k.macR });
      await connected;
      expect(chat.fingerprint(c.id)).toBe(docShort(k.fp));
    }
    c.link.close();
  });
});
