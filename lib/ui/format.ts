// Human-readable lines for chat events. Peer-controlled text is stripped of
// control characters first, so a message cannot move the cursor, recolour
// the terminal, reorder what is shown or fake a line from someone else.
import type { ChatEvent, PeerInfo } from "../client/chat-client.ts";
import { formatSize } from "../cli/size.ts";
import { BIDI_CONTROLS } from "../wire/frame.ts";

// C0 and C1 controls and DEL, except tab, and the bidi controls (U+061C,
// U+200E/F, U+202A–U+202E, U+2066–U+2069: they reorder what follows them on
// the line, so "txt.exe" could show as "exe.txt"); line breaks
// (also the line and paragraph separators U+2028/U+2029) become "↵".
const CONTROLS = new RegExp(`[\\u0000-\\u0008\\u000b-\\u001f\\u007f-\\u009f${BIDI_CONTROLS}]`, "g");
export function sanitize(text: string): string {
  return text.replace(/\r?\n|[\u2028\u2029]/g, " ↵ ").replace(CONTROLS, "�");
}

// JSON.stringify leaves these raw; escaped, the text stays exact for a JSON
// reader, and a terminal or a line splitter that breaks at U+2028 sees none.
const JSON_RAW = new RegExp(`[\\u007f-\\u009f\\u2028\\u2029${BIDI_CONTROLS}]`, "g");
/** One NDJSON line (without the newline) for --json output. */
export function jsonLine(e: ChatEvent): string {
  return JSON.stringify(e).replace(JSON_RAW, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`);
}

// Terminal rows: a peer's text padded to the terminal's width would wrap, and
// its tail would start a row of its own, looking like a line from someone
// else ("[7hd2xw0a] ..."; found in audit). So a line for a terminal is cut
// into rows here, and every row after the first is indented.
const CONTINUED = "    ";
/**
 * `line` as rows of at most `columns` cells for a terminal that wide,
 * continuation rows indented. A row ends after its last space when the word
 * that overflows fits the next row (found in audit: words and hashes were cut
 * in the middle); the space stays at the end of the row, so removing each
 * "\n" + indent gives back the line.
 */
export function terminalRows(line: string, columns: number | undefined): string {
  if (!columns || columns <= CONTINUED.length + 8) return line;
  const rows: string[] = [];
  let row: string[] = [];
  let width = 0;
  let start = 0; // where the row's own text starts: after the indent of a continuation row
  for (const ch of line) {
    if (ch === "\n") {
      rows.push(row.join(""));
      (row = []), (width = 0), (start = 0);
      continue;
    }
    const w = cellsAtMost(ch);
    if (width + w > columns) {
      const space = row.lastIndexOf(" ");
      let carry: string[] = [];
      // Also when the space after a word overflows: the word moves with it, so the next row does not start with it (found in audit).
      if (space > start && row.slice(start, space).some((c) => c !== " ") && CONTINUED.length + cellsOf(row.slice(space + 1).join("")) + w <= columns) {
        carry = row.splice(space + 1);
      }
      rows.push(row.join(""));
      row = [...CONTINUED, ...carry];
      width = CONTINUED.length + cellsOf(carry.join(""));
      start = CONTINUED.length;
    }
    row.push(ch);
    width += w;
  }
  rows.push(row.join(""));
  return rows.join("\n");
}

/**
 * The most cells a terminal may give `ch`, never fewer than it does: a row we
 * count short would wrap in the terminal, its tail at column 0. Terminals
 * disagree with Bun.stringWidth on characters it counts as 0 (a soft hyphen
 * is 1 cell in xterm and tmux; U+FE0F widens the emoji before it; found in
 * audit), so every character counts at least 1; a regional indicator (half of
 * a flag) is 2 cells in some terminals; a tab moves up to 8.
 */
function cellsAtMost(ch: string): number {
  if (ch === "\t") return 8;
  const cp = ch.codePointAt(0)!;
  if (cp >= 0x1f1e6 && cp <= 0x1f1ff) return 2;
  return Math.max(1, Bun.stringWidth(ch));
}

/** Who is online, for the line after "Your ID": at most 10 IDs. */
export function formatOnline(ids: string[]): string {
  if (!ids.length) return "* nobody else is online yet";
  const more = ids.length > 10 ? ` and ${ids.length - 10} more (/list shows them)` : "";
  return `* online: ${ids.slice(0, 10).join(", ")}${more}`;
}

export function formatPeers(peers: PeerInfo[]): string {
  if (!peers.length) return "no other peers online";
  return peers
    .map((p) => {
      const state = p.session === "established" ? `session ${p.fingerprint} ${p.verified ? "verified" : "NOT verified"}` : p.session === "connecting" ? "key exchange in progress" : "no session";
      return `  ${p.id}  ${p.online ? "online " : "offline"}  ${state}`;
    })
    .join("\n");
}

export function formatEvent(e: ChatEvent): string | null {
  switch (e.event) {
    case "ready":
      return `Your ID: ${e.id} — give it to the people you want to talk to. /help lists commands.`;
    case "peer":
      return `* ${e.id} is ${e.online ? "online" : "offline"}`;
    case "verified":
      return `* ${e.peer} marked verified (fingerprint ${e.fingerprint})`;
    case "fingerprint":
      return `fingerprint of the session with ${e.peer}:\n  ${e.fingerprint}`;
    case "session":
      switch (e.state) {
        case "established":
          return `* secure session with ${e.peer}, fingerprint ${e.fingerprint}. Compare it with ${e.peer} over another channel, then /verify ${e.peer}`;
        case "rekeyed":
          // Started by us (/connect again), it is no alarm; the new fingerprint still needs comparing.
          if (e.by === "us") return `* new key exchange with ${e.peer} (you started it): fingerprint is now ${e.fingerprint} (not verified). Compare it again, then /verify ${e.peer}`;
          return `! ${e.peer} made a NEW key exchange: fingerprint is now ${e.fingerprint} (not verified). Compare it again before trusting it; until you /verify ${e.peer}, it gets ${e.blocked ? "nothing from you (you had verified the old key)" : "none of your broadcasts"}.`;
        case "closed":
          return `* session with ${e.peer} closed (${sanitize(e.reason ?? "")}); its keys are erased`;
        case "failed":
          return `! ${sanitize(e.reason ?? "")}`;
      }
      return null;
    case "message":
      return `[${e.from}${e.broadcast ? " to all" : ""}] ${sanitize(e.text)}`;
    case "list":
      return formatPeers(e.peers);
    case "error":
      return `! ${sanitize(e.message)}`;
    case "disconnected":
      return `! disconnected from relay: ${sanitize(e.message)}`;
    case "transfer": {
      const what = `${e.direction === "out" ? "to" : "from"} ${e.peer}: ${sanitize(e.name)} (${formatSize(e.size)}, id ${e.id})`;
      switch (e.state) {
        case "queued":
          return `* queued file ${what}: ${sanitize(e.reason ?? "")}`;
        case "offered":
          return `* offering file ${what}`;
        case "sending":
          return `* sending file ${what}`;
        case "receiving":
          return `* receiving file ${what}`;
        default: {
          // "cancelled: cancelled" and "cancelled: cancelled by X" say it twice (found in audit).
          const reason = sanitize(e.reason ?? "");
          return `! file ${what} ${!reason || reason === e.state ? e.state : reason.startsWith(`${e.state} `) ? reason : `${e.state}: ${reason}`}`;
        }
      }
    }
    case "progress":
      return null; // shown in the status line (see progressLine)
    case "file":
      return `* received ${sanitize(e.name)} from ${e.from}${e.broadcast ? " (to all)" : ""}: ${formatSize(e.size)}, saved as ${sanitize(e.path)}, sha256 ${e.sha256}`;
    case "delivered":
      // Not "verified": in smts that word is for fingerprints, and this says nothing about them.
      return `* ${e.to} has ${sanitize(e.name)} (${formatSize(e.size)}), its sha256 matches ours: ${e.sha256}`;
  }
}

const RATE_WINDOW_MS = 5000; // the rate is of the last few seconds: an average since the start hid slowdowns and stalls
const STALLED_MS = 3000; // progress events come every 250 ms while bytes move
const NAME_CELLS = 20;

/** A transfer in the status: [time, bytes so far] of its progress events in the last RATE_WINDOW_MS (the newest last). */
type Running = { name: string; way: string; out: boolean; size: number; samples: [number, number][] };

/**
 * Tracks running transfers and renders them as the status in front of the
 * prompt, one entry each: name, direction and peer, percent, rate over the
 * last 5 s, time left (m:ss). An incoming one is "stalled" once nothing
 * arrived for 3 s (call render() now and then to see it); an outgoing one
 * counts what went into our socket, which says nothing of a stall, and once
 * all of it went, waits for the receiver's answer (`delivered`). As many
 * entries as fit `cells` (at least one), then a count; fixed widths, so the
 * prompt does not jump.
 */
export function progressTracker(now = () => performance.now()) {
  const running = new Map<string, Running>();
  function entry(r: Running, t: number): string {
    const head = `${fitCells(statusName(r.name), NAME_CELLS)} ${r.way}`;
    const [t0, b0] = r.samples[0]!;
    const [t1, b1] = r.samples.at(-1)!;
    if (r.out && b1 >= r.size) return `${head} sent, awaiting the answer`;
    const rate = t > t0 ? ((b1 - b0) * 1000) / (t - t0) : 0; // up to now: a pause shows as a falling rate
    const pct = `${r.size ? Math.floor((100 * b1) / r.size) : 100}%`.padStart(4);
    // Slow links send a progress event only per chunk: stalled is no event for 3 s, or for three of their usual gaps.
    const gap = r.samples.length > 1 ? (t1 - t0) / (r.samples.length - 1) : 0;
    const pace = !r.out && t - t1 >= Math.max(STALLED_MS, 3 * gap) ? "stalled" : rate > 0 ? `${`${formatSize(rate)}/s`.padStart(11)} ${clock((r.size - b1) / rate).padStart(5)}` : "";
    return `${head} ${pct} ${pace}`.trimEnd();
  }
  function render(cells = Infinity): string {
    const t = now();
    const all = [...running.values()];
    const shown: string[] = [];
    let width = 0;
    for (const [i, r] of all.entries()) {
      const text = entry(r, t);
      const more = i + 1 < all.length ? ` | +${all.length - i - 1} more`.length : 0;
      if (shown.length && width + 3 + cellsOf(text) + more > cells) {
        shown.push(`+${all.length - i} more`);
        break;
      }
      shown.push(text);
      width += (shown.length > 1 ? 3 : 0) + cellsOf(text);
    }
    return shown.join(" | ");
  }
  return {
    update(e: ChatEvent, cells?: number): string {
      if (e.event === "progress") {
        const key = `${e.direction} ${e.id}`;
        const r = running.get(key) ?? { name: e.name, way: `${e.direction === "out" ? "to" : "from"} ${e.peer === "*" ? "all" : e.peer}`, out: e.direction === "out", size: e.size, samples: [] };
        const t = now();
        r.samples.push([t, e.bytes]);
        while (r.samples.length > 2 && r.samples[1]![0] <= t - RATE_WINDOW_MS) r.samples.shift();
        running.set(key, r);
        if (!r.out && e.bytes >= e.size) running.delete(key);
      } else if (e.event === "delivered") {
        running.delete(`out ${e.id}`);
      } else if (e.event === "transfer" && e.state !== "offered" && e.state !== "sending" && e.state !== "receiving") {
        running.delete(`${e.direction} ${e.id}`);
      }
      return render(cells);
    },
    render,
  };
}

/** Seconds as m:ss, or h:mm:ss. */
function clock(seconds: number): string {
  const s = Math.ceil(seconds);
  const mmss = `${Math.floor((s % 3600) / 60)}:${String(s % 60).padStart(2, "0")}`;
  return s >= 3600 ? `${Math.floor(s / 3600)}:${mmss.padStart(5, "0")}` : mmss;
}

/**
 * A name for the prompt, where readline must count its cells as the terminal
 * draws them: sanitized, composed (NFC), without the characters Bun counts as
 * 0 cells (soft hyphen, zero-width, variation selectors).
 */
const statusName = (name: string) => [...sanitize(name).normalize("NFC")].filter((ch) => Bun.stringWidth(ch) > 0).join("");

/** Cells `text` takes at most (cellsAtMost of each character). */
const cellsOf = (text: string) => [...text].reduce((n, ch) => n + cellsAtMost(ch), 0);

/** `text` cut to at most `cells` terminal cells, whole characters (an emoji is never split), "…" where cut. */
function fitCells(text: string, cells: number): string {
  if (cellsOf(text) <= cells) return text;
  let out = "";
  let width = 0;
  for (const { segment } of new Intl.Segmenter().segment(text)) {
    width += cellsOf(segment);
    if (width > cells - 1) break;
    out += segment;
  }
  return `${out}…`;
}
