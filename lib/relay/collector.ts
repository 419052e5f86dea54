// Collector: a full garbage collection when forwarding has left garbage
// behind, within a time budget.
//
// Why the relay needs one: Bun copies every socket read into a fresh buffer,
// so a relay moving a large file churns through memory at the file's rate.
// Frames that sit in a queue when a young-generation collection runs are
// promoted, and once forwarded they are garbage that only a full collection
// frees, while Bun postpones its timer-driven full collections as long as the
// event loop is busy. Measured moving 3 × 1 GiB: relay peak RSS up to
// 105 MiB without, 77–85 MiB with (docs/BENCHMARKS.md, "Ninth look").
//
// The promise: after every `checkBytes` forwarded, the heap (JS objects and
// the buffers they hold) is compared with its size after the last full
// collection; `growth` more and a collection runs. A run that took d ms is
// followed by no other for d × (1 − share) / share ms, so collections take
// at most `share` of the relay's time, however large its heap (10,000
// clients) or its traffic.
import { heapSize } from "bun:jsc";

export interface Collector {
  /** Called with the relay's running total of forwarded bytes; returns true if it collected. */
  after(totalBytes: number): boolean;
  /** Collections run so far. */
  readonly runs: number;
}

export interface CollectorOptions {
  checkBytes: number;
  growth: number;
  share: number;
  /** Runs a full collection and returns the heap's size after it. */
  collect?: () => number;
  heapBytes?: () => number;
  now?: () => number;
}

export function churnCollector(o: CollectorOptions): Collector {
  const heapBytes = o.heapBytes ?? heapSize;
  const collect = o.collect ?? (() => (Bun.gc(true), heapBytes()));
  const now = o.now ?? (() => performance.now());
  let checkedAt = 0; // the forwarded total at the last check
  let base = heapBytes(); // the heap after the last full collection
  let notBefore = 0;
  let runs = 0;
  return {
    after(totalBytes) {
      if (totalBytes - checkedAt < o.checkBytes) return false;
      checkedAt = totalBytes;
      if (heapBytes() - base < o.growth) return false;
      const start = now();
      if (start < notBefore) return false;
      base = collect();
      const end = now();
      notBefore = end + ((end - start) * (1 - o.share)) / o.share;
      runs++;
      return true;
    },
    get runs() {
      return runs;
    },
  };
}
