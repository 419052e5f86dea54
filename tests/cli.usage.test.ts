// `smts` as a real process: every usage mistake, at the top level or in a
// command, and whether citty or smts finds it, exits 2 with the usage (named
// as `--help` names it) and one line saying what is wrong (README, exit codes).
import { expect, test } from "bun:test";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { ROOT, SECRET_TEXT } from "./helpers.ts";

function run(args: string[], env: Record<string, string> = {}) {
  const r = Bun.spawnSync([process.execPath, `${ROOT}cmd/smts.ts`, ...args], {
    env: { PATH: process.env.PATH ?? "", ...env },
    stdin: "ignore",
  });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

/** Runs `args`, expecting a usage error: exit 2, nothing on stdout, the usage of `usage`, and `smts: <why>` last. */
function usageError(args: string[], usage: string, why: string, env: Record<string, string> = {}) {
  const r = run(args, env);
  expect({ args, code: r.code, stdout: r.stdout, last: r.stderr.trimEnd().split("\n").at(-1) }).toEqual({ args, code: 2, stdout: "", last: `smts: ${why}` });
  expect(r.stderr).toContain(`USAGE ${usage}`);
  expect(r.stderr).not.toContain("    at "); // no stack trace
}

// Regression (found in review): these exited 1 from citty's runMain, not 2.
test("top level: no command, an unknown command or option, and --version with more are usage errors", () => {
  usageError([], "smts relay|chat", "no command given");
  usageError(["foo"], "smts relay|chat", 'unknown command "foo"');
  usageError(["help"], "smts relay|chat", 'unknown command "help"');
  usageError(["--version", "extra"], "smts relay|chat", "--version takes no arguments");
  usageError(["-v", "relay"], "smts relay|chat", "-v takes no arguments");
  usageError(["--verbose", "relay"], "smts relay|chat", "unknown option --verbose");
});

test("--help, for the top level and each command, exits 0 with the usage on stdout", () => {
  for (const [args, usage] of [
    [["--help"], "smts relay|chat"],
    [["-h"], "smts relay|chat"],
    [["relay", "--help"], "smts relay [OPTIONS]"],
    [["chat", "-h"], "smts chat [OPTIONS] <RELAY>"],
  ] as const) {
    const r = run([...args]);
    expect({ args, code: r.code }).toEqual({ args, code: 0 });
    expect(r.stdout).toContain(`USAGE ${usage}`);
  }
});

// Regression (found in review): the usage printed on a mistake said `USAGE chat ...`, and
// extra arguments were ignored: `smts chat 127.0.0.1 45043` joined 127.0.0.1:5555.
test("chat: a missing or extra argument is a usage error, with the usage of `smts chat`", () => {
  usageError(["chat"], "smts chat [OPTIONS] <RELAY>", "missing required positional argument: RELAY");
  usageError(["chat", "127.0.0.1", "45043"], "smts chat [OPTIONS] <RELAY>", 'unexpected argument "45043" (the port goes in the address: HOST:PORT)', { SMTS_SECRET: SECRET_TEXT });
  usageError(["chat", "127.0.0.1:1", "--json", "extra"], "smts chat [OPTIONS] <RELAY>", 'unexpected argument "extra"', { SMTS_SECRET: SECRET_TEXT });
  // Found in audit: an empty path meant the current directory, or (for the secret) SMTS_SECRET instead.
  usageError(["chat", "127.0.0.1:1", "--download-dir="], "smts chat [OPTIONS] <RELAY>", "--download-dir needs a path", { SMTS_SECRET: SECRET_TEXT });
  usageError(["chat", "127.0.0.1:1", "--secret-file="], "smts chat [OPTIONS] <RELAY>", "--secret-file needs a path", { SMTS_SECRET: SECRET_TEXT });
  usageError(["chat", "--prot", "1", "127.0.0.1"], "smts chat [OPTIONS] <RELAY>", "unknown option --prot");
});

// Regression (found in review): without a secret, `--port abc` reported the missing
// secret (exit 1); `--max-clients 1.5` was taken; extra arguments were ignored.
test("relay: arguments are checked before the secret; counts are whole numbers; extra arguments are refused", () => {
  usageError(["relay", "--port", "abc"], "smts relay [OPTIONS]", 'invalid port "abc": expected 0-65535');
  usageError(["relay", "--open", "--max-frame", "1x"], "smts relay [OPTIONS]", 'invalid value for --max-frame: "1x" (expected a size above 0, such as 500kB, 256KiB, 16MiB or plain bytes)');
  usageError(["relay", "--open", "--max-clients", "1.5"], "smts relay [OPTIONS]", 'invalid value for --max-clients: "1.5" (expected a whole number, at least 1)');
  usageError(["relay", "--open", "extra"], "smts relay [OPTIONS]", 'unexpected argument "extra"');
  usageError(["relay", "--generate-secret", "extra"], "smts relay [OPTIONS]", 'unexpected argument "extra"');
  // With valid arguments, the missing secret is still a one-line failure (exit 1).
  const r = run(["relay", "--port", "0"]);
  expect(r.code).toBe(1);
  expect(r.stderr).toStartWith("smts: no join secret");
});

// Regression (found in audit): received files are saved in the current directory
// by default, and Bun read bunfig.toml (whose preload runs code) and .env from
// there, so a stranger's bunfig.toml ran at the next `./smts` from that directory.
test("the source wrapper ./smts, like the binaries, ignores .env and bunfig.toml in the working directory", () => {
  const cwd = mkdtempSync(join(tmpdir(), "smts-hostile-cwd-"));
  try {
    writeFileSync(join(cwd, "bunfig.toml"), 'preload = ["./preload.js"]\n');
    writeFileSync(join(cwd, "preload.js"), `require("fs").writeFileSync(${JSON.stringify(join(cwd, "PRELOADED"))}, "x");\n`);
    writeFileSync(join(cwd, ".env"), "SMTS_SECRET=from-dotenv-file-0123456789\n");
    const wrapper = (...args: string[]) => Bun.spawnSync([`${ROOT}smts`, ...args], { cwd, env: { PATH: process.env.PATH ?? "", HOME: cwd }, stdin: "ignore" });
    expect(wrapper("--version").exitCode).toBe(0);
    expect(existsSync(join(cwd, "PRELOADED"))).toBe(false);
    const r = wrapper("relay", "--host", "127.0.0.1", "--port", "0");
    expect(r.exitCode).toBe(1);
    expect(r.stderr.toString()).toContain("no join secret");
    expect(existsSync(join(cwd, "PRELOADED"))).toBe(false);
  } finally {
    rmSync(cwd, { recursive: true, force: true });
  }
});

// Regression (found in audit): citty right-aligns the options and pads every row to
// the longest description; `smts relay --help` had rows of 150 columns.
test("--help fits an 80-column terminal: no row is wider, none ends in blanks, every option is listed", () => {
  for (const [args, options] of [
    [["--help"], ["relay", "chat"]],
    [["relay", "--help"], ["--host=<ADDR>", "--max-pending-per-source=<N>", "--queue-limit=<SIZE>", "--verbose"]],
    [["chat", "--help"], ["RELAY", "--secret-file=<PATH>", "--json", "--max-file-size=<SIZE>"]],
  ] as const) {
    const r = run([...args]);
    expect(r.code).toBe(0);
    const rows = r.stdout.split("\n");
    expect(rows.filter((row) => row.length > 80 || row !== row.trimEnd())).toEqual([]);
    for (const option of options) expect(rows.some((row) => row.startsWith(`  ${option} `))).toBe(true);
  }
});
