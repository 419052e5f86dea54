// `smts relay` as a real process: secrets, refusal to start open by accident,
// usage errors, quiet logs, and a clean shutdown on SIGTERM.
import { expect, test } from "bun:test";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { joinRelay } from "../lib/link/relay-link.ts";
import { isId } from "../lib/relay/protocol.ts";
import { notableSince, perSecond } from "../cmd/relay.ts";
import { RawClient, ROOT, SECRET, SECRET_TEXT, spawnRelay, waitFor } from "./helpers.ts";

function run(args: string[], env: Record<string, string> = {}) {
  const r = Bun.spawnSync([process.execPath, `${ROOT}cmd/smts.ts`, ...args], {
    env: { PATH: process.env.PATH ?? "", ...env },
    stdin: "ignore",
  });
  return { code: r.exitCode, stdout: r.stdout.toString(), stderr: r.stderr.toString() };
}

test("refuses to start without a secret unless --open, and says how to fix it", () => {
  const r = run(["relay", "--port", "0"]);
  expect(r.code).toBe(1);
  expect(r.stderr.trim().split("\n")).toHaveLength(1);
  expect(r.stderr).toContain("--generate-secret");
  expect(r.stderr).toContain("--open");
});

test("--open with a secret is a usage error; unknown options and bad ports print usage", () => {
  expect(run(["relay", "--open"], { SMTS_SECRET: SECRET_TEXT }).code).toBe(2);
  const typo = run(["relay", "--prot", "1"], { SMTS_SECRET: SECRET_TEXT });
  expect(typo.code).toBe(2);
  expect(typo.stderr).toContain("unknown option --prot");
  expect(typo.stderr).toContain("USAGE");
  expect(typo.stderr).not.toContain("    at "); // no stack trace
  const port = run(["relay", "--port", "99999"], { SMTS_SECRET: SECRET_TEXT });
  expect(port.code).toBe(2);
  expect(port.stderr).toContain("invalid port");
  // A file chunk's frame (128 KiB and headers, PROTOCOL §30) must fit: 192 KiB is the least accepted.
  const small = run(["relay", "--open", "--port", "0", "--max-frame", "191KiB"]);
  expect(small.code).toBe(2);
  expect(small.stderr).toContain("--max-frame must be between 192KiB and 64MiB");
  // Senders are paused at a recipient queue of 4 MiB (PROTOCOL §10): the cut must come well after.
  const queue = run(["relay", "--open", "--port", "0", "--queue-limit", "7MiB"]);
  expect(queue.code).toBe(2);
  expect(queue.stderr).toContain("--queue-limit must be at least 8MiB");
  // Regression (found in audit): with --max-frame 64MiB and the default 16 MiB queue limit,
  // one 20 MiB message got a recipient that read everything cut as a slow consumer.
  const bigFrames = run(["relay", "--open", "--port", "0", "--max-frame", "64MiB", "--queue-limit", "16MiB"]);
  expect(bigFrames.code).toBe(2);
  expect(bigFrames.stderr).toContain("--queue-limit must be at least twice --max-frame, plus 2KiB: 128 MiB (134219776 bytes) here");
  // A bad number says what it should have been (found in audit).
  const zero = run(["relay", "--open", "--port", "0", "--slow-timeout", "0"]);
  expect(zero.code).toBe(2);
  expect(zero.stderr).toContain('invalid value for --slow-timeout: "0" (expected a number of seconds above 0)');
});

// Regression (found in audit): --max-frame 64MiB, documented as valid, was refused
// for the default --queue-limit; unless given, the limit now grows with it.
test("--max-frame 64MiB alone starts the relay, its queue limit grown to fit two such frames", async () => {
  const rp = await spawnRelay(["--max-frame", "64MiB"], { SMTS_SECRET: SECRET_TEXT });
  try {
    const link = await joinRelay({ host: "127.0.0.1", port: rp.port, secret: SECRET });
    expect(link.maxFrame).toBe(64 * 1024 * 1024);
    link.close();
  } finally {
    rp.proc.kill();
  }
});

// Regression (found in review): connections that never joined, once there were
// --max-pending of them, got every later connection refused as relay_full.
test("--max-pending: idle connections that fill it give way to a real join; the flags take whole numbers", async () => {
  const rp = await spawnRelay(["--max-pending", "2", "--max-pending-per-source", "2"], { SMTS_SECRET: SECRET_TEXT });
  try {
    const idle: RawClient[] = [];
    for (let i = 0; i < 2; i++) {
      idle.push(await RawClient.connect(rp.port));
      await idle[i]!.next("challenge");
    }
    const link = await joinRelay({ host: "127.0.0.1", port: rp.port, secret: SECRET });
    expect(isId(link.id)).toBe(true);
    expect((await idle[0]!.next("error")).code).toBe("relay_full"); // the oldest gave way
    link.close();
    for (const raw of idle) raw.close();
  } finally {
    rp.proc.kill();
  }
  for (const flag of ["--max-pending", "--max-pending-per-source", "--max-clients-per-source", "--join-rate"]) {
    for (const bad of ["0", "1.5", "1e3", "x"]) {
      const r = run(["relay", flag, bad], { SMTS_SECRET: SECRET_TEXT });
      expect({ bad, code: r.code }).toEqual({ bad, code: 2 });
      expect(r.stderr).toContain(`invalid value for ${flag}: "${bad}"`);
    }
  }
  for (const bad of ["0", "-1KiB", "x"]) {
    const r = run(["relay", "--list-rate", bad], { SMTS_SECRET: SECRET_TEXT });
    expect({ bad, code: r.code }).toEqual({ bad, code: 2 });
    expect(r.stderr).toContain(`invalid value for --list-rate: "${bad}" (expected a size above 0`);
  }
});

// Regression (found in review): below the open-files limit (or --max-clients), a per-source
// limit of 1000 let one address take every connection the relay could hold.
test("unless given, --max-clients-per-source is at most half of what the relay can hold", async () => {
  const rp = await spawnRelay(["--max-clients", "4"], { SMTS_SECRET: SECRET_TEXT });
  const links = [];
  try {
    for (let i = 0; i < 2; i++) links.push(await joinRelay({ host: "127.0.0.1", port: rp.port, secret: SECRET }));
    const refused = await joinRelay({ host: "127.0.0.1", port: rp.port, secret: SECRET }).then(() => "joined", (e: Error) => e.message);
    expect(refused).toContain("too many clients from one address");
  } finally {
    for (const l of links) l.close();
    rp.proc.kill();
  }
  // Given, it is taken as it is.
  const given = await spawnRelay(["--max-clients", "4", "--max-clients-per-source", "4"], { SMTS_SECRET: SECRET_TEXT });
  try {
    for (let i = 0; i < 4; i++) links.push(await joinRelay({ host: "127.0.0.1", port: given.port, secret: SECRET }));
  } finally {
    for (const l of links) l.close();
    given.proc.kill();
  }
});

// Regression (found in audit): a stdout that cannot be written gave a 13-line stack
// trace; --generate-secret ignored the other options (even a bad --port).
test("--generate-secret, --version and --help to a full disk: one line and exit 1; --generate-secret takes no other options", () => {
  for (const args of [["relay", "--generate-secret"], ["--version"], ["--help"], ["chat", "--help"]]) {
    const r = Bun.spawnSync(["sh", "-c", `"$0" "$@" > /dev/full`, process.execPath, `${ROOT}cmd/smts.ts`, ...args], { env: { PATH: process.env.PATH ?? "" }, stdin: "ignore" });
    expect({ args, code: r.exitCode, stderr: r.stderr.toString() }).toEqual({ args, code: 1, stderr: "smts: cannot write to stdout: ENOSPC\n" });
  }
  const mixed = run(["relay", "--generate-secret", "--port", "abc"]);
  expect(mixed.code).toBe(2);
  expect(mixed.stdout).toBe("");
  expect(mixed.stderr).toContain("smts: --generate-secret takes no other options");
});

test("--generate-secret prints a fresh 160-bit secret each time", () => {
  const a = run(["relay", "--generate-secret"]).stdout.trim();
  const b = run(["relay", "--generate-secret"]).stdout.trim();
  expect(a).toMatch(/^([0-9a-hjkmnp-tv-z]{4}-){7}[0-9a-hjkmnp-tv-z]{4}$/);
  expect(a).not.toBe(b);
});

const typoUsage = () => run(["relay", "--prot", "1"]);

test("--version and --help", () => {
  expect(run(["--version"]).stdout).toMatch(/^smts \d+\.\d+\.\d+ \(protocol 1\)\n$/);
  const help = run(["relay", "--help"]);
  expect(help.code).toBe(0);
  expect(help.stdout + help.stderr).toContain("--secret-file");
  // Piped, not a terminal: plain text, no colour escape codes (cmd/plain-output.ts).
  expect(help.stdout + help.stderr).not.toContain("\x1b[");
  expect(typoUsage().stderr).not.toContain("\x1b[");
});

test("reads the secret from --secret-file, warns about a short one, and logs no IDs", async () => {
  const dir = mkdtempSync(join(tmpdir(), "smts-"));
  writeFileSync(join(dir, "secret"), "short\n", { mode: 0o600 });
  const rp = await spawnRelay(["--secret-file", join(dir, "secret")], { SMTS_SECRET: "another secret" });
  try {
    expect(rp.stderr()).toContain("only 5 characters");
    expect(rp.stderr()).toContain("[warn] both --secret-file and SMTS_SECRET are set: the file is used\n"); // a log line like the others
    const link = await joinRelay({ host: "127.0.0.1", port: rp.port, secret: new TextEncoder().encode("short") });
    link.close();
    await Bun.sleep(100);
    expect(rp.stderr()).not.toContain(link.id);
    // No client addresses either: the only address logged is the relay's own listening one.
    expect(rp.stderr().split("\n").filter((l) => l.includes("127.0.0.1") && !l.includes("listening on"))).toEqual([]);
  } finally {
    rp.proc.kill();
  }
  const missing = run(["relay", "--secret-file", join(dir, "nope")]);
  expect(missing.code).toBe(1);
  expect(missing.stderr).toContain("cannot read secret file");
});

// Regression (found in audit): a secret file was decoded leniently (every invalid UTF-8
// byte became U+FFFD, so different binary secrets matched); a world-readable one,
// or an empty --secret-file= (which fell back to SMTS_SECRET), passed silently.
test("--secret-file: not UTF-8 is refused; readable by others gets a warning; an empty path is a usage error", async () => {
  const dir = mkdtempSync(join(tmpdir(), "smts-"));
  const binary = join(dir, "binary");
  writeFileSync(binary, new Uint8Array([0x41, 0xff, 0xfe, 0x80, 0x42]), { mode: 0o600 });
  const bad = run(["relay", "--port", "0", "--secret-file", binary]);
  expect(bad.code).toBe(1);
  expect(bad.stderr.trim()).toBe(`smts: secret file ${binary} is not UTF-8 text (a secret is text: make one with \`smts relay --generate-secret\`)`);
  for (const args of [["--secret-file="], ["--secret-file", ""]]) {
    const empty = run(["relay", "--port", "0", ...args], { SMTS_SECRET: SECRET_TEXT });
    expect(empty.code).toBe(2);
    expect(empty.stderr).toContain("smts: --secret-file needs a path");
  }
  const shared = join(dir, "shared");
  writeFileSync(shared, `${SECRET_TEXT}\n`, { mode: 0o644 });
  const rp = await spawnRelay(["--secret-file", shared]);
  try {
    expect(rp.stderr()).toContain(`[warn] other users of this machine can read the secret file ${shared} (chmod 600 ${shared})\n`);
    (await joinRelay({ host: "127.0.0.1", port: rp.port, secret: SECRET })).close(); // it still runs with it
  } finally {
    rp.proc.kill();
  }
  // The client has no log: its warning is a line of its own.
  const chat = run(["chat", "127.0.0.1:1", "--secret-file", shared]);
  expect(chat.stderr).toStartWith(`smts: warning: other users of this machine can read the secret file ${shared} (chmod 600 ${shared})\nsmts: cannot reach relay 127.0.0.1:1`);
  const own = join(dir, "own");
  writeFileSync(own, `${SECRET_TEXT}\n`, { mode: 0o600 });
  const quiet = await spawnRelay(["--secret-file", own]);
  try {
    expect(quiet.stderr()).not.toContain("can read the secret file");
  } finally {
    quiet.proc.kill();
  }
});

// Regression (found in review): `smts relay --verbose 2>&1 | head -1` exited 1
// at the first log line after head had gone, dropping every client.
test("a closed log pipe stops the logging, not the relay", async () => {
  const proc = Bun.spawn([process.execPath, `${ROOT}cmd/smts.ts`, "relay", "--host", "127.0.0.1", "--port", "0", "--verbose"], {
    stdin: "ignore",
    stdout: "ignore",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT },
  });
  try {
    const reader = proc.stderr.getReader();
    let text = "";
    while (!/listening on \S+:\d+/.test(text)) {
      const { value, done } = await reader.read();
      if (done) throw new Error(`relay exited: ${text}`);
      text += new TextDecoder().decode(value);
    }
    const port = Number(/listening on \S+:(\d+)/.exec(text)![1]);
    await reader.cancel(); // as `| head -1` exiting: the relay's stderr is now a broken pipe
    const first = await joinRelay({ host: "127.0.0.1", port, secret: SECRET }); // --verbose logs the join, and the leave
    first.close();
    const second = await joinRelay({ host: "127.0.0.1", port, secret: SECRET });
    expect(isId(second.id)).toBe(true);
    proc.kill("SIGTERM"); // shutting down logs twice more
    expect((await second.closed).code).toBe("shutdown");
    expect(await proc.exited).toBe(0);
  } finally {
    proc.kill("SIGKILL");
  }
});

// SIGHUP too (found in audit): a relay started in an ssh session that closed died without telling anyone.
for (const signal of ["SIGTERM", "SIGHUP"] as const) {
  test(`${signal} tells clients \`shutdown\`, then exits 0; the log has plain lines`, async () => {
    const rp = await spawnRelay([], { SMTS_SECRET: SECRET_TEXT });
    const link = await joinRelay({ host: "127.0.0.1", port: rp.port, secret: SECRET });
    expect(await joinRelay({ host: "127.0.0.1", port: rp.port, secret: new TextEncoder().encode("not the secret at all") }).catch((e: Error) => e.message)).toContain("wrong join secret");
    rp.proc.kill(signal);
    expect((await link.closed).code).toBe("shutdown");
    expect(await rp.proc.exited).toBe(0);
    const lines = rp.stderr().trim().split("\n");
    // The minute cut short by the signal is summed up too (found in audit: it was lost).
    expect(lines.at(-2)).toBe("[warn] 1 join with a wrong secret since the last minute's summary (1 join in that time; 1 client online)");
    expect(lines.at(-1)).toStartWith("[info] served 2 connections, 1 join, forwarded 0 frames"); // no glyphs or blank lines when stderr is not a terminal
    expect(lines.filter((l) => !/^\[(info|warn)\] /.test(l))).toEqual([]);
  });
}

test("listening fails with the reason in words (port in use: exit 1); an empty --host is a usage error; an IPv6 --host may be bracketed", async () => {
  const rp = await spawnRelay([], { SMTS_SECRET: SECRET_TEXT });
  try {
    const inUse = run(["relay", "--host", "127.0.0.1", "--port", String(rp.port)], { SMTS_SECRET: SECRET_TEXT });
    expect(inUse.code).toBe(1);
    expect(inUse.stderr).toBe(`smts: cannot listen on 127.0.0.1:${rp.port}: the port is in use (EADDRINUSE)\n`);
  } finally {
    rp.proc.kill();
  }
  const empty = run(["relay", "--host", ""], { SMTS_SECRET: SECRET_TEXT });
  expect(empty.code).toBe(2);
  expect(empty.stderr).toContain("smts: --host needs an address or a name");
  const v6 = await spawnRelay(["--host", "[::1]"], { SMTS_SECRET: SECRET_TEXT });
  try {
    expect(v6.stderr()).toContain(`listening on [::1]:${v6.port}`);
    const link = await joinRelay({ host: "::1", port: v6.port, secret: SECRET });
    expect(isId(link.id)).toBe(true);
    link.close();
  } finally {
    v6.proc.kill();
  }
});

test("--verbose lines are limited per second, and those left out are counted", () => {
  let clock = 0;
  const lines: string[] = [];
  const log = perSecond(2, (m) => lines.push(m), () => clock);
  for (const m of ["a", "b", "c", "d"]) log(m);
  clock = 1500;
  log("e");
  clock = 2000;
  log("f");
  expect(lines).toEqual(["a", "b", "(2 more events not logged: more than 2 a second)", "e", "f"]);
});

test("the minute's summary names what went wrong for clients, and nothing when nothing did", () => {
  expect(notableSince({ joins: 1 }, { joins: 5 })).toBeNull();
  expect(notableSince({ closed_auth_failed: 2 }, { closed_auth_failed: 52, closed_relay_full: 4, drops: 0, joins: 9 })).toBe(
    "50 joins with a wrong secret, 4 connections refused or evicted (relay full)",
  );
  expect(notableSince({}, { closed_auth_failed: 1, drops: 1 })).toBe("1 join with a wrong secret, 1 frame dropped for a recipient not reading");
  expect(notableSince({}, { closed_idle_timeout: 3, partialEvicted: 2, listsOwed: 5 })).toBe(
    "3 clients dropped as silent or for a frame too slow to arrive, 2 of them for frames stalled while the relay held too many unfinished ones, 5 `list`s deferred (addresses past --list-rate)",
  );
});

// Regression (found in review): at the open-files limit the relay could accept
// no one, Bun's accept loop spun a core, and nothing said why. It now stays
// below the limit and warns. Regression (found in audit): past that limit it
// refused new connections, so idle ones kept every real join out; now a new
// connection evicts the oldest one waiting to join.
test("under a low `ulimit -n` the relay warns, stays below the limit by evicting the oldest waiting connections, and a real join still gets in", async () => {
  const proc = Bun.spawn(["sh", "-c", 'ulimit -n 100 && exec "$@"', "sh", process.execPath, `${ROOT}cmd/smts.ts`, "relay", "--host", "127.0.0.1", "--port", "0"], {
    stdout: "ignore",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT },
  });
  let text = "";
  void (async () => {
    for await (const chunk of proc.stderr) text += new TextDecoder().decode(chunk);
  })();
  try {
    const port = await waitFor(() => Number(/listening on [^\s]+:(\d+)/.exec(text)?.[1]), "relay to listen", 10_000);
    expect(text).toContain("only 100 open files allowed (ulimit -n): at most 75 connections at once");
    const clients: RawClient[] = [];
    for (let i = 0; i < 90; i++) {
      clients.push(await RawClient.connect(port));
      await clients[i]!.next("challenge"); // each is let in, in this order
    }
    await waitFor(() => clients.filter((c) => c.closed).length === 15, "the 15 oldest evicted");
    expect(clients.map((c) => c.closed)).toEqual([...Array(15).fill(true), ...Array(75).fill(false)]);
    for (const c of clients.slice(0, 15)) expect(c.frames).toEqual([{ t: "error", code: "relay_full", message: "too many connections waiting to join" }]);
    const link = await joinRelay({ host: "127.0.0.1", port, secret: SECRET });
    expect(isId(link.id)).toBe(true);
    link.close();
    for (const c of clients) c.close();
  } finally {
    proc.kill();
    await proc.exited;
  }
});
