// docs/PROTOCOL.md and the code must not drift: this file reads the relay
// layer's test vectors, the error table, the ID normalisation table and the
// default limits from the document and checks them against what the code
// produces, both with the encoding functions directly and against a live relay
// on loopback. The end-to-end layer's vectors (named e2e-*) are checked by
// tests/protocol-e2e-doc.test.ts.
import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { createHmac } from "node:crypto";
import type { Socket } from "bun";
import { decodePayload, encodeFrame, FrameDecoder, type Frame } from "../lib/wire/frame.ts";
import {
  clientProof,
  DEFAULT_PORT,
  ERRORS,
  ID_ALPHABET,
  msgFrameHeader,
  NONCE_BYTES,
  normalizeId,
  PROOF_BYTES,
  RELAY_PROTOCOL_VERSION,
  relayProof,
} from "../lib/relay/protocol.ts";
import { MAX_LISTED, RELAY_DEFAULTS, startRelay, type Relay } from "../lib/relay/server.ts";
import { loadSecret, secretBytes } from "../lib/secret/secret.ts";
import { cat, doc, docVector, hex, listedVectors } from "./doc-vectors.ts";

// ---- Reading the document ----------------------------------------------------

/** Rows of the table after `<!-- table: name -->`, as trimmed cells, header and separator dropped. */
function table(name: string): string[][] {
  const marker = `<!-- table: ${name} -->`;
  const at = doc.indexOf(marker);
  if (at < 0) throw new Error(`no table ${name} in docs/PROTOCOL.md`);
  const lines = doc.slice(at + marker.length).trimStart().split("\n");
  const rows: string[][] = [];
  for (const line of lines) {
    if (!line.startsWith("|")) break;
    rows.push(line.slice(1, line.trimEnd().length - 1).split("|").map((c) => c.trim()));
  }
  return rows.slice(2);
}

const unquote = (cell: string) => /^`(.*)`$/.exec(cell)?.[1] ?? cell;

/** `bytes` with every occurrence of `from` (same length as `to`) replaced by `to`. */
function replaceBytes(bytes: Uint8Array, from: Uint8Array, to: Uint8Array): Uint8Array {
  expect(to.length).toBe(from.length);
  const out = new Uint8Array(bytes);
  let found = 0;
  for (let i = 0; i + from.length <= out.length; i++) {
    if (from.every((b, j) => out[i + j] === b)) {
      out.set(to, i);
      found++;
    }
  }
  expect(found).toBeGreaterThan(0);
  return out;
}

// ---- The document's inputs ---------------------------------------------------------

const SECRET = "correct horse battery staple";
const RELAY_NONCE = Uint8Array.from({ length: 32 }, (_, i) => i);
const CLIENT_NONCE = Uint8Array.from({ length: 32 }, (_, i) => 0x20 + i);
const ID = "abcdefgh";
const BODY = Uint8Array.of(1, 2, 3);
const ascii = (s: string) => new TextEncoder().encode(s);

/** Every vector the tests below compare with the code; the document must have exactly these. */
const VECTORS = [
  "challenge-frame",
  "client-proof-input",
  "client-proof",
  "relay-proof-input",
  "relay-proof",
  "join-frame",
  "welcome-frame",
  "send-frame",
  "bulk-frame",
  "msg-frame",
  "msg-header-300",
  "msg-header-70000",
  "error-unknown-peer",
  "ping-frame",
  "pong-frame",
  "list-frame",
  "peers-frame",
  "joined-frame",
  "left-frame",
  "busy-frame",
  "ready-frame",
];
const v = listedVectors(VECTORS);

describe("test vectors in docs/PROTOCOL.md", () => {
  test("challenge frame", () => {
    expect(hex(encodeFrame({ t: "challenge", v: 1, nonce: RELAY_NONCE, open: false }))).toBe(hex(v("challenge-frame")));
  });

  test("join proofs", () => {
    const secret = secretBytes(loadSecret(undefined, { SMTS_SECRET: `  ${SECRET}\n` })!);
    expect(secret).toEqual(ascii(SECRET));
    const cp = v("client-proof");
    const rp = v("relay-proof");
    expect(hex(clientProof(secret, RELAY_NONCE, CLIENT_NONCE))).toBe(hex(cp));
    expect(hex(relayProof(secret, RELAY_NONCE, CLIENT_NONCE))).toBe(hex(rp));
    // The documented HMAC inputs, checked with a plain HMAC.
    const cIn = v("client-proof-input");
    const rIn = v("relay-proof-input");
    expect(hex(cIn)).toBe(hex(cat(ascii("smts/1 join client"), RELAY_NONCE, CLIENT_NONCE)));
    expect(hex(rIn)).toBe(hex(cat(ascii("smts/1 join relay"), RELAY_NONCE, CLIENT_NONCE)));
    expect(createHmac("sha256", SECRET).update(cIn).digest("hex")).toBe(hex(cp));
    expect(createHmac("sha256", SECRET).update(rIn).digest("hex")).toBe(hex(rp));
  });

  test("join and welcome frames", () => {
    const secret = secretBytes(SECRET);
    const proof = clientProof(secret, RELAY_NONCE, CLIENT_NONCE);
    expect(hex(encodeFrame({ t: "join", v: 1, proof, nonce: CLIENT_NONCE, watch: true }))).toBe(hex(v("join-frame")));
    const welcome = { t: "welcome", v: 1, id: ID, maxFrame: 262144, bulk: true, proof: relayProof(secret, RELAY_NONCE, CLIENT_NONCE) };
    expect(hex(encodeFrame(welcome))).toBe(hex(v("welcome-frame")));
  });

  test("send and msg frames", () => {
    expect(hex(encodeFrame({ t: "send", to: ID, body: BODY }))).toBe(hex(v("send-frame")));
    expect(hex(encodeFrame({ t: "bulk", to: ID, body: BODY }))).toBe(hex(v("bulk-frame")));
    const msg = cat(msgFrameHeader(ID, BODY.length), BODY);
    expect(hex(msg)).toBe(hex(v("msg-frame")));
    expect(hex(msgFrameHeader(ID, 300))).toBe(hex(v("msg-header-300")));
    expect(hex(msgFrameHeader(ID, 70000))).toBe(hex(v("msg-header-70000")));
  });

  test("the hand-built msg header equals a msgpack encoder's output, at every bin size", () => {
    for (const n of [0, 1, 255, 256, 65535, 65536, 70000]) {
      const body = new Uint8Array(n).fill(0x5a);
      const byHand = cat(msgFrameHeader(ID, n), body);
      expect(hex(byHand)).toBe(hex(encodeFrame({ t: "msg", src: ID, body })));
      expect(decodePayload(byHand.subarray(4))).toEqual({ t: "msg", src: ID, body: Buffer.from(body) });
    }
  });

  test("error and small frames", () => {
    const err = { t: "error", code: "unknown_peer", message: ERRORS.unknown_peer.text, peer: ID, ref: 7 };
    expect(hex(encodeFrame(err))).toBe(hex(v("error-unknown-peer")));
    expect(hex(encodeFrame({ t: "ping" }))).toBe(hex(v("ping-frame")));
    expect(hex(encodeFrame({ t: "pong" }))).toBe(hex(v("pong-frame")));
    expect(hex(encodeFrame({ t: "list" }))).toBe(hex(v("list-frame")));
    expect(hex(encodeFrame({ t: "peers", ids: [ID] }))).toBe(hex(v("peers-frame")));
    expect(hex(encodeFrame({ t: "joined", id: ID }))).toBe(hex(v("joined-frame")));
    expect(hex(encodeFrame({ t: "left", id: ID }))).toBe(hex(v("left-frame")));
    expect(hex(encodeFrame({ t: "busy", peer: ID }))).toBe(hex(v("busy-frame")));
    expect(hex(encodeFrame({ t: "ready", peer: ID }))).toBe(hex(v("ready-frame")));
  });

  test("the document has exactly the relay-layer vectors checked here", () => {
    const all = [...doc.matchAll(/<!-- vector: ([a-z0-9-]+) -->/g)].map((m) => m[1]!).filter((n) => !n.startsWith("e2e-"));
    expect([...all].sort()).toEqual([...VECTORS].sort());
    for (const name of all) docVector(name); // each one parses
  });
});

describe("tables and constants in docs/PROTOCOL.md", () => {
  test("error codes: same codes, fatality and default text as ERRORS", () => {
    const rows = table("errors");
    const fromDoc = Object.fromEntries(rows.map((r) => [unquote(r[0]!), { fatal: r[1] === "yes", text: unquote(r[2]!) }]));
    const fromCode = Object.fromEntries(Object.entries(ERRORS).map(([code, e]) => [code, { fatal: e.fatal, text: e.text }]));
    expect(fromDoc).toEqual(fromCode);
  });

  test("ID normalisation examples", () => {
    const rows = table("normalize");
    expect(rows.length).toBeGreaterThan(5);
    for (const [input, result] of rows) {
      expect(normalizeId(JSON.parse(unquote(input!)))).toBe(JSON.parse(unquote(result!)));
    }
  });

  test("default limits", () => {
    const rows = table("defaults");
    const fromDoc = Object.fromEntries(rows.map((r) => [unquote(r[0]!), Number(r[1])]));
    const { host: _host, ...numeric } = RELAY_DEFAULTS;
    expect(fromDoc).toEqual(numeric);
    expect(fromDoc.port).toBe(DEFAULT_PORT);
  });

  test("constants quoted in the text", () => {
    expect(doc).toContain(ID_ALPHABET);
    expect(doc).toContain(`relay protocol version **${RELAY_PROTOCOL_VERSION}**`);
    expect(doc).toContain(`default port **${DEFAULT_PORT}**`);
    expect(NONCE_BYTES).toBe(32);
    expect(PROOF_BYTES).toBe(32);
  });

  test("the peers cap and the largest peers frame", () => {
    expect(doc).toContain(`at most **${MAX_LISTED}**`);
    const ids = Array.from({ length: MAX_LISTED }, (_, i) => ID_ALPHABET[i % 32]!.repeat(8));
    const largest = encodeFrame({ t: "peers", ids, more: true }).length - 4;
    const flat = doc.replace(/\s+/g, " ");
    expect(flat).toContain(`a \`peers\` frame at most ${largest} bytes (§5.5)`);
    expect(flat).toContain(`at most ${largest} bytes (${MAX_LISTED} × 9 bytes of IDs plus ${largest - 9 * MAX_LISTED} bytes)`);
    expect(largest).toBeLessThanOrEqual(65536); // fits the reference client's pre-welcome limit
  });
});

// ---- Against a live relay ------------------------------------------------------------------

interface RawClient {
  /** The next complete frame from the relay, length prefix included. */
  next(): Promise<Uint8Array>;
  write(bytes: Uint8Array): void;
  close(): void;
}

async function rawConnect(port: number): Promise<RawClient> {
  const decoder = new FrameDecoder(1 << 20);
  const frames: Uint8Array[] = [];
  const waiters: ((f: Uint8Array) => void)[] = [];
  const socket: Socket<undefined> = await Bun.connect({
    hostname: "127.0.0.1",
    port,
    socket: {
      data(_s, chunk) {
        for (const payload of decoder.push(chunk)) {
          const prefix = new Uint8Array(4);
          new DataView(prefix.buffer).setUint32(0, payload.length);
          const frame = cat(prefix, payload);
          const w = waiters.shift();
          if (w) w(frame);
          else frames.push(frame);
        }
      },
    },
  });
  return {
    next() {
      const f = frames.shift();
      if (f) return Promise.resolve(f);
      return new Promise<Uint8Array>((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error("no frame from relay within 5 s")), 5000);
        waiters.push((frame) => (clearTimeout(timer), resolve(frame)));
      });
    },
    write(bytes) {
      expect(socket.write(bytes)).toBe(bytes.length);
    },
    close() {
      socket.end();
    },
  };
}

describe("a live relay sends the documented bytes", () => {
  const secret = secretBytes(SECRET);
  let relay: Relay;
  beforeAll(() => {
    const quiet = { info() {}, warn() {}, debug() {} };
    relay = startRelay({ host: "127.0.0.1", port: 0, secret, log: quiet });
  });
  afterAll(async () => {
    await relay.stop();
  });

  /** Connects and joins, checking challenge and welcome against the vectors; returns the client and its ID. */
  async function join(): Promise<{ c: RawClient; id: string }> {
    const c = await rawConnect(relay.port);
    const challenge = await c.next();
    const relayNonce = decodePayload(challenge.subarray(4)).nonce as Uint8Array;
    expect(hex(challenge)).toBe(hex(replaceBytes(docVector("challenge-frame"), RELAY_NONCE, relayNonce)));

    const proof = clientProof(secret, relayNonce, CLIENT_NONCE);
    const joinFrame = encodeFrame({ t: "join", v: 1, proof, nonce: CLIENT_NONCE, watch: true });
    expect(hex(joinFrame)).toBe(hex(replaceBytes(docVector("join-frame"), clientProof(secret, RELAY_NONCE, CLIENT_NONCE), proof)));
    c.write(joinFrame);

    const welcome = await c.next();
    const w: Frame = decodePayload(welcome.subarray(4));
    const id = w.id as string;
    let expected = replaceBytes(docVector("welcome-frame"), ascii(ID), ascii(id));
    expected = replaceBytes(expected, relayProof(secret, RELAY_NONCE, CLIENT_NONCE), relayProof(secret, relayNonce, CLIENT_NONCE));
    expect(hex(welcome)).toBe(hex(expected));
    return { c, id };
  }

  test("challenge, join, welcome, joined, send → msg, unknown_peer, ping, list, left", async () => {
    const a = await join();
    const b = await join();
    // The next frame, after any `joined` of this client or of one that joined before it:
    // a presence batch may tell of joins just before the watcher's own (§5.6).
    const joinedFrame = (id: string) => hex(replaceBytes(docVector("joined-frame"), ascii(ID), ascii(id)));
    const next = async (x: { c: RawClient; id: string }) => {
      const old = [joinedFrame(a.id), ...(x === b ? [joinedFrame(b.id)] : [])];
      for (;;) {
        const f = await x.c.next();
        if (!old.includes(hex(f))) return f;
      }
    };
    expect(hex(await next(a))).toBe(hex(replaceBytes(docVector("joined-frame"), ascii(ID), ascii(b.id))));

    b.c.write(replaceBytes(docVector("send-frame"), ascii(ID), ascii(a.id)));
    expect(hex(await next(a))).toBe(hex(replaceBytes(docVector("msg-frame"), ascii(ID), ascii(b.id))));
    b.c.write(replaceBytes(docVector("bulk-frame"), ascii(ID), ascii(a.id)));
    expect(hex(await next(a))).toBe(hex(replaceBytes(docVector("msg-frame"), ascii(ID), ascii(b.id))));

    // "abcdefgh" is (with overwhelming probability) not online.
    b.c.write(encodeFrame({ t: "send", to: ID, body: BODY, ref: 7 }));
    expect(hex(await next(b))).toBe(hex(docVector("error-unknown-peer")));

    b.c.write(docVector("ping-frame"));
    expect(hex(await next(b))).toBe(hex(docVector("pong-frame")));

    b.c.write(docVector("list-frame"));
    expect(hex(await next(b))).toBe(hex(replaceBytes(docVector("peers-frame"), ascii(ID), ascii(a.id))));

    b.c.close();
    expect(hex(await next(a))).toBe(hex(replaceBytes(docVector("left-frame"), ascii(ID), ascii(b.id))));
    a.c.close();
  });

  test("frames sent right behind a valid join, in the same write, are judged by maxFrame (§2, §4)", async () => {
    const c = await rawConnect(relay.port);
    const relayNonce = decodePayload((await c.next()).subarray(4)).nonce as Uint8Array;
    const joinFrame = encodeFrame({ t: "join", v: 1, proof: clientProof(secret, relayNonce, CLIENT_NONCE), nonce: CLIENT_NONCE, watch: false });
    const body = new Uint8Array(4000).fill(7); // far above the 1024-byte pre-join limit
    // Sent to a placeholder first, then to ourselves once we know our ID: both must pass the size check.
    c.write(cat(joinFrame, encodeFrame({ t: "send", to: ID, body, ref: 1 }), docVector("ping-frame")));
    const welcome = decodePayload((await c.next()).subarray(4));
    expect(welcome.t).toBe("welcome");
    expect(decodePayload((await c.next()).subarray(4))).toMatchObject({ t: "error", code: "unknown_peer", peer: ID, ref: 1 });
    expect(hex(await c.next())).toBe(hex(docVector("pong-frame")));
    c.write(encodeFrame({ t: "send", to: welcome.id as string, body }));
    const msg = await c.next();
    expect(hex(msg)).toBe(hex(cat(msgFrameHeader(welcome.id as string, body.length), body)));
    c.close();
  });

  test("a map as the type is an unknown type: non-fatal bad_request (§3, §5)", async () => {
    const a = await join();
    // Presence frames about other tests' clients may arrive in between.
    const next = async (): Promise<Frame> => {
      for (;;) {
        const f = decodePayload((await a.c.next()).subarray(4));
        if (f.t !== "joined" && f.t !== "left") return f;
      }
    };
    a.c.write(encodeFrame({ t: { toString: 1 } }));
    expect(await next()).toEqual({ t: "error", code: "bad_request", message: "unknown frame type (object)" });
    a.c.write(encodeFrame({ t: "mystery" }));
    expect((await next()).message).toBe("unknown frame type mystery");
    a.c.write(docVector("ping-frame"));
    expect(await next()).toEqual({ t: "pong" });
    a.c.close();
  });
});
