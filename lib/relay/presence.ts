// Presence in batches: the `joined` and `left` frames a relay owes its
// watching clients (PROTOCOL §5.6).
//
// Told one by one, each join or leave costs a write to every watcher: with
// 2,000 watchers, one client joining and leaving 16 times a second kept the
// relay 89 % busy. So the relay records the changes and tells them in
// batches, at most one per interval (relay/server.ts picks it): one frame run,
// built once and shared, one write per watcher per batch. A batch tells the
// changes in order, except that an ID that joined and left within it is left
// out when no one can have known it: it sent nothing through the relay, and
// no other watching client joined while it was there (and could have seen it
// in a `list`). A client that only churns costs the watchers nothing.
import { concat } from "../crypto/primitives.ts";
import { encodeFrame } from "../wire/frame.ts";

interface Change {
  id: string;
  joined: boolean;
  /** A join: the client watches. A leave: the client sent something while joined. */
  flag: boolean;
}

export interface PresenceLog {
  /** Records that `id` joined (`watching`: it asked for presence). */
  joined(id: string, watching: boolean): void;
  /** Records that `id` left (`spoke`: it sent something while joined). */
  left(id: string, spoke: boolean): void;
  /** Changes recorded since the last take(). */
  readonly size: number;
  /** Ends the batch: the frames to send every watcher (empty: nothing to tell). */
  take(): Uint8Array;
}

export function presenceLog(): PresenceLog {
  let changes: Change[] = [];
  return {
    joined: (id, watching) => void changes.push({ id, joined: true, flag: watching }),
    left: (id, spoke) => void changes.push({ id, joined: false, flag: spoke }),
    get size() {
      return changes.length;
    },
    take() {
      const batch = changes;
      changes = [];
      return encodeBatch(batch);
    },
  };
}

function encodeBatch(changes: Change[]): Uint8Array {
  const told: (Change | null)[] = [];
  const joinedAt = new Map<string, number>();
  let lastWatcher = -1; // where the latest watching client's join is in `told`
  for (const c of changes) {
    if (c.joined) {
      joinedAt.set(c.id, told.length);
      if (c.flag) lastWatcher = told.length;
      told.push(c);
      continue;
    }
    const at = joinedAt.get(c.id);
    joinedAt.delete(c.id);
    if (at !== undefined && !c.flag && lastWatcher <= at) told[at] = null; // never announced: nothing to take back
    else told.push(c);
  }
  return concat(...told.flatMap((c) => (c ? [encodeFrame(c.joined ? { t: "joined", id: c.id } : { t: "left", id: c.id })] : [])));
}
