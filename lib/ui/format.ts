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
/** `line` as rows of at most `columns` cells for a terminal that wide, continuation rows indented. */
export function terminalRows(line: string, columns: number | undefined): string {
  if (!columns || columns <= CONTINUED.length + 8) return line;
  let rows = "";
  let width = 0;
  for (const ch of line) {
    if (ch === "\n") {
      rows += ch;
      width = 0;
      continue;
    }
    const w = cellsAtMost(ch);
    if (width + w > columns) {
      rows += `\n${CONTINUED}`;
      width = CONTINUED.length;
    }
    rows += ch;
    width += w;
  }
  return rows;
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
          return `! ${e.peer} made a NEW key exchange: fingerprint is now ${e.fingerprint} (not verified). Compare it again before trusting it.`;
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
        default:
          return `! file ${what} ${e.state}: ${sanitize(e.reason ?? "")}`;
      }
    }
    case "progress":
      return null; // shown in the status line (see progressLine)
    case "file":
      return `* received ${sanitize(e.name)} from ${e.from}${e.broadcast ? " (to all)" : ""}: ${formatSize(e.size)}, saved as ${sanitize(e.path)}, sha256 ${e.sha256}`;
    case "delivered":
      return `* ${e.to} has ${sanitize(e.name)} (${formatSize(e.size)}), verified: sha256 ${e.sha256}`;
  }
}

/** Tracks running transfers and renders them as one status line: name, percent, rate, ETA. */
export function progressTracker() {
  const running = new Map<string, { name: string; size: number; bytes: number; start: number; startBytes: number }>();
  return {
    update(e: ChatEvent): string {
      if (e.event === "progress") {
        const t = running.get(e.id) ?? { name: e.name, size: e.size, bytes: 0, start: performance.now(), startBytes: e.bytes };
        t.bytes = e.bytes;
        running.set(e.id, t);
        if (e.bytes >= e.size) running.delete(e.id);
      } else if (e.event === "transfer" && e.state !== "offered" && e.state !== "sending" && e.state !== "receiving") {
        running.delete(e.id);
      }
      return [...running.values()]
        .map((t) => {
          const seconds = (performance.now() - t.start) / 1000;
          const rate = seconds > 0 ? (t.bytes - t.startBytes) / seconds : 0;
          const eta = rate > 0 ? Math.ceil((t.size - t.bytes) / rate) : null;
          const pct = t.size ? Math.floor((100 * t.bytes) / t.size) : 100;
          return `${sanitize(t.name).slice(0, 24)} ${pct}% ${formatSize(rate)}/s${eta === null ? "" : ` ETA ${eta}s`}`;
        })
        .join(" | ");
    },
  };
}
