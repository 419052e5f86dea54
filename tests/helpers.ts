// Test helpers: real relays on 127.0.0.1 with ephemeral ports, real clients,
// raw sockets for hostile input, and relay subprocesses for CLI tests.
import type { Socket, Subprocess } from "bun";
import { createHash, randomBytes } from "node:crypto";
import { mkdtempSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { startChat, type ChatClient, type ChatEvent } from "../lib/client/chat-client.ts";
import type { DhEngine } from "../lib/crypto/dh.ts";
import { joinRelay, type Link, type LinkOptions } from "../lib/link/relay-link.ts";
import { clientProof, newNonce, RELAY_PROTOCOL_VERSION } from "../lib/relay/protocol.ts";
import { startRelay, type Relay, type RelayOptions } from "../lib/relay/server.ts";
import { decodePayload, encodeFrame, FrameDecoder, type Frame } from "../lib/wire/frame.ts";

export const SECRET_TEXT = "test secret, long enough to pass";

/** The temporary directories of one test file (real paths); `removeAll()` deletes them (afterEach/afterAll). */
export function tempDirs(prefix: string) {
  const made: string[] = [];
  return {
    make(p = prefix): string {
      const d = realpathSync(mkdtempSync(join(tmpdir(), p)));
      made.push(d);
      return d;
    },
    removeAll(): void {
      for (const d of made.splice(0)) rmSync(d, { recursive: true, force: true });
    },
  };
}

export const sha256Hex = (bytes: Uint8Array) => createHash("sha256").update(bytes).digest("hex");

/** Writes `content` (or that many random bytes) to `dir/name`; returns its path, bytes, size and SHA-256. */
export function writeTestFile(dir: string, name: string, content: number | Uint8Array) {
  const bytes = typeof content === "number" ? new Uint8Array(randomBytes(content)) : content;
  const path = join(dir, name);
  writeFileSync(path, bytes);
  return { path, bytes, sha256: sha256Hex(bytes), size: bytes.length };
}
export const SECRET = new TextEncoder().encode(SECRET_TEXT);
export const ROOT = new URL("..", import.meta.url).pathname;

export const silentLog = { info() {}, warn() {}, debug() {} };

export function startTestRelay(overrides: Partial<RelayOptions> = {}): Relay {
  return startRelay({ host: "127.0.0.1", port: 0, secret: SECRET, log: silentLog, ...overrides });
}

/** Polls `check` until it returns a truthy value; fails with `what` after the timeout. */
export async function waitFor<T>(check: () => T, what: string, timeoutMs = 5000): Promise<NonNullable<T>> {
  const deadline = performance.now() + timeoutMs;
  for (;;) {
    const value = check();
    if (value) return value as NonNullable<T>;
    if (performance.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await Bun.sleep(5);
  }
}

export interface TestClient {
  link: Link;
  frames: Frame[];
  /** Waits for (and removes) the first received frame matching `match`. */
  next(match: (f: Frame) => boolean, what?: string, timeoutMs?: number): Promise<Frame>;
}

export async function joinTest(relay: Relay, extra: Partial<LinkOptions> = {}): Promise<TestClient> {
  const frames: Frame[] = [];
  const link = await joinRelay({ host: "127.0.0.1", port: relay.port, secret: SECRET, onFrame: (f) => frames.push(f), ...extra });
  return {
    link,
    frames,
    async next(match, what = "frame", timeoutMs = 5000) {
      const i = await waitFor(() => frames.findIndex(match) + 1, what, timeoutMs);
      return frames.splice(i - 1, 1)[0]!;
    },
  };
}

/** A bare TCP connection that speaks raw bytes and records whatever frames come back. */
export class RawClient {
  frames: Frame[] = [];
  badBytes = false;
  closed = false;
  socket!: Socket<undefined>;
  private decoder = new FrameDecoder(16 * 1024 * 1024);

  static async connect(port: number, opts: { paused?: boolean; host?: string } = {}): Promise<RawClient> {
    const c = new RawClient();
    c.socket = await Bun.connect({
      hostname: opts.host ?? "127.0.0.1",
      port,
      socket: {
        open(s) {
          if (opts.paused) s.pause();
        },
        data: (_s, chunk) => {
          try {
            for (const p of c.decoder.push(chunk)) c.frames.push(decodePayload(p));
          } catch {
            c.badBytes = true;
          }
        },
        close: () => void (c.closed = true),
        error: () => {},
      },
    });
    return c;
  }

  write(bytes: Uint8Array): void {
    let at = 0;
    // Tests write at most a few MiB; loop until the kernel took it all.
    while (at < bytes.length) {
      const n = this.socket.write(bytes.subarray(at));
      if (n < 0) return;
      at += n;
      if (n === 0) Bun.sleepSync(1);
    }
  }

  writeFrame(frame: Frame): void {
    this.write(encodeFrame(frame));
  }

  async next(t: string, timeoutMs = 5000): Promise<Frame> {
    const i = await waitFor(() => this.frames.findIndex((f) => f.t === t) + 1, `${t} frame`, timeoutMs);
    return this.frames.splice(i - 1, 1)[0]!;
  }

  async waitClosed(timeoutMs = 5000): Promise<void> {
    await waitFor(() => this.closed, "connection close", timeoutMs);
  }

  close(): void {
    this.socket.terminate();
  }
}

/** Joins a raw socket by hand (open relays aside), so a test can then write anything at all. */
export async function rawJoined(port: number, host?: string): Promise<{ raw: RawClient; id: string }> {
  const raw = await RawClient.connect(port, { host });
  const ch = await raw.next("challenge");
  const nonce = newNonce();
  raw.writeFrame({ t: "join", v: RELAY_PROTOCOL_VERSION, proof: clientProof(SECRET, ch.nonce as Uint8Array, nonce), nonce, watch: false });
  return { raw, id: (await raw.next("welcome")).id as string };
}

/** A real chat client (lib/client) whose events are collected. */
export interface Party {
  chat: ChatClient;
  id: string;
  dir: string;
  events: ChatEvent[];
  of<K extends ChatEvent["event"]>(kind: K): Extract<ChatEvent, { event: K }>[];
}

/** Starts a chat client on 127.0.0.1:`port` with the test secret, receiving files into `dir`. */
export async function startParty(o: { port: number; dh: DhEngine; dir: string; maxFileSize?: number }): Promise<Party> {
  const events: ChatEvent[] = [];
  const chat = await startChat({
    host: "127.0.0.1",
    port: o.port,
    secret: SECRET,
    dh: o.dh,
    onEvent: (e) => void events.push(e),
    downloadDir: o.dir,
    ...(o.maxFileSize ? { maxFileSize: o.maxFileSize } : {}),
  });
  const of = <K extends ChatEvent["event"]>(kind: K) => events.filter((e): e is Extract<ChatEvent, { event: K }> => e.event === kind);
  return { chat, id: chat.id, dir: o.dir, events, of };
}

export interface RelayProcess {
  proc: Subprocess<"ignore", "pipe", "pipe">;
  port: number;
  /** Everything the relay wrote to stderr so far. */
  stderr(): string;
}

/**
 * Starts `smts relay` as a real process and waits for its listening line.
 * `wrap` may start it another way (with Bun options, through a shell), as long
 * as the process it starts becomes the relay (`exec`).
 */
export async function spawnRelay(args: string[], env: Record<string, string> = {}, opts: { cwd?: string; wrap?: (argv: string[]) => string[] } = {}): Promise<RelayProcess> {
  const argv = [process.execPath, `${ROOT}cmd/smts.ts`, "relay", "--host", "127.0.0.1", "--port", "0", ...args];
  const proc = Bun.spawn(opts.wrap?.(argv) ?? argv, {
    cwd: opts.cwd,
    stdin: "ignore",
    stdout: "pipe",
    stderr: "pipe",
    env: { PATH: process.env.PATH ?? "", HOME: process.env.HOME ?? "/tmp", ...env },
  });
  let text = "";
  (async () => {
    const decoder = new TextDecoder();
    for await (const chunk of proc.stderr) text += decoder.decode(chunk, { stream: true });
  })();
  const port = await waitFor(() => Number(/listening on [^\s]+:(\d+)/.exec(text)?.[1]), "relay to listen", 10_000).catch((err) => {
    proc.kill();
    throw new Error(`${(err as Error).message}; relay stderr: ${text}`);
  });
  return { proc, port, stderr: () => text };
}

/** Resident set size of a process in bytes (Linux /proc). */
export function rssOf(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)?.[1]) * 1024;
}

/** Mounts a tmpfs on `dir` (needs root) and records it in `mounts`; returns null, or why it was not possible here. */
export function tryMount(mounts: string[], dir: string, options: string): string | null {
  try {
    const r = Bun.spawnSync(["mount", "-t", "tmpfs", "-o", options, "tmpfs", dir]);
    if (r.exitCode === 0) {
      mounts.push(dir);
      return null;
    }
    return r.stderr.toString().trim() || `mount exited with ${r.exitCode}`;
  } catch (err) {
    return (err as Error).message;
  }
}

const DEVICE = /^(con|prn|aux|nul|com[0-9¹²³]|lpt[0-9¹²³]|conin\$|conout\$)$/i;

/** The promises of lib/transfer/names.ts, checked one by one so a failure names the broken rule. */
export function nameProblems(name: string): string[] {
  const problems: string[] = [];
  if (!name) problems.push("empty");
  if (/[/\\]/.test(name)) problems.push("path separator");
  if (name === "." || name === "..") problems.push("dot name");
  if (/[\u0000-\u001f\u007f-\u009f]/.test(name)) problems.push("control character");
  if (/[\p{Default_Ignorable_Code_Point}\u2028\u2029]/u.test(name)) problems.push("invisible, separator or bidi character");
  if (name !== name.normalize("NFC")) problems.push("not NFC");
  if (/[<>:"|?*]/.test(name)) problems.push("Windows-reserved character");
  if (/^[.\s]/.test(name)) problems.push("leading dot or space");
  if (/[.\s]$/.test(name)) problems.push("trailing dot or space");
  if (DEVICE.test((name.split(".")[0] ?? "").trimEnd())) problems.push("device name"); // Windows ignores spaces before the dot too
  if (Buffer.byteLength(name) > 200) problems.push(`${Buffer.byteLength(name)} bytes`);
  return problems;
}
