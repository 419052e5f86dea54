// The transparent relay: admits clients that prove knowledge of the join
// secret, gives each a random temporary ID, and forwards opaque bodies between
// IDs with the sender's ID stamped by the relay. It never parses a body,
// writes no files, and keeps nothing once a client is gone.
//
// Promises (each covered by tests/relay.*.test.ts):
//   - one connection's bad input (garbage, oversize frame, wrong proof,
//     silence) closes that connection only, with an `error` frame first;
//   - connections that do not join cannot keep joins out: when `maxPending`
//     connections are waiting to join, or `maxPendingPerSource` from one
//     source (IPv4 address or IPv6 /64), a new one evicts the oldest waiting
//     one (of that source if it is the source that is full);
//   - memory is bounded: frames over the limit are refused from the length
//     prefix; a recipient whose queue passes `queuePause` pauses the senders
//     that went on feeding it after `busy` (at the frame that did it, not at
//     the end of their read) until it drains below `queueLow`; past half of
//     `queueMax`, frames for it from the others are dropped (they are told),
//     and so are frames for any recipient with more than `queueLow` queued
//     while all queues together (a shared frame counted once) are above
//     `queueTotalMax`; a recipient that makes no
//     progress for `slowTimeoutMs`, or whose queue passes `queueMax`, is
//     disconnected as a slow consumer;
//   - clients joining and leaving cost the watching clients at most one
//     write each per presence interval, however fast they come and go
//     (presence.ts);
//   - one slow recipient does not hold up its senders' other traffic: past
//     `queueHigh` they are told it is `busy` (and `ready` once it drained),
//     so they can hold what can wait before the relay has to pause them;
//   - forwarding large files does not grow the relay's memory with the
//     garbage of its socket reads (collector.ts);
//   - no client ever waits on another unrelated client: all I/O is
//     non-blocking and timeouts are checked by one periodic sweep.
import type { Socket, TCPSocketListener } from "bun";
import { concat } from "../crypto/primitives.ts";
import { decodePayload, encodeFrame, FrameDecoder, FrameError, safeText, wholeFrame, type Frame } from "../wire/frame.ts";
import { Outbox } from "../wire/outbox.ts";
import { sourceBuckets } from "./buckets.ts";
import { churnCollector } from "./collector.ts";
import {
  clientProof,
  equalBytes,
  ERRORS,
  msgFrameHeader,
  newId,
  newNonce,
  NONCE_BYTES,
  parseSimpleSend,
  peerItems,
  peersFrame,
  rewriteSendAsMsg,
  PROOF_BYTES,
  RELAY_PROTOCOL_VERSION,
  relayProof,
  type ErrorCode,
} from "./protocol.ts";
import { presenceLog } from "./presence.ts";
import { localRoutes, type Endpoint, type Routes } from "./routes.ts";

export interface RelayOptions {
  host: string;
  port: number;
  /** Join secret; null runs an open relay (anyone may join). */
  secret: Uint8Array | null;
  /** Largest accepted frame payload after joining, in bytes. */
  maxFrame: number;
  maxClients: number;
  /**
   * Open connections of any kind (cmd/relay.ts sets it below the open-files limit).
   * Beyond it a new connection closes, at once, one that is closing or else the
   * oldest waiting to join, never a joined client; only if all are joined is it refused.
   */
  maxConnections: number;
  /** Connections that have not joined yet; at the limit a new one evicts the oldest. */
  maxPending: number;
  /** The same, per source address (IPv4) or /64 (IPv6). */
  maxPendingPerSource: number;
  /** Joined clients from one source (as maxPendingPerSource); a join past it gets `relay_full`. */
  maxClientsPerSource: number;
  /** Joins a second from one source, after a burst of JOIN_BURST_SECONDS' worth; a join past it gets `relay_full`. */
  joinRatePerSource: number;
  /** A recipient queue above this: its senders are told it is `busy`. */
  queueHigh: number;
  /** ... at or below this again: `ready`, and paused senders resume. */
  queueLow: number;
  /** ... above this: its senders are paused (they did not hold back). */
  queuePause: number;
  /** ... above this: the recipient is cut as a slow consumer. */
  queueMax: number;
  /** All queues together above this: frames for a recipient whose queue is above queueLow are dropped (they are told). */
  queueTotalMax: number;
  /** Bytes received of unfinished frames, all connections together, above which those that made the least progress are closed (evictSlowPartials). */
  partialTotalMax: number;
  joinTimeoutMs: number;
  slowTimeoutMs: number;
  /** Quiet connections are pinged after this long and dropped after three times as long. */
  pingIntervalMs: number;
  /** Most recipients in one `send`. */
  maxRecipients: number;
  /** Bytes per second of `peers` answers the connections of one source get together, after a burst of LIST_BURST_SECONDS' worth (answerList). */
  listAnswerRate: number;
  /** Presence batches (presence.ts) are this far apart per watching client ... */
  presencePerWatcherMs: number;
  /** ... and at most this far apart. */
  presenceMaxMs: number;
  /** A full garbage collection once forwarding grew the heap by this many bytes (collector.ts). */
  collectAfterGrowth: number;
  log: RelayLog;
}

export interface RelayLog {
  info(message: string): void;
  warn(message: string): void;
  /** Connection-level events, shown only with --verbose. */
  debug(message: string): void;
}

export const RELAY_DEFAULTS: Omit<RelayOptions, "secret" | "log"> = {
  host: "0.0.0.0",
  port: 5555,
  maxFrame: 256 * 1024,
  maxClients: 10_000,
  maxConnections: Number.POSITIVE_INFINITY,
  maxPending: 1_000,
  maxPendingPerSource: 100,
  maxClientsPerSource: 1_000,
  joinRatePerSource: 20,
  queueHigh: 1024 * 1024,
  queueLow: 256 * 1024,
  queuePause: 4 * 1024 * 1024,
  queueMax: 16 * 1024 * 1024,
  queueTotalMax: 256 * 1024 * 1024,
  partialTotalMax: 256 * 1024 * 1024,
  joinTimeoutMs: 5_000,
  slowTimeoutMs: 30_000,
  pingIntervalMs: 30_000,
  maxRecipients: 1_000,
  listAnswerRate: 64 * 1024,
  presencePerWatcherMs: 0.1,
  presenceMaxMs: 1_000,
  collectAfterGrowth: 16 * 1024 * 1024,
};

/** Frames before joining are tiny; anything bigger is hostile. */
const PRE_JOIN_MAX_FRAME = 1024;
/** A source may take this many seconds' worth of listAnswerRate in `peers` answers at once. */
const LIST_BURST_SECONDS = 4;
/** Past its allowance, a source's owed answers wait until this many seconds' worth of it are back (not one timer per answer). */
const LIST_RESUME_SECONDS = 0.05;
/** What a sender told a recipient is busy may still send it before it is paused (mustWait). */
const BUSY_ALLOWANCE = 256 * 1024;
/** A source may join this many seconds' worth of joinRatePerSource at once (a NAT's users after a relay restart). */
const JOIN_BURST_SECONDS = 10;
/** Most IDs in one `peers` answer. */
export const MAX_LISTED = 4096;
/** collector.ts looks at the heap after every this many bytes forwarded ... */
const COLLECT_CHECK_BYTES = 4 * 1024 * 1024;
/** ... and spends at most this share of the relay's time collecting. */
const COLLECT_SHARE = 0.05;
/** How long a closing connection may take to read its error frame and hang up. */
const CLOSE_GRACE_MS = 1_000;

interface Conn extends Endpoint {
  id: string; // "" until joined
  source: string; // sourceOf(remote address)
  socket: Socket<Conn>;
  decoder: FrameDecoder;
  outbox: Outbox;
  nonce: Uint8Array;
  openedAt: number;
  lastHeard: number;
  pinged: boolean;
  watch: boolean;
  /** It sent something through the relay (its leaving is then always announced, presence.ts). */
  spoke: boolean;
  // Backpressure, both ways round (each set mirrors the other, so a closing
  // connection is taken out of every one it is in):
  /** As a sender: the recipients whose queues it is paused on (its socket is paused while any). */
  pausedOn: Set<Conn>;
  /** As a sender: the recipients it was told are `busy`, with the bytes it sent each since. */
  busyOn: Map<Conn, number>;
  /** As a recipient: the senders paused until its queue drains. */
  waiters: Set<Conn>;
  /** As a recipient: the senders told it is `busy`; they are told `ready` when it drained or left. */
  told: Set<Conn>;
  /** The rest of a read, not handled yet because this connection was paused after a frame of it. */
  held: Uint8Array | null;
  /** A frame not handled yet because a recipient's queue was full: it goes first when this connection is released. */
  waiting: Uint8Array | null;
  /** `list`s it sent past its source's allowance, not answered yet (answerOwedLists). */
  listsOwed: number;
  /** It owes answers but its own queue was above queueHigh: they go on when it drained (the drain handler). */
  listParked: boolean;
  /** Its unfinished frame (partialSince) and the bytes of it received, as of the last sweep (evictSlowPartials). */
  markSince: number | null;
  markBytes: number;
  dirty: boolean;
  closing: boolean;
  closed: boolean;
}

export interface RelayStats {
  clients: number;
  pending: number;
  /** Summed over the connections now. */
  queuedBytes: number;
  /** The running total the queueTotalMax rule reads: queuedBytes, but a frame queued for several recipients counted once. */
  queuedTotal: number;
  maxQueuedBytes: number;
  /** Bytes received of unfinished frames, all connections together. */
  partialBytes: number;
  /** `list`s not answered yet (past their source's allowance), all connections together. */
  listsOwed: number;
  pausedSenders: number;
  /** Senders told some recipient is `busy` and not yet `ready` (each counted once per recipient). */
  busyTold: number;
  counters: Record<string, number>;
}

export interface Relay {
  readonly port: number;
  readonly host: string;
  stats(): RelayStats;
  /** Tells every client, closes every connection, stops listening. */
  stop(): Promise<void>;
}

export function startRelay(partial: Partial<RelayOptions> & Pick<RelayOptions, "secret" | "log">): Relay {
  const opt: RelayOptions = { ...RELAY_DEFAULTS, ...partial };
  if (!(opt.listAnswerRate >= 1)) throw new RangeError("listAnswerRate must be at least 1 byte a second");
  const routes: Routes<Conn> = localRoutes<Conn>();
  const conns = new Set<Conn>();
  /** Connections given a fatal error whose frame is still draining (CLOSE_GRACE_MS), oldest first. */
  const closingConns = new Set<Conn>();
  const counters: Record<string, number> = { connections: 0, joins: 0 };
  // Connections waiting to join (not joined, not closing), oldest first: all of them, and by source.
  const pending = new Set<Conn>();
  const pendingBySource = new Map<string, Set<Conn>>();
  const joinedBySource = new Map<string, number>();
  const joinTokens = sourceBuckets(opt.joinRatePerSource, opt.joinRatePerSource * JOIN_BURST_SECONDS);
  const listTokens = sourceBuckets(opt.listAnswerRate, opt.listAnswerRate * LIST_BURST_SECONDS); // bytes of `peers` answers
  const listOwing = new Map<string, { conns: Conn[]; timer: Timer | null }>(); // per source: connections owed answers, in turn, and the one timer that answers them
  let forwardedFrames = 0; // hot-path counters, kept out of the counters map
  let forwardedBytes = 0;
  let droppedBytes = 0; // bodies read and dropped (mustDrop)
  const queued = { bytes: 0 }; // in all outboxes together
  const collector = churnCollector({ checkBytes: COLLECT_CHECK_BYTES, growth: opt.collectAfterGrowth, share: COLLECT_SHARE });
  let dirty: Conn[] = [];
  /** Set by queue() when a queue passes queueHigh: consume() stops after the frame being handled. */
  let overfull = false;
  let stopping = false;
  const presence = presenceLog();
  /** The first MAX_LISTED + 1 joined IDs, encoded for `peers` answers; dropped when clients come or go. */
  let listed: { ids: string[]; items: Uint8Array } | null = null;
  let watchers = 0;
  let presenceTimer: Timer | null = null;
  let lastPresence = 0;

  const count = (key: string, n = 1) => void (counters[key] = (counters[key] ?? 0) + n);

  /**
   * Queues bytes for `c`; `shared`: one frame queued for many recipients
   * (Outbox.pushShared); `bulk`: one whole frame, written after `c`'s other
   * frames (Outbox.pushBulk, PROTOCOL §5.4).
   */
  function queue(c: Conn, bytes: Uint8Array, more?: Uint8Array, shared = false, bulk = false): void {
    if (c.closed) return;
    if (bulk) c.outbox.pushBulk(bytes, shared);
    else if (shared) c.outbox.pushShared(bytes);
    else c.outbox.push(bytes, more);
    if (c.outbox.bytes > opt.queueHigh) overfull = true;
    if (!c.dirty) {
      c.dirty = true;
      dirty.push(c);
    }
  }

  function sendFrame(c: Conn, frame: Frame): void {
    queue(c, encodeFrame(frame));
  }

  function sendError(c: Conn, code: ErrorCode, extra: { peer?: string; ref?: number; message?: string } = {}): void {
    const frame = encodeFrame({ t: "error", code, message: ERRORS[code].text, ...extra });
    // Says the peer is gone, as a `left` does: behind the bulk frames it sent before it left, too (found in review).
    queue(c, frame, undefined, false, code === "unknown_peer" && c.outbox.bulkBytes > 0);
  }

  /**
   * Ends a connection: error frame, half-close, hard close after a grace period.
   * A slow consumer is cut at once instead: its queue may end mid-frame, so no
   * error frame could follow it cleanly, and it is not reading anyway.
   */
  function fatal(c: Conn, code: ErrorCode, message?: string): void {
    if (c.closing || c.closed) return;
    count(`closed_${code}`);
    c.closing = true;
    unpend(c);
    leave(c);
    if (code === "slow_consumer") {
      c.outbox.close();
      c.socket.terminate();
      return;
    }
    sendError(c, code, message ? { message } : {});
    closingConns.add(c);
    setTimeout(() => c.closed || c.socket.terminate(), CLOSE_GRACE_MS).unref();
  }

  /** Closes a closing connection without its grace: what its queue holds is written first, then the socket is closed (at once, so its descriptor is free). */
  function closeNow(c: Conn): void {
    c.outbox.flush();
    c.socket.terminate();
  }

  /**
   * Registers a new connection as waiting to join. If its source, or the relay,
   * already has as many waiting as allowed, the oldest of them is evicted: a
   * refusal would let anyone who holds that many idle connections keep every
   * real client out, while eviction makes them open more than the limit
   * within one real join's round trip, and one source can only evict its own.
   */
  function pend(c: Conn): void {
    const mine = pendingBySource.get(c.source);
    const full = mine && mine.size >= opt.maxPendingPerSource ? mine : pending.size >= opt.maxPending ? pending : null;
    if (full) {
      count("pendingEvicted");
      fatal(full.values().next().value!, "relay_full", "too many connections waiting to join");
    }
    pending.add(c);
    // Looked up again: evicting this source's last one dropped its set.
    pendingBySource.set(c.source, (pendingBySource.get(c.source) ?? new Set<Conn>()).add(c));
  }

  /** Forgets a connection that joined or is closing. */
  function unpend(c: Conn): void {
    if (!pending.delete(c)) return;
    const mine = pendingBySource.get(c.source)!;
    mine.delete(c);
    if (mine.size === 0) pendingBySource.delete(c.source);
  }

  /** Removes a joined client from the routes and tells watchers. */
  function leave(c: Conn): void {
    forgetSender(c);
    releaseWaiters(c);
    if (!c.id || routes.get(c.id) !== c) return;
    routes.remove(c.id);
    const fromSource = joinedBySource.get(c.source)! - 1;
    if (fromSource > 0) joinedBySource.set(c.source, fromSource);
    else joinedBySource.delete(c.source);
    listed = null;
    if (c.watch) watchers--;
    opt.log.debug(`client ${c.id} left (${routes.size} online)`);
    // At shutdown every client is told once (`shutdown`), not once per other client leaving: N² frames.
    if (!stopping) {
      presence.left(c.id, c.spoke);
      tellSoon();
    }
  }

  /**
   * Schedules the next presence batch (presence.ts): batches are at most one
   * interval apart, 0.1 ms per watcher and at most 1 s, so that telling
   * everyone costs at most about one write per watcher per interval.
   */
  function tellSoon(): void {
    if (presenceTimer) return;
    const interval = Math.min(opt.presenceMaxMs, watchers * opt.presencePerWatcherMs);
    presenceTimer = setTimeout(tellPresence, Math.max(0, lastPresence + interval - performance.now()));
  }

  function listedIds(): { ids: string[]; items: Uint8Array } {
    const ids: string[] = [];
    for (const id of routes.ids()) if (ids.push(id) > MAX_LISTED) break;
    return { ids, items: peerItems(ids) };
  }

  function tellPresence(): void {
    presenceTimer = null;
    lastPresence = performance.now();
    const frames = presence.take();
    if (!frames.length) return;
    // Behind a watcher's waiting bulk frames: a `left` must not overtake what the peer sent before it left.
    for (const w of routes.endpoints()) if (w.watch && !w.closing) queue(w, frames, undefined, true, w.outbox.bulkBytes > 0);
    flushDirty(null);
  }

  /** Tells `sender` that recipient `r` is busy (once until r is ready). */
  function tellBusy(sender: Conn, r: Conn): void {
    if (r === sender || !r.id || r.told.has(sender)) return;
    r.told.add(sender);
    sender.busyOn.set(r, 0);
    sendFrame(sender, { t: "busy", peer: r.id });
    count("busy");
  }

  /**
   * Whether `sender` is to wait for `r`: only while r's queue is above
   * queuePause, and once it has sent `r` more than BUSY_ALLOWANCE since it
   * was told `r` is busy (it did not hold back). A client that holds back
   * (smts holds file chunks) still sends a message now and then, and someone
   * else filling `r`'s queue must not get it paused, with all its other
   * traffic.
   */
  function mustWait(sender: Conn, r: Conn): boolean {
    if (r.outbox.bytes <= opt.queuePause) return false;
    tellBusy(sender, r); // if not told yet: its allowance starts now
    return (sender.busyOn.get(r) ?? 0) > BUSY_ALLOWANCE;
  }

  /**
   * Whether a frame for `r` from a sender that need not wait is dropped: once
   * r's queue is above half of queueMax, so that many senders cannot get `r`
   * cut, and once all queues together are above queueTotalMax, if r's is
   * above queueLow, so that many slow readers cannot take the relay's memory.
   * It used to pause such senders instead, and then a slow reader whose
   * friends kept its queue full could mute anyone who sent it one message
   * (found in audit). The sender is told (`recipient_full`); nothing else it
   * sends waits.
   */
  const mustDrop = (r: Conn) => r.outbox.bytes > opt.queueMax / 2 || (queued.bytes > opt.queueTotalMax && r.outbox.bytes > opt.queueLow);

  function dropFor(sender: Conn, r: Conn, bytes: number, refField: { ref?: number }): void {
    count("drops");
    droppedBytes += bytes; // garbage as much as forwarded bytes are (collector.after)
    sendError(sender, "recipient_full", { peer: r.id, ...refField });
  }

  /** Counts a frame from `sender` to `r` against its allowance, once told `r` is busy. */
  function charge(sender: Conn, r: Conn, bytes: number): void {
    const since = sender.busyOn.size ? sender.busyOn.get(r) : undefined;
    if (since !== undefined) sender.busyOn.set(r, since + bytes);
  }

  /** Stops reading from `sender` until `r` drained (or left). */
  function pauseOn(sender: Conn, r: Conn): void {
    if (r.waiters.has(sender)) return;
    r.waiters.add(sender);
    sender.pausedOn.add(r);
    if (sender.pausedOn.size === 1) sender.socket.pause();
    count("pauses");
  }

  /** `c` drained (or is leaving): its senders are told `ready` and released. */
  function releaseWaiters(c: Conn): void {
    for (const s of c.told) {
      s.busyOn.delete(c);
      if (!stopping) sendFrame(s, { t: "ready", peer: c.id }); // at shutdown everyone gets `shutdown` instead
    }
    c.told.clear();
    for (const w of c.waiters) {
      w.pausedOn.delete(c);
      if (w.pausedOn.size === 0) {
        w.socket.resume();
        // Its waiting frame and the rest of its last read go first (not from inside a flush: consume() flushes).
        if (w.held || w.waiting) queueMicrotask(() => w.pausedOn.size === 0 && !w.closing && consume(w, null));
      }
    }
    c.waiters.clear();
  }

  /** `c` is leaving: it is no longer anyone's sender. */
  function forgetSender(c: Conn): void {
    for (const r of c.busyOn.keys()) r.told.delete(c);
    for (const r of c.pausedOn) r.waiters.delete(c);
    c.busyOn.clear();
    c.pausedOn.clear();
  }

  /**
   * Handles the frames of `chunk` (after any waiting frame and held rest) from
   * `c`. A frame for a recipient whose queue is above queuePause is not handled:
   * it waits, c is paused on that recipient, and the rest of the read is kept,
   * until the recipient drains. A frame that takes some queue past queueHigh
   * (a recipient's, or c's own with answers it does not read) stops the walk
   * too: the queues are flushed, c is told a recipient still above queueHigh
   * is `busy`, and c is paused the same way on its own queue still above
   * queueHigh or a recipient's above queuePause. So a queue gets at most one
   * frame past queuePause (queueHigh for answers), whatever the number of
   * senders and however many frames one read holds.
   */
  function consume(c: Conn, chunk: Uint8Array | null): void {
    let rest = c.held && chunk ? concat(c.held, chunk) : (c.held ?? chunk ?? new Uint8Array(0));
    c.held = null;
    let budget = FRAMES_PER_TURN;
    const handled = (payload: Uint8Array) => {
      const full = handleFrame(c, payload);
      if (!full) return true;
      c.waiting = payload;
      pauseOn(c, full); // it was told `busy` (mustWait)
      return false;
    };
    try {
      const waiting = c.waiting;
      c.waiting = null;
      const goOn = !waiting || handled(waiting);
      if (waiting) flushDirty(c); // c's frame, and the backpressure it causes, are c's
      if (goOn) {
        while (rest.length > 0 && !c.closing && c.pausedOn.size === 0 && budget > 0) {
          overfull = false;
          const used = c.decoder.each(rest, (payload) => !c.closing && handled(payload) && !overfull && --budget > 0);
          rest = rest.subarray(used);
          flushDirty(c);
        }
        // Its turn is over: the others' reads first, then the rest of this one.
        if (budget <= 0 && rest.length > 0 && !c.closing && c.pausedOn.size === 0) {
          count("yields");
          c.socket.pause();
          setImmediate(() => {
            if (c.closed || c.closing || c.pausedOn.size > 0) return; // a release (releaseWaiters) resumes it then
            c.socket.resume();
            consume(c, null);
          });
        }
      }
    } catch (err) {
      // FrameError, or anything else hostile input managed to provoke:
      // either way it ends this connection only.
      count("badFrames");
      if (err instanceof FrameError) fatal(c, err.code, err.message);
      else fatal(c, "bad_frame", "frame could not be processed");
      flushDirty(c);
    }
    if (rest.length > 0 && !c.closing) c.held = rest;
  }

  /**
   * Frames of one connection handled in one go: Bun hands over reads of up to
   * 512 KiB, and one read of 43,691 `list` frames (or sends to 1000 offline
   * IDs) kept every other client waiting 70-100 ms, reads back to back for
   * 1-2 s (found in audit). Past this many, the connection is paused, and the
   * rest of its read handled after the others' (setImmediate).
   */
  const FRAMES_PER_TURN = 1024;
  /** Bytes per ms (16 KiB/s) a frame must arrive at, on average, beyond slowTimeout (sweep). */
  const FRAME_MIN_RATE = 16;

  /** Flushes every connection written to since the last call; applies backpressure to `sender`. */
  function flushDirty(sender: Conn | null): void {
    const list = dirty;
    dirty = [];
    for (const r of list) {
      r.dirty = false;
      if (r.closed) continue;
      r.outbox.flush();
      unparkLists(r);
      if (r.closing) {
        if (r.outbox.bytes === 0) r.socket.shutdown();
        continue;
      }
      if (r.outbox.bytes > opt.queueMax) {
        fatal(r, "slow_consumer");
        continue;
      }
      if (!sender || sender.closing || r.outbox.bytes <= opt.queueHigh) continue;
      // A sender's own queue (answers it does not read) pauses it at once; a
      // recipient's first makes it `busy`, and pauses it only past queuePause.
      tellBusy(sender, r);
      if (r === sender || mustWait(sender, r)) pauseOn(sender, r);
    }
    if (dirty.length) flushDirty(null); // fatal() above may have queued error frames
    else collector.after(forwardedBytes + droppedBytes);
  }

  function handleJoin(c: Conn, f: Frame): void {
    if (f.t !== "join") return fatal(c, "not_joined");
    if (f.v !== RELAY_PROTOCOL_VERSION) return fatal(c, "version", `relay speaks version ${RELAY_PROTOCOL_VERSION}`);
    const { proof, nonce } = f;
    if (!(proof instanceof Uint8Array) || proof.length !== PROOF_BYTES || !(nonce instanceof Uint8Array) || nonce.length !== NONCE_BYTES) {
      return fatal(c, "bad_frame", "join needs a 32-byte proof and a 32-byte nonce");
    }
    if (opt.secret && !equalBytes(proof, clientProof(opt.secret, c.nonce, nonce))) {
      count("authFailures");
      return fatal(c, "auth_failed");
    }
    if (routes.size >= opt.maxClients) return fatal(c, "relay_full");
    // One host must not fill the relay (found in audit: one address joined 10,000 clients in 7.7 s).
    const fromSource = joinedBySource.get(c.source) ?? 0;
    if (fromSource >= opt.maxClientsPerSource) return fatal(c, "relay_full", "too many clients from one address");
    // Nor flood every watcher with presence by joining and leaving in a loop (found in audit: 145 KB/s each).
    const now = performance.now();
    if (joinTokens.level(c.source, now) < 1) return fatal(c, "relay_full", "too many joins from one address; try again in a few seconds");
    joinTokens.spend(c.source, 1, now);
    joinedBySource.set(c.source, fromSource + 1);
    let id = newId();
    while (routes.get(id)) id = newId();
    c.id = id;
    c.watch = f.watch !== false;
    c.decoder.maxPayload = opt.maxFrame;
    unpend(c);
    presence.joined(id, c.watch);
    tellSoon();
    routes.add(c);
    listed = null;
    if (c.watch) watchers++;
    count("joins");
    opt.log.debug(`client ${id} joined (${routes.size} online)`);
    const welcome: Frame = { t: "welcome", v: RELAY_PROTOCOL_VERSION, id, maxFrame: opt.maxFrame, bulk: true };
    if (opt.secret) welcome.proof = relayProof(opt.secret, c.nonce, nonce);
    sendFrame(c, welcome);
  }

  /** A recipient among `ids` that `c` must wait for (mustWait): a frame for it waits (see consume). */
  function fullRecipient(c: Conn, ids: string[]): Conn | null {
    for (const id of ids) {
      const r = routes.get(id);
      if (r && mustWait(c, r)) return r;
    }
    return null;
  }

  /** Forwards a `send`; returns, without doing anything, a recipient whose queue is full. */
  function handleSend(c: Conn, f: { to?: unknown; body?: unknown; ref?: unknown }, bulk: boolean): Conn | void {
    const { to, body, ref } = f;
    if (ref !== undefined && !(Number.isSafeInteger(ref) && (ref as number) >= 0)) {
      return sendError(c, "bad_request", { message: "ref must be a non-negative integer" });
    }
    const refField = ref === undefined ? {} : { ref: ref as number };
    if (!(body instanceof Uint8Array)) return sendError(c, "bad_request", { ...refField, message: "body must be binary" });
    let recipients: string[];
    if (typeof to === "string") recipients = [to];
    else if (Array.isArray(to) && to.length > 0 && to.length <= opt.maxRecipients && to.every((x) => typeof x === "string")) {
      recipients = [...new Set(to as string[])];
    } else {
      return sendError(c, "bad_request", { ...refField, message: `to must be an ID or a list of 1..${opt.maxRecipients} IDs` });
    }
    const full = fullRecipient(c, recipients);
    if (full) return full;
    let header: Uint8Array | null = null;
    let shared: Uint8Array | null = null; // a small frame to several recipients: built once, shared by their queues
    for (const id of recipients) {
      const r = routes.get(id);
      if (!r) {
        sendError(c, "unknown_peer", { peer: id.slice(0, 32), ...refField });
        continue;
      }
      if (mustDrop(r)) {
        dropFor(c, r, body.length, refField);
        continue;
      }
      header ??= msgFrameHeader(c.id, body.length);
      c.spoke = true;
      charge(c, r, body.length);
      if (recipients.length > 1) queue(r, (shared ??= concat(header, body)), undefined, true, bulk);
      else if (bulk) queue(r, concat(header, body), undefined, false, true); // a bulk frame is queued whole
      else queue(r, header, body); // a large body is not copied (unless a small part of its read: Outbox's PIN)
      forwardedFrames++;
      forwardedBytes += body.length;
    }
  }

  /** The hot path: the frame becomes the `msg` in place and is forwarded as it arrived, never copied when large. */
  function forwardSimpleSend(c: Conn, payload: Uint8Array, to: string, bodyLength: number, bulk: boolean): Conn | void {
    const r = routes.get(to);
    if (!r) return sendError(c, "unknown_peer", { peer: to });
    if (mustWait(c, r)) return r; // before the rewrite: the frame is handled again later
    if (mustDrop(r)) return dropFor(c, r, bodyLength, {});
    c.spoke = true;
    charge(c, r, bodyLength);
    rewriteSendAsMsg(payload, c.id);
    queue(r, wholeFrame(payload), undefined, false, bulk);
    forwardedFrames++;
    forwardedBytes += bodyLength;
  }

  /**
   * A 12-byte `list` is answered with up to 37 KB of IDs: unlimited, one
   * client's uplink could make the relay send thousands of times as much
   * (found in audit). The connections of one source (as for joins) get
   * listAnswerRate bytes of answers a second together, after a burst of
   * LIST_BURST_SECONDS' worth: per connection, a host holding a thousand of
   * them, or reconnecting, got a thousand bursts (found in review). A `list`
   * past that is owed: answered, in order, once the allowance is back above
   * LIST_RESUME_SECONDS' worth (an answer may take it below zero, so any size
   * goes). Owing costs a count, and the connection's other frames go on.
   */
  function answerList(c: Conn): void {
    // Behind the source's owing connections too: answered at once, a client asking as soon as the
    // allowance turned positive kept the others of its address waiting (found in review).
    const now = performance.now();
    if (c.listsOwed > 0 || listOwing.has(c.source) || listTokens.level(c.source, now) <= 0) {
      count("listsOwed");
      if (c.listsOwed++ === 0) owe(c);
      return;
    }
    sendPeers(c, now);
  }

  function sendPeers(c: Conn, now: number): void {
    // At most MAX_LISTED IDs (~40 KiB), so the answer always fits a frame.
    listed ??= listedIds();
    const skip = listed.ids.indexOf(c.id);
    const others = listed.ids.length - (skip >= 0 ? 1 : 0);
    const answer = peersFrame(listed.items, skip, Math.min(others, MAX_LISTED), routes.size - 1 > MAX_LISTED);
    listTokens.spend(c.source, answer.length, now);
    queue(c, answer);
  }

  /**
   * Puts `c` in its source's turn for owed answers. One timer per source, not
   * per connection: a thousand connections owing answers each woke for every
   * refill, to find one of them had taken it (found in review).
   */
  function owe(c: Conn): void {
    let o = listOwing.get(c.source);
    if (!o) listOwing.set(c.source, (o = { conns: [], timer: null }));
    o.conns.push(c);
    if (o.timer) return;
    const short = opt.listAnswerRate * LIST_RESUME_SECONDS - listTokens.level(c.source, performance.now());
    o.timer = setTimeout(() => answerOwedLists(c.source), Math.max(0, Math.ceil((short * 1000) / opt.listAnswerRate)));
    o.timer.unref();
  }

  /** `c`'s owed answers, held while its queue was above queueHigh, take their turn again once it is not. */
  function unparkLists(c: Conn): void {
    if (!c.listParked || c.closing || c.outbox.bytes > opt.queueHigh) return;
    c.listParked = false;
    owe(c);
  }

  /** Answers owed lists of `source`'s connections, one each in turn, while its allowance lasts. */
  function answerOwedLists(source: string): void {
    const o = listOwing.get(source)!;
    listOwing.delete(source);
    for (let now = performance.now(); o.conns.length && listTokens.level(source, now) > 0; now = performance.now()) {
      const c = o.conns.shift()!;
      if (c.closing || c.closed) continue;
      // Not into a queue it does not read: the answers wait for it to drain (found in review: a timer every 50 ms until then).
      if (c.outbox.bytes > opt.queueHigh) {
        c.listParked = true;
        continue;
      }
      c.listsOwed--;
      sendPeers(c, now);
      if (c.listsOwed > 0) o.conns.push(c);
    }
    for (const c of o.conns) if (!c.closing && !c.closed) owe(c);
    flushDirty(null);
  }

  /** Handles one frame; returns, without handling it, a recipient whose queue is full. */
  function handleFrame(c: Conn, payload: Uint8Array): Conn | void {
    if (c.id) {
      const simple = parseSimpleSend(payload);
      if (simple) return forwardSimpleSend(c, payload, simple.to, simple.body.length, simple.bulk);
    }
    const f = decodePayload(payload);
    if (!c.id) return handleJoin(c, f);
    switch (f.t) {
      case "send":
      case "bulk":
        return handleSend(c, f, f.t === "bulk");
      case "list":
        return answerList(c);
      case "ping":
        return sendFrame(c, { t: "pong" });
      case "pong":
        return;
      default:
        return sendError(c, "bad_request", { message: `unknown frame type ${safeText(f.t, 32)}` });
    }
  }

  function sweep(): void {
    const now = performance.now();
    joinTokens.prune(now);
    listTokens.prune(now);
    for (const c of conns) {
      if (c.closing || c.closed) continue;
      if (!c.id) {
        if (now - c.openedAt > opt.joinTimeoutMs) fatal(c, "join_timeout");
        continue;
      }
      if (c.outbox.bytes > 0 && now - c.outbox.lastProgress > opt.slowTimeoutMs) {
        fatal(c, "slow_consumer");
        continue;
      }
      // A sender we paused cannot be heard from, nor its frame arrive: that wait is our doing.
      if (c.pausedOn.size > 0) {
        c.lastHeard = now;
        if (c.decoder.partialSince !== null) c.decoder.partialSince = now;
      }
      // A frame is given slowTimeout, plus its length at FRAME_MIN_RATE, to arrive: the bytes
      // of an unfinished frame are held, and 1000 clients each holding 255 KiB of one that
      // never finished pinned 303 MiB, counted nowhere (found in audit).
      const since = c.decoder.partialSince;
      if (since !== null && now - since > opt.slowTimeoutMs + c.decoder.partialLength / FRAME_MIN_RATE) {
        fatal(c, "idle_timeout", "a frame took too long to arrive");
        continue;
      }
      const quiet = now - c.lastHeard;
      if (quiet > 3 * opt.pingIntervalMs) fatal(c, "idle_timeout");
      else if (quiet > opt.pingIntervalMs && !c.pinged) {
        c.pinged = true;
        sendFrame(c, { t: "ping" });
      }
    }
    evictSlowPartials(now);
    flushDirty(null);
  }

  /**
   * Each connection's unfinished frame is bounded (maxFrame, and the time
   * above), but not all of them together: 10,000 clients each sending most
   * of a 256 KiB frame, slowly, held 2.5 GiB (found in audit). Past
   * partialTotalMax of bytes received, frames go with their connections:
   * first those that stalled since the last sweep (less than FRAME_MIN_RATE,
   * the least an honest frame is held to), from the source holding the most
   * unfinished bytes first, then by least progress and lowest average rate.
   * Ranked by average rate alone, a frame sent nearly whole and then held
   * outranked an honest slow sender for seconds; by progress alone, a client
   * adding a byte to each of a thousand frames at every sweep pushed out
   * honest frames that paused for one (both found in review). A frame begun
   * since the last sweep has not shown its pace yet and is not taken, nor
   * one with nothing but its length prefix in (closing it frees nothing).
   * Counting the lengths the prefixes announce instead (the decoder
   * allocates that much at once, but its pages take memory only as bytes
   * fill them) let 4-byte prefixes on fresh connections push the total past
   * the cap, and honest frames still arriving were then closed to make room
   * (found in review).
   */
  let lastPartialCheck = performance.now();
  function evictSlowPartials(now: number): void {
    const stallBelow = FRAME_MIN_RATE * (now - lastPartialCheck);
    lastPartialCheck = now;
    let total = 0;
    const bySource = new Map<string, number>();
    const seen: { c: Conn; stalled: boolean; progress: number; rate: number }[] = [];
    for (const c of conns) {
      const since = c.decoder.partialSince;
      const bytes = c.decoder.buffered;
      const progress = since !== null && since === c.markSince ? bytes - c.markBytes : -1;
      c.markSince = since;
      c.markBytes = bytes;
      if (since === null || c.closing || c.closed) continue;
      total += bytes;
      bySource.set(c.source, (bySource.get(c.source) ?? 0) + bytes);
      if (progress >= 0 && bytes > 0) seen.push({ c, stalled: progress < stallBelow, progress, rate: bytes / Math.max(1, now - since) }); // closing a frame of no bytes frees nothing
    }
    if (total <= opt.partialTotalMax) return;
    const held = (x: { c: Conn }) => bySource.get(x.c.source)!;
    seen.sort((a, b) => Number(b.stalled) - Number(a.stalled) || held(b) - held(a) || a.progress - b.progress || a.rate - b.rate);
    for (const { c } of seen) {
      if (total <= opt.partialTotalMax) break;
      total -= c.decoder.buffered;
      count("partialEvicted");
      fatal(c, "idle_timeout", "a frame took too long to arrive (the relay holds too many unfinished frames)");
      c.decoder = new FrameDecoder(PRE_JOIN_MAX_FRAME); // its frame's buffer goes now, not at the close (a closing connection reads nothing)
    }
  }
  const sweepEvery = Math.max(10, Math.min(1000, opt.joinTimeoutMs / 4, opt.slowTimeoutMs / 4, opt.pingIntervalMs / 4));
  const sweeper = setInterval(sweep, sweepEvery);

  const listener: TCPSocketListener<Conn> = Bun.listen<Conn>({
    hostname: opt.host,
    port: opt.port,
    socket: {
      open(socket) {
        const now = performance.now();
        const c: Conn = {
          id: "",
          source: sourceOf(socket.remoteAddress ?? ""),
          socket,
          decoder: new FrameDecoder(PRE_JOIN_MAX_FRAME),
          outbox: new Outbox(socket, queued),
          nonce: newNonce(),
          openedAt: now,
          lastHeard: now,
          pinged: false,
          watch: false,
          spoke: false,
          pausedOn: new Set(),
          busyOn: new Map(),
          waiters: new Set(),
          told: new Set(),
          held: null,
          waiting: null,
          listsOwed: 0,
          listParked: false,
          markSince: null,
          markBytes: 0,
          dirty: false,
          closing: false,
          closed: false,
          send(piece, more) {
            queue(c, piece, more);
          },
          get backlog() {
            return c.outbox.bytes;
          },
        };
        socket.data = c;
        conns.add(c);
        count("connections");
        socket.setNoDelay(true);
        // Past the descriptor budget, idle connections (a flood) must not keep a
        // join out (found in audit): a closing one goes now (its error frame is
        // written, and terminate() closes at once), else the oldest waiting one.
        if (conns.size > opt.maxConnections && !stopping) {
          const victim = closingConns.values().next().value ?? pending.values().next().value;
          if (victim && !victim.closing) count("pendingEvicted"), fatal(victim, "relay_full", "too many connections waiting to join");
          if (victim) closeNow(victim);
        }
        if (stopping) fatal(c, "shutdown");
        else if (routes.size >= opt.maxClients || conns.size > opt.maxConnections) {
          fatal(c, "relay_full");
          if (conns.size > opt.maxConnections) closeNow(c); // over the budget: no descriptor held for the grace
        }
        else {
          pend(c);
          sendFrame(c, { t: "challenge", v: RELAY_PROTOCOL_VERSION, nonce: c.nonce, open: opt.secret === null });
        }
        flushDirty(null);
      },
      data(socket, chunk) {
        const c = socket.data;
        if (c.closing || c.closed) return; // discard input while the error frame drains
        c.lastHeard = performance.now();
        c.pinged = false;
        consume(c, chunk);
      },
      drain(socket) {
        const c = socket.data;
        if (c.closed) return;
        c.outbox.flush();
        unparkLists(c);
        if (c.closing) {
          if (c.outbox.bytes === 0) socket.shutdown();
        } else if (c.outbox.bytes <= opt.queueLow && (c.waiters.size || c.told.size)) {
          releaseWaiters(c);
          flushDirty(null);
        }
      },
      close(socket) {
        const c = socket.data;
        if (c.closed) return;
        unpend(c);
        leave(c);
        c.closed = true;
        c.held = c.waiting = null; // what it sent and we had not handled yet goes with it (found in review)
        c.outbox.close();
        conns.delete(c);
        closingConns.delete(c);
        flushDirty(null);
      },
      error(socket, err) {
        opt.log.debug(`socket error: ${err.message}`);
      },
    },
  });

  return {
    port: listener.port,
    host: opt.host,
    stats() {
      let queuedBytes = 0;
      let maxQueuedBytes = 0;
      let partialBytes = 0;
      let listsOwed = 0;
      let pausedSenders = 0;
      let busyTold = 0;
      for (const c of conns) {
        queuedBytes += c.outbox.bytes;
        if (!c.closing && c.decoder.partialSince !== null) partialBytes += c.decoder.buffered; // as evictSlowPartials counts
        listsOwed += c.listsOwed;
        maxQueuedBytes = Math.max(maxQueuedBytes, c.outbox.bytes);
        if (c.pausedOn.size > 0) pausedSenders++;
        busyTold += c.told.size;
      }
      return { clients: routes.size, pending: pending.size, queuedBytes, queuedTotal: queued.bytes, maxQueuedBytes, partialBytes, listsOwed, pausedSenders, busyTold, counters: { ...counters, framesForwarded: forwardedFrames, bytesForwarded: forwardedBytes, collections: collector.runs } };
    },
    async stop() {
      stopping = true;
      clearInterval(sweeper);
      for (const o of listOwing.values()) if (o.timer) clearTimeout(o.timer);
      listOwing.clear();
      if (presenceTimer) clearTimeout(presenceTimer);
      for (const c of conns) fatal(c, "shutdown");
      flushDirty(null);
      const deadline = performance.now() + CLOSE_GRACE_MS + 200;
      while (conns.size > 0 && performance.now() < deadline) await Bun.sleep(10);
      for (const c of conns) c.socket.terminate();
      listener.stop(true);
    },
  };
}

/**
 * The source a waiting connection is counted against: its IPv4 address
 * (also when it arrives IPv4-mapped on an IPv6 socket), or the /64 of its
 * IPv6 address, since one host is usually given a whole /64.
 */
export function sourceOf(address: string): string {
  const v4 = /^(?:::ffff:)?(\d+\.\d+\.\d+\.\d+)$/i.exec(address);
  if (v4) return v4[1]!;
  const bare = address.replace(/%.*$/, ""); // zone index, as in fe80::1%eth0
  if (!bare.includes(":")) return bare;
  const [head = "", tail] = bare.split("::");
  const groups = head ? head.split(":") : [];
  if (tail !== undefined) {
    // "::" stands for the zero groups that make eight (a trailing IPv4 part counts as two).
    const rest = tail ? tail.split(":") : [];
    const given = groups.length + rest.length + (rest.at(-1)?.includes(".") ? 1 : 0);
    groups.push(...Array<string>(Math.max(0, 8 - given)).fill("0"), ...rest);
  }
  return `${groups.slice(0, 4).map((g) => parseInt(g, 16).toString(16)).join(":")}::/64`;
}
