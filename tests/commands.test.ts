// The chat command parser (lib/ui/commands.ts) on the forms the README promises.
import { expect, test } from "bun:test";
import { parseCommand } from "../lib/ui/commands.ts";

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
});
