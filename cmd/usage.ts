// Argument-checking helpers shared by the subcommands: citty ignores unknown
// flags, so a typo like `--prot 1` would silently run with defaults. Every
// command checks its flags here and a mistake prints usage plus one line.
import { renderUsage, type ArgsDef, type CommandDef } from "citty";
import { loadSecret, SecretError } from "../lib/secret/secret.ts";

export class UsageError extends Error {}
/** A runtime failure with a one-line reason (exit code 1). */
export class Failure extends Error {}

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
}

export function parsePort(text: string | undefined, fallback: number): number {
  if (text === undefined) return fallback;
  const n = Number(text);
  if (!/^\d+$/.test(text) || n > 65535) throw new UsageError(`invalid port ${JSON.stringify(text)}: expected 0-65535`);
  return n;
}

export function parsePositive(flag: string, text: string | undefined, fallback: number, parse: (t: string) => number | null = Number): number {
  if (text === undefined) return fallback;
  const n = parse(text);
  if (n === null || !Number.isFinite(n) || n <= 0) throw new UsageError(`invalid value for --${flag}: ${JSON.stringify(text)}`);
  return n;
}

/** A whole number of at least 1, for counts: "1.5" or "1e3" is a mistake, not a count. */
export function parseCount(flag: string, text: string): number {
  const n = Number(text);
  if (!/^\d+$/.test(text) || !Number.isSafeInteger(n) || n < 1) throw new UsageError(`invalid value for --${flag}: ${JSON.stringify(text)} (expected a whole number, at least 1)`);
  return n;
}

/** The join secret from --secret-file or SMTS_SECRET (null if neither); a bad file is a one-line failure. */
export function readSecret(file: string | undefined): string | null {
  try {
    return loadSecret(file);
  } catch (err) {
    if (err instanceof SecretError) throw new Failure(err.message);
    throw err;
  }
}

/** Runs a command body; usage mistakes print usage and exit 2, failures one line and exit 1. */
export async function guard(cmd: CommandDef<any>, parent: CommandDef<any> | undefined, body: () => Promise<void> | void): Promise<void> {
  try {
    await body();
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`${await renderUsage(cmd, parent)}\n\nsmts: ${err.message}\n`);
      process.exit(2);
    }
    if (err instanceof Failure) {
      process.stderr.write(`smts: ${err.message}\n`);
      process.exit(1);
    }
    throw err;
  }
}
