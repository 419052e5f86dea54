// File transfers over established sessions (docs/PROTOCOL.md, "File layer").
//
//   sender                                   receiver
//   record {t:"offer", id, name, size, key} →
//                     ← record {t:"accept", id} | {t:"decline", id, reason}
//   chunk 0 … chunk n (last)                →   (verified, written to a temp file)
//                     ← record {t:"done", id, mac} | {t:"failed", id, reason}
//   either side: record {t:"cancel", id}
//
// A broadcast file (/bsend) is offered to every recipient over its own
// session with the same file ID and key, and its chunks are encrypted once
// and sent once, addressed to all recipients that accepted: the relay copies
// them. Each recipient succeeds or fails on its own; the sender is told per
// recipient. Recipients of a broadcast file share its key, so one of them
// (with the relay's help) could forge chunks for another; a broadcast offer
// therefore carries the file's SHA-256, which each recipient checks before
// it keeps the file: the offer travels over its own pairwise session.
//
// Promises: a file is never held whole in memory (128 KiB chunks; the sender
// reads only as fast as its socket drains, the receiver writes each chunk
// before reading the next); chunks wait while the relay reports a recipient
// `busy`, so a receiver that reads slowly does not hold up our other traffic;
// the receiver enforces its own size limit on the bytes it actually receives;
// a file appears under its final name only after the last chunk verified and
// the size matched, and any failure removes the temporary file; existing
// files are never overwritten.
import { closeSync, constants, fstatSync, openSync, readSync, statfsSync, unlinkSync, writeSync, type StatsFs } from "node:fs";
import { basename, join, resolve } from "node:path";
import { formatSize } from "../cli/size.ts";
import { equalBytes, randomBytes, wipe } from "../crypto/primitives.ts";
import type { Frame } from "../wire/frame.ts";
import { CHUNK_BYTES, DN_BYTES, doneMac, FILE_ID_BYTES, fileKeys, openChunk, PAD_ROOM, sealChunkInPlace, type FileKeys } from "./chunks.ts";
import { claimFinalName, removeStaleParts, safeName, tempName } from "./names.ts";

export type TransferEvent =
  | { event: "transfer"; id: string; peer: string; direction: "in" | "out"; name: string; size: number; state: "queued" | "offered" | "sending" | "receiving" | "declined" | "failed" | "cancelled"; reason?: string }
  | { event: "progress"; id: string; peer: string; direction: "in" | "out"; name: string; bytes: number; size: number }
  | { event: "file"; from: string; id: string; name: string; path: string; size: number; sha256: string; broadcast: boolean; verified: boolean }
  | { event: "delivered"; to: string; id: string; name: string; size: number; sha256: string; verified: boolean };

export interface TransferDeps {
  /** Sends a record content to the peer (authenticated, in order with messages). */
  sendContent(peer: string, item: Frame): void;
  /** Sends a file chunk, an E2E message outside the session records, in the link's bulk lane: what sendContent sends overtakes it. */
  sendChunk(to: string | string[], frame: Frame, owner: object): void;
  /** Forgets the chunks sent with this owner that have not begun to leave: their file is over. */
  dropChunks(owner: object): void;
  /** Bytes of chunks queued on the link (its bulk lane): what a sending transfer waits on. */
  chunkBacklog(): number;
  chunksDrained(bytes: number): Promise<void>;
  /**
   * True while far more waits to be sent than any transfer queues (the relay
   * is not taking our data), or while `peer` is not reading what we sent it
   * (the relay said it is busy, and we sent it much since). Answers its
   * messages ask for are then not sent, so a peer cannot grow our queue
   * without bound, nor talk us into a pause at the relay.
   */
  congested(peer: string): boolean;
  /** Whether the relay said `peer` is `busy` and not `ready` yet (PROTOCOL §5.9): our chunks for it wait. */
  isBusy(peer: string): boolean;
  /** The relay's frame limit: a chunk must fit in one frame. */
  maxFrame(): number;
  /**
   * Whether the user chose `peer` (/connect, /verify). Peers nobody chose share
   * MAX_INCOMING_UNCHOSEN slots, so that someone with many IDs cannot keep every
   * file from the user's own contacts out. Without it, every peer counts as chosen.
   */
  isChosen?(peer: string): boolean;
  /** The session with `peer` now, as an opaque token: a transfer remembers the one its offer travelled under. */
  session?(peer: string): unknown;
  /** Whether `session` (a token from session()) is still the session with `peer`, and the user verified it: `verified` in `file` and `delivered` events (without it, false). */
  isVerified?(peer: string, session: unknown): boolean;
  emit(e: TransferEvent): void;
}

export interface TransferOptions {
  downloadDir: string;
  maxFileSize: number;
  /** A transfer with no progress for this long fails (default 60 s). */
  idleTimeoutMs?: number;
  /** A broadcast streams once every recipient answered its offer, or after this long to those that did (default 10 s, PROTOCOL §36.2). */
  answerWindowMs?: number;
}

export class TransferError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly peer?: string,
  ) {
    super(message);
  }
}

// Pause reading the file while this much of its chunks waits in our queue to the
// relay: a chunk costs memory until the socket takes it. 256 KiB costs no speed on
// loopback (two A/Bs, 70 pairs: docs/BENCHMARKS.md, "Thirteenth look"). The chunks
// are in the queue's bulk lane (lib/wire/outbox.ts): a message typed meanwhile goes
// ahead of them, though not of what the kernel's socket buffer already holds (README,
// "Slow links"); and only they are counted, since a script that keeps messages queued
// (up to 1 MiB) would otherwise hold the file until its 60 s timeout (found in review).
const SEND_HIGH = 256 * 1024;
const SEND_LOW = 128 * 1024;
const PROGRESS_MS = 250;
/** Files being received at once (each holds a temporary file and a descriptor), in all and from one peer. */
const MAX_INCOMING = 32;
const MAX_INCOMING_PER_PEER = 8;
const MAX_INCOMING_UNCHOSEN = 16;
/**
 * Disk space a receiver leaves free: an offer is declined if it, with what the
 * transfers under way still have to write, would leave less than 5 % of the
 * download directory's filesystem (at most 1 GiB) or of its inodes (at most
 * 10,000). Receiving is automatic, and anyone on the relay may offer files:
 * they could otherwise fill the disk (480 MiB in 5 s in an audit).
 */
const KEEP_FREE_SHARE = 0.05;
const KEEP_FREE_BYTES = 1024 ** 3;
const KEEP_FREE_INODES = 10_000;
/**
 * Files being sent to one peer at once: a /send beyond that waits its turn
 * (state `queued`), so that a script sending a directory file by file stays
 * under every receiver's MAX_INCOMING_PER_PEER (found in audit). Queued files
 * are open already; at most MAX_QUEUED of them.
 */
const MAX_OUTGOING_PER_PEER = 4;
const MAX_QUEUED = 256;
/** How often a broadcast held back by one busy recipient looks again at who is busy. */
const HOLD_CHECK_MS = 250;

type RecipientState = "offered" | "accepted" | "done" | "failed";

interface Outgoing {
  id: string;
  fileId: Uint8Array;
  /** The file as opened by send(): what is hashed and sent, even if its name now points elsewhere. Closed by finishOut. */
  fd: number;
  name: string;
  size: number;
  fileKey: Uint8Array;
  broadcast: boolean;
  recipients: Map<string, RecipientState>;
  failures: string[];
  state: "queued" | "offered" | "sending" | "awaiting" | "over";
  offeredAt: number;
  lastActivity: number;
  /** A broadcast's SHA-256, hashed before its offer (which carries it). */
  digest: Uint8Array | null;
  /** Hex SHA-256 of what was sent: from the broadcast offer, or hashed while streaming. */
  sha256?: string;
  /** A broadcast's `dn` for each recipient (chunks.ts doneMac). */
  dns: Map<string, Uint8Array>;
  /** The `mac` each recipient's `done` must carry (chunks.ts doneMac), once every chunk is sent. */
  doneMacs: Map<string, Uint8Array>;
  /** Wakes a stream waiting for a busy recipient (it became ready, or dropped out). */
  wake: (() => void) | null;
  /** The session each recipient's offer went under (deps.session). */
  offeredUnder: Map<string, unknown>;
  resolve(): void;
  reject(err: TransferError): void;
}

interface Incoming {
  id: string;
  fileId: Uint8Array;
  peer: string;
  name: string;
  size: number;
  keys: FileKeys;
  temp: string;
  fd: number;
  next: number;
  received: number;
  hash: Bun.CryptoHasher;
  lastProgress: number;
  lastActivity: number;
  broadcast: boolean;
  /** For broadcast files: the SHA-256 the sender announced in its offer. */
  expected: string | null;
  /** A broadcast offer's `dn`, for the `done` (chunks.ts doneMac). */
  dn: Uint8Array | undefined;
  /** The session the offer came under (deps.session). */
  session: unknown;
}

const hexId = (b: Uint8Array) => Buffer.from(b).toString("hex");

/**
 * Opens a file to send. Non-blocking, so that a FIFO cannot hang the client
 * until someone writes to it (it is then refused as not a regular file); the
 * flag changes nothing for reading a regular file.
 */
const openToSend = (path: string) => openSync(path, constants.O_RDONLY | constants.O_NONBLOCK);

/** Reads until `length` bytes or the end of the file: one read may return less (NFS, FUSE). */
function readFull(fd: number, buf: Uint8Array, length: number): number {
  let got = 0;
  for (let n; got < length && (n = readSync(fd, buf, got, length - got, null)) > 0; ) got += n;
  return got;
}

/** Why writing `bytes` more into `dir` would leave its filesystem too full (KEEP_FREE_*), or null (also when the system cannot say). */
function diskTooFull(dir: string, bytes: number): string | null {
  let fs: StatsFs;
  try {
    fs = statfsSync(dir);
  } catch {
    return null;
  }
  if (fs.blocks === 0) return null; // ramfs, an unlimited tmpfs: no size to tell (found in review)
  const free = fs.bavail * fs.bsize;
  const keep = Math.floor(Math.min(KEEP_FREE_BYTES, KEEP_FREE_SHARE * fs.blocks * fs.bsize));
  if (bytes > free - keep) return `not enough disk space: ${formatSize(bytes)} to write, ${formatSize(free)} free, of which the receiver keeps ${formatSize(keep)}`;
  // Filesystems without a fixed number of inodes report none.
  if (fs.files > 0 && fs.ffree < Math.min(KEEP_FREE_INODES, KEEP_FREE_SHARE * fs.files)) return "not enough disk space: the receiver's filesystem is nearly out of inodes";
  return null;
}

/** "19.1 MiB (20000000 bytes)": readable, and exact. */
const sizeText = (bytes: number) => (bytes < 1024 ? `${bytes} bytes` : `${formatSize(bytes)} (${bytes} bytes)`);

const UNREADABLE: Record<string, string> = { ENOENT: "no such file", EACCES: "permission denied", EPERM: "permission denied", ENOTDIR: "no such file (a part of the path is not a directory)", ELOOP: "too many symbolic links" };
const whyUnreadable = (err: unknown) => {
  const code = (err as NodeJS.ErrnoException).code;
  return (code && UNREADABLE[code]) ?? code ?? (err as Error).message;
};

/** SHA-256 of an open file, read in 1 MiB pieces (never whole) at explicit offsets: the file's own offset stays at 0 for stream(). */
function hashFile(fd: number): Uint8Array {
  const hash = new Bun.CryptoHasher("sha256");
  const buf = Buffer.allocUnsafe(1024 * 1024);
  for (let at = 0, got; (got = readSync(fd, buf, 0, buf.length, at)) > 0; at += got) hash.update(buf.subarray(0, got));
  return hash.digest();
}
const shortId = (id: string) => id.slice(0, 8);

export function createTransfers(deps: TransferDeps, opts: TransferOptions) {
  const outgoing = new Map<string, Outgoing>();
  const incoming = new Map<string, Incoming>();
  const idleMs = opts.idleTimeoutMs ?? 60_000;
  const answerMs = opts.answerWindowMs ?? 10_000;
  /** How long, in all, one broadcast recipient may keep the others waiting: half the idle timeout, so it goes before they all fail. */
  const holdMs = idleMs / 2;
  let leaving = false; // stopAccepting() was called
  let holdOffers = false; // rekeyed() is failing files: offer none meanwhile
  removeStaleParts(opts.downloadDir, 2 * idleMs);

  // One sweep, running only while transfers exist, ends those that stopped
  // moving: a peer that never answers an offer, a relay that stopped
  // forwarding, a sender that vanished without its peer being reported gone.
  let sweeper: Timer | null = null;
  function watch(): void {
    sweeper ??= setInterval(() => {
      const now = performance.now();
      for (const t of [...outgoing.values()]) {
        if (t.state === "queued") continue; // waiting for its turn, not for a peer
        if (now - t.lastActivity > idleMs) failAll(t, "failed", `no progress for ${Math.round(idleMs / 1000)} s`);
        else if (t.broadcast && t.state === "offered" && now - t.offeredAt > answerMs) {
          for (const [peer, st] of t.recipients) {
            if (st !== "offered") continue;
            deps.sendContent(peer, { t: "cancel", id: t.fileId, reason: "no answer to the offer" }); // a late accept must not leave a temp file
            dropRecipient(t, peer, "failed", "no answer to the offer");
          }
        }
      }
      for (const t of [...incoming.values()]) if (now - t.lastActivity > idleMs) failIn(t, "failed", `no data for ${Math.round(idleMs / 1000)} s`, true);
      if (!outgoing.size && !incoming.size) clearInterval(sweeper!), (sweeper = null);
    }, Math.min(1000, idleMs / 4, answerMs / 4));
  }

  const accepted = (t: Outgoing) => [...t.recipients].filter(([, st]) => st === "accepted").map(([peer]) => peer);
  const outEvent = (t: Outgoing, peer: string, state: "queued" | "offered" | "sending" | "declined" | "failed" | "cancelled", reason?: string) =>
    deps.emit({ event: "transfer", id: shortId(t.id), peer, direction: "out", name: t.name, size: t.size, state, ...(reason ? { reason } : {}) });

  function finishOut(t: Outgoing): void {
    if (t.state === "over") return;
    // Cut off while sending: the rest can no longer complete the file, and every recipient ignores it.
    if (t.state === "sending") deps.dropChunks(t);
    t.state = "over"; // a stream still running sees this before it reads again
    outgoing.delete(t.id);
    closeSync(t.fd);
    wipe(t.fileKey);
    const n = t.recipients.size;
    if (!t.failures.length) return t.resolve();
    const [only] = t.recipients.keys();
    const code = n === 1 ? t.failures[0]!.split(" ", 1)[0]! : "partial";
    const message =
      n === 1 ? `sending ${t.name} to ${only}: ${t.failures[0]!.slice(code.length + 1)}` : `sending ${t.name}: delivered to ${n - t.failures.length} of ${n}; ${t.failures.map((f) => f.slice(f.indexOf(" ") + 1)).join("; ")}`;
    t.reject(new TransferError(code, message, n === 1 ? only : undefined));
  }

  /** Ends one recipient's part; the others go on. */
  function dropRecipient(t: Outgoing, peer: string, state: "declined" | "failed" | "cancelled", reason: string): void {
    const st = t.recipients.get(peer);
    if (st === undefined || st === "done" || st === "failed") return;
    t.recipients.set(peer, "failed");
    t.failures.push(`${state} ${t.recipients.size > 1 ? `${peer}: ` : ""}${reason}`);
    outEvent(t, peer, state, reason);
    progressOut(t);
    t.wake?.();
  }

  function failAll(t: Outgoing, state: "failed" | "cancelled", reason: string): void {
    for (const peer of [...t.recipients.keys()]) dropRecipient(t, peer, state, reason);
  }

  /** Moves a transfer on once its recipients' states allow: start streaming, or finish; then queued ones that now may start. */
  function progressOut(t: Outgoing): void {
    const states = [...t.recipients.values()];
    if (t.state === "queued" && !states.includes("offered")) finishOut(t); // every recipient dropped out while it waited
    else if (t.state === "offered" && !states.includes("offered")) {
      if (!states.includes("accepted")) finishOut(t); // all declined or failed: their slots are free for queued files
      else {
        t.state = "sending";
        for (const peer of accepted(t)) outEvent(t, peer, "sending");
        void stream(t);
      }
    } else if ((t.state === "sending" || t.state === "awaiting") && !states.includes("accepted")) {
      finishOut(t); // everyone is done or failed (a stream still running sees "over" and stops)
    }
    offerQueued();
  }

  /** Offers the queued transfers, oldest first, whose recipients all have a free slot. */
  function offerQueued(): void {
    if (holdOffers) return;
    const running = new Map<string, number>();
    const full = (peer: string) => (running.get(peer) ?? 0) >= MAX_OUTGOING_PER_PEER;
    for (const t of outgoing.values()) {
      if (t.state === "queued") continue;
      for (const [peer, st] of t.recipients) if (st === "offered" || st === "accepted") running.set(peer, (running.get(peer) ?? 0) + 1);
    }
    for (const t of outgoing.values()) {
      if (t.state !== "queued") continue;
      const peers = [...t.recipients].filter(([, st]) => st === "offered").map(([peer]) => peer);
      if (peers.some(full)) {
        // Its peers' next slots are its own: a later file to one of them must not overtake it (a /bsend waiting for one busy peer).
        for (const peer of peers) running.set(peer, MAX_OUTGOING_PER_PEER);
        continue;
      }
      for (const peer of peers) running.set(peer, (running.get(peer) ?? 0) + 1);
      offer(t);
    }
  }

  /** Queued transfers first: ending them before the running ones keeps the slots those free from offering files that are about to end too. */
  const queuedFirst = () => [...outgoing.values()].sort((a, b) => Number(b.state === "queued") - Number(a.state === "queued"));

  function offer(t: Outgoing): void {
    t.state = "offered";
    t.offeredAt = t.lastActivity = performance.now();
    for (const [peer, st] of t.recipients) {
      if (st !== "offered") continue;
      // Each offer gets its own copy: finishing the transfer wipes fileKey, possibly before the offer is sealed.
      if (t.digest) t.dns.set(peer, randomBytes(DN_BYTES));
      deps.sendContent(peer, { t: "offer", id: t.fileId, name: t.name, size: t.size, key: t.fileKey.slice(), ...(t.digest ? { bc: true, sha256: t.digest, dn: t.dns.get(peer) } : {}) });
      t.offeredUnder.set(peer, deps.session?.(peer));
      outEvent(t, peer, "offered");
    }
  }

  function failIn(t: Incoming, state: "failed" | "cancelled", reason: string, tellPeer: boolean): void {
    if (!incoming.delete(t.id)) return;
    try {
      closeSync(t.fd);
    } catch {}
    try {
      unlinkSync(t.temp);
    } catch {}
    wipe(t.keys.enc, t.keys.mac);
    if (tellPeer && !deps.congested(t.peer)) deps.sendContent(t.peer, { t: state === "cancelled" ? "cancel" : "failed", id: t.fileId, reason });
    deps.emit({ event: "transfer", id: shortId(t.id), peer: t.peer, direction: "in", name: t.name, size: t.size, state, reason });
  }

  /**
   * Offers `path` to `peers` (one for /send, every session for /bsend);
   * resolves once every recipient reports it complete and verified, rejects
   * if any did not (the others still got it).
   */
  function send(to: string | string[], path: string, broadcast = false): Promise<void> {
    const peers = typeof to === "string" ? [to] : to;
    if ([...outgoing.values()].filter((t) => t.state === "queued").length >= MAX_QUEUED) {
      return Promise.reject(new TransferError("too_many", `${MAX_QUEUED} files are already waiting to be sent`));
    }
    let fd = -1;
    const refuse = (err: TransferError) => {
      if (fd >= 0) closeSync(fd);
      return Promise.reject(err);
    };
    let size: number;
    let digest: Uint8Array | null = null;
    const shown = resolve(path); // "f.bin: no such file" would not say where we looked
    try {
      fd = openToSend(path);
      const st = fstatSync(fd);
      if (!st.isFile()) return refuse(new TransferError("not_a_file", `${shown} is not a regular file`));
      size = st.size;
      // A chunk frame to several recipients also lists them (≤ 10 bytes each).
      if (deps.maxFrame() < CHUNK_BYTES + 1024 + (peers.length > 1 ? 10 * peers.length : 0)) {
        return refuse(new TransferError("relay_limit", `the relay's frame limit (${deps.maxFrame()} bytes) is too small for file chunks`));
      }
      if (size > opts.maxFileSize) {
        return refuse(new TransferError("too_large", `${shown} is ${sizeText(size)}, over the limit of ${sizeText(opts.maxFileSize)} (--max-file-size)`));
      }
      if (broadcast) digest = hashFile(fd);
    } catch (err) {
      return refuse(new TransferError("unreadable", `cannot read ${shown}: ${whyUnreadable(err)}`));
    }
    const fileId = randomBytes(FILE_ID_BYTES);
    const fileKey = randomBytes(32);
    const name = basename(path);
    return new Promise<void>((resolve, reject) => {
      const now = performance.now();
      const recipients = new Map<string, RecipientState>(peers.map((p) => [p, "offered"]));
      const t: Outgoing = { id: hexId(fileId), fileId, fd, name, size, fileKey, broadcast, recipients, failures: [], state: "queued", offeredAt: now, lastActivity: now, digest, wake: null, offeredUnder: new Map(), dns: new Map(), doneMacs: new Map(), resolve, reject };
      // A broadcast's receivers check the content against the offer's digest, so hashing it again while streaming would add nothing.
      if (digest) t.sha256 = hexId(digest);
      outgoing.set(t.id, t);
      watch();
      offerQueued();
      if (t.state === "queued") for (const peer of peers) outEvent(t, peer, "queued", `waiting for its turn: at most ${MAX_OUTGOING_PER_PEER} files go to one peer at a time`);
    });
  }

  async function stream(t: Outgoing): Promise<void> {
    const keys = fileKeys(t.fileKey, t.fileId);
    const buf = Buffer.allocUnsafe(CHUNK_BYTES + PAD_ROOM);
    const probe = Buffer.allocUnsafe(1);
    const hash = t.sha256 === undefined ? new Bun.CryptoHasher("sha256") : null;
    const held = new Map<string, number>(); // broadcast recipients: ms each kept the others waiting
    try {
      let sent = 0;
      let lastProgress = 0;
      for (let n = 0; ; n++) {
        // The relay would queue more chunks for a busy recipient, and then pause
        // our whole connection: everything else we send would wait with them.
        await waitWhileBusy(t, held);
        const to = accepted(t);
        if (t.state !== "sending" || !to.length) return; // cancelled or failed meanwhile
        const want = Math.min(CHUNK_BYTES, t.size - sent);
        const got = readFull(t.fd, buf, want);
        if (got < want) throw new Error("the file shrank while being sent");
        sent += got;
        const last = sent === t.size;
        // Checked before the last chunk leaves, so the receiver never keeps a file we call failed.
        if (last && readSync(t.fd, probe, 0, 1, null) !== 0) throw new Error("the file grew while being sent");
        hash?.update(buf.subarray(0, got));
        deps.sendChunk(to.length === 1 ? to[0]! : to, sealChunkInPlace(keys, t.fileId, n, last, buf, got), t); // encrypted once, copied by the relay
        const now = performance.now();
        t.lastActivity = now;
        if (last || now - lastProgress >= PROGRESS_MS) {
          lastProgress = now;
          deps.emit({ event: "progress", id: shortId(t.id), peer: t.broadcast ? "*" : to[0]!, direction: "out", name: t.name, bytes: sent, size: t.size });
        }
        if (last) break;
        // Yield after every chunk so the socket starts writing at once (no pipeline
        // fill of a whole megabyte); wait for the socket when it is behind.
        if (deps.chunkBacklog() > SEND_HIGH) await deps.chunksDrained(SEND_LOW);
        // Every 512 KiB let the event loop read the socket too: when the relay takes
        // chunks as fast as we seal them, microtasks alone would keep a `left`, a
        // `cancel` or the relay's `busy` unread until the end. Read late, `busy`
        // lets a few MiB more pile up for a stalled peer, and the relay would then
        // pause us (PROTOCOL §10); as often as this it costs no measurable speed.
        else if (n % 4 === 3) await new Promise((resolve) => setImmediate(resolve));
        else await null;
      }
      if (hash) t.sha256 = hash.digest("hex");
      for (const peer of t.recipients.keys()) t.doneMacs.set(peer, doneMac(keys, t.fileId, Buffer.from(t.sha256!, "hex"), t.dns.get(peer)));
      if (t.state === "sending") t.state = "awaiting";
    } catch (err) {
      for (const peer of accepted(t)) deps.sendContent(peer, { t: "cancel", id: t.fileId, reason: "sender failed" });
      failAll(t, "failed", (err as Error).message);
    } finally {
      wipe(keys.enc, keys.mac);
    }
  }

  /**
   * Waits while a recipient is busy. A broadcast recipient that keeps the
   * others waiting (busy while one of them is not) for holdMs in all
   * is dropped from it: one member that stops reading, or reads a little now
   * and then, would otherwise hold the file back from everyone (found in audit).
   */
  async function waitWhileBusy(t: Outgoing, held: Map<string, number>): Promise<void> {
    for (;;) {
      const to = accepted(t);
      const busy = to.filter(deps.isBusy);
      if (t.state !== "sending" || !busy.length) break;
      const holding = t.broadcast && busy.length < to.length;
      const slow = holding ? busy.filter((peer) => (held.get(peer) ?? 0) >= holdMs) : [];
      for (const peer of slow) {
        const reason = `too slow: kept the other recipients waiting for ${Math.round(holdMs / 1000)} s`;
        deps.sendContent(peer, { t: "cancel", id: t.fileId, reason });
        dropRecipient(t, peer, "failed", reason);
      }
      if (slow.length) continue;
      // While holding, look again every HOLD_CHECK_MS: the others may turn busy too, and
      // are only woken when one turns ready. A slice counts only if still holding at its end.
      const since = performance.now();
      let timer: Timer | undefined;
      await new Promise<void>((resolve) => {
        t.wake = resolve;
        if (holding) timer = setTimeout(resolve, Math.max(0, Math.min(HOLD_CHECK_MS, ...busy.map((peer) => holdMs - (held.get(peer) ?? 0)))));
      });
      clearTimeout(timer);
      const after = accepted(t);
      const stillBusy = after.filter(deps.isBusy);
      if (holding && stillBusy.length < after.length) {
        for (const peer of busy) if (stillBusy.includes(peer)) held.set(peer, (held.get(peer) ?? 0) + performance.now() - since);
      }
    }
    t.wake = null;
  }

  function onOffer(peer: string, m: Frame): void {
    const { id, name, size, key, sha256, dn } = m;
    const broadcast = m.bc === true;
    if (!(id instanceof Uint8Array) || id.length !== FILE_ID_BYTES || typeof name !== "string" || !Number.isSafeInteger(size) || (size as number) < 0 || !(key instanceof Uint8Array) || key.length !== 32 || (broadcast && !(sha256 instanceof Uint8Array && sha256.length === 32 && dn instanceof Uint8Array && dn.length === DN_BYTES))) {
      if (key instanceof Uint8Array) wipe(key);
      deps.emit({ event: "transfer", id: "?", peer, direction: "in", name: "?", size: 0, state: "failed", reason: "malformed offer" });
      return;
    }
    const tid = hexId(id);
    const clean = safeName(name);
    const decline = (reason: string, answer = true) => {
      wipe(key); // PROTOCOL §26: the receiver erases the file key (found in audit: kept on these paths)
      if (answer) deps.sendContent(peer, { t: "decline", id, reason });
      deps.emit({ event: "transfer", id: shortId(tid), peer, direction: "in", name: clean, size: size as number, state: "declined", reason });
    };
    if (deps.congested(peer)) return decline("not answered: the relay is not taking our data, or the peer is not reading it", false);
    if (leaving) return decline("the receiver is leaving");
    // An ID of one of our own transfers is a peer handing our offer back to us.
    if (incoming.has(tid) || outgoing.has(tid)) return decline("duplicate offer");
    if (incoming.size >= MAX_INCOMING) return decline(`the receiver already has ${MAX_INCOMING} transfers running`);
    // So that one peer cannot take every slot and shut the others out.
    if ([...incoming.values()].filter((t) => t.peer === peer).length >= MAX_INCOMING_PER_PEER) return decline(`the receiver already has ${MAX_INCOMING_PER_PEER} transfers running from you`);
    const chosen = deps.isChosen ?? (() => true);
    if (!chosen(peer) && [...incoming.values()].filter((t) => !chosen(t.peer)).length >= MAX_INCOMING_UNCHOSEN) {
      return decline(`the receiver already has ${MAX_INCOMING_UNCHOSEN} transfers running from peers it did not /connect to or /verify`);
    }
    if ((size as number) > opts.maxFileSize) return decline(`too large: ${sizeText(size as number)}, the receiver accepts at most ${sizeText(opts.maxFileSize)} (its --max-file-size)`);
    const lowOnDisk = diskTooFull(opts.downloadDir, (size as number) + [...incoming.values()].reduce((n, t) => n + t.size - t.received, 0));
    if (lowOnDisk) return decline(lowOnDisk);
    // Recipients of one broadcast share the file ID and may share a directory:
    // a taken temporary name gets a random suffix.
    let temp = join(opts.downloadDir, tempName(tid));
    let fd = -1;
    for (let attempt = 0; fd < 0; attempt++) {
      try {
        fd = openSync(temp, "wx", 0o600);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code !== "EEXIST" || attempt === 8) return decline(`receiver cannot write to its download directory (${code})`);
        temp = join(opts.downloadDir, tempName(tid, hexId(randomBytes(4))));
      }
    }
    const t: Incoming = { id: tid, fileId: id, peer, name: clean, size: size as number, keys: fileKeys(key, id), temp, fd, next: 0, received: 0, hash: new Bun.CryptoHasher("sha256"), lastProgress: 0, lastActivity: performance.now(), broadcast, expected: broadcast ? hexId(sha256 as Uint8Array) : null, dn: broadcast ? new Uint8Array(dn as Uint8Array) : undefined, session: deps.session?.(peer) };
    wipe(key);
    incoming.set(tid, t);
    watch();
    deps.sendContent(peer, { t: "accept", id });
    deps.emit({ event: "transfer", id: shortId(tid), peer, direction: "in", name: clean, size: t.size, state: "receiving" });
  }

  function onChunk(peer: string, m: Frame): void {
    if (!(m.id instanceof Uint8Array)) return;
    const t = incoming.get(hexId(m.id));
    if (!t || t.peer !== peer) return; // unknown, finished or someone else's: nothing to attach it to
    const chunk = openChunk(t.keys, t.fileId, t.next, m);
    if (!chunk) return failIn(t, "failed", `chunk ${t.next} failed verification (tampered, missing, duplicated or reordered)`, true);
    if (!chunk.last && chunk.plaintext.length !== CHUNK_BYTES) return failIn(t, "failed", `chunk ${t.next} has ${chunk.plaintext.length} bytes; only the last may be short`, true);
    t.received += chunk.plaintext.length;
    if (t.received > t.size) return failIn(t, "failed", `more data than the ${t.size} bytes offered`, true);
    try {
      for (let at = 0; at < chunk.plaintext.length; ) at += writeSync(t.fd, chunk.plaintext, at);
    } catch (err) {
      return failIn(t, "failed", `receiver cannot write the file (${(err as NodeJS.ErrnoException).code ?? (err as Error).message})`, true);
    }
    t.hash.update(chunk.plaintext);
    t.next++;
    const now = performance.now();
    t.lastActivity = now;
    if (chunk.last || now - t.lastProgress >= PROGRESS_MS) {
      t.lastProgress = now;
      deps.emit({ event: "progress", id: shortId(t.id), peer, direction: "in", name: t.name, bytes: t.received, size: t.size });
    }
    if (!chunk.last) return;
    if (t.received !== t.size) return failIn(t, "failed", `size mismatch: ${t.received} bytes received, ${t.size} offered`, true);
    const sha256 = t.hash.digest("hex");
    if (t.expected !== null && sha256 !== t.expected) return failIn(t, "failed", "content does not match the SHA-256 in the sender's offer", true);
    let path: string;
    try {
      closeSync(t.fd);
      path = claimFinalName(t.temp, opts.downloadDir, t.name);
    } catch (err) {
      return failIn(t, "failed", `cannot save: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`, true);
    }
    incoming.delete(t.id);
    // A MAC of the hash, which only the sender can check: the session may have been
    // replaced since the offer, by the relay posing as the sender (found in audit).
    const mac = doneMac(t.keys, t.fileId, Buffer.from(sha256, "hex"), t.dn);
    wipe(t.keys.enc, t.keys.mac);
    deps.sendContent(peer, { t: "done", id: t.fileId, mac });
    deps.emit({ event: "file", from: peer, id: shortId(t.id), name: basename(path), path, size: t.size, sha256, broadcast: t.broadcast, verified: deps.isVerified?.(peer, t.session) ?? false });
  }

  /** Handles a record content of the file layer; false if `item` is not one. */
  function onContent(peer: string, item: Frame): boolean {
    if (item.t === "offer") return onOffer(peer, item), true;
    if (!["accept", "decline", "done", "failed", "cancel"].includes(item.t as string)) return false;
    if (!(item.id instanceof Uint8Array)) return true;
    const tid = hexId(item.id);
    const reason = typeof item.reason === "string" ? item.reason.slice(0, 200) : "no reason given";
    const out = outgoing.get(tid);
    if (out && out.recipients.has(peer)) {
      // Only a step forward counts as activity: a recipient repeating `accept`
      // must not keep a transfer (a /bsend to others who are done) open for good.
      const st = out.recipients.get(peer);
      if (item.t === "accept" && st === "offered" && out.state === "offered") {
        out.lastActivity = performance.now();
        out.recipients.set(peer, "accepted");
        progressOut(out);
      } else if (item.t === "decline") dropRecipient(out, peer, "declined", reason);
      else if (item.t === "failed") dropRecipient(out, peer, "failed", reason);
      else if (item.t === "cancel") dropRecipient(out, peer, "cancelled", `cancelled by ${peer}`);
      else if (item.t === "done" && out.state === "awaiting" && st === "accepted") {
        if (!(item.mac instanceof Uint8Array) || !equalBytes(item.mac, out.doneMacs.get(peer)!)) return dropRecipient(out, peer, "failed", "the receiver's SHA-256 differs from ours"), true;
        out.lastActivity = performance.now();
        out.recipients.set(peer, "done");
        deps.emit({ event: "delivered", to: peer, id: shortId(tid), name: out.name, size: out.size, sha256: out.sha256!, verified: deps.isVerified?.(peer, out.offeredUnder.get(peer)) ?? false });
        progressOut(out);
      }
      return true;
    }
    const inc = incoming.get(tid);
    // "cancelled by sender" adds nothing to "cancelled by <peer>"; a reason of another kind does.
    if (inc && inc.peer === peer && item.t === "cancel") failIn(inc, "cancelled", /^cancel/i.test(reason) ? `cancelled by ${peer}` : `cancelled by ${peer}: ${reason}`, false);
    return true;
  }

  /** Tells `peer` we call `t` off, if it was offered the file and has not answered for good. */
  function callOff(t: Outgoing, peer: string): void {
    const st = t.recipients.get(peer);
    if (t.state !== "queued" && (st === "offered" || st === "accepted")) deps.sendContent(peer, { t: "cancel", id: t.fileId, reason: "cancelled by sender" });
  }

  /** Cancels the transfers whose short ID starts with `prefix` (all if empty), except files already sent in full; returns how many. */
  function cancel(prefix: string): number {
    let n = 0;
    for (const t of queuedFirst()) {
      // Once every chunk has left, the receiver may well keep the file: calling the
      // transfer cancelled could be false, so it waits for the receiver's answer.
      if (!t.id.startsWith(prefix) || t.state === "awaiting") continue;
      for (const peer of t.recipients.keys()) callOff(t, peer);
      failAll(t, "cancelled", "cancelled");
      n++;
    }
    for (const t of [...incoming.values()]) {
      if (!t.id.startsWith(prefix)) continue;
      failIn(t, "cancelled", "cancelled", true);
      n++;
    }
    return n;
  }

  /**
   * `peer` has a new session (a re-key). Files not yet offered to it fail:
   * their offer, with the file key, would go under a session other than the one
   * the user gave the file for, and the new one may be a relay's (found in
   * audit). So do those whose offer was still waiting to be sealed (`unsent`,
   * file IDs in hex: the new session does not carry it). Files already offered
   * go on: their key went to the old session's holder, so their chunks are
   * useless to anyone else.
   */
  function rekeyed(peer: string, unsent: string[]): void {
    // Each drop frees slots, and would offer the next queued file to `peer` at
    // once, under the new session, before this loop failed it (found in review).
    holdOffers = true;
    try {
      for (const t of queuedFirst()) {
        if (t.recipients.get(peer) !== "offered" || (t.state !== "queued" && !unsent.includes(t.id))) continue;
        dropRecipient(t, peer, "failed", "the session was re-keyed before the file went out: compare the new fingerprint, then send it again");
      }
    } finally {
      holdOffers = false;
    }
    offerQueued();
  }

  /** A peer the relay said is busy is ready again: streams held for it look again (deps.isBusy). */
  function peerReady(): void {
    for (const t of outgoing.values()) t.wake?.();
  }

  /** Ends every transfer with `peer` (or all, without a peer): it left, or we lost the relay; or we no longer trust it, and then it is told (`tell`). */
  function abandon(peer: string | null, reason: string, tell = false): void {
    for (const t of queuedFirst()) {
      if (peer === null) failAll(t, "failed", reason);
      else {
        if (tell) callOff(t, peer);
        dropRecipient(t, peer, "failed", reason);
      }
    }
    for (const t of [...incoming.values()]) if (peer === null || t.peer === peer) failIn(t, "failed", reason, tell);
  }

  /** Declines every offer from now on; the transfers under way go on (a script's end of input). */
  function stopAccepting(): void {
    leaving = true;
  }

  const active = () => outgoing.size + incoming.size;
  const awaitingAnswer = (prefix: string) => [...outgoing.values()].filter((t) => t.state === "awaiting" && t.id.startsWith(prefix)).length;

  /** Short IDs of the transfers /cancel can stop (files sent in full wait for their answer). */
  const cancellable = () => [...[...outgoing.values()].filter((t) => t.state !== "awaiting"), ...incoming.values()].map((t) => shortId(t.id));

  return { send, onContent, onChunk, cancel, cancellable, awaitingAnswer, abandon, rekeyed, peerReady, stopAccepting, active };
}

export type Transfers = ReturnType<typeof createTransfers>;
