#!/usr/bin/env bun
// Entry point: `smts relay` and `smts chat`. Argument parsing lives in cmd/,
// everything else in lib/.
//
// Start-up: only the subcommand being run is imported. `smts --help` and
// `smts --version` need nothing but the names and descriptions below, so the
// relay, the chat client, msgpackr and the DH worker are never loaded for
// them (docs/BENCHMARKS.md, "Start-up (issue 6)").
import { tidyUsage } from "./usage-text.ts";
import { failOnStdoutError } from "./plain-output.ts";
import type { CommandDef } from "citty";
import pkg from "../package.json" with { type: "json" };

/** The subcommands. `description` repeats the command's own meta (tests/binary.smoke.test.ts checks they agree). */
const COMMANDS = {
  relay: {
    description: "Run the relay (it forwards ciphertext and stores nothing)",
    load: async (): Promise<CommandDef<any>> => (await import("./relay.ts")).relayCommand,
  },
  chat: {
    description: "Chat through a relay, end-to-end encrypted (or from a script)",
    load: async (): Promise<CommandDef<any>> => (await import("./chat.ts")).chatCommand,
  },
};

const argv = process.argv.slice(2);
if (argv.length === 1 && (argv[0] === "--version" || argv[0] === "-v")) {
  failOnStdoutError();
  const { RELAY_PROTOCOL_VERSION } = await import("../lib/relay/protocol.ts");
  process.stdout.write(`smts ${pkg.version} (protocol ${RELAY_PROTOCOL_VERSION})\n`);
} else {
  // The top level takes no options, so the first word that is not an option
  // names the subcommand (as citty decides too). Every other subcommand is
  // represented by its name and description only.
  const at = argv.findIndex((a) => !a.startsWith("-"));
  const wanted = Object.hasOwn(COMMANDS, argv[at] ?? "") ? (argv[at] as keyof typeof COMMANDS) : undefined;
  const help = argv.includes("--help") || argv.includes("-h");
  // Both commands run for long and move files: first the allocator setting that
  // keeps a transfer after a pause from faulting its buffers in again.
  if (wanted && !help) (await import("../lib/runtime/allocator.ts")).restartWithAllocatorSettings();
  // citty decides on colours once, when it loads, so it is loaded only now that
  // plain-output.ts has run: a static import is not enough, because the release
  // build (--splitting) moves citty into a chunk that runs before this file.
  const { defineCommand, renderUsage, runCommand } = await import("citty");
  const subCommands: Record<string, CommandDef<any> | (() => Promise<CommandDef<any>>)> = {};
  for (const [name, c] of Object.entries(COMMANDS)) subCommands[name] = name === wanted ? c.load : { meta: { name, description: c.description } };
  const main = defineCommand({ meta: { name: "smts", version: pkg.version, description: "End-to-end-encrypted messenger with a transparent relay" }, subCommands });
  if (help) {
    // The usage of the command named, or of smts, as citty's runMain prints it;
    // written here because runMain's console.log hides a failed write (exit 0).
    failOnStdoutError();
    const usage = wanted ? await renderUsage(await COMMANDS[wanted].load(), main) : await renderUsage(main);
    process.stdout.write(`${tidyUsage(usage)}\n\n`);
  } else {
    // citty's runMain would report the mistakes below with exit 1; like the
    // commands' own (cmd/usage.ts), they are usage errors: usage, one line, exit 2.
    const { exitUsage } = await import("./usage.ts");
    const first = argv[0];
    if (first === undefined) await exitUsage(main, undefined, "no command given");
    if (first === "--version" || first === "-v") await exitUsage(main, undefined, `${first} takes no arguments`);
    if (at !== 0) await exitUsage(main, undefined, `unknown option ${first}`); // the top level takes none
    if (!wanted) await exitUsage(main, undefined, `unknown command ${JSON.stringify(first)}`);
    const cmd = await COMMANDS[wanted!].load();
    try {
      await runCommand(cmd, { rawArgs: argv.slice(1) });
    } catch (err) {
      // citty's own check of the arguments (a missing RELAY); anything else is a bug.
      if (err instanceof Error && err.name === "CLIError") await exitUsage(cmd, main, err.message.replace(/^./, (c) => c.toLowerCase()));
      console.error(err);
      process.exit(1);
    }
  }
}
