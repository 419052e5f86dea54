// The client's connection to a relay: TCP connect, challenge–response join
// (verifying the relay's own proof when we hold the secret), then a framed
// channel for `send` / `list` with ping answered automatically.
//
// Promises: joinRelay() either resolves with a joined Link or rejects with a
// JoinError whose message is one line a user can act on; writes leave in order
// and are never silently dropped (the unsent tail is kept and retried on
// drain); `drained()` lets a producer wait for the socket before queueing more.
import type { Socket } from "bun";
import { decodePayload, encodeFrame, FrameDecoder, FrameError, safeText as text, type Frame } from "../wire/frame.ts";
import type { PackedBin } from "../wire/msgpack.ts";
import { Outbox } from "../wire/outbox.ts";
import {
  clientProof,
  equalBytes,
  ERRORS,
  hostPort,
  isId,
  MAX_FRAME_LIMIT,
  newNonce,
  NONCE_BYTES,
  parseMsg,
  PROOF_BYTES,
  RELAY_PROTOCOL_VERSION,
  relayProof,
  type ErrorCode,
} from "../relay/protocol.ts";

export class JoinError extends Error {
  constructor(
    readonly code: string,
    message: string,
  ) {
    super(message);
  }
}

export interface LinkClose {
  /** Relay error code when the relay said why (e.g. `shutdown`), else `closed`. */
  code: string;
  message: string;
}

export interface LinkOptions {
  host: string;
  port: number;
  secret: Uint8Array | null;
  /** Ask for `joined` / `left` presence frames (default true). */
  watch?: boolean;
  timeoutMs?: number;
  /** Frames after `welcome`, except pings and fatal errors (those are the close's reason); `link` is the joined link (frames in the read that brought `welcome` come before joinRelay() resolves). */
  onFrame?: (frame: Frame, link: Link) => void;
  onClose?: (reason: LinkClose) => void;
  /** A relay that takes none of what we queued for this long is given up (default 90 s; shorter in tests). */
  stallMs?: number;
}

export interface Link {
  readonly id: string;
  readonly maxFrame: number;
  /** `body` is the opaque E2E payload; a PackedBin is packed straight into the frame. */
  send(to: string | string[], body: Uint8Array | PackedBin, ref?: number): void;
  /** send() in the bulk lane (lib/wire/outbox.ts): frames sent otherwise go first; as a `bulk` frame when the relay takes those, so that they do at the recipient too (PROTOCOL §5.4). */
  sendBulk(to: string | string[], body: PackedBin, tag?: object): void;
  /** Forgets what was sent with sendBulk(…, tag) and has not begun to leave (a cancelled file's chunks). */
  dropBulk(tag: object): void;
  sendFrame(frame: Frame): void;
  /** Bytes queued locally and not yet taken by the socket. */
  readonly backlog: number;
  /** Of these, the bulk lane's (sendBulk). */
  readonly bulkBacklog: number;
  /** Resolves once the local queue (with `bulk`, its bulk lane) is at or below `bytes`. */
  drained(bytes?: number, bulk?: boolean): Promise<void>;
  /**
   * Stops (true) or resumes (false) reading from the relay, for a consumer of
   * what we read that fell behind: the relay then queues for us, and tells
   * our peers (PROTOCOL §10). Frames of a read under way are still delivered.
   */
  holdReading(hold: boolean): void;
  close(): void;
  readonly closed: Promise<LinkClose>;
}

const DRAIN_LOW = 256 * 1024;
const PING_MS = 30_000;


export function joinRelay(opts: LinkOptions): Promise<Link> {
  const { host, port, secret } = opts;
  return new Promise<Link>((resolveJoin, rejectJoin) => {
    const decoder = new FrameDecoder(64 * 1024);
    const clientNonce = newNonce();
    let relayNonce: Uint8Array | null = null;
    let socket: Socket<undefined> | null = null;
    let outbox: Outbox | null = null;
    let link: Link | null = null;
    let lastError: LinkClose | null = null;
    let flushScheduled = false;
    let drainWaiters: { bytes: number; bulk: boolean; resolve: () => void }[] = [];
    let resolveClosed!: (r: LinkClose) => void;
    const closed = new Promise<LinkClose>((r) => (resolveClosed = r));
    let settled = false;
    let lastHeard = performance.now();
    let pinged = false;
    let keepalive: Timer | undefined;
    let holding = false;
    let lastPing = 0;
    // We ping a silent relay, and give up on it after three intervals.
    const checkAlive = () => {
      // A relay that answers pings but has stopped reading what we send would
      // hold close(), flush() and a script's exit forever (found in audit).
      if (!holding && outbox && outbox.bytes > 0 && performance.now() - outbox.lastProgress > (opts.stallMs ?? 3 * PING_MS)) {
        lastError = { code: "stalled", message: "relay stopped taking our data" };
        socket?.terminate();
        return;
      }
      if (holding) {
        // Not reading: what the relay sends (a pong too) waits unread, so its
        // silence says nothing; our pings tell it we are alive, so that it cuts
        // us only for what it cannot deliver (its slow-consumer rule, §10).
        lastHeard = performance.now();
        if (lastHeard - lastPing > PING_MS) (lastPing = lastHeard), writeFrame({ t: "ping" });
        return;
      }
      const quiet = performance.now() - lastHeard;
      if (quiet > 3 * PING_MS) {
        lastError = { code: "timeout", message: "relay stopped responding" };
        socket?.terminate();
      } else if (quiet > PING_MS && !pinged) {
        pinged = true;
        writeFrame({ t: "ping" });
      }
    };

    const fail = (code: string, message: string) => {
      if (settled) return;
      settled = true;
      clearTimeout(timer);
      socket?.terminate();
      rejectJoin(new JoinError(code, message));
    };
    const where = hostPort(host, port);
    const timer = setTimeout(() => fail("timeout", `no answer from relay ${where}`), opts.timeoutMs ?? 10_000);

    const flush = () => {
      flushScheduled = false;
      if (!outbox) return;
      outbox.flush();
      if (drainWaiters.length) {
        const still: typeof drainWaiters = [];
        for (const w of drainWaiters) ((w.bulk ? outbox.bulkBytes : outbox.bytes) <= w.bytes ? w.resolve() : still.push(w));
        drainWaiters = still;
      }
    };
    const write = (bytes: Uint8Array, bulk = false, tag?: object) => {
      if (!outbox || outbox.closed) return;
      if (bulk) outbox.pushBulk(bytes, false, tag);
      else outbox.push(bytes);
      if (!flushScheduled) {
        flushScheduled = true;
        queueMicrotask(flush);
      }
    };
    const writeFrame = (frame: Frame) => write(encodeFrame(frame));

    function onJoinFrame(f: Frame): void {
      if (f.t === "error") return fail(text(f.code), `relay refused: ${text(f.message)} (${text(f.code)})`);
      if (f.t === "challenge") {
        if (f.v !== RELAY_PROTOCOL_VERSION) return fail("version", `relay speaks protocol version ${text(f.v)}, we speak ${RELAY_PROTOCOL_VERSION}`);
        if (!(f.nonce instanceof Uint8Array) || f.nonce.length !== NONCE_BYTES) return fail("bad_frame", "relay sent a malformed challenge");
        if (f.open !== true && !secret) return fail("auth_failed", "relay requires a join secret: set SMTS_SECRET or use --secret-file");
        if (f.open === true && secret) return fail("auth_failed", "relay is open and cannot prove it knows the secret; unset SMTS_SECRET to join an open relay");
        relayNonce = f.nonce;
        const proof = secret ? clientProof(secret, relayNonce, clientNonce) : new Uint8Array(PROOF_BYTES);
        writeFrame({ t: "join", v: RELAY_PROTOCOL_VERSION, proof, nonce: clientNonce, watch: opts.watch !== false });
        return;
      }
      if (f.t === "welcome" && relayNonce) {
        // The limit bounds what we buffer for one frame: a relay announcing 2^40 must not make us allocate gigabytes.
        if (f.v !== RELAY_PROTOCOL_VERSION || !isId(f.id) || !Number.isSafeInteger(f.maxFrame) || (f.maxFrame as number) < 1 || (f.maxFrame as number) > MAX_FRAME_LIMIT) {
          return fail("bad_frame", "relay sent a malformed welcome");
        }
        if (secret) {
          const expected = relayProof(secret, relayNonce, clientNonce);
          if (!(f.proof instanceof Uint8Array) || !equalBytes(f.proof, expected)) {
            return fail("auth_failed", "relay could not prove it knows the secret (impostor or different secret)");
          }
        }
        decoder.maxPayload = (f.maxFrame as number) + 1024;
        settled = true;
        clearTimeout(timer);
        link = makeLink(f.id, f.maxFrame as number, f.bulk === true);
        keepalive = setInterval(checkAlive, Math.min(PING_MS, opts.stallMs ?? Infinity) / 3);
        keepalive.unref();
        resolveJoin(link);
        return;
      }
      fail("bad_frame", `unexpected ${text(f.t)} frame during join`);
    }

    /** `relayBulk`: the relay takes `bulk` frames (its welcome said so), and queues them behind our others for the recipient too. */
    function makeLink(id: string, maxFrame: number, relayBulk: boolean): Link {
      const bulkType = relayBulk ? "bulk" : "send";
      return {
        id,
        maxFrame,
        send(to, body, ref) {
          writeFrame(ref === undefined ? { t: "send", to, body } : { t: "send", to, body, ref });
        },
        sendBulk(to, body, tag) {
          write(encodeFrame({ t: bulkType, to, body }), true, tag);
        },
        dropBulk(tag) {
          if (outbox?.dropBulk(tag)) flush(); // and wake who waits for the lane to drain
        },
        sendFrame: writeFrame,
        get backlog() {
          return outbox?.bytes ?? 0;
        },
        get bulkBacklog() {
          return outbox?.bulkBytes ?? 0;
        },
        holdReading(hold) {
          if (hold === holding) return;
          holding = hold;
          if (hold) socket?.pause();
          else socket?.resume();
        },
        drained(bytes = DRAIN_LOW, bulk = false) {
          if (!outbox || outbox.closed || (bulk ? outbox.bulkBytes : outbox.bytes) <= bytes) return Promise.resolve();
          return new Promise<void>((resolve) => drainWaiters.push({ bytes, bulk, resolve }));
        },
        close() {
          // Hand everything queued to the socket first, then half-close (notes §3:
          // end() right away could lose data the kernel has not sent yet).
          const finish = () => {
            socket?.shutdown();
            setTimeout(() => socket?.terminate(), 1000).unref();
          };
          flush();
          if (!outbox || outbox.bytes === 0) finish();
          else void this.drained(0).then(finish);
        },
        closed,
      };
    }

    Bun.connect({
      hostname: host,
      port,
      socket: {
        open(s) {
          socket = s;
          outbox = new Outbox(s);
          s.setNoDelay(true);
        },
        data(_s, chunk) {
          lastHeard = performance.now();
          pinged = false;
          try {
            decoder.each(chunk, (payload) => {
              if (settled && !link) return; // join failed: ignore the rest
              const f: Frame = parseMsg(payload) ?? decodePayload(payload);
              if (!link) return onJoinFrame(f);
              // Not while our queue is long: a relay that sends pings and does not read would grow it one pong per ping (found in audit).
              if (f.t === "ping") return void (outbox!.bytes < PONG_BACKLOG && writeFrame({ t: "pong" }));
              if (f.t === "pong") return;
              // A fatal error is the reason of the close that follows (LinkClose), reported once, there.
              if (f.t === "error" && isFatal(f.code)) return void (lastError = { code: text(f.code), message: text(f.message) });
              opts.onFrame?.(f, link);
            });
          } catch (err) {
            // The rest of this read is lost, so the stream cannot go on: whatever failed,
            // a bad frame or one of our handlers, the link closes and says why.
            const [code, message] = err instanceof FrameError ? ["bad_frame", `relay sent a bad frame: ${err.message}`] : ["internal", `handling a frame from the relay failed: ${(err as Error).message}`];
            if (!link) return fail(code, message);
            lastError = { code, message };
            socket?.terminate();
          }
        },
        drain() {
          flush();
        },
        close() {
          clearInterval(keepalive);
          outbox?.close();
          for (const w of drainWaiters) w.resolve();
          drainWaiters = [];
          if (!link) return fail("closed", `relay ${where} closed the connection during join`);
          const reason = lastError ?? { code: "closed", message: "connection to relay closed" };
          resolveClosed(reason);
          opts.onClose?.(reason);
        },
        connectError(_s, err) {
          fail("unreachable", `cannot reach relay ${where}: ${whyUnreachable(err)}`);
        },
        error(_s, err) {
          if (!link) fail("closed", `connection to relay failed: ${err.message}`);
        },
      },
    }).catch((err: Error) => fail("unreachable", `cannot reach relay ${where}: ${whyUnreachable(err)}`));
  });
}

/** Above this much unsent, a `ping` gets no `pong`: the relay is not reading, and the queue itself shows we are alive. */
const PONG_BACKLOG = 64 * 1024;

/** Bun says "Failed to connect" for a refused connection (found in audit): the system's reason, in words. */
const UNREACHABLE: Record<string, string> = {
  ECONNREFUSED: "connection refused (is the relay running, on that port?)",
  ENOTFOUND: "no such host",
  EAI_AGAIN: "the host name could not be looked up (no DNS?)",
  EHOSTUNREACH: "no route to the host",
  ENETUNREACH: "network unreachable",
  ETIMEDOUT: "connection timed out",
};
function whyUnreachable(err: Error): string {
  const code = (err as NodeJS.ErrnoException).code;
  return (code && UNREACHABLE[code]) ?? (code ? `${err.message} (${code})` : err.message);
}

function isFatal(code: unknown): boolean {
  return typeof code === "string" && Object.hasOwn(ERRORS, code) && ERRORS[code as ErrorCode].fatal;
}
