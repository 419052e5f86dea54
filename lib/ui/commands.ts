// Parsing of chat command lines (/connect, /msg, ...): returns a Command or a
// one-line error, never throws on user input; and Tab completion for them.
import { homedir } from "node:os";
import { normalizeId } from "../relay/protocol.ts";

export type Command =
  | { kind: "connect"; peer: string }
  | { kind: "msg"; peer: string; text: string }
  | { kind: "send"; peer: string; path: string }
  | { kind: "bmsg"; text: string }
  | { kind: "bsend"; path: string }
  | { kind: "cancel"; id: string }
  | { kind: "verify"; peer: string; fingerprint?: string }
  | { kind: "fingerprint"; peer: string }
  | { kind: "list" }
  | { kind: "help" }
  | { kind: "exit" }
  | { kind: "empty" }
  | { kind: "invalid"; message: string };

export const HELP = `Commands:
  /connect ID        start an encrypted session with ID (key exchange)
  /msg ID text       send a private message
  /send ID path      send a file (encrypted, streamed, verified on arrival)
  /bmsg text         send a message to everyone you /connect'ed to or /verify'd
  /bsend path        send a file to the same peers (uploaded once)
  /cancel [FILE-ID]  stop a file transfer (all of them without an ID)
  /list              online peers, session state, fingerprints
  /verify ID [FP]    mark ID verified after comparing fingerprints out of band
                     (with FP, only if the session still has that fingerprint)
  /fingerprint ID    show the full 256-bit fingerprint for careful comparison
  /help              this help
  /exit, /quit       erase all keys and quit`;

const USAGE: Record<string, string> = {
  connect: "/connect ID",
  msg: "/msg ID text",
  send: "/send ID path",
  verify: "/verify ID [FINGERPRINT]",
  fingerprint: "/fingerprint ID",
};

export function parseCommand(line: string): Command {
  const start = line.trimStart();
  if (!start.trim()) return { kind: "empty" };
  if (!start.startsWith("/")) return { kind: "invalid", message: "commands start with / (try /help; to message someone: /msg ID text)" };
  const m = /^\/(\S+)(?:\s(.*))?$/s.exec(start);
  if (!m) return { kind: "invalid", message: "a command needs a name after the / (try /help)" };
  const name = m[1]!.toLowerCase();
  // A text (/msg, /bmsg) is everything after the one space that ends the ID or
  // the command, exactly as written: a script's indentation, trailing spaces
  // and tabs go through (found in audit). Everything else ignores spaces.
  const text = m[2] ?? "";
  const rest = text.trim();
  switch (name) {
    case "list":
    case "help":
    case "exit":
    case "quit": // as /exit, the word many chat programs use
      return rest ? { kind: "invalid", message: `/${name} takes no arguments` } : { kind: name === "quit" ? "exit" : name };
    case "verify": {
      const [id, fingerprint, more] = rest.split(/\s+/);
      const peer = normalizeId(id ?? "");
      if (!rest || more !== undefined) return { kind: "invalid", message: `usage: ${USAGE.verify}` };
      if (!peer) return { kind: "invalid", message: `not a valid ID: ${JSON.stringify(id)} (IDs are 8 letters/digits)` };
      if (fingerprint !== undefined && !/^[0-9a-f]{4}(-?[0-9a-f]{4}){2}$|^[0-9a-f]{64}$/i.test(fingerprint)) return { kind: "invalid", message: `not a fingerprint: ${JSON.stringify(fingerprint)} (as /list or /fingerprint shows it)` };
      return fingerprint === undefined ? { kind: "verify", peer } : { kind: "verify", peer, fingerprint };
    }
    case "connect":
    case "fingerprint": {
      const peer = normalizeId(rest);
      if (!rest || rest.includes(" ")) return { kind: "invalid", message: `usage: ${USAGE[name]}` };
      if (!peer) return { kind: "invalid", message: `not a valid ID: ${JSON.stringify(rest)} (IDs are 8 letters/digits)` };
      return { kind: name, peer };
    }
    case "msg": {
      const mm = /^\s*(\S+)\s(.*)$/s.exec(text);
      if (!mm?.[2]!.trim()) return { kind: "invalid", message: `usage: ${USAGE.msg}` };
      const peer = normalizeId(mm[1]!);
      if (!peer) return { kind: "invalid", message: `not a valid ID: ${JSON.stringify(mm[1])} (IDs are 8 letters/digits)` };
      return { kind: "msg", peer, text: mm[2]! };
    }
    case "send": {
      const mm = /^(\S+)\s+(.+)$/s.exec(rest);
      if (!mm) return { kind: "invalid", message: `usage: ${USAGE.send}` };
      const peer = normalizeId(mm[1]!);
      if (!peer) return { kind: "invalid", message: `not a valid ID: ${JSON.stringify(mm[1])} (IDs are 8 letters/digits)` };
      return { kind: "send", peer, path: pathArg(mm[2]!.trim()) };
    }
    case "cancel":
      if (rest && !/^[0-9a-f]{1,32}$/i.test(rest)) return { kind: "invalid", message: "usage: /cancel [FILE-ID] (the hex ID shown when the transfer started)" };
      return { kind: "cancel", id: rest.toLowerCase() };
    case "bmsg":
      return rest ? { kind: "bmsg", text } : { kind: "invalid", message: "usage: /bmsg text" };
    case "bsend":
      return rest ? { kind: "bsend", path: pathArg(rest.trim()) } : { kind: "invalid", message: "usage: /bsend path" };
    default:
      return { kind: "invalid", message: `unknown command /${name} (try /help)` };
  }
}

/**
 * A path is the rest of the line (inner spaces kept); quotes keep spaces at its
 * ends too: /send ID " notes.txt". Unquoted, a leading ~ is the home directory,
 * as in a shell (found in audit: "cannot read ~/file.bin").
 */
function pathArg(path: string): string {
  const m = /^"(.*)"$/s.exec(path) ?? /^'(.*)'$/s.exec(path);
  if (m) return m[1]!;
  return path === "~" || path.startsWith("~/") ? homedir() + path.slice(1) : path;
}

const NAMES = ["bmsg", "bsend", "cancel", "connect", "exit", "fingerprint", "help", "list", "msg", "quit", "send", "verify"];
const TAKES_ID = new Set(["connect", "msg", "send", "verify", "fingerprint"]);

/**
 * Tab completion for the prompt (readline's completer): a command name, then
 * the ID after a command that takes one, from `ids`, or after /cancel the
 * short ID of a transfer, from `transfers`. [candidates, the part they
 * complete]; none for anything else, so Tab never inserts a tab (found in
 * audit: it did, and broke the line's editing).
 */
export function completeLine(line: string, ids: () => string[], transfers: () => string[] = () => []): [string[], string] {
  const name = /^\/(\S*)$/.exec(line);
  if (name) return [NAMES.filter((n) => n.startsWith(name[1]!.toLowerCase())).map((n) => `/${n} `), line];
  const arg = /^\/(\S+) +(\S*)$/.exec(line);
  const command = arg?.[1]!.toLowerCase() ?? "";
  const from = TAKES_ID.has(command) ? ids : command === "cancel" ? transfers : null;
  if (!arg || !from) return [[], line];
  const word = arg[2]!.toLowerCase();
  return [from().filter((x) => x.startsWith(word)).map((x) => `${x} `), arg[2]!];
}
