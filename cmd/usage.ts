// Argument-checking helpers shared by the subcommands: citty ignores unknown
// flags and extra arguments, so a typo like `--prot 1`, or `smts chat HOST
// PORT`, would silently run with defaults. Every command checks its arguments
// here, and a mistake (here, in cmd/smts.ts or one citty finds) prints the
// usage plus one line and exits 2.
import { tidyUsage } from "./usage-text.ts";
import { parseSize } from "../lib/cli/size.ts";
import { parseArgs, renderUsage, type ArgsDef, type CommandDef } from "citty";
import pkg from "../package.json" with { type: "json" };
import { loadSecret, SecretError, secretFileExposed } from "../lib/secret/secret.ts";

export class UsageError extends Error {}
/** A runtime failure with a one-line reason (exit code 1). */
export class Failure extends Error {}

/** The top level, as the parent in a command's usage: `USAGE smts chat ...`, as `--help` prints it. */
const SMTS: CommandDef<any> = { meta: { name: "smts", version: pkg.version } };

/** Unknown options and more positional arguments than the command takes are usage errors. */
export function checkFlags(rawArgs: string[], args: ArgsDef): void {
  const known = new Set<string>(["help", "h"]);
  for (const [name, def] of Object.entries(args)) {
    known.add(name);
    for (const a of ["alias" in def ? (def.alias ?? []) : []].flat()) known.add(a);
    if (def.type === "boolean") known.add(`no-${name}`);
  }
  for (const raw of rawArgs) {
    if (raw === "--") break;
    const m = /^--?([^=]+)/.exec(raw);
    if (m && !/^-\d/.test(raw) && !known.has(m[1]!)) throw new UsageError(`unknown option ${raw.split("=")[0]}`);
  }
  const extra = parseArgs(rawArgs, args)._[Object.values(args).filter((def) => def.type === "positional").length];
  if (extra !== undefined) {
    const port = /^\d+$/.test(String(extra)) ? " (the port goes in the address: HOST:PORT)" : ""; // `smts chat HOST PORT` (found in audit)
    throw new UsageError(`unexpected argument ${JSON.stringify(String(extra))}${port}`);
  }
}

export function parsePort(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 65535) throw new UsageError(`invalid port ${JSON.stringify(text)}: expected 0-65535`);
  return n;
}

/** A duration in seconds or a size in bytes, above 0; a bad one is a usage error that says what was expected. */
export function parsePositive(flag: string, text: string | undefined, fallback: number, kind: "seconds" | "size" = "seconds"): number {
  if (text === undefined) return fallback;
  const n = kind === "size" ? parseSize(text) : Number(text);
  const expected = kind === "size" ? "a size above 0, such as 500kB, 256KiB, 16MiB or plain bytes" : "a number of seconds above 0";
  if (n === null || !Number.isFinite(n) || n <= 0) throw new UsageError(`invalid value for --${flag}: ${JSON.stringify(text)} (expected ${expected})`);
  return n;
}

/** A whole number of at least 1, for counts: "1.5" or "1e3" is a mistake, not a count. */
export function parseCount(flag: string, text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`invalid value for --${flag}: ${JSON.stringify(text)} (expected a whole number, at least 1)`);
  return n;
}

/** The join secret from --secret-file or SMTS_SECRET (null if neither); a bad file is a one-line failure. `warn` shows a doubt about it (the relay: as a log line). */
export function readSecret(file: string | undefined, warn: (message: string) => void = (m) => void process.stderr.write(`smts: warning: ${m}\n`)): string | null {
  if (file === "") throw new UsageError("--secret-file needs a path");
  try {
    const secret = loadSecret(file);
    if (file && secretFileExposed(file)) warn(`other users of this machine can read the secret file ${file} (chmod 600 ${file})`);
    if (file && process.env.SMTS_SECRET !== undefined) warn("both --secret-file and SMTS_SECRET are set: the file is used");
    delete process.env.SMTS_SECRET; // read once: nothing started later (a worker, a child) inherits it (found in audit)
    return secret;
  } catch (err) {
    if (err instanceof SecretError) throw new Failure(err.message);
    throw err;
  }
}

/** Prints the usage of `cmd` (under `parent`) and one line saying what is wrong; exits 2. */
export async function exitUsage(cmd: CommandDef<any>, parent: CommandDef<any> | undefined, message: string): Promise<never> {
  process.stderr.write(`${tidyUsage(await renderUsage(cmd, parent))}\n\nsmts: ${message}\n`);
  process.exit(2);
}

/** Runs the body of `cmd` (a subcommand of smts unless `parent` says otherwise); usage mistakes print usage and exit 2, failures one line and exit 1. */
export async function guard(cmd: CommandDef<any>, parent: CommandDef<any> | undefined = SMTS, body: () => Promise<void> | void): Promise<void> {
  try {
    await body();
  } catch (err) {
    if (err instanceof UsageError) await exitUsage(cmd, parent, err.message);
    if (err instanceof Failure) {
      process.stderr.write(`smts: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
}
