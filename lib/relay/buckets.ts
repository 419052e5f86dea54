// Token buckets keyed by source (an IPv4 address or IPv6 /64, server.ts
// sourceOf): each holds up to `burst`, refills at `rate` a second, and may be
// spent below zero (a debt that delays the next spend). Only sources whose
// bucket is not full are kept, so a relay remembers little beyond its busy
// sources. The relay uses one for joins and one for bytes of `list` answers.
export interface SourceBuckets {
  /** What `source` may spend at time `now` (ms). */
  level(source: string, now: number): number;
  /** Takes `amount` from `source`'s bucket, below zero if need be. */
  spend(source: string, amount: number, now: number): void;
  /** Forgets the sources whose buckets are full again. */
  prune(now: number): void;
}

export function sourceBuckets(rate: number, burst: number): SourceBuckets {
  const notFull = new Map<string, { level: number; at: number }>();
  const level = (source: string, now: number) => {
    const b = notFull.get(source);
    return b ? Math.min(burst, b.level + ((now - b.at) / 1000) * rate) : burst;
  };
  return {
    level,
    spend: (source, amount, now) => void notFull.set(source, { level: level(source, now) - amount, at: now }),
    prune(now) {
      for (const source of notFull.keys()) if (level(source, now) >= burst) notFull.delete(source);
    },
  };
}
