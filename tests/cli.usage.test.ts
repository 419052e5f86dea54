// `smts` as a real process: every usage mistake, at the top level or in a
// command, and whether citty or smts finds it, exits 2 with the usage (named
// as `--help` names it) and one line saying what is wrong (README, exit codes).
import { expect, test } from "bun:test";
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
  usageError(["chat", "127.0.0.1", "45043"], "smts chat [OPTIONS] <RELAY>", 'unexpected argument "45043"', { SMTS_SECRET: SECRET_TEXT });
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
  usageError(["relay", "--open", "--max-frame", "1x"], "smts relay [OPTIONS]", 'invalid value for --max-frame: "1x"');
  usageError(["relay", "--open", "--max-clients", "1.5"], "smts relay [OPTIONS]", 'invalid value for --max-clients: "1.5" (expected a whole number, at least 1)');
  usageError(["relay", "--open", "extra"], "smts relay [OPTIONS]", 'unexpected argument "extra"');
  usageError(["relay", "--generate-secret", "extra"], "smts relay [OPTIONS]", 'unexpected argument "extra"');
  // With valid arguments, the missing secret is still a one-line failure (exit 1).
  const r = run(["relay", "--port", "0"]);
  expect(r.code).toBe(1);
  expect(r.stderr).toStartWith("smts: no join secret");
});
