// `smts chat HOST[:PORT]`: argument parsing and wiring of the chat client
// (lib/client) to the interactive prompt or to scripted stdin/--json mode.
import { defineCommand } from "citty";
import { accessSync, constants, statSync } from "node:fs";
import { constants as osConstants } from "node:os";
import { resolve } from "node:path";
import { startChat, type ChatClient, type ChatEvent } from "../lib/client/chat-client.ts";
import { startDhEngine } from "../lib/crypto/dh.ts";
import { JoinError } from "../lib/link/relay-link.ts";
import { DEFAULT_PORT } from "../lib/relay/protocol.ts";
import { secretBytes } from "../lib/secret/secret.ts";
import { completeLine, parseCommand } from "../lib/ui/commands.ts";
import { execute } from "../lib/ui/execute.ts";
import { formatEvent, formatOnline, jsonLine, progressTracker, terminalRows } from "../lib/ui/format.ts";
import { outputGate } from "../lib/ui/output.ts";
import { startTerminal, type Terminal } from "../lib/ui/terminal.ts";
import { onStopSignals } from "./signals.ts";
import { checkFlags, Failure, guard, parsePort, parsePositive, readSecret, UsageError } from "./usage.ts";

const args = {
  relay: { type: "positional", description: "Relay address, HOST[:PORT] (default port 5555)", required: true },
  "secret-file": { type: "string", description: "Read the join secret from this file (else SMTS_SECRET)", valueHint: "PATH" },
  json: { type: "boolean", description: "Write NDJSON events to stdout (human output goes to stderr)" },
  timeout: { type: "string", valueHint: "SECONDS", description: "Seconds a scripted command waits for a session", default: "30" },
  "download-dir": { type: "string", valueHint: "DIR", description: "Where received files are saved", default: "." },
  "max-file-size": { type: "string", valueHint: "SIZE", description: "Largest file sent or accepted (e.g. 10MiB, 1GiB)", default: "10MiB" },
} as const;

export function parseRelayAddress(text: string): { host: string; port: number } {
  const m = /^\[([^\]]+)\](?::(\d+))?$/.exec(text) ?? /^([^:]+)(?::([^:]*))?$/.exec(text);
  if (!m || !m[1]) throw new UsageError(`invalid relay address ${JSON.stringify(text)}: expected HOST[:PORT]`);
  return { host: m[1], port: parsePort(m[2], DEFAULT_PORT) };
}

export const chatCommand = defineCommand({
  meta: { name: "chat", description: "Chat through a relay, end-to-end encrypted (or from a script)" },
  args,
  async run({ args: a, rawArgs, cmd }) {
    await guard(cmd, undefined, async () => {
      checkFlags(rawArgs, args);
      const { host, port } = parseRelayAddress(a.relay);
      const timeoutMs = parsePositive("timeout", a.timeout, 30) * 1000;
      const maxFileSize = parsePositive("max-file-size", a["max-file-size"], 0, "size");
      if (a["download-dir"] === "") throw new UsageError("--download-dir needs a path");
      const downloadDir = resolve(a["download-dir"]);
      try {
        accessSync(downloadDir, constants.W_OK);
        if (!statSync(downloadDir).isDirectory()) throw new Error("not a directory");
      } catch (err) {
        throw new Failure(`cannot save files in --download-dir ${downloadDir}: ${(err as NodeJS.ErrnoException).code ?? (err as Error).message}`);
      }
      const secret = readSecret(a["secret-file"]);
      const json = Boolean(a.json);
      // The prompt needs a terminal on both sides: typed at a terminal with stdout
      // in a file, the file would get the prompt, the echo and readline's escape codes.
      const interactive = Boolean(process.stdin.isTTY && process.stdout.isTTY) && !json;
      const dh = startDhEngine();

      let terminal: Terminal | null = null;
      let client: ChatClient | null = null;
      let exiting = false;
      const running: Promise<boolean>[] = [];
      /** Erases every key and exits; transfers still running are cancelled (temporary files removed, peers told). */
      const finish = async (code: number) => {
        if (exiting) return;
        exiting = true;
        terminal?.close();
        try {
          await client?.close();
        } catch (e) {
          // The keys are erased even then (close() finishes before it rethrows); the exit must not be skipped.
          err(bugLine(e));
          code ||= 1;
        } finally {
          dh.close();
          process.exit(code);
        }
      };
      // SIGINT, SIGTERM, SIGHUP: the same, with the exit code of a process killed by that signal.
      onStopSignals(() => exiting, (_signal, code) => void finish(code));
      // A bug must not skip the clean-up: keys are still erased, and a file being
      // received is not left half-written (found in audit: a parser crash did both).
      const internalError = (e: unknown) => {
        err(bugLine(e));
        void finish(1);
      };
      process.on("uncaughtException", internalError);
      process.on("unhandledRejection", internalError);
      // A reader of our output that falls behind stops us reading from the relay until it caught up.
      const write = outputGate((on) => client?.holdEvents(on));
      // A broken stderr only loses the failure lines; the chat goes on (and ends) as it would.
      let stderrOpen = true;
      process.stderr.on("error", () => void (stderrOpen = false));
      const err = (text: string) => {
        if (stderrOpen) write(process.stderr, text);
      };
      /** A line for `stream`: cut into indented rows when it is a terminal (format.ts, terminalRows). */
      const rows = (stream: NodeJS.WriteStream, line: string) => `${stream.isTTY ? terminalRows(line, stream.columns) : line}\n`;
      // A reader that went away (`| head -1`, `| grep -m1`) ends us like any
      // filter: quietly, with 141 as for SIGPIPE. Nothing more is written there.
      let stdoutOpen = true;
      process.stdout.on("error", (e: NodeJS.ErrnoException) => {
        stdoutOpen = false;
        if (e.code !== "EPIPE") err(`smts: cannot write to stdout: ${e.code ?? e.message}\n`);
        void finish(e.code === "EPIPE" ? 128 + osConstants.signals.SIGPIPE : 1);
      });
      const out = (text: string) => {
        if (stdoutOpen) write(process.stdout, text);
      };

      const print = (line: string) => {
        if (json) err(rows(process.stderr, line));
        else if (terminal) terminal.print(line);
        else out(rows(process.stdout, line));
      };
      const progress = progressTracker();
      // The status leaves room to type on the prompt's row (found in audit: three transfers took two rows).
      const statusCells = () => Math.max(1, (process.stdout.columns || 80) - 30);
      // Redrawn every second while transfers run, so that one that stopped moving shows as stalled.
      let ticker: Timer | null = null;
      const showProgress = (status: string) => {
        terminal?.status(status);
        if (status && terminal && !ticker) ticker = setInterval(() => showProgress(progress.render(statusCells())), 1000);
        else if (!status && ticker) clearInterval(ticker), (ticker = null);
      };
      // A failed key exchange is reported as `session failed` and again as the
      // error of the command that waited for it: the terminal shows it once.
      let failedLine = "";
      // At the prompt, who was online at the join is one line after "Your ID" (found in
      // audit: presence lines came before it, and those online already were not shown).
      let joined = false;
      const emit = (e: ChatEvent) => {
        if (e.event === "progress" || e.event === "transfer" || e.event === "delivered") showProgress(progress.update(e, statusCells()));
        if (e.event === "ready") joined = true;
        else if (e.event === "peer" && interactive && !joined) return;
        if (json) out(`${jsonLine(e)}\n`);
        const line = formatEvent(e);
        if (!line) return;
        if (interactive) {
          // A file's failure was shown as its `transfer` line; the /send's error would repeat it.
          const repeated = e.event === "error" && (line === failedLine || TRANSFER_OUTCOMES.has(e.code));
          failedLine = e.event === "session" && e.state === "failed" ? line : "";
          if (!repeated) print(line);
        }
        // Scripts: stdout carries events (or, without --json, their lines); each failure is one line on stderr.
        else if (e.event === "error" || e.event === "disconnected") err(rows(process.stderr, line));
        else if (!json) out(rows(process.stdout, line));
      };

      try {
        client = await startChat({ host, port, secret: secret ? secretBytes(secret) : null, dh, onEvent: emit, downloadDir, maxFileSize });
      } catch (err) {
        dh.close();
        if (err instanceof JoinError) throw new Failure(err.message);
        throw err;
      }
      if (interactive) print(formatOnline(client.peers().filter((p) => p.online).map((p) => p.id)));
      // The relay went away: every transfer failed with it; report the commands that
      // failed (a /send under way) before exiting 1 (its `disconnected` line says why).
      client.closed.then(async () => {
        if (exiting) return;
        exiting = true;
        await Promise.allSettled(running);
        terminal?.close();
        dh.close();
        process.exit(1);
      });

      const ctx = { client, emit, print, scripted: !interactive, sessionTimeoutMs: timeoutMs, background: (p: Promise<boolean>) => void running.push(p) };

      if (interactive) {
        terminal = startTerminal(
          (line) => {
            const command = parseCommand(line);
            if (command.kind === "exit") return void finish(0);
            execute(command, ctx).catch((err) => print(`! ${(err as Error).message}`));
          },
          () => void finish(0),
          (line) => completeLine(line, () => client!.peers().filter((p) => p.online || p.session !== "none").map((p) => p.id), () => client!.cancellable()),
        );
        return;
      }
      // Scripted: commands run in order; at end of input, drain and exit.
      const script = async (chat: ChatClient) => {
        let failures = 0;
        try {
          for await (const line of inputLines(process.stdin)) {
            const command = line === null ? ({ kind: "invalid", message: `a line of more than ${MAX_LINE} characters: ignored` } as const) : parseCommand(line);
            if (command.kind === "exit") break;
            if (!(await execute(command, ctx))) failures++;
            await chat.writable(); // read no more commands than the relay takes
          }
        } catch (e) {
          // Unreadable input (a directory, a terminal hung up: EIO) ends it like its end, as a failure.
          if (!(e instanceof InputError)) throw e;
          err(`smts: cannot read commands from stdin: ${e.message}\n`);
          failures++;
        }
        // End of input: let the transfers under way finish (each ends within the
        // idle timeout at worst), then drain and exit. Offers from now on are
        // declined: a peer offering file after file would keep us here for good.
        chat.stopAccepting();
        for (const ok of await Promise.all(running)) if (!ok) failures++;
        while (chat.activeTransfers() > 0) await Bun.sleep(50);
        await chat.flush();
        await finish(failures ? 1 : 0);
      };
      await script(client).catch(internalError);
    });
  },
});

const TRANSFER_OUTCOMES = new Set(["declined", "failed", "cancelled"]);

const bugLine = (e: unknown) => `smts: internal error (a bug, please report it): ${e instanceof Error ? e.message : String(e)}\n`;

/** Longest input line taken, far above the longest command (a message is at most 261,120 bytes). */
const MAX_LINE = 1024 * 1024;

/**
 * The lines of `input`, split at "\n" only (a "\r" before it is dropped). Bun's
 * readline also ends a line at a lone "\r" and at U+2028/U+2029, so a text a bot
 * passes on in `/msg ID text` could end its line early and run the rest as a command.
 * A line longer than MAX_LINE is dropped, as it arrives, and given as null: a
 * 20 MB line took the client to 290 MB (found in audit).
 */
async function* inputLines(input: AsyncIterable<Uint8Array>): AsyncGenerator<string | null> {
  try {
    yield* splitLines(input);
  } catch (e) {
    throw new InputError((e as NodeJS.ErrnoException).code ?? (e as Error).message);
  }
}

/** A read error of the input itself (not of a command run from it). */
class InputError extends Error {}

async function* splitLines(input: AsyncIterable<Uint8Array>): AsyncGenerator<string | null> {
  const decoder = new TextDecoder();
  const line = (text: string) => (text.length > MAX_LINE ? null : text.endsWith("\r") ? text.slice(0, -1) : text);
  let buf = "";
  let dropping = false; // inside a line already given as null: skipped up to its end
  for await (const chunk of input) {
    buf += decoder.decode(chunk, { stream: true });
    let start = 0;
    for (let nl; (nl = buf.indexOf("\n", start)) >= 0; start = nl + 1) {
      if (dropping) dropping = false;
      else yield line(buf.slice(start, nl));
    }
    buf = buf.slice(start);
    if (buf.length > MAX_LINE) {
      if (!dropping) yield null;
      dropping = true;
      buf = "";
    }
  }
  buf += decoder.decode();
  if (buf && !dropping) yield line(buf);
}
