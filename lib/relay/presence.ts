// Presence in batches: the `joined` and `left` frames a relay owes its
// watching clients (PROTOCOL §5.6).
//
// Told one by one, each join or leave costs a write to every watcher: with
// 2,000 watchers, one client joining and leaving 16 times a second kept the
// relay 89 % busy. So the relay records the changes and tells them in
// batches, at most one per interval (relay/server.ts picks it), one write per
// watcher per batch. A batch tells the changes in order, except that an ID
// that joined and left within it is not mentioned at all: a client that
// churns faster than the interval costs the watchers nothing.
//
// Every change has a sequence number. A watcher is told only what changed
// after its own join (`from`), so a batch may need a few variants; each is
// built once and shared by the watchers that need it.
import { concat } from "../crypto/primitives.ts";
import { encodeFrame } from "../wire/frame.ts";

export interface PresenceLog {
  /** Records that `id` joined (true) or left (false). */
  add(id: string, joined: boolean): void;
  /** The sequence number the next change will get: a client that joins now is told changes from here on. */
  readonly next: number;
  /** Changes recorded since the last take(). */
  readonly size: number;
  /**
   * Ends the batch: returns, for a watcher told everything before sequence
   * number `from`, the frames to send it (empty: nothing to tell).
   */
  take(): (from: number) => Uint8Array;
}

export function presenceLog(): PresenceLog {
  let base = 0; // sequence number of changes[0]
  let changes: { id: string; joined: boolean }[] = [];
  return {
    add(id, joined) {
      changes.push({ id, joined });
    },
    get next() {
      return base + changes.length;
    },
    get size() {
      return changes.length;
    },
    take() {
      const batch = changes;
      const first = base;
      base += changes.length;
      changes = [];
      const built = new Map<number, Uint8Array>();
      return (from) => {
        const start = Math.max(0, from - first);
        let frames = built.get(start);
        if (!frames) built.set(start, (frames = encodeBatch(batch.slice(start))));
        return frames;
      };
    },
  };
}

/** The frames for `changes`, an ID that joined and then left among them dropped. */
function encodeBatch(changes: { id: string; joined: boolean }[]): Uint8Array {
  const told: ({ id: string; joined: boolean } | null)[] = [];
  const joinedAt = new Map<string, number>();
  for (const c of changes) {
    const at = joinedAt.get(c.id);
    if (!c.joined && at !== undefined) {
      told[at] = null; // never announced: nothing to take back
      joinedAt.delete(c.id);
      continue;
    }
    if (c.joined) joinedAt.set(c.id, told.length);
    told.push(c);
  }
  return concat(...told.flatMap((c) => (c ? [encodeFrame(c.joined ? { t: "joined", id: c.id } : { t: "left", id: c.id })] : [])));
}
