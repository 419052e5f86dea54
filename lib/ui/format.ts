// Human-readable lines for chat events. Peer-controlled text is stripped of
// control characters first, so a message cannot move the cursor, recolour
// the terminal or fake a line from someone else.
import type { ChatEvent, PeerInfo } from "../client/chat-client.ts";

// C0 and C1 controls and DEL, except tab; newlines become "↵".
const CONTROLS = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g;
export function sanitize(text: string): string {
  return text.replace(/\r?\n/g, " ↵ ").replace(CONTROLS, "�");
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
    case "session":
      switch (e.state) {
        case "established":
          return `* secure session with ${e.peer}, fingerprint ${e.fingerprint}. Compare it with ${e.peer} over another channel, then /verify ${e.peer}`;
        case "rekeyed":
          return `! ${e.peer} made a NEW key exchange: fingerprint is now ${e.fingerprint} (not verified). Compare it again before trusting it.`;
        case "closed":
          return `* session with ${e.peer} closed (${e.reason}); its keys are erased`;
        case "failed":
          return `! ${e.reason}`;
      }
      return null;
    case "message":
      return `[${e.from}${e.broadcast ? " to all" : ""}] ${sanitize(e.text)}`;
    case "list":
      return formatPeers(e.peers);
    case "error":
      return `! ${sanitize(e.message)}`;
    case "disconnected":
      return `! disconnected from relay: ${e.message}`;
  }
}
