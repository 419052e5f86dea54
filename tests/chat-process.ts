// `smts chat --json` as a real child process, for CLI tests: spawns it against
// a relay on 127.0.0.1, collects its JSON event lines and its stderr, waits
// for events and for its exit, and SIGKILLs whatever is still running
// (killChats, for afterEach).
import type { Subprocess } from "bun";
import { ROOT, SECRET_TEXT, waitFor } from "./helpers.ts";

export interface ChatProcess {
  proc: Subprocess<"pipe", "pipe", "pipe">;
  /** The JSON event lines read so far, parsed. */
  events: Record<string, unknown>[];
  /** The same lines as written. */
  lines: string[];
  /** Everything the process wrote to stderr so far. */
  stderr(): string;
  /** Its ID from the `ready` event ("" if it exited before joining). */
  id: string;
  /** Writes one line to its stdin. */
  send(line: string): void;
  /** Ends its stdin (end of input). */
  end(): void;
  /** Stops reading its stdout (the pipe fills, as with a reader that stalls) until the returned function is called. */
  holdStdout(): () => void;
  /** Stops reading its stdout and closes the pipe, as `| head -1` does when it has its line. */
  closeStdout(): Promise<void>;
  /** The same for its stderr (`2>&1 | head -1`, or a log reader that died). */
  closeStderr(): Promise<void>;
  /** Resolves with the exit code once the process exited and all its output was read. */
  exited(): Promise<number>;
  /** Waits for the first event matching `match`. */
  event(match: (e: Record<string, unknown>) => boolean, what: string): Promise<Record<string, unknown>>;
}

export interface ChatProcessOptions {
  cwd?: string;
  /** Added to the environment (PATH and the test SMTS_SECRET), overriding it. */
  env?: Record<string, string>;
  /** For `ready` and each event() wait. */
  timeoutMs?: number;
  /** The process may exit before `ready` (a join failure under test): do not throw, leave `id` empty. */
  mayExit?: boolean;
}

const running: Subprocess[] = [];

/** Starts `smts chat 127.0.0.1:PORT --json ...args` and waits for its `ready` event. */
export async function spawnChat(port: number, args: string[] = [], opts: ChatProcessOptions = {}): Promise<ChatProcess> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const proc = Bun.spawn([process.execPath, `${ROOT}cmd/smts.ts`, "chat", `127.0.0.1:${port}`, "--json", ...args], {
    cwd: opts.cwd,
    stdin: "pipe",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "", SMTS_SECRET: SECRET_TEXT, ...opts.env },
  });
  running.push(proc);
  const events: Record<string, unknown>[] = [];
  const lines: string[] = [];
  let err = "";
  const reader = proc.stdout.getReader();
  let held: Promise<void> = Promise.resolve(); // holdStdout()
  const out = (async () => {
    let buf = "";
    const dec = new TextDecoder();
    for (let r; (await held, !(r = await reader.read()).done); ) {
      buf += dec.decode(r.value, { stream: true });
      let nl: number;
      while ((nl = buf.indexOf("\n")) >= 0) {
        lines.push(buf.slice(0, nl));
        events.push(JSON.parse(buf.slice(0, nl)));
        buf = buf.slice(nl + 1);
      }
    }
  })();
  const errReader = proc.stderr.getReader();
  const errDone = (async () => {
    const dec = new TextDecoder();
    for (let r; !(r = await errReader.read()).done; ) err += dec.decode(r.value, { stream: true });
  })();
  const c: ChatProcess = {
    proc,
    events,
    lines,
    stderr: () => err,
    id: "",
    send(line) {
      proc.stdin.write(`${line}\n`);
      proc.stdin.flush();
    },
    end: () => void proc.stdin.end(),
    holdStdout() {
      let release!: () => void;
      held = new Promise((resolve) => (release = resolve));
      return release;
    },
    closeStdout: () => reader.cancel(),
    closeStderr: () => errReader.cancel(),
    async exited() {
      const code = await proc.exited;
      await Promise.all([out, errDone]);
      return code;
    },
    event: (match, what) => waitFor(() => events.find(match), what, timeoutMs),
  };
  const ready = await waitFor(() => events.find((e) => e.event === "ready") ?? (proc.exitCode !== null ? { event: "exited" } : null), "ready event", timeoutMs);
  if (ready.event !== "ready" && !opts.mayExit) throw new Error(`chat exited early: ${err}`);
  c.id = String(ready.id ?? "");
  return c;
}

/** SIGKILLs every chat process started by spawnChat that is still running. */
export function killChats(): void {
  for (const p of running.splice(0)) if (p.exitCode === null) p.kill("SIGKILL");
}
