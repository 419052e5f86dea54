// The interactive prompt in a real pseudo-terminal (driven by tests/pty-driver.py):
// a message arriving while the user types prints above the prompt and the
// half-typed line survives; mistakes get one line, never a stack trace;
// quitting while a file arrives cancels it cleanly.
import { afterAll, afterEach, beforeAll, expect, setDefaultTimeout, test } from "bun:test";
import { existsSync, readdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { ChatError, startChat, type ChatEvent } from "../lib/client/chat-client.ts";
import { startDhEngine } from "../lib/crypto/dh.ts";
import type { Relay } from "../lib/relay/server.ts";
import { ROOT, SECRET, SECRET_TEXT, startTestRelay, tempDirs, waitFor, writeTestFile } from "./helpers.ts";
import { renderScreen } from "./screen.ts";

setDefaultTimeout(60_000);
let relay: Relay;
const temp = tempDirs("smts-cli-pty-");
beforeAll(() => void (relay = startTestRelay()));
afterAll(async () => relay.stop());
afterEach(() => temp.removeAll());

/** `smts chat` in a pseudo-terminal (80 columns unless told); with `stdoutTo`, its stdout goes to that file instead (stdin stays the terminal). */
function ptyChat(port: number, args: string[] = [], stdoutTo?: string, columns = 80) {
  const chat = [process.execPath, `${ROOT}cmd/smts.ts`, "chat", `127.0.0.1:${port}`, ...args];
  const command = stdoutTo ? ["sh", "-c", 'exec "$0" "$@" > "$SMTS_OUT"', ...chat] : chat;
  const proc = Bun.spawn(["python3", `${ROOT}tests/pty-driver.py`, ...command], {
    stdin: "pipe",
    stdout: "pipe",
    stderr: "inherit",
    env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT, TERM: "xterm", SMTS_OUT: stdoutTo ?? "", PTY_COLUMNS: String(columns) },
  });
  const reader = proc.stdout.getReader();
  let buf = "";
  const ask = async (cmd: object): Promise<{ ok: boolean; text?: string; code?: number | null }> => {
    proc.stdin.write(`${JSON.stringify(cmd)}\n`);
    proc.stdin.flush();
    for (let r; !buf.includes("\n"); buf += new TextDecoder().decode(r.value)) {
      if ((r = await reader.read()).done) throw new Error(`the pty driver exited, asked ${JSON.stringify(cmd)}`);
    }
    const line = buf.slice(0, buf.indexOf("\n"));
    buf = buf.slice(line.length + 1);
    return JSON.parse(line);
  };
  return {
    proc,
    type: (text: string) => ask({ write: text }),
    exitCode: async (timeout = 10) => (await ask({ wait: timeout })) as { ok: boolean; code: number | null },
    /** The rows the terminal shows (and has scrolled away), rendered from all it was sent. */
    screen: async () => renderScreen((await ask({ output: true })).text!, columns),
    signal: (n: number) => ask({ signal: n }),
    hangUp: () => ask({ hangup: true }),
    async expect(pattern: string, timeout = 10) {
      const r = await ask({ expect: pattern, timeout });
      if (!r.ok) throw new Error(`terminal never showed /${pattern}/; it showed:\n${r.text}`);
      return r.text!;
    },
  };
}

test("a message arriving mid-typing prints above the prompt and keeps the typed line", async () => {
  const dh = startDhEngine();
  const received: ChatEvent[] = [];
  const peer = await startChat({ host: "127.0.0.1", port: relay.port, secret: SECRET, dh, onEvent: (e) => void received.push(e) });
  const term = ptyChat(relay.port);
  try {
    const id = /Your ID: ([0-9a-z]{8})/.exec(await term.expect("Your ID: [0-9a-z]{8}"))![1]!;
    await peer.connect(id);
    await term.expect("secure session with");
    await term.type(`/msg ${peer.id} hel`); // half a line, not yet sent
    await term.expect("/msg [0-9a-z]{8} hel");
    peer.sendText(id, "incoming while you type");
    // The message is printed, then the prompt is redrawn with the partial input intact.
    await term.expect(`\\[${peer.id}\\] incoming while you type.*> /msg ${peer.id} hel`);
    await term.type("lo world\r");
    await waitFor(() => received.find((e) => e.event === "message"), "message at the peer");
    expect(received.find((e) => e.event === "message")).toEqual({ event: "message", from: id, text: "hello world", broadcast: false, verified: false });

    await term.type("/he\t"); // Tab completes the command (it used to insert a tab)
    await term.expect("/help ");
    await term.type("\r");
    await term.expect("show the full 256-bit fingerprint");
    await term.type(`/fingerprint ${peer.id.slice(0, 4)}\t`); // and the ID
    await term.expect(`/fingerprint ${peer.id} `);
    await term.type("\r");
    await term.expect(`fingerprint of the session with ${peer.id}:`);
    await term.type("/frobnicate\r");
    await term.expect("unknown command /frobnicate");
    await term.type("/msg nobody-here hi\r");
    await term.expect("not a valid ID");
    await term.type("/msg zzzzzzzz hi\r");
    await term.expect("no session with zzzzzzzz, and it is not online");
    await term.type("/cancel\r"); // nothing running: no talk of files waiting for answers
    await term.expect("no transfer to cancel");
    expect((await term.screen()).filter((r) => r.includes("no transfer to cancel"))).toEqual(["! no transfer to cancel"]);
    // A failed /connect is a `session failed` event and the command's error: one line.
    await term.type("/connect 00000000\r");
    await term.expect("00000000 is not online");
    await term.type("/verify 00000000\r");
    expect(await term.expect("no session with 00000000 to verify")).not.toContain("is not online");
    const escape = "\u001b]0;pwned\u0007\u001b[2J";
    peer.sendText(id, `evil${escape}text`);
    const shown = await term.expect("evil.*text");
    expect(shown).not.toContain("\u001b]0;pwned");
    // Regression (lib/ui/format.ts): only C0/C1 controls were stripped, so bidi overrides
    // and line separators reached the terminal (`hi \u202Eevil` reversed what followed).
    peer.sendText(id, "hi \u202Eevil\u2066x\u2069\u061C\u200E\u200F\u202A\u2028second\u2029third end");
    const bidi = await term.expect("hi .*end");
    expect(bidi).not.toMatch(/[\u061c\u200e\u200f\u2028\u2029\u202a-\u202e\u2066-\u2069]/);
    expect(bidi).toContain("hi �evil�x����� ↵ second ↵ third end");
    await term.type("/exit\r");
    expect(await term.exitCode()).toEqual({ ok: true, code: 0 });
  } finally {
    term.proc.kill();
    await peer.close();
    dh.close();
  }
});

// Regressions (found in audit): with the typed line longer than a row, readline's redraw
// climbed back over the lines printed above it, so messages vanished and stale copies of
// the typed line stayed; after Ctrl-Z and fg no key was read; Ctrl-C left the prompt and
// its text on the row where the shell's prompt then started.
test("lines arriving while the typed line takes three rows are each shown once, above one intact prompt; Ctrl-Z and fg; Ctrl-C erases the prompt", async () => {
  const dh = startDhEngine();
  const received: ChatEvent[] = [];
  const peer = await startChat({ host: "127.0.0.1", port: relay.port, secret: SECRET, dh, onEvent: (e) => void received.push(e) });
  const term = ptyChat(relay.port, [], undefined, 60);
  try {
    const id = /Your ID: ([0-9a-z]{8})/.exec(await term.expect("Your ID: [0-9a-z]{8}"))![1]!;
    await peer.connect(id);
    await term.expect("secure session with");
    // Who was online at the join: one line, right after "Your ID".
    const head = await term.screen();
    const idRow = head.findIndex((r) => r.startsWith("Your ID:"));
    const onlineRow = head.findIndex((r) => r.startsWith("* online:"));
    expect(head.slice(0, idRow).filter((r) => r.trim())).toEqual([]);
    expect(onlineRow).toBeGreaterThan(idRow);
    expect(head.slice(idRow, onlineRow + 1).join(" ")).toContain(peer.id);
    expect(head.slice(0, onlineRow).some((r) => r.includes("is online"))).toBe(false);
    const typed = `/msg ${peer.id} ${"x".repeat(130)}`; // with "> ", 145 cells: three rows of 60
    await term.type(typed);
    await term.expect("x{20}");
    // Backspace right after text that ran onto new rows: readline's redraw left a ghost copy of the first row (found in audit).
    await term.type("\u007f");
    await Bun.sleep(200);
    const edited = await term.screen();
    expect(edited.filter((r) => r.startsWith(">"))).toHaveLength(1);
    expect(edited.slice(edited.findIndex((r) => r.startsWith(">"))).join("")).toBe(`> ${typed.slice(0, -1)}`);
    await term.type("x");
    peer.sendText(id, "FIRST line from the peer");
    await term.expect("FIRST line from the peer");
    peer.sendText(id, "SECOND line from the peer");
    await term.expect("SECOND line from the peer");
    await term.type("yz");
    await term.expect("yz");
    const rows = await term.screen();
    expect(rows.filter((r) => r.includes("FIRST line from the peer"))).toEqual([`[${peer.id}] FIRST line from the peer`]);
    expect(rows.filter((r) => r.includes("SECOND line from the peer"))).toEqual([`[${peer.id}] SECOND line from the peer`]);
    const prompt = rows.findIndex((r) => r.startsWith(">"));
    expect(rows.filter((r) => r.startsWith(">"))).toHaveLength(1); // every earlier prompt was erased, none left half-drawn
    expect(prompt).toBeGreaterThan(rows.findIndex((r) => r.includes("SECOND")));
    expect(rows.slice(prompt).join("")).toBe(`> ${typed}yz`);
    await term.type("\r");
    await waitFor(() => received.find((e) => e.event === "message"), "the long message at the peer");
    expect(received.find((e) => e.event === "message")).toMatchObject({ text: `${"x".repeat(130)}yz` });

    // /connect again: no alarm on one's own screen; then /bmsg says whom it went to (found in audit: nothing).
    await term.type(`/connect ${peer.id}\r`);
    await term.expect(`new key exchange with ${peer.id} \\(you started it\\)`);
    await term.type("/bmsg hello all\r");
    await term.expect(`\\* to 1 peer: ${peer.id}`);
    await waitFor(() => received.find((e) => e.event === "message" && e.broadcast), "the broadcast at the peer");

    await term.type("\u001a"); // Ctrl-Z: the client stops itself
    await Bun.sleep(300);
    await term.signal(18); // SIGCONT, as `fg` sends
    await term.type("/help\r");
    await term.expect("show the full 256-bit fingerprint");

    await term.type("half typed");
    await term.expect("half typed");
    await term.type("\u0003"); // Ctrl-C with a line typed clears it, as in a shell (found in audit: it quit)
    await term.expect("line cleared: Ctrl-C on an empty line quits");
    expect((await term.screen()).filter((r) => r.includes("half typed"))).toEqual([]);
    await term.type("\u0003"); // on an empty line, Ctrl-C quits
    expect(await term.exitCode()).toEqual({ ok: true, code: 0 });
    const last = await term.screen();
    expect(last.filter((r) => r.includes("half typed"))).toEqual([]);
    expect(last.at(-1)).toBe(""); // the cursor is at the start of an empty row
  } finally {
    term.proc.kill();
    await peer.close();
    dh.close();
  }
});

// Regression test (lib/ui/terminal.ts, lib/client/chat-client.ts): Ctrl-D or
// Ctrl-C at the prompt while a file arrived crashed with "readline was closed"
// (ERR_USE_AFTER_CLOSE, exit 1): close() cancelled the transfer, whose event
// redrew the closed prompt, and the throw stopped close() before the keys were
// erased. Now: the transfer is cancelled (no temporary file, the sender told), exit 0.
test("regression: Ctrl-D or Ctrl-C at the prompt, or the terminal closed, while a file arrives cancels it cleanly (exit 0, or 129 for the hang-up)", async () => {
  const dh = startDhEngine();
  const peer = await startChat({ host: "127.0.0.1", port: relay.port, secret: SECRET, dh, onEvent: () => {}, maxFileSize: 256 * 1024 * 1024 });
  const src = writeTestFile(temp.make(), "big.bin", 96 * 1024 * 1024);
  try {
    // The terminal closed (its window, an ssh drop) is SIGHUP with the terminal gone: leaving raw
    // mode then failed with EIO, as an internal error, and the temporary file stayed (found in audit).
    for (const key of ["\u0004", "\u0003", "hang up"]) {
      const dl = temp.make();
      const term = ptyChat(relay.port, ["--download-dir", dl, "--max-file-size", "256MiB"]);
      try {
        const id = /Your ID: ([0-9a-z]{8})/.exec(await term.expect("Your ID: [0-9a-z]{8}"))![1]!;
        await peer.connect(id);
        await term.expect("secure session with");
        const sent = peer.sendFile(id, src.path);
        sent.catch(() => {});
        await term.expect("receiving file");
        await term.expect("big.bin from [0-9a-z]{8} +[0-9]+%"); // progress in the prompt: chunks are arriving
        if (key === "hang up") await term.hangUp();
        else await term.type(key);
        expect(await term.exitCode()).toEqual({ ok: true, code: key === "hang up" ? 129 : 0 });
        expect(await sent.then(() => "delivered", (err: ChatError) => err.code)).toBe("cancelled");
        expect(readdirSync(dl)).toEqual([]);
      } finally {
        term.proc.kill();
      }
    }
  } finally {
    await peer.close();
    dh.close();
  }
});

// Regression (found in audit): stdin alone decided, so `smts chat HOST > log` typed
// at a terminal wrote the prompt, the echo and readline's escape codes into the log.
test("stdin a terminal, stdout a file: commands are read as in a script, and the file gets plain lines only", async () => {
  const out = join(temp.make(), "log");
  const term = ptyChat(relay.port, [], out);
  await waitFor(() => existsSync(out) && readFileSync(out, "utf8").includes("Your ID:"), "the ID line in the file");
  await term.type("/list\r");
  await waitFor(() => readFileSync(out, "utf8").includes("no other peers online"), "the /list line in the file");
  await term.type("\x04"); // Ctrl-D: end of input
  expect((await term.exitCode()).code).toBe(0);
  const text = readFileSync(out, "utf8");
  expect(text).not.toContain("\x1b");
  expect(text).not.toContain("> ");
  expect(text.trimEnd().split("\n")).toEqual([expect.stringMatching(/^Your ID: [0-9a-z]{8} /), "no other peers online"]);
});
