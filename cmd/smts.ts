#!/usr/bin/env bun
// Entry point: `smts relay` and `smts chat`. Argument parsing lives in cmd/,
// everything else in lib/.
import { defineCommand, runMain } from "citty";
import pkg from "../package.json" with { type: "json" };
import { RELAY_PROTOCOL_VERSION } from "../lib/relay/protocol.ts";
import { chatCommand } from "./chat.ts";
import { relayCommand } from "./relay.ts";

const main = defineCommand({
  meta: { name: "smts", version: pkg.version, description: "End-to-end-encrypted messenger with a transparent relay" },
  subCommands: { relay: relayCommand, chat: chatCommand },
});

const argv = process.argv.slice(2);
if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-v")) {
  process.stdout.write(`smts ${pkg.version} (protocol ${RELAY_PROTOCOL_VERSION})\n`);
} else {
  await runMain(main);
}
