// Outbox: the write queue of one socket.
//
// Bun's socket.write() accepts only what the kernel takes and buffers nothing
// (notes §3), so every writer keeps its own unsent tail and retries on `drain`.
// The outbox promises: bytes leave in push() order, exactly once; small
// pieces are copied once into a shared staging buffer, so many small frames
// go out in one write (fewer syscalls, no per-frame allocation); large ones
// are queued as they are, without copying (unless a small part of a larger
// buffer: PIN); `bytes` is the exact number of
// queued bytes, which callers use for backpressure decisions; `total`, when
// given, is the memory the outboxes that share it hold: their bytes, with a
// frame queued by reference in several of them (shared) counted once,
// until the last of them has written it; an outbox that has written
// everything holds no buffer (a relay keeps thousands of them).
//
// A second lane, for bulk frames (file chunks: a client's own, a relay's
// `bulk` frames; and what must not overtake those, pushBulk), is written only
// while the first is empty, and a bulk frame once begun goes out whole before
// anything else: a message queued behind 256 KiB of a file's chunks leaves
// before them, never in the middle of one (docs/PROTOCOL.md §5.4, §27).
// Within each lane, bytes leave in push order. So that a first lane that never
// empties (a script piping messages faster than the uplink) cannot starve the
// bulk one, past BULK_AFTER bytes written from the first lane while a bulk
// frame waited, that frame joins the end of the first lane.
//
// A staging buffer is written once nothing is queued ahead of it, and then
// dropped (only the bytes written into it are ever sent, so it need not be
// zeroed); while the socket is behind, it keeps filling. Its size follows
// the traffic: it doubles, up to 64 KiB, when a flush's small frames overflow
// it, and halves, down to 2 KiB, when a flush used less than a quarter of it.
// So a connection that gets a message now and then costs one small buffer per
// message, and a busy one writes up to 64 KiB per syscall. (Keeping one 64 KiB
// buffer per connection instead made a relay's RSS 2.5× larger with 1,000
// active clients and 2.6× with 10,000 idle ones: docs/BENCHMARKS.md, "Load".)
export interface WritableSocket {
  write(data: Uint8Array): number;
}

const SMALL = 16 * 1024; // pieces below this are staged (copied) ...
const STAGE_MIN = 2 * 1024; // ... into buffers of this size ...
const STAGE_MAX = 64 * 1024; // ... up to this

// Frames queued by reference in several outboxes (pushShared, pushBulk): how many hold
// each, and which frame a queued piece is (the unsent tail of one is a new view).
const holders = new WeakMap<Uint8Array, number>();
const frameOf = new WeakMap<Uint8Array, Uint8Array>();
// Put in the place of a written piece: a connection that stays behind keeps its
// queue for up to 1024 pieces, and a view of a written frame's tail would keep
// the whole frame alive (up to 1024 × 128 KiB).
const WRITTEN = new Uint8Array(0);
// The owner a bulk frame was pushed with (pushBulk's `tag`): dropBulk finds them by it.
const tags = new WeakMap<Uint8Array, object>();
const BULK_AFTER = 256 * 1024; // see the top
// A piece queued by reference keeps alive the whole buffer it is a view of,
// and a relay's frames are views of its socket reads (up to 512 KiB each): a
// 10-byte frame that way held its read while counted at 10 bytes (found in
// review: 200 tiny `bulk` frames held 100 MB, counted as 8 KB). So a piece of
// a buffer more than PIN times its size is copied: what an outbox holds stays
// within PIN times what it counts. (A file chunk, 128 KiB, fills a quarter of
// the largest read or more, and 64 KiB an eighth, so neither is copied.)
const PIN = 8;
const owned = (piece: Uint8Array): Uint8Array => (piece.buffer.byteLength > PIN * piece.length ? piece.slice() : piece);

export class Outbox {
  private queue: Uint8Array[] = [];
  private head = 0;
  private stage: Uint8Array | null = null;
  private staged = 0;
  private stageSize = STAGE_MIN;
  /** Pieces in `queue` that are shared frames (so the lookups are skipped while there are none). */
  private sharedQueued = 0;
  /** The bulk lane: whole frames, oldest first from bulkHead. */
  private bulk: Uint8Array[] = [];
  private bulkHead = 0;
  /** Part of the frame at bulkHead was written: the rest goes before anything else. */
  private bulkBegun = false;
  /** Bytes the first lane wrote while a bulk frame waited (see BULK_AFTER). */
  private firstWhileBulkWaits = 0;
  /** Bytes queued and not yet accepted by the kernel. */
  bytes = 0;
  /** Of these, the bulk lane's (a frame moved to the first lane no longer counts). */
  bulkBytes = 0;
  /** Time (ms) of the last write that made progress, or of the last push into an empty outbox. */
  lastProgress = 0;
  closed = false;

  constructor(
    private readonly socket: WritableSocket,
    private readonly total: { bytes: number } = { bytes: 0 },
  ) {}

  /** Queues `a` followed by `b` (a frame's header and body, say). */
  push(a: Uint8Array, b?: Uint8Array): void {
    if (this.closed) return;
    const n = a.length + (b?.length ?? 0);
    if (n === 0) return;
    if (this.bytes === 0) this.lastProgress = performance.now();
    this.bytes += n;
    this.total.bytes += n;
    if (n < SMALL) {
      if (!this.stage || this.staged + n > this.stage.length) {
        if (this.stage) this.stageSize = Math.min(this.stageSize * 2, STAGE_MAX); // overflowed: a burst
        this.sealStage();
        this.stage = Buffer.allocUnsafe(Math.max(this.stageSize, n));
      }
      this.stage.set(a, this.staged);
      if (b) this.stage.set(b, this.staged + a.length);
      this.staged += n;
      return;
    }
    this.sealStage();
    this.queue.push(owned(a));
    if (b?.length) this.queue.push(owned(b));
  }

  /**
   * Queues `frame`, which other outboxes share (a relay's frame to many
   * recipients). Staged like any small piece while this outbox is empty (it
   * is then written at once) or its staging buffer has room; otherwise queued
   * by reference, so that a thousand recipients that fall behind hold one copy
   * of it, not a thousand; `total` then counts it once. (Counted once per
   * recipient, 300 clients that did not read and 6 MiB of broadcasts every 10 s
   * took the count past the relay's total limit with 55 MiB of RSS, and honest
   * transfers had their frames dropped: found in audit.)
   */
  pushShared(frame: Uint8Array): void {
    if (this.closed || frame.length === 0) return;
    // Sealed nearly empty instead, sends to one recipient alternating with sends to several
    // brought back a 2 KiB buffer per small frame queued for a recipient that does not read (found in review).
    if (frame.length < SMALL && (this.bytes === 0 || (this.stage && this.staged + frame.length <= this.stage.length))) return this.push(frame);
    if (this.bytes === 0) this.lastProgress = performance.now();
    this.bytes += frame.length;
    this.hold(frame);
    this.sealStage();
    this.queue.push(frame);
  }

  /** This outbox queues `frame` by reference, as one of its holders: `total` counts it once for all of them. */
  private hold(frame: Uint8Array): void {
    const held = holders.get(frame) ?? 0;
    if (held === 0) this.total.bytes += frame.length;
    holders.set(frame, held + 1);
    frameOf.set(frame, frame);
    this.sharedQueued++;
  }

  /**
   * Queues `frame`, a bulk one: it waits while anything pushed otherwise is
   * queued (see the top). `shared`: other outboxes queue it too, counted in
   * `total` once (as pushShared). `tag`: what dropBulk() knows it by.
   */
  pushBulk(frame: Uint8Array, shared = false, tag?: object): void {
    if (this.closed || frame.length === 0) return;
    if (this.bytes === 0) this.lastProgress = performance.now();
    this.bytes += frame.length;
    this.bulkBytes += frame.length;
    if (shared) this.hold(frame);
    else this.total.bytes += frame.length;
    if (this.bulkHead === this.bulk.length) this.firstWhileBulkWaits = 0;
    const piece = shared ? frame : owned(frame);
    if (tag) tags.set(piece, tag);
    this.bulk.push(piece);
  }

  /** Forgets the bulk frames pushed with `tag` that have not begun to leave (a cancelled file's chunks); returns their bytes. */
  dropBulk(tag: object): number {
    const from = this.bulkHead + (this.bulkBegun ? 1 : 0);
    let kept = from;
    let dropped = 0;
    for (let i = from; i < this.bulk.length; i++) {
      const piece = this.bulk[i]!;
      if (tags.get(piece) !== tag) {
        this.bulk[kept++] = piece;
        continue;
      }
      dropped += piece.length;
      const shared = this.sharedQueued > 0 ? frameOf.get(piece) : undefined;
      if (shared) this.release(shared);
      else this.total.bytes -= piece.length;
    }
    this.bulk.length = kept;
    this.bytes -= dropped;
    this.bulkBytes -= dropped;
    return dropped;
  }

  /** Writes as much as the socket accepts. Returns true when nothing is left queued. */
  flush(): boolean {
    for (;;) {
      if (!this.bulkBegun) {
        if (this.firstWhileBulkWaits >= BULK_AFTER && this.bulkHead < this.bulk.length) {
          this.sealStage(); // the first lane holds whole frames only: this is a frame boundary
          this.bulkBytes -= this.bulk[this.bulkHead]!.length;
          this.queue.push(this.bulk[this.bulkHead]!);
          this.bulk[this.bulkHead++] = WRITTEN;
          this.firstWhileBulkWaits = 0;
        }
        if (!this.flushQueue()) return this.compactBulk();
      }
      if (this.bulkHead === this.bulk.length) {
        this.bulk.length = 0;
        this.bulkHead = 0;
        return true;
      }
      const piece = this.bulk[this.bulkHead]!;
      const shared = this.sharedQueued > 0 ? frameOf.get(piece) : undefined;
      const written = this.write(piece, shared);
      if (written < 0) return false;
      if (written > 0) {
        this.bulkBytes -= written;
        this.firstWhileBulkWaits = 0;
        // Begun once the socket took some of it: a frame it took none of yet still gives way to the first lane.
        this.bulkBegun = written < piece.length;
      }
      if (written < piece.length) {
        if (written > 0) this.bulk[this.bulkHead] = this.tailOf(piece, written, shared);
        return this.compactBulk();
      }
      if (shared) this.release(shared);
      this.bulk[this.bulkHead++] = WRITTEN; // and the first lane goes first again
    }
  }

  /** Drops the written slots ahead of bulkHead once they are many (as flushQueue does for the first lane); returns false, for flush(). */
  private compactBulk(): false {
    if (this.bulkHead > 1024 && this.bulkHead * 2 > this.bulk.length) {
      this.bulk = this.bulk.slice(this.bulkHead);
      this.bulkHead = 0;
    }
    return false;
  }

  /** flush() of the first lane: true when it is empty. */
  private flushQueue(): boolean {
    for (;;) {
      if (this.head === this.queue.length) {
        this.queue.length = 0;
        this.head = 0;
        // The stage goes out only once nothing is ahead of it: while the socket is
        // behind, small frames keep filling it. Sealed at every flush instead, a
        // recipient that does not read got one 2 KiB buffer per 36-byte frame
        // queued, 60 times what the queue counted (found in audit: 2.9 GiB of relay).
        if (!this.stage) return true;
        this.sealStage();
        if (this.head === this.queue.length) return true; // it was empty
      }
      const chunk = this.queue[this.head]!;
      const frame = this.sharedQueued > 0 ? frameOf.get(chunk) : undefined;
      const written = this.write(chunk, frame);
      if (written < 0) return false;
      this.firstWhileBulkWaits += written;
      if (written < chunk.length) {
        if (written > 0) this.queue[this.head] = this.tailOf(chunk, written, frame);
        if (this.head > 1024 && this.head * 2 > this.queue.length) {
          this.queue = this.queue.slice(this.head);
          this.head = 0;
        }
        return false;
      }
      if (frame) this.release(frame);
      this.queue[this.head++] = WRITTEN;
    }
  }

  /** Writes `piece` (of `shared`, if a shared frame) and counts what the socket took; -1 when the socket is gone (the outbox is closed then). */
  private write(piece: Uint8Array, shared: Uint8Array | undefined): number {
    const written = this.socket.write(piece);
    if (written < 0) {
      this.close();
      return -1;
    }
    if (written > 0) {
      this.bytes -= written;
      if (!shared) this.total.bytes -= written; // a shared frame's memory is held until its last holder wrote it
      this.lastProgress = performance.now();
    }
    return written;
  }

  /** The unsent rest of `piece`, kept in its place; still known as `shared`'s, if it is a shared frame (else copied if it is a small part of its buffer: PIN). */
  private tailOf(piece: Uint8Array, written: number, shared: Uint8Array | undefined): Uint8Array {
    const tail = piece.subarray(written);
    if (!shared) return owned(tail);
    frameOf.set(tail, shared);
    return tail;
  }

  close(): void {
    this.closed = true;
    let own = this.bytes;
    for (const [lane, from] of [[this.queue, this.head], [this.bulk, this.bulkHead]] as const) {
      for (let i = from; this.sharedQueued > 0 && i < lane.length; i++) {
        const frame = frameOf.get(lane[i]!);
        if (frame) (own -= lane[i]!.length), this.release(frame);
      }
    }
    this.total.bytes -= own;
    this.queue = [];
    this.head = 0;
    this.bulk = [];
    this.bulkHead = 0;
    this.bulkBegun = false;
    this.bulkBytes = 0;
    this.stage = null;
    this.staged = 0;
    this.bytes = 0;
  }

  /** This outbox no longer holds `frame` (a shared one): its last holder uncounts it. */
  private release(frame: Uint8Array): void {
    this.sharedQueued--;
    const held = holders.get(frame)! - 1;
    if (held > 0) return void holders.set(frame, held);
    // Forgotten, so that the same bytes queued later as an outbox's own are not taken for it (found in review).
    holders.delete(frame);
    frameOf.delete(frame);
    this.total.bytes -= frame.length;
  }

  private sealStage(): void {
    if (!this.stage) return;
    if (this.staged * 4 < this.stage.length) this.stageSize = Math.max(this.stageSize / 2, STAGE_MIN);
    if (this.staged > 0) this.queue.push(this.stage.subarray(0, this.staged));
    this.stage = null;
    this.staged = 0;
  }
}
