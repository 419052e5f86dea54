// Outbox: the write queue of one socket.
//
// Bun's socket.write() accepts only what the kernel takes and buffers nothing
// (notes §3), so every writer keeps its own unsent tail and retries on `drain`.
// The outbox promises: bytes leave in push() order, exactly once; small frames
// queued together go out in one write (fewer syscalls); `bytes` is the exact
// number of queued bytes, which callers use for backpressure decisions.
export interface WritableSocket {
  write(data: Uint8Array): number;
}

const COALESCE_BELOW = 16 * 1024; // frames smaller than this are merged...
const COALESCE_LIMIT = 64 * 1024; // ...into writes of at most this size

export class Outbox {
  private queue: Uint8Array[] = [];
  private head = 0;
  /** Bytes queued and not yet accepted by the kernel. */
  bytes = 0;
  /** Time (ms) of the last write that made progress, or of the last push into an empty outbox. */
  lastProgress = 0;
  closed = false;

  constructor(private readonly socket: WritableSocket) {}

  push(buf: Uint8Array): void {
    if (this.closed || buf.length === 0) return;
    if (this.bytes === 0) this.lastProgress = performance.now();
    this.queue.push(buf);
    this.bytes += buf.length;
  }

  /** Writes as much as the socket accepts. Returns true when nothing is left queued. */
  flush(): boolean {
    while (this.head < this.queue.length && !this.closed) {
      const first = this.queue[this.head]!;
      let chunk = first;
      let merged = 1;
      if (first.length < COALESCE_BELOW && this.queue.length - this.head > 1) {
        let total = first.length;
        while (this.head + merged < this.queue.length) {
          const next = this.queue[this.head + merged]!;
          if (next.length >= COALESCE_BELOW || total + next.length > COALESCE_LIMIT) break;
          total += next.length;
          merged++;
        }
        if (merged > 1) {
          chunk = new Uint8Array(total);
          let at = 0;
          for (let i = 0; i < merged; i++) {
            const part = this.queue[this.head + i]!;
            chunk.set(part, at);
            at += part.length;
          }
        }
      }
      const written = this.socket.write(chunk);
      if (written < 0) {
        this.close();
        return false;
      }
      if (written > 0) {
        this.bytes -= written;
        this.lastProgress = performance.now();
      }
      if (written < chunk.length) {
        // Keep the unsent tail in place of the merged entries.
        this.head += merged - 1;
        this.queue[this.head] = chunk.subarray(written);
        this.compact();
        return false;
      }
      this.head += merged;
    }
    this.queue.length = 0;
    this.head = 0;
    return true;
  }

  close(): void {
    this.closed = true;
    this.queue = [];
    this.head = 0;
    this.bytes = 0;
  }

  private compact(): void {
    if (this.head > 1024 && this.head * 2 > this.queue.length) {
      this.queue = this.queue.slice(this.head);
      this.head = 0;
    }
  }
}
