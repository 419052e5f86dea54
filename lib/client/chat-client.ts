// The chat client without any user interface: joins a relay, tracks online
// peers, turns key exchanges (exchanges.ts) into sessions, and sends and
// receives encrypted records, broadcasts and files (../transfer/).
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
import { longFingerprint, shortFingerprint, type SessionKeys } from "../session/handshake.ts";
import { ReceiveChain, SendChain } from "../session/records.ts";
import { acceptSenderKey, eraseOwnKey, erasePeerKey, isOwnKey, isUnder, newSenderKey, OWN_KEYS_REMEMBERED, sealBroadcastRecord, tagValid, type OwnSenderKey, type PeerSenderKey } from "../session/sender-keys.ts";
import { parseChunk } from "../transfer/chunks.ts";
import { createTransfers, TransferError, type TransferEvent } from "../transfer/transfers.ts";
import { decodePayload, FrameError, safeText, type Frame } from "../wire/frame.ts";
import { pack, PackedBin } from "../wire/msgpack.ts";
import { ChatError } from "./chat-error.ts";
import { createExchanges, HANDSHAKE_TIMEOUT_MS } from "./exchanges.ts";

export { ChatError };

export type ChatEvent =
  | { event: "ready"; id: string }
  | { event: "peer"; id: string; online: boolean }
  | { event: "session"; peer: string; state: "established" | "rekeyed" | "closed" | "failed"; fingerprint?: string; verified?: boolean; by?: "us" | "peer"; blocked?: boolean; reason?: string }
  /** `verified`: whether the user had verified the session it came under (a bot can ignore the rest). */
  | { event: "message"; from: string; text: string; broadcast: boolean; verified: boolean }
  | { event: "list"; peers: PeerInfo[] }
  /** /verify took: the session's (short) fingerprint. */
  | { event: "verified"; peer: string; fingerprint: string }
  /** /fingerprint: the session's full 256-bit fingerprint. */
  | { event: "fingerprint"; peer: string; fingerprint: string }
  | { event: "error"; code: string; message: string; peer?: string }
  | { event: "disconnected"; code: string; message: string }
  | TransferEvent;

export interface PeerInfo {
  id: string;
  online: boolean;
  session: "none" | "connecting" | "established";
  fingerprint?: string;
  verified?: boolean;
}

interface Session {
  peer: string;
  send: SendChain;
  receive: ReceiveChain;
  fingerprint: Uint8Array;
  verified: boolean;
  /** Record contents queued in this tick; sealed together (see sealQueued). */
  queued: Queued[];
  queuedBytes: number;
  /** Contents queued while broadcasts typed before them are held (sealBroadcast): they go after those. */
  after: Queued[];
}

/** A record content and an upper bound on its packed size. */
interface Queued {
  item: Frame;
  bytes: number;
  /** Queued while a re-key we started held the session's contents: only such go on to the new session. */
  forRekey?: boolean;
}

/** A broadcast text and the members it was typed for (sorted): it never goes to anyone else. */
interface QueuedBroadcast extends Queued {
  members: string[];
}

/** Record contents about a transfer under way, other than its offer (PROTOCOL §24). */
const FILE_CONTROL = new Set(["accept", "decline", "done", "failed", "cancel"]);

/** A batch record carries at most this much content (more, only a single content), so it stays well inside a frame. */
const BATCH_BYTES = 32 * 1024;

/** `queue` in order, cut into runs of at most BATCH_BYTES (a longer content alone). */
function batches<T extends Queued>(queue: T[]): T[][] {
  const out: T[][] = [];
  let bytes = 0;
  for (const q of queue) {
    if (!out.length || bytes + q.bytes > BATCH_BYTES) out.push([]), (bytes = 0);
    out.at(-1)!.push(q);
    bytes += q.bytes;
  }
  return out;
}
const recordPlain = (run: Queued[]) => pack(run.length === 1 ? run[0]!.item : { t: "batch", items: run.map((q) => q.item) });
/** Erases the key copies that queued contents carry (`offer`, `skey`), once sealed or dropped. */
function wipeKeys(run: Queued[]): void {
  for (const { item } of run) for (const k of [item.key, item.tk]) if (k instanceof Uint8Array) wipe(k);
}
/** Drops queued contents that will not be sent: their key copies erased; returns how many were texts (to report). */
function discard(run: Queued[]): number {
  wipeKeys(run);
  return run.filter((q) => q.item.t === "text").length;
}
/** The longest wait a timer allows (setTimeout fires at once beyond it); longer waits are cut to this. */
const MAX_TIMER_MS = 2 ** 31 - 1;

interface Waiter {
  resolve(): void;
  reject(err: ChatError): void;
}

export interface ChatOptions {
  host: string;
  port: number;
  secret: Uint8Array | null;
  dh: DhEngine;
  onEvent: (e: ChatEvent) => void;
  /** Where received files are saved (default: the current directory). */
  downloadDir?: string;
  /** Largest file sent or accepted, in bytes (default 10 MiB). */
  maxFileSize?: number;
}

export const DEFAULT_MAX_FILE_SIZE = 10 * 1024 * 1024;
/**
 * Queued bytes beyond which we stop answering what peers ask (hellos, offers,
 * failed chunks): far above what a transfer queues (about 1 MiB), reached only
 * when the relay is not taking our data (it paused us, or the network is
 * slow). Without it a
 * peer that stops reading and keeps sending offers grew our queue by every
 * `decline` (600 MiB in 25 s, found in review).
 */
const CONGESTED_BACKLOG = 4 * 1024 * 1024;
/** Sessions at most: a relay holds 10,000 clients by default (PROTOCOL §10). */
const MAX_SESSIONS = 10_000;
/** Peers known to be online at most: a relay announcing a million made-up IDs must not fill our memory. */
const MAX_ONLINE = 100_000;
/** Adds `id` to a set that keeps the most recent MAX_SESSIONS (a relay can make up IDs without end). */
function rememberRecent(set: Set<string>, id: string): void {
  set.add(id);
  if (set.size > MAX_SESSIONS) set.delete(set.values().next().value!);
}

/** How long the first answer to `list` may take before `ready` comes without it. */
const FIRST_LIST_WAIT_MS = 10_000;
/** Half the relay's allowance for a busy recipient (PROTOCOL §10): its count starts when it sends `busy`, ours when we read it. */
const BUSY_BUDGET = 128 * 1024;
/**
 * Content held for a busy peer past BUSY_BUDGET, at most; a message beyond it is
 * refused (peer_busy). `ready` comes when the peer's queue is at most 256 KiB
 * (queueLow): released at once, this much keeps it under the 1 MiB of a new `busy`.
 */
const HELD_MAX = 512 * 1024;

export interface ChatClient {
  readonly id: string;
  /** Starts (or joins) a key exchange; resolves when the session is established. */
  connect(peer: string): Promise<void>;
  /**
   * Resolves once a session with `peer` is established (whoever started it).
   * Fails at once for a peer that left or that the relay does not know: only
   * a peer that is online can still start one; and for a peer an earlier wait
   * ran out for, until a session with it comes.
   */
  waitSession(peer: string, timeoutMs: number): Promise<void>;
  sendText(peer: string, text: string): void;
  /** Sends `text` to every peer with an established session, encrypted once; returns the recipients. */
  broadcastText(text: string): string[];
  /** Offers a file; resolves when the peer reports it complete and verified. */
  sendFile(peer: string, path: string): Promise<void>;
  /** Offers a file to every peer with a session, encrypted and uploaded once; resolves when all have it. */
  broadcastFile(path: string): Promise<void>;
  /** Cancels transfers whose ID starts with `prefix` (all if empty); returns how many. */
  cancel(prefix: string): number;
  /** Files sent in full whose ID starts with `prefix`, waiting for the receiver's answer (these cannot be cancelled). */
  awaitingAnswer(prefix: string): number;
  /** Short IDs of the transfers cancel() can stop. */
  cancellable(): string[];
  /** Transfers still running. */
  activeTransfers(): number;
  /** Declines file offers from now on; transfers under way go on (a script's end of input). */
  stopAccepting(): void;
  peers(): PeerInfo[];
  /** Marks the session verified; with `fingerprint` (short or long form, as compared), only if it is still that session's. */
  verify(peer: string, fingerprint?: string): void;
  /** `fingerprint` for the next session with `peer` (a script's /verify before it has one): verified if it matches, and if not, nothing is sent to the peer. */
  pin(peer: string, fingerprint: string): void;
  fingerprint(peer: string, long?: boolean): string | null;
  hasSession(peer: string): boolean;
  /** Resolves when everything queued has been handed to the socket. */
  flush(): Promise<void>;
  /** Stops (true) or resumes (false) taking in messages: for an event consumer that fell behind (Link.holdReading). */
  holdEvents(hold: boolean): void;
  /**
   * Resolves at once, or, while over 1 MiB waits to go to the relay, once it is
   * down to 256 KiB; and while half of HELD_MAX waits for a busy peer, once that
   * is released: for a producer of commands (a script waits where a user gets peer_busy).
   */
  writable(): Promise<void>;
  close(): Promise<void>;
  readonly closed: Promise<LinkClose>;
}

export async function startChat(opts: ChatOptions): Promise<ChatClient> {
  const { dh } = opts;
  const online = new Set<string>();
  const sessions = new Map<string, Session>();
  const waiters = new Map<string, Waiter[]>();
  let link: Link;
  let closing = false;
  // While closing, an event handler that throws (a user interface already shut
  // down) must not stop close() half-way, before the keys are erased: the
  // first such error is rethrown once close() has done everything.
  let closeError: unknown = null;
  const emit = (e: ChatEvent) => {
    if (!closing) return opts.onEvent(e);
    try {
      opts.onEvent(e);
    } catch (err) {
      closeError ??= err;
    }
  };

  // The peers the relay said are `busy` (until `ready`; our file chunks for them
  // wait), with the bytes sent each since. Past 256 KiB of them while its queue
  // is full the relay pauses us, all our traffic with it (PROTOCOL §10); so past
  // BUSY_BUDGET we answer none of that peer's requests (a key exchange, a file
  // offer), and hold what we have for it (sealQueued): a slow reader must not be
  // able to make us talk ourselves into a pause.
  const sentSinceBusy = new Map<string, number>();
  const overBudget = (peer: string) => (sentSinceBusy.get(peer) ?? 0) > BUSY_BUDGET;
  /** writable() callers waiting for content held for a busy peer to go (or be dropped with its session). */
  let heldWaiters: (() => void)[] = [];
  const heldTooMuch = () => [...sentSinceBusy.keys()].some((peer) => overBudget(peer) && (sessions.get(peer)?.queuedBytes ?? 0) >= HELD_MAX / 2);
  const wakeHeldWaiters = () => {
    const waiting = heldWaiters;
    heldWaiters = [];
    for (const wake of waiting) wake();
  };
  /** `bulk`: in the link's bulk lane (a file chunk), known by `tag` there. */
  const send = (to: string | string[], body: PackedBin, bulk = false, tag?: object) => {
    if (sentSinceBusy.size) {
      for (const peer of typeof to === "string" ? [to] : to) {
        const sent = sentSinceBusy.get(peer);
        if (sent !== undefined) sentSinceBusy.set(peer, sent + body.size);
      }
    }
    if (bulk) link.sendBulk(to, body, tag);
    else link.send(to, body);
  };
  const sendE2E = (to: string | string[], frame: Frame) => send(to, new PackedBin(frame));
  const congested = (peer: string) => link.backlog > CONGESTED_BACKLOG || overBudget(peer);
  const exchanges = createExchanges({
    dh,
    // Past MAX_SESSIONS, a peer without a session is not answered: made-up IDs must not grow our memory without end.
    congested: (peer) => congested(peer) || (!sessions.has(peer) && sessions.size >= MAX_SESSIONS),
    known: (peer) => sessions.has(peer),
    myId: () => link.id,
    sendE2E,
    established: establish,
    failed(peer, err) {
      emit({ event: "session", peer, state: "failed", reason: err.message });
      settle(peer, err);
      const s = sessions.get(peer);
      if (s) sealQueued(s); // content held for the exchange goes out under the old session
      sealBroadcast();
    },
    stray: (peer, err) => emit({ event: "error", code: err.code, message: err.message, peer }),
  });
  const transfers = createTransfers(
    {
      sendContent(peer, item) {
        const s = sessions.get(peer);
        if (s) queueContent(s, item, 128 + 3 * (typeof item.name === "string" ? item.name.length : 0) + 3 * (typeof item.reason === "string" ? item.reason.length : 0));
      },
      sendChunk: (to, frame, owner) => send(to, new PackedBin(frame), true, owner),
      dropChunks: (owner) => link.dropBulk(owner),
      congested,
      isBusy: (peer) => sentSinceBusy.has(peer),
      isChosen,
      session: (peer) => sessions.get(peer),
      isVerified: (peer, via) => verifiedVia(peer, via),
      chunkBacklog: () => link.bulkBacklog,
      chunksDrained: (bytes) => link.drained(bytes, true),
      maxFrame: () => link.maxFrame,
      emit,
    },
    { downloadDir: opts.downloadDir ?? ".", maxFileSize: opts.maxFileSize ?? DEFAULT_MAX_FILE_SIZE },
  );

  // Contents sent to one peer in the same event-loop tick share one record:
  // one chain step, one MAC and one relay frame for the lot. A lone message
  // is sealed on its own, so this changes nothing for interactive use and
  // cuts per-message cost several-fold for scripts that send in bulk.
  function queueContent(s: Session, item: Frame, bytes: number): void {
    if (broadcastQueue.length) sealBroadcast(); // an earlier broadcast goes first ...
    const forRekey = exchanges.holdsContent(s.peer);
    if (broadcastQueue.length) return void s.after.push({ item, bytes, forRekey }); // ... also when it is held
    if (s.queuedBytes + bytes > BATCH_BYTES) sealQueued(s);
    s.queued.push({ item, bytes, forRekey });
    s.queuedBytes += bytes;
    if (s.queued.length === 1) queueMicrotask(() => sealQueued(s));
  }

  /**
   * Seals what is queued for `s`, in records of at most BATCH_BYTES (a re-key may
   * have held a lot). Unless `force`d, it stays queued, unsealed, while we are
   * over our budget for a busy peer: sent on, the relay would pause all our
   * traffic (PROTOCOL §10); `ready` releases it. A broadcast, flush() and close() force it out.
   */
  function sealQueued(s: Session, force = false): void {
    if (!s.queued.length || sessions.get(s.peer) !== s) return;
    if (exchanges.holdsContent(s.peer) || (!force && overBudget(s.peer))) return;
    const queue = s.queued;
    s.queued = [];
    s.queuedBytes = 0;
    if (heldWaiters.length) wakeHeldWaiters();
    for (const run of batches(queue)) {
      const plain = recordPlain(run);
      send(s.peer, new PackedBin(s.send.seal(plain)));
      wipe(plain); // it may hold keys (offers, sender keys)
      wipeKeys(run);
    }
  }

  // ---- Broadcast (docs/PROTOCOL.md, "Broadcast layer") ----------------------
  // One sender key per recipient set (lib/session/sender-keys.ts), given to
  // each recipient inside its pairwise session (`skey`), then used for records
  // sent once to the whole list (`brec`). Any change of the set makes a new
  // key, so a peer that left cannot read later broadcasts and a newcomer
  // earlier ones.
  let ownKey: OwnSenderKey | null = null;
  /** Peers the user ran /connect for: their sessions are in our broadcasts (broadcastMembers). */
  const chosen = new Set<string>();
  /**
   * Peers whose session ended (most recent MAX_SESSIONS). An honest relay never
   * gives a departed client's ID to another (PROTOCOL §8), so a new session
   * under one of these IDs is announced as a re-key, with its warning: a relay
   * could otherwise forge `left` and then an exchange of its own, and the user
   * would see only a fresh "secure session" (found in audit).
   */
  const ended = new Set<string>();
  /** Peers the relay said left (most recent MAX_SESSIONS): a relay never gives their IDs to anyone again. */
  const departed = new Set<string>();
  /** Peers a session wait (waitSession) ran out for, until a session with them comes (most recent MAX_SESSIONS). */
  const waitedOut = new Set<string>();
  /** Peers the user ran /connect for whose exchange is not over yet. */
  const connecting = new Set<string>();
  /** Peers nothing is sent to until the user checks them again (refuseIfDistrusted). */
  const distrusted = new Set<string>();
  /** Fingerprints given to a scripted /verify before there was a session: checked against the next one (establish). */
  const pins = new Map<string, string>();
  /** Peers whose last session the user verified: a new one under their ID, however it came, is a change (few: the user's own /verify adds them). */
  const wasVerified = new Set<string>();
  /** Callers waiting for the relay's answer to a `list`, in the order they asked (the relay answers in order). */
  const listAnswers: ((ids: Set<string> | null) => void)[] = [];
  const peerKeys = new Map<string, PeerSenderKey>();
  /** The session each peer's sender key came under (for `verified` in events). */
  const keySessions = new WeakMap<PeerSenderKey, Session>();
  let broadcastQueue: QueuedBroadcast[] = [];
  /** Checks of our recent sender keys (keyCheck), newest last: a peer handing one back as its own is refused. */
  const ownKeyChecks: Uint8Array[] = [];

  /**
   * Who a broadcast typed now goes to: every peer with a session that the
   * user chose, by /connect or /verify (sorted). Anyone can start a session
   * with us, the relay too under an ID it makes up, and our client answers on
   * its own: such a session must not join our broadcasts unasked (found in
   * audit). The one frame lists every recipient, and the relay takes at most
   * 1000 (its default `maxRecipients`).
   */
  function broadcastMembers(): string[] {
    const members = [...sessions.values()].filter((s) => isChosen(s.peer)).map((s) => s.peer).sort();
    if (!members.length) {
      throw new ChatError("no_sessions", sessions.size ? "no peers to broadcast to: a broadcast goes to the peers you /connect'ed to or /verify'd" : "no established sessions to broadcast to (/connect someone first)");
    }
    if (members.length > 1000) throw new ChatError("too_many", `a broadcast reaches at most 1000 peers; yours would reach ${members.length}`);
    return members;
  }

  /** "/connect first" is no advice for a peer that is not online (found in audit). */
  function noSession(peer: string): ChatError {
    if (exchanges.has(peer)) return new ChatError("no_session", `no session with ${peer} yet: the key exchange is still running`, peer);
    return new ChatError("no_session", online.has(peer) ? `no session with ${peer}: /connect ${peer} first` : `no session with ${peer}, and it is not online`, peer);
  }

  /** A peer the user chose: /connect'ed to, or its session /verify'd. */
  function isChosen(peer: string): boolean {
    return !distrusted.has(peer) && (chosen.has(peer) || sessions.get(peer)?.verified === true);
  }

  /**
   * Nothing goes to a peer whose key is not the one the user verified: after a
   * /verify with a fingerprint that did not match (a script pinning one cannot
   * branch: its next /msg went to the man in the middle), and after a verified
   * session was replaced by a key exchange the peer started (which may be the
   * relay's). Found in audit; as other messengers block sending when a verified
   * contact's key changes. The user's /verify (after comparing), or an exchange
   * the user's own /connect completed, lifts it.
   */
  function refuseIfDistrusted(peer: string): void {
    if (distrusted.has(peer)) throw new ChatError("unverified", `${peer}'s key is not the one you verified: compare fingerprints, then /verify ${peer} (or /connect ${peer} again) before sending`, peer);
  }

  /**
   * `peer`'s session is not the one the user verified (a fingerprint given to
   * /verify did not match): nothing more goes to it. What waits for it is
   * dropped and what is under way with it ends (found in review: a file kept
   * streaming to the man in the middle, and held texts went out on `ready`).
   */
  function distrust(peer: string, why: string): void {
    distrusted.add(peer);
    const s = sessions.get(peer);
    if (s) {
      s.verified = false;
      const texts = discard([...s.queued, ...s.after]);
      s.queued = [];
      s.after = [];
      s.queuedBytes = 0;
      if (texts) emit({ event: "error", code: "not_sent", message: `${texts} message(s) to ${peer} not sent: ${why}`, peer });
    }
    transfers.abandon(peer, why, true);
  }

  const sameFingerprint = (fingerprint: Uint8Array, given: string) => {
    const g = given.toLowerCase().replace(/[\s-]/g, "");
    return [shortFingerprint(fingerprint), longFingerprint(fingerprint)].some((f) => f.replace(/[\s-]/g, "") === g);
  };

  /** Erases our sender key if `peer` was given it: the next broadcast makes a new one. */
  function forgetOwnKeyOf(peer: string): void {
    if (ownKey?.members.split(",").includes(peer)) eraseOwnKey(ownKey), (ownKey = null);
  }

  /**
   * Those of `members` that still have a session and are still chosen: a held
   * broadcast must not go to a peer whose session a re-key it started replaced
   * meanwhile (found in review: the relay's session got the new sender key).
   */
  const stillMembers = (members: string[]) => members.filter((p) => sessions.has(p) && isChosen(p));

  /**
   * Seals the queued broadcasts, each for the members it was typed for that
   * still have a session (never for a peer that came later: PROTOCOL §34.2),
   * then releases the pairwise contents queued behind them.
   */
  function sealBroadcast(): void {
    if (!broadcastQueue.length) return;
    // A new key must reach every member before the record under it: wait for any
    // member whose pairwise content is held (establish, failed and dropSession call us again).
    if (broadcastQueue.some((b) => stillMembers(b.members).some(exchanges.holdsContent))) return;
    const queue = broadcastQueue;
    broadcastQueue = [];
    for (let i = 0; i < queue.length; ) {
      const members = stillMembers(queue[i]!.members);
      const set = members.join(",");
      let j = i + 1;
      while (j < queue.length && stillMembers(queue[j]!.members).join(",") === set) j++;
      const texts = queue.slice(i, j);
      i = j;
      if (!members.length) {
        emit({ event: "error", code: "not_sent", message: `${texts.length} broadcast text(s) not sent: none of their recipients has a session any more` });
        continue;
      }
      if (ownKey?.members !== set) {
        eraseOwnKey(ownKey);
        const made = newSenderKey(members);
        members.forEach((p, slot) => queueContent(sessions.get(p)!, made.skeys[slot]!, 160));
        ownKey = made.key;
        ownKeyChecks.push(made.check);
        if (ownKeyChecks.length > OWN_KEYS_REMEMBERED) ownKeyChecks.shift();
      }
      for (const p of members) sealQueued(sessions.get(p)!, true); // the key travels before the first record under it
      for (const run of batches(texts)) {
        const plain = recordPlain(run);
        send(members, new PackedBin(sealBroadcastRecord(ownKey, plain)));
        wipe(plain);
      }
    }
    for (const s of sessions.values()) {
      const after = s.after;
      s.after = [];
      for (const q of after) queueContent(s, q.item, q.bytes);
    }
  }

  function onSenderKey(peer: string, c: Frame): void {
    // A recipient of our broadcasts holds our current key and could hand it back as
    // its own; our own broadcasts would then open as that peer's (PROTOCOL §34.4).
    const own = isOwnKey(ownKeyChecks, c);
    const k = own ? null : acceptSenderKey(c);
    if (c.key instanceof Uint8Array) wipe(c.key);
    if (c.tk instanceof Uint8Array) wipe(c.tk);
    if (!k) {
      emit({ event: "error", code: "malformed", message: own ? `broadcast key from ${peer} is our own: ignored` : `malformed broadcast key from ${peer}`, peer });
      return;
    }
    erasePeerKey(peerKeys.get(peer));
    peerKeys.set(peer, k);
    keySessions.set(k, sessions.get(peer)!);
  }

  function onBroadcastRecord(peer: string, m: Frame): void {
    const k = peerKeys.get(peer);
    if (!sessions.has(peer) || !k || !isUnder(k, m)) {
      emit({ event: "error", code: "no_key", message: `broadcast from ${peer} under a key we do not hold: ignored`, peer });
      return;
    }
    // Any member holds the sender key; only the broadcaster holds our tag key.
    if (!tagValid(k, m)) {
      emit({ event: "error", code: "tampered", message: `rejected a forged or tampered broadcast from ${peer} (not shown)`, peer });
      return;
    }
    openRecord(peer, k.chain, { ...m, t: "rec" }, true, keySessions.get(k));
  }

  function settle(peer: string, err?: ChatError): void {
    const list = waiters.get(peer);
    if (!list) return;
    waiters.delete(peer);
    for (const w of list) (err ? w.reject(err) : w.resolve());
  }

  function establish(peer: string, keys: SessionKeys, byUs: boolean): void {
    waitedOut.delete(peer);
    // Both sides ran /connect at once: one of them answers the other's exchange
    // (PROTOCOL §18), but its user asked for it all the same (found in review).
    byUs ||= connecting.has(peer);
    // The user's own /connect: the peer is chosen, and a new exchange is checked like a first one.
    if (byUs) chosen.add(peer), distrusted.delete(peer);
    const old = sessions.get(peer);
    if (old) old.send.erase(), old.receive.erase();
    // `ended` keeps the latest MAX_SESSIONS, so a relay making that many sessions could push
    // a peer out of it (found in audit); a verified peer is remembered apart.
    const hadVerified = old?.verified === true || wasVerified.delete(peer);
    const returning = !old && (ended.delete(peer) || hadVerified);
    // What the user gave us under the old session must not go out under a new one
    // it did not ask for: a relay can say the peer is busy (so our contents wait),
    // then re-key posing as the peer, or answer a /connect of ours (found in
    // audit). Only what was held for this re-key of ours is carried over, and
    // never file offers or sender keys (their transfers fail below; the next
    // broadcast makes a new key). File control always goes on: it is the
    // client's own and tells a relay nothing (a `done` carries a MAC only the
    // sender can check); dropped, both sides of a transfer waited out its
    // timeout (found in review).
    const carried = (q: Queued) => FILE_CONTROL.has(q.item.t as string) || (byUs && q.forRekey === true && q.item.t !== "offer" && q.item.t !== "skey");
    const queued = (old?.queued ?? []).filter(carried);
    const after = (old?.after ?? []).filter(carried);
    const left = [...(old?.queued ?? []), ...(old?.after ?? [])].filter((q) => !carried(q));
    const dropped = discard(left);
    const s: Session = {
      peer,
      send: new SendChain(keys.sendChain),
      receive: new ReceiveChain(keys.receiveChain),
      fingerprint: keys.fingerprint,
      verified: false,
      queued,
      queuedBytes: queued.reduce((n, q) => n + q.bytes, 0),
      after,
    };
    sessions.set(peer, s);
    if (old || returning) {
      // The peer may have lost our sender key with its old session (a session can
      // end on one side only, PROTOCOL §21.1): the next broadcast makes a new one.
      forgetOwnKeyOf(peer);
      // A re-key the peer started may be the relay's: until the user checks the
      // new fingerprint (/verify) or runs /connect, it gets no broadcasts.
      if (!byUs) chosen.delete(peer);
      if (!byUs && hadVerified) distrusted.add(peer);
      transfers.rekeyed(peer, left.flatMap((q) => (q.item.t === "offer" && q.item.id instanceof Uint8Array ? [Buffer.from(q.item.id).toString("hex")] : [])));
    }
    // A fingerprint a script gave /verify before there was a session (pin): checked now, once.
    const pin = pins.get(peer);
    pins.delete(peer);
    if (pin !== undefined && sameFingerprint(keys.fingerprint, pin)) s.verified = true;
    else if (pin !== undefined) distrust(peer, "its fingerprint did not match the one given to /verify");
    emit({ event: "session", peer, state: old || returning ? "rekeyed" : "established", fingerprint: shortFingerprint(keys.fingerprint), verified: s.verified, by: byUs ? "us" : "peer", ...(distrusted.has(peer) ? { blocked: true } : {}) });
    if (pin !== undefined && !s.verified) emit({ event: "error", code: "fingerprint_mismatch", message: `the session with ${peer} has fingerprint ${shortFingerprint(keys.fingerprint)}, not ${pin}: not verified; nothing is sent to ${peer} until you /verify it`, peer });
    if (dropped) emit({ event: "error", code: "not_sent", message: `${dropped} message(s) to ${peer} not sent: a new key exchange with ${peer} replaced the session they waited for`, peer });
    settle(peer);
    sealQueued(s);
    sealBroadcast();
  }

  function dropSession(peer: string, reason: string): void {
    const s = sessions.get(peer);
    if (heldWaiters.length) queueMicrotask(wakeHeldWaiters); // once the session is gone
    exchanges.end(peer);
    sentSinceBusy.delete(peer);
    transfers.abandon(peer, `${peer} ${reason}`);
    erasePeerKey(peerKeys.get(peer));
    peerKeys.delete(peer);
    // The peer erases our sender key with the session: if it comes back before our
    // next broadcast, the member list looks unchanged, so the key must go now.
    forgetOwnKeyOf(peer);
    settle(peer, new ChatError("peer_left", `${peer} ${reason}`, peer));
    if (!s) return;
    s.send.erase();
    s.receive.erase();
    wipe(s.fingerprint);
    sessions.delete(peer);
    rememberRecent(ended, peer);
    // A new session under this ID (only a relay would make one) is not the one the user chose.
    chosen.delete(peer);
    if (s.verified) wasVerified.add(peer);
    emit({ event: "session", peer, state: "closed", reason });
    // Messages still waiting (held for a busy peer, for a re-key or behind a broadcast) are lost: say so.
    const unsent = discard([...s.queued, ...s.after]);
    if (unsent) emit({ event: "error", code: "not_sent", message: `${unsent} message(s) to ${peer} not sent: the session ended (${reason}) while they waited`, peer });
    sealBroadcast(); // broadcasts held for this peer's re-key go to the others now
  }

  function onRecord(peer: string, m: Frame): void {
    const s = sessions.get(peer);
    if (!s) {
      emit({ event: "error", code: "no_session", message: `encrypted record from ${peer} without a session: ignored`, peer });
      return;
    }
    openRecord(peer, s.receive, m, false, s);
  }

  /** `via`: the session the record's key came under (a sender key outlives re-keys: PROTOCOL §34.4). */
  function openRecord(peer: string, chain: ReceiveChain, m: Frame, broadcast: boolean, via: Session | undefined): void {
    const r = chain.open(m);
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
    if (inner.t === "batch" && Array.isArray(inner.items)) for (const item of inner.items) onContent(peer, item, broadcast, via);
    else onContent(peer, inner, broadcast, via);
  }

  /** Whether `via` is the session with `peer` now, and the user verified it: what `verified` in events says. */
  function verifiedVia(peer: string, via: unknown): boolean {
    return via !== undefined && via === sessions.get(peer) && (via as Session).verified;
  }

  function onContent(peer: string, item: unknown, broadcast: boolean, via: Session | undefined): void {
    const c = item as Frame;
    // Broadcast records carry texts only; keys and file control go pairwise.
    if (!broadcast && c && typeof c === "object") {
      if (c.t === "skey") return onSenderKey(peer, c);
      if (transfers.onContent(peer, c)) return;
    }
    if (c && c.t === "text" && typeof c.text === "string") {
      emit({ event: "message", from: peer, text: c.text, broadcast, verified: verifiedVia(peer, via) });
    } else {
      emit({ event: "error", code: "unsupported", message: `unsupported record content from ${peer}`, peer });
    }
  }

  function onMsg(from: unknown, body: unknown): void {
    if (!isId(from) || !(body instanceof Uint8Array)) return;
    // Only a misbehaving relay sends us a message from our own ID: a key exchange
    // under it would show a "secure session" with ourselves (found in audit).
    if (from === link.id) return emit({ event: "error", code: "malformed", message: "a message from our own ID: ignored (the relay is misbehaving)" });
    let m: Frame;
    try {
      m = parseChunk(body) ?? decodePayload(body);
    } catch (err) {
      if (!(err instanceof FrameError)) throw err;
      emit({ event: "error", code: "malformed", message: `malformed message from ${from}`, peer: from });
      return;
    }
    // One peer's message must not cost us the relay connection (the link closes
    // when a frame's handling throws): a failure here, a bug or an event handler
    // that throws, is reported and the next message is handled as usual.
    try {
      if (m.t === "rec") return onRecord(from, m);
      if (m.t === "brec") return onBroadcastRecord(from, m);
      if (m.t === "chunk") return transfers.onChunk(from, m);
      if (m.t === "hello" || m.t === "reply" || m.t === "reveal" || m.t === "confirm") return void exchanges.onFrame(from, m);
    } catch (err) {
      return emit({ event: "error", code: "internal", message: `handling a message from ${from} failed: ${(err as Error).message}`, peer: from });
    }
    emit({ event: "error", code: "malformed", message: `unknown message type from ${from}`, peer: from });
  }

  function onRelayFrame(f: Frame): void {
    // Closing: sessions are erased, so a peer's answer still in flight (to a
    // cancel, say) has nothing left to go to. Dropped without a word.
    if (closing) return;
    switch (f.t) {
      case "msg":
        return onMsg(f.src, f.body);
      // A presence batch may tell of our own join (PROTOCOL §5.6).
      case "joined":
        if (isId(f.id)) departed.delete(f.id);
        if (isId(f.id) && f.id !== link.id && !online.has(f.id) && online.size < MAX_ONLINE) online.add(f.id), emit({ event: "peer", id: f.id, online: true });
        return;
      case "left":
        if (isId(f.id) && f.id !== link.id) {
          online.delete(f.id);
          rememberRecent(departed, f.id);
          emit({ event: "peer", id: f.id, online: false });
          dropSession(f.id, "left");
        }
        return;
      case "peers": {
        const ids = new Set(Array.isArray(f.ids) ? f.ids.filter(isId) : []);
        for (const id of ids) if (online.size < MAX_ONLINE) online.add(id);
        listAnswers.shift()?.(f.more === true ? null : ids); // a cut list (more) cannot tell who is missing
        return;
      }
      case "busy":
      case "ready":
        if (!isId(f.peer)) return;
        // Only about peers we talk to: a relay sending `busy` for a million made-up IDs must not fill our memory.
        if (f.t === "busy" && !sessions.has(f.peer) && !exchanges.has(f.peer)) return;
        if (f.t === "busy") sentSinceBusy.set(f.peer, 0);
        else if (sentSinceBusy.delete(f.peer)) {
          const s = sessions.get(f.peer);
          if (s) sealQueued(s); // what was held for it, first
          transfers.peerReady();
        }
        return;
      case "error": {
        const peer = isId(f.peer) ? f.peer : undefined;
        if (f.code === "unknown_peer" && peer) {
          // A key exchange or session with the peer ends here, and says so
          // (`session failed`/`closed`, and the error of a command waiting for it).
          const reported = exchanges.has(peer) || sessions.has(peer);
          const known = online.has(peer) || reported;
          online.delete(peer);
          exchanges.fail(peer, new ChatError("unknown_peer", `${peer} is not online`, peer));
          // The relay may tell us before its `left` (presence comes in batches, PROTOCOL §5.6).
          if (sessions.has(peer)) dropSession(peer, "left");
          // Frames in flight when a peer left come back one by one (a file's
          // chunks: one per 128 KiB); its departure was reported once already.
          if (!known || reported) return;
        }
        emit({ event: "error", code: safeText(f.code, 32), message: `relay: ${safeText(f.message)}`, ...(peer ? { peer } : {}) });
        return;
      }
    }
  }

  link = await joinRelay({
    host: opts.host,
    port: opts.port,
    secret: opts.secret,
    // A presence batch or a peer's hello may come in the very read that brought `welcome`.
    onFrame: (f, joined) => ((link ??= joined), onRelayFrame(f)),
  });
  /**
   * Asks the relay who is online; null if it cannot say for everyone (a cut
   * list), does not answer within `waitMs` (a relay may never answer), or the link closed.
   */
  function whoIsOnline(waitMs: number): Promise<Set<string> | null> {
    link.sendFrame({ t: "list" });
    return new Promise((resolve) => {
      const timer = setTimeout(() => resolve(null), Math.min(waitMs, MAX_TIMER_MS));
      // Queued until its answer comes, however late, so that later answers still match their questions.
      listAnswers.push((ids) => (clearTimeout(timer), resolve(ids)));
    });
  }
  const firstList = whoIsOnline(FIRST_LIST_WAIT_MS);
  let disconnected = false;
  const closed = link.closed.then((reason) => {
    disconnected = true;
    for (const answer of listAnswers.splice(0)) answer(null);
    wakeHeldWaiters();
    for (const peer of [...sessions.keys()]) dropSession(peer, "unreachable: disconnected from relay");
    for (const peer of exchanges.peers()) exchanges.fail(peer, new ChatError("disconnected", "disconnected from relay", peer));
    transfers.abandon(null, "disconnected from relay"); // each went with its session above: none is left waiting
    if (!closing) emit({ event: "disconnected", ...reason });
    return reason;
  });
  // After the relay's first answer, so that /list as a script's first command shows who was already online.
  await firstList;
  if (!disconnected) emit({ event: "ready", id: link.id });

  /** Resolves when the next exchange with `peer` completes; rejects if it fails. */
  function nextSession(peer: string, timeoutMs: number): Promise<void> {
    timeoutMs = Math.min(timeoutMs, MAX_TIMER_MS);
    return new Promise<void>((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.set(peer, (waiters.get(peer) ?? []).filter((x) => x !== w));
        reject(new ChatError("timeout", `no session with ${peer} after ${Math.round(timeoutMs / 1000)} s`, peer));
      }, timeoutMs);
      const w: Waiter = {
        resolve: () => (clearTimeout(timer), resolve()),
        reject: (e) => (clearTimeout(timer), reject(e)),
      };
      waiters.set(peer, [...(waiters.get(peer) ?? []), w]);
    });
  }

  async function waitSession(peer: string, timeoutMs: number): Promise<void> {
    const established = () => sessions.has(peer) && !exchanges.has(peer);
    if (established()) return;
    // A script's every /msg to a peer that never connects waited the whole
    // timeout again: four commands, two minutes (found in audit).
    if (waitedOut.has(peer) && !exchanges.has(peer)) throw new ChatError("timeout", `no session with ${peer}: none came during the earlier wait either`, peer);
    // Waiting the whole timeout for a peer that cannot come would hold up a
    // script's next commands (found in audit). Relays never reuse an ID.
    const start = performance.now();
    if (!online.has(peer) && !exchanges.has(peer)) {
      if (departed.has(peer)) throw new ChatError("peer_left", `${peer} left`, peer);
      const ids = await whoIsOnline(timeoutMs); // it may have joined since the last presence batch
      if (established()) return;
      if (ids && !ids.has(peer) && !exchanges.has(peer)) throw new ChatError("unknown_peer", `${peer} is not online`, peer);
    }
    return nextSession(peer, Math.max(0, timeoutMs - (performance.now() - start))).catch((err: ChatError) => {
      if (err.code === "timeout") rememberRecent(waitedOut, peer);
      throw err;
    });
  }

  return {
    get id() {
      return link.id;
    },
    async connect(peer) {
      if (peer === link.id) throw new ChatError("bad_peer", "that is your own ID");
      // Chosen (for broadcasts) and trusted again only once this exchange completes
      // (establish): meanwhile the session it replaces may be a relay's (found in review).
      connecting.add(peer);
      const done = nextSession(peer, 2 * HANDSHAKE_TIMEOUT_MS + 1000); // our two waits: for reply, then confirm
      // It may fail while we await below, before our caller holds it: mark it handled now.
      done.catch(() => {}).finally(() => connecting.delete(peer));
      if (!exchanges.has(peer)) await exchanges.start(peer);
      return done;
    },
    waitSession,
    sendText(peer, text) {
      const s = sessions.get(peer);
      if (!s) throw noSession(peer);
      refuseIfDistrusted(peer);
      const bytes = Buffer.byteLength(text);
      // A record must fit one relay frame: content + padding + record fields + envelope.
      if (bytes > link.maxFrame - 1024) throw new ChatError("too_long", `message too long (${bytes} bytes; at most ${link.maxFrame - 1024})`, peer);
      if (overBudget(peer) && s.queuedBytes + bytes > HELD_MAX) {
        throw new ChatError("peer_busy", `not sent: ${peer} is not reading, and ${s.queuedBytes} bytes already wait for it`, peer);
      }
      queueContent(s, { t: "text", text }, bytes + 16);
    },
    broadcastText(text) {
      const members = broadcastMembers();
      const bytes = Buffer.byteLength(text);
      const limit = link.maxFrame - 1024 - 42 * members.length; // per member: its ID in the relay frame (≤ 10 bytes) and its tag (32)
      if (bytes > limit) throw new ChatError("too_long", `message too long (${bytes} bytes; at most ${limit})`);
      for (const p of members) sealQueued(sessions.get(p)!, true); // earlier private messages to its members go first
      broadcastQueue.push({ item: { t: "text", text }, bytes: bytes + 16, members });
      if (broadcastQueue.length === 1) queueMicrotask(sealBroadcast);
      return members;
    },
    peers() {
      const ids = new Set([...online, ...sessions.keys(), ...exchanges.peers()]);
      return [...ids].sort().map((id) => {
        const s = sessions.get(id);
        const info: PeerInfo = { id, online: online.has(id), session: exchanges.has(id) ? "connecting" : s ? "established" : "none" };
        if (s) info.fingerprint = shortFingerprint(s.fingerprint), (info.verified = s.verified);
        return info;
      });
    },
    verify(peer, fingerprint) {
      const s = sessions.get(peer);
      if (!s) throw new ChatError("no_session", `no session with ${peer} to verify`, peer);
      if (fingerprint !== undefined && !sameFingerprint(s.fingerprint, fingerprint)) {
        distrust(peer, "its fingerprint did not match the one given to /verify");
        throw new ChatError("fingerprint_mismatch", `the session with ${peer} has fingerprint ${shortFingerprint(s.fingerprint)}, not ${fingerprint}: not verified (did it change?); nothing more is sent to ${peer} until you /verify it`, peer);
      }
      s.verified = true;
      distrusted.delete(peer);
    },
    pin(peer, fingerprint) {
      pins.set(peer, fingerprint);
    },
    fingerprint(peer, long = false) {
      const s = sessions.get(peer);
      if (!s) return null;
      return long ? longFingerprint(s.fingerprint) : shortFingerprint(s.fingerprint);
    },
    hasSession: (peer) => sessions.has(peer),
    async sendFile(peer, path) {
      if (!sessions.has(peer)) throw noSession(peer);
      refuseIfDistrusted(peer);
      try {
        await transfers.send(peer, path);
      } catch (err) {
        if (err instanceof TransferError) throw new ChatError(err.code, err.message, err.peer ?? peer);
        throw err;
      }
    },
    async broadcastFile(path) {
      const members = broadcastMembers();
      try {
        await transfers.send(members, path, true);
      } catch (err) {
        if (err instanceof TransferError) throw new ChatError(err.code, err.message, err.peer);
        throw err;
      }
    },
    cancel: (prefix) => transfers.cancel(prefix),
    awaitingAnswer: (prefix) => transfers.awaitingAnswer(prefix),
    cancellable: () => transfers.cancellable(),
    activeTransfers: () => transfers.active(),
    stopAccepting: () => transfers.stopAccepting(),
    holdEvents: (hold) => link.holdReading(hold),
    async writable() {
      if (link.backlog > 1024 * 1024) await link.drained(256 * 1024);
      while (heldTooMuch() && !disconnected) await new Promise<void>((resolve) => heldWaiters.push(resolve));
    },
    async flush() {
      sealBroadcast();
      for (const s of sessions.values()) sealQueued(s, true);
      await link.drained(0);
    },
    async close() {
      closing = true;
      sealBroadcast();
      eraseOwnKey(ownKey);
      for (const k of peerKeys.values()) erasePeerKey(k);
      transfers.cancel("");
      transfers.abandon(null, "closed before the receiver confirmed the file"); // sent in full, not cancellable
      for (const s of sessions.values()) sealQueued(s, true);
      for (const peer of [...sessions.keys()]) {
        const s = sessions.get(peer)!;
        s.send.erase(), s.receive.erase(), wipe(s.fingerprint);
      }
      sessions.clear();
      for (const peer of exchanges.peers()) exchanges.end(peer);
      await link.drained(0);
      link.close();
      await closed;
      if (closeError) throw closeError;
    },
    closed,
  };
}
