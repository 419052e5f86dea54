// The chat client without any user interface: joins a relay, tracks online
// peers, runs key exchanges, and sends and receives encrypted records.
// Everything the user should learn is emitted as a ChatEvent (the NDJSON
// contract of brief §3), so the terminal UI and --json mode share one core.
//
// Promises: nothing is shown from a peer unless it arrived in a record that
// verified under that peer's session; a failed check is reported as an
// `error` event naming the peer and never desynchronises the session; a peer
// that leaves has its session and keys erased; a new key exchange with a peer
// that already has a session is always announced with the new fingerprint.
import type { DhEngine } from "../crypto/dh.ts";
import { wipe } from "../crypto/primitives.ts";
import { joinRelay, type Link, type LinkClose } from "../link/relay-link.ts";
import { isId } from "../relay/protocol.ts";
import {
  HandshakeError,
  initiatorConfirm,
  initiatorFinish,
  longFingerprint,
  parseHello,
  respond,
  responderFinish,
  shortFingerprint,
  startInitiator,
  type InitiatorState,
  type PendingConfirm,
  type ResponderState,
  type SessionKeys,
} from "../session/handshake.ts";
import { ReceiveChain, SendChain } from "../session/records.ts";
import { decodePayload, FrameError, safeText, type Frame } from "../wire/frame.ts";
import { pack } from "../wire/msgpack.ts";

export type ChatEvent =
  | { event: "ready"; id: string }
  | { event: "peer"; id: string; online: boolean }
  | { event: "session"; peer: string; state: "established" | "rekeyed" | "closed" | "failed"; fingerprint?: string; verified?: boolean; reason?: string }
  | { event: "message"; from: string; text: string; broadcast: boolean }
  | { event: "list"; peers: PeerInfo[] }
  | { event: "error"; code: string; message: string; peer?: string }
  | { event: "disconnected"; code: string; message: string };

export interface PeerInfo {
  id: string;
  online: boolean;
  session: "none" | "connecting" | "established";
  fingerprint?: string;
  verified?: boolean;
}

export class ChatError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly peer?: string,
  ) {
    super(message);
  }
}

interface Session {
  peer: string;
  send: SendChain;
  receive: ReceiveChain;
  fingerprint: Uint8Array;
  verified: boolean;
  /** Record contents queued in this tick; sealed together (see sealQueued). */
  queued: Frame[];
  queuedBytes: number;
}

/** A batch record carries at most this much content, so it stays well inside a frame. */
const BATCH_BYTES = 32 * 1024;

type Handshake =
  | { role: "initiator"; step: "hello"; state: InitiatorState }
  | { role: "initiator"; step: "confirm"; pending: PendingConfirm }
  | { role: "responder"; step: "reveal"; state: ResponderState };

interface Waiter {
  resolve(): void;
  reject(err: ChatError): void;
}

const HANDSHAKE_TIMEOUT_MS = 15_000;

export interface ChatOptions {
  host: string;
  port: number;
  secret: Uint8Array | null;
  dh: DhEngine;
  onEvent: (e: ChatEvent) => void;
}

export interface ChatClient {
  readonly id: string;
  /** Starts (or joins) a key exchange; resolves when the session is established. */
  connect(peer: string): Promise<void>;
  /** Resolves once a session with `peer` is established (whoever started it). */
  waitSession(peer: string, timeoutMs: number): Promise<void>;
  sendText(peer: string, text: string): void;
  peers(): PeerInfo[];
  verify(peer: string): void;
  fingerprint(peer: string, long?: boolean): string | null;
  hasSession(peer: string): boolean;
  /** Resolves when everything queued has been handed to the socket. */
  flush(): Promise<void>;
  close(): Promise<void>;
  readonly closed: Promise<LinkClose>;
}

export async function startChat(opts: ChatOptions): Promise<ChatClient> {
  const { dh, onEvent: emit } = opts;
  const online = new Set<string>();
  const sessions = new Map<string, Session>();
  const handshakes = new Map<string, Handshake & { timer: Timer }>();
  const waiters = new Map<string, Waiter[]>();
  let link: Link;
  let closing = false;

  const sendE2E = (peer: string, frame: Frame) => link.send(peer, pack(frame));

  // Contents sent to one peer in the same event-loop tick share one record:
  // one chain step, one MAC and one relay frame for the lot. A lone message
  // is sealed on its own, so this changes nothing for interactive use and
  // cuts per-message cost several-fold for scripts that send in bulk.
  function queueContent(s: Session, item: Frame, bytes: number): void {
    if (s.queuedBytes + bytes > BATCH_BYTES) sealQueued(s);
    s.queued.push(item);
    s.queuedBytes += bytes;
    if (s.queued.length === 1) queueMicrotask(() => sealQueued(s));
  }

  function sealQueued(s: Session): void {
    if (!s.queued.length || sessions.get(s.peer) !== s) return;
    const items = s.queued;
    s.queued = [];
    s.queuedBytes = 0;
    const plain = pack(items.length === 1 ? items[0] : { t: "batch", items });
    link.send(s.peer, pack(s.send.seal(plain)));
  }

  function settle(peer: string, err?: ChatError): void {
    const list = waiters.get(peer);
    if (!list) return;
    waiters.delete(peer);
    for (const w of list) (err ? w.reject(err) : w.resolve());
  }

  function endHandshake(peer: string): void {
    const h = handshakes.get(peer);
    if (!h) return;
    clearTimeout(h.timer);
    handshakes.delete(peer);
    if (h.step === "hello" || h.step === "reveal") dh.forget(h.state.kp.handle);
    if (h.step === "confirm") wipe(h.pending.keys.sendChain, h.pending.keys.receiveChain);
  }

  function setHandshake(peer: string, h: Handshake): void {
    const old = handshakes.get(peer);
    if (old) clearTimeout(old.timer);
    const timer = setTimeout(() => failHandshake(peer, new ChatError("timeout", `key exchange with ${peer} timed out`, peer)), HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    handshakes.set(peer, { ...h, timer });
  }

  function failHandshake(peer: string, err: ChatError): void {
    endHandshake(peer);
    emit({ event: "session", peer, state: "failed", reason: err.message });
    settle(peer, err);
  }

  function establish(peer: string, keys: SessionKeys): void {
    const h = handshakes.get(peer);
    if (h) clearTimeout(h.timer), handshakes.delete(peer); // its keys are the ones we now use
    const old = sessions.get(peer);
    if (old) sealQueued(old), old.send.erase(), old.receive.erase();
    sessions.set(peer, {
      peer,
      send: new SendChain(keys.sendChain),
      receive: new ReceiveChain(keys.receiveChain),
      fingerprint: keys.fingerprint,
      verified: false,
      queued: [],
      queuedBytes: 0,
    });
    emit({ event: "session", peer, state: old ? "rekeyed" : "established", fingerprint: shortFingerprint(keys.fingerprint), verified: false });
    settle(peer);
  }

  function dropSession(peer: string, reason: string): void {
    const s = sessions.get(peer);
    endHandshake(peer);
    settle(peer, new ChatError("peer_left", `${peer} ${reason}`, peer));
    if (!s) return;
    s.send.erase();
    s.receive.erase();
    wipe(s.fingerprint);
    sessions.delete(peer);
    emit({ event: "session", peer, state: "closed", reason });
  }

  async function onHandshakeFrame(peer: string, m: Frame): Promise<void> {
    const h = handshakes.get(peer);
    switch (m.t) {
      case "hello": {
        const hello = parseHello(m);
        if (h?.role === "initiator" && h.step === "hello") {
          // Both sides ran /connect at once: the smaller ID stays initiator.
          if (link.id < peer) return;
          endHandshake(peer);
        } else if (h) {
          endHandshake(peer);
        }
        const { state, reply } = await respond(dh, link.id, peer, hello);
        setHandshake(peer, { role: "responder", step: "reveal", state });
        sendE2E(peer, reply);
        return;
      }
      case "reply": {
        if (h?.role !== "initiator" || h.step !== "hello") throw new HandshakeError("bad_message", "unexpected reply");
        const state = h.state;
        handshakes.delete(peer); // the key pair is consumed below
        clearTimeout(h.timer);
        const { reveal, pending } = await initiatorFinish(dh, state, m);
        setHandshake(peer, { role: "initiator", step: "confirm", pending });
        sendE2E(peer, reveal);
        return;
      }
      case "reveal": {
        if (h?.role !== "responder") throw new HandshakeError("bad_message", "unexpected reveal");
        handshakes.delete(peer);
        clearTimeout(h.timer);
        const { keys, confirm } = await responderFinish(dh, h.state, m);
        sendE2E(peer, confirm);
        establish(peer, keys);
        return;
      }
      case "confirm": {
        if (h?.role !== "initiator" || h.step !== "confirm") throw new HandshakeError("bad_message", "unexpected confirm");
        establish(peer, initiatorConfirm(h.pending, m));
        return;
      }
    }
  }

  function onRecord(peer: string, m: Frame): void {
    const s = sessions.get(peer);
    if (!s) {
      emit({ event: "error", code: "no_session", message: `encrypted record from ${peer} without a session: ignored`, peer });
      return;
    }
    const r = s.receive.open(m);
    if (!r.ok) {
      const what = { malformed: "a malformed record", replayed: "a replayed or reordered record", tampered: "a forged or tampered record", too_far: "a record too far ahead" }[r.reason];
      emit({ event: "error", code: r.reason, message: `rejected ${what} from ${peer} (not shown)`, peer });
      return;
    }
    if (r.skipped > 0) {
      emit({ event: "error", code: "lost", message: `${r.skipped} record(s) from ${peer} were lost in transit`, peer });
    }
    let inner: Frame;
    try {
      inner = decodePayload(r.plaintext);
    } catch {
      emit({ event: "error", code: "malformed", message: `undecodable record content from ${peer}`, peer });
      return;
    }
    if (inner.t === "batch" && Array.isArray(inner.items)) for (const item of inner.items) onContent(peer, item);
    else onContent(peer, inner);
  }

  function onContent(peer: string, item: unknown): void {
    const c = item as Frame;
    if (c && c.t === "text" && typeof c.text === "string") {
      emit({ event: "message", from: peer, text: c.text, broadcast: false });
    } else {
      emit({ event: "error", code: "unsupported", message: `unsupported record content from ${peer}`, peer });
    }
  }

  function onMsg(from: unknown, body: unknown): void {
    if (!isId(from) || !(body instanceof Uint8Array)) return;
    let m: Frame;
    try {
      m = decodePayload(body);
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      emit({ event: "error", code: "malformed", message: `malformed message from ${from}`, peer: from });
      return;
    }
    if (m.t === "rec") return onRecord(from, m);
    if (m.t === "hello" || m.t === "reply" || m.t === "reveal" || m.t === "confirm") {
      onHandshakeFrame(from, m).catch((err) => {
        if (err instanceof HandshakeError) {
          failHandshake(from, new ChatError(err.code, `key exchange with ${from} failed: ${err.message}`, from));
        } else {
          failHandshake(from, new ChatError("internal", `key exchange with ${from} failed: ${(err as Error).message}`, from));
        }
      });
      return;
    }
    emit({ event: "error", code: "malformed", message: `unknown message type from ${from}`, peer: from });
  }

  function onRelayFrame(f: Frame): void {
    switch (f.t) {
      case "msg":
        return onMsg(f.from, f.body);
      case "joined":
        if (isId(f.id) && !online.has(f.id)) online.add(f.id), emit({ event: "peer", id: f.id, online: true });
        return;
      case "left":
        if (isId(f.id)) {
          online.delete(f.id);
          emit({ event: "peer", id: f.id, online: false });
          dropSession(f.id, "left");
        }
        return;
      case "peers":
        if (Array.isArray(f.ids)) for (const id of f.ids) if (isId(id)) online.add(id);
        return;
      case "error": {
        const peer = isId(f.peer) ? f.peer : undefined;
        if (f.code === "unknown_peer" && peer) {
          online.delete(peer);
          if (handshakes.has(peer)) return failHandshake(peer, new ChatError("unknown_peer", `${peer} is not online`, peer));
          if (sessions.has(peer)) dropSession(peer, "is no longer online");
        }
        emit({ event: "error", code: safeText(f.code, 32), message: `relay: ${safeText(f.message)}`, ...(peer ? { peer } : {}) });
        return;
      }
    }
  }

  link = await joinRelay({ host: opts.host, port: opts.port, secret: opts.secret, onFrame: onRelayFrame });
  link.sendFrame({ t: "list" });
  const closed = link.closed.then((reason) => {
    for (const peer of [...sessions.keys()]) dropSession(peer, "unreachable: disconnected from relay");
    for (const peer of [...handshakes.keys()]) failHandshake(peer, new ChatError("disconnected", "disconnected from relay", peer));
    if (!closing) emit({ event: "disconnected", ...reason });
    return reason;
  });
  emit({ event: "ready", id: link.id });

  function waitSession(peer: string, timeoutMs: number): Promise<void> {
    if (sessions.has(peer) && !handshakes.has(peer)) return Promise.resolve();
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        const list = waiters.get(peer) ?? [];
        waiters.set(peer, list.filter((x) => x !== w));
        reject(new ChatError("timeout", `no session with ${peer} after ${Math.round(timeoutMs / 1000)} s`, peer));
      }, timeoutMs);
      const w: Waiter = {
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
      waiters.set(peer, [...(waiters.get(peer) ?? []), w]);
    });
  }

  return {
    get id() {
      return link.id;
    },
    async connect(peer) {
      if (peer === link.id) throw new ChatError("bad_peer", "that is your own ID");
      const wait = waitSession(peer, HANDSHAKE_TIMEOUT_MS + 1000);
      if (!handshakes.has(peer)) {
        const { state, hello } = await startInitiator(dh, link.id, peer);
        if (handshakes.has(peer)) dh.forget(state.kp.handle); // the peer's hello won the race meanwhile
        else {
          setHandshake(peer, { role: "initiator", step: "hello", state });
          sendE2E(peer, hello);
        }
      }
      return wait;
    },
    waitSession,
    sendText(peer, text) {
      const s = sessions.get(peer);
      if (!s) throw new ChatError("no_session", `no session with ${peer}: /connect ${peer} first`, peer);
      queueContent(s, { t: "text", text }, text.length * 3 + 16);
    },
    peers() {
      const ids = new Set([...online, ...sessions.keys(), ...handshakes.keys()]);
      return [...ids].sort().map((id) => {
        const s = sessions.get(id);
        const info: PeerInfo = { id, online: online.has(id), session: handshakes.has(id) ? "connecting" : s ? "established" : "none" };
        if (s) info.fingerprint = shortFingerprint(s.fingerprint), (info.verified = s.verified);
        return info;
      });
    },
    verify(peer) {
      const s = sessions.get(peer);
      if (!s) throw new ChatError("no_session", `no session with ${peer} to verify`, peer);
      s.verified = true;
    },
    fingerprint(peer, long = false) {
      const s = sessions.get(peer);
      if (!s) return null;
      return long ? longFingerprint(s.fingerprint) : shortFingerprint(s.fingerprint);
    },
    hasSession: (peer) => sessions.has(peer),
    async flush() {
      for (const s of sessions.values()) sealQueued(s);
      await link.drained(0);
    },
    async close() {
      closing = true;
      for (const s of sessions.values()) sealQueued(s);
      for (const peer of [...sessions.keys()]) {
        const s = sessions.get(peer)!;
        s.send.erase(), s.receive.erase(), wipe(s.fingerprint);
      }
      sessions.clear();
      for (const peer of [...handshakes.keys()]) endHandshake(peer);
      await link.drained(0);
      link.close();
      await closed;
    },
    closed,
  };
}
