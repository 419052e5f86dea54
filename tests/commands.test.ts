// The chat command parser (lib/ui/commands.ts) on the forms the README promises.
import { homedir } from "node:os";
import { expect, test } from "bun:test";
import { completeLine, parseCommand } from "../lib/ui/commands.ts";

test("/exit and /quit quit; with arguments they are a usage error, not a quit", () => {
  expect(parseCommand("/exit")).toEqual({ kind: "exit" });
  expect(parseCommand("/QUIT")).toEqual({ kind: "exit" });
  expect(parseCommand("/quit now")).toEqual({ kind: "invalid", message: "/quit takes no arguments" });
  expect(parseCommand("/exit now")).toEqual({ kind: "invalid", message: "/exit takes no arguments" });
});

test("a path is the rest of the line, inner spaces included; quotes keep spaces at its ends", () => {
  expect(parseCommand("/send 7hd2xw0a my file.pdf")).toEqual({ kind: "send", peer: "7hd2xw0a", path: "my file.pdf" });
  expect(parseCommand('/send 7hd2xw0a "my file.pdf"')).toEqual({ kind: "send", peer: "7hd2xw0a", path: "my file.pdf" });
  expect(parseCommand('/send 7hd2xw0a " notes.txt "')).toEqual({ kind: "send", peer: "7hd2xw0a", path: " notes.txt " });
  expect(parseCommand("/bsend  my file.pdf ")).toEqual({ kind: "bsend", path: "my file.pdf" });
  // A leading ~ is the home directory, unless quoted (found in audit).
  expect(parseCommand("/send 7hd2xw0a ~/my file.pdf")).toEqual({ kind: "send", peer: "7hd2xw0a", path: `${homedir()}/my file.pdf` });
  expect(parseCommand("/bsend ~")).toEqual({ kind: "bsend", path: homedir() });
  expect(parseCommand('/send 7hd2xw0a "~/x"')).toEqual({ kind: "send", peer: "7hd2xw0a", path: "~/x" });
  expect(parseCommand("/send 7hd2xw0a ~other/x")).toEqual({ kind: "send", peer: "7hd2xw0a", path: "~other/x" });
});

// Regression (found in audit): a line that was only "/" (or "/" and a space)
// crashed the client with a TypeError, leaving a half-received file behind.
test("a bare / or / with spaces is a usage error; no input line makes the parser throw", () => {
  for (const line of ["/", "/ ", "/\t", "/\r", "/\u3000/msg", "/ msg x"]) {
    expect(parseCommand(line)).toEqual({ kind: "invalid", message: "a command needs a name after the / (try /help)" });
  }
  const alphabet = ["/", " ", "\t", "\r", "\n", "\u3000", "\u2028", "\"", "'", "a", "msg", "send", "7hd2xw0a", "\u0000", "\uFFFF", "\uD800"];
  let seed = 1;
  const next = () => ((seed = (seed * 1103515245 + 12345) % 2 ** 31), seed);
  for (let i = 0; i < 20_000; i++) {
    const line = Array.from({ length: next() % 8 }, () => alphabet[next() % alphabet.length]).join("");
    expect(() => parseCommand(line)).not.toThrow();
  }
});

// Found in audit: Tab inserted a literal tab, which broke the line's editing.
test("Tab completes a command name, then the ID after a command that takes one; nothing else", () => {
  const ids = () => ["7hd2xw0a", "7hq00000", "k3x9pm2q"];
  expect(completeLine("/ms", ids)).toEqual([["/msg "], "/ms"]);
  expect(completeLine("/", ids)[0]).toHaveLength(12);
  expect(completeLine("/b", ids)).toEqual([["/bmsg ", "/bsend "], "/b"]);
  expect(completeLine("/msg 7h", ids)).toEqual([["7hd2xw0a ", "7hq00000 "], "7h"]);
  expect(completeLine("/connect K3", ids)).toEqual([["k3x9pm2q "], "K3"]);
  expect(completeLine("/msg k3x9pm2q hel", ids)).toEqual([[], "/msg k3x9pm2q hel"]);
  expect(completeLine("/bmsg 7h", ids)).toEqual([[], "/bmsg 7h"]);
  expect(completeLine("hello", ids)).toEqual([[], "hello"]);
  // After /cancel, the short IDs of running transfers (found in the second audit: they had scrolled away).
  expect(completeLine("/cancel 6b", ids, () => ["6b88da2c", "59b932e0"])).toEqual([["6b88da2c "], "6b"]);
  expect(completeLine("/cancel ", ids, () => ["6b88da2c", "59b932e0"])).toEqual([["6b88da2c ", "59b932e0 "], ""]);
  expect(completeLine("/cancel 7h", ids)).toEqual([[], "7h"]);
});
