// `smts relay`: argument parsing and wiring for the relay (lib/relay).
import { readFileSync } from "node:fs";
import { defineCommand } from "citty";
import { createConsola } from "consola";
import { formatSize } from "../lib/cli/size.ts";
import { hostPort, MAX_FRAME_LIMIT } from "../lib/relay/protocol.ts";
import { RELAY_DEFAULTS, startRelay, type RelayLog } from "../lib/relay/server.ts";
import { generateSecret, secretBytes, SHORT_SECRET } from "../lib/secret/secret.ts";
import { failOnStdoutError } from "./plain-output.ts";
import { onStopSignals } from "./signals.ts";
import { checkFlags, Failure, guard, parseCount, parsePort, parsePositive, readSecret, UsageError } from "./usage.ts";

const args = {
  host: { type: "string", valueHint: "ADDR", description: "Address to listen on", default: RELAY_DEFAULTS.host },
  port: { type: "string", valueHint: "PORT", description: "TCP port (0 picks a free one)", default: String(RELAY_DEFAULTS.port) },
  "secret-file": { type: "string", description: "Read the join secret from this file (else SMTS_SECRET)", valueHint: "PATH" },
  open: { type: "boolean", description: "Run without a secret: anyone who can reach the port may join" },
  "generate-secret": { type: "boolean", description: "Print a new strong secret and exit" },
  "max-clients": { type: "string", valueHint: "N", description: "Most clients joined at once", default: String(RELAY_DEFAULTS.maxClients) },
  "max-pending": { type: "string", valueHint: "N", description: "Most connections waiting to join; a new one past it evicts the oldest", default: String(RELAY_DEFAULTS.maxPending) },
  "max-pending-per-source": { type: "string", valueHint: "N", description: "The same, per IPv4 address or IPv6 /64", default: String(RELAY_DEFAULTS.maxPendingPerSource) },
  "max-clients-per-source": { type: "string", valueHint: "N", description: "Most clients joined from one IPv4 address or IPv6 /64 (at most half of --max-clients and of the open-files limit, unless given)", default: String(RELAY_DEFAULTS.maxClientsPerSource) },
  "join-rate": { type: "string", valueHint: "N", description: "Joins a second from one IPv4 address or IPv6 /64 (after a burst of 10 seconds' worth)", default: String(RELAY_DEFAULTS.joinRatePerSource) },
  "list-rate": { type: "string", valueHint: "SIZE", description: "Bytes of answers to `list` a second to one IPv4 address or IPv6 /64 (after a burst of 4 seconds' worth)", default: "64KiB" },
  "max-frame": { type: "string", valueHint: "SIZE", description: "Largest frame accepted (e.g. 256KiB)", default: "256KiB" },
  "queue-limit": { type: "string", valueHint: "SIZE", description: "Per-client send queue cap before it is dropped as too slow", default: "16MiB" },
  "slow-timeout": { type: "string", valueHint: "SECONDS", description: "Seconds a client may leave queued data unread", default: String(RELAY_DEFAULTS.slowTimeoutMs / 1000) },
  "join-timeout": { type: "string", valueHint: "SECONDS", description: "Seconds a new connection has to join", default: String(RELAY_DEFAULTS.joinTimeoutMs / 1000) },
  "ping-interval": { type: "string", valueHint: "SECONDS", description: "Seconds of silence before a ping (dropped after 3x)", default: String(RELAY_DEFAULTS.pingIntervalMs / 1000) },
  verbose: { type: "boolean", description: "Log connection events (temporary IDs, never payloads)" },
} as const;

/**
 * The relay's log, which stops for good at the first failed write: a closed or
 * broken log pipe (`smts relay | head -1`, a log collector that went away)
 * must not take the relay and its clients down. Unhandled, the EPIPE error
 * on stderr ended the process at the next log line.
 */
function quietOnFailure(log: RelayLog): RelayLog {
  let on = true;
  process.stderr.on("error", () => void (on = false));
  process.stdout.on("error", () => {}); // the relay writes nothing there, but a broken stdout must not be fatal either
  const guarded = (write: (m: string) => void) => (m: string) => {
    if (!on) return;
    try {
      write(m);
    } catch {
      on = false;
    }
  };
  return { info: guarded((m) => log.info(m)), warn: guarded((m) => log.warn(m)), debug: perSecond(VERBOSE_PER_SECOND, guarded((m) => log.debug(m))) };
}

/**
 * --verbose lines a second at most: clients joining and leaving in a loop wrote
 * 2,200 a second, and with a log reader that stalls the runtime keeps every
 * unwritten line in memory (found in audit). The lines left out are counted.
 */
const VERBOSE_PER_SECOND = 100;

/** `write`, at most `limit` times in each second of `now()` (ms); then one line saying how many were left out. */
export function perSecond(limit: number, write: (m: string) => void, now = () => performance.now()): (m: string) => void {
  let second = -1;
  let used = 0;
  let skipped = 0;
  return (m) => {
    const current = Math.floor(now() / 1000);
    if (current !== second) {
      if (skipped) write(`(${skipped} more events not logged: more than ${limit} a second)`);
      second = current;
      used = skipped = 0;
    }
    if (used++ < limit) write(m);
    else skipped++;
  };
}

export const relayCommand = defineCommand({
  meta: { name: "relay", description: "Run the relay (it forwards ciphertext and stores nothing)" },
  args,
  async run({ args: a, rawArgs, cmd }) {
    await guard(cmd, undefined, async () => {
      checkFlags(rawArgs, args);
      if (a["generate-secret"]) {
        if (rawArgs.length > 1) throw new UsageError("--generate-secret takes no other options");
        failOnStdoutError();
        process.stdout.write(`${generateSecret()}\n`);
        return;
      }
      const seconds = (flag: string, text: string) => parsePositive(flag, text, 0) * 1000;
      // Plain lines for journald and log files; glyphs and colours only on a terminal.
      // (`fancy` is in consola's Node typings; TypeScript picks its browser ones here.)
      const logOptions = { level: a.verbose ? 4 : 3, fancy: process.stderr.isTTY === true, stdout: process.stderr, stderr: process.stderr };
      const log = quietOnFailure(createConsola(logOptions));
      const options = {
        host: parseListenHost(a.host),
        port: parsePort(a.port, RELAY_DEFAULTS.port),
        maxClients: parseCount("max-clients", a["max-clients"]),
        maxPending: parseCount("max-pending", a["max-pending"]),
        maxPendingPerSource: parseCount("max-pending-per-source", a["max-pending-per-source"]),
        maxClientsPerSource: parseCount("max-clients-per-source", a["max-clients-per-source"]),
        joinRatePerSource: parseCount("join-rate", a["join-rate"]),
        listAnswerRate: parsePositive("list-rate", a["list-rate"], 0, "size"),
        maxFrame: parsePositive("max-frame", a["max-frame"], 0, "size"),
        queueMax: parsePositive("queue-limit", a["queue-limit"], 0, "size"),
        slowTimeoutMs: seconds("slow-timeout", a["slow-timeout"]),
        joinTimeoutMs: seconds("join-timeout", a["join-timeout"]),
        pingIntervalMs: seconds("ping-interval", a["ping-interval"]),
        log,
      };
      // 192 KiB leaves room for a 128 KiB file chunk with its headers, sent to many recipients.
      if (options.maxFrame < 192 * 1024 || options.maxFrame > MAX_FRAME_LIMIT) throw new UsageError("--max-frame must be between 192KiB and 64MiB");
      if (options.queueMax < 2 * RELAY_DEFAULTS.queuePause) throw new UsageError("--queue-limit must be at least 8MiB (twice the queue at which senders are paused)");
      // A frame is queued only while the queue is at most half the limit (PROTOCOL §10): one must then fit, headers too.
      // Unless given, the limit grows with --max-frame (found in audit: --max-frame 64MiB alone was refused).
      const given = (flag: string) => rawArgs.some((x) => x === flag || x.startsWith(`${flag}=`));
      const queueFloor = 2 * (options.maxFrame + 1024);
      if (options.queueMax < queueFloor) {
        if (given("--queue-limit")) {
          throw new UsageError(`--queue-limit must be at least twice --max-frame, plus 2KiB: ${formatSize(queueFloor)} (${queueFloor} bytes) here (one frame must always fit in a recipient's queue)`);
        }
        options.queueMax = queueFloor;
      }
      // The secret only now: a mistake in the arguments is a usage error even without one.
      const secret = readSecret(a["secret-file"], (m) => log.warn(m));
      if (secret && a.open) throw new UsageError("--open runs without a secret, but a secret was given");
      if (!secret && !a.open) {
        throw new Failure("no join secret: set SMTS_SECRET or --secret-file (make one with `smts relay --generate-secret`), or pass --open for a relay anyone can join");
      }
      if (secret && secret.length < SHORT_SECRET) {
        log.warn(`the join secret is only ${secret.length} characters: anyone who records a join can guess it offline; use \`smts relay --generate-secret\``);
      }
      // Out of file descriptors, the relay could accept no one, and Bun's accept loop
      // spins a core; so it stays below the limit (lib/relay/server.ts, maxConnections).
      const files = openFilesLimit();
      const maxConnections = files === null ? Number.POSITIVE_INFINITY : files - Math.min(FILES_RESERVED, Math.floor(files / 4));
      const wanted = options.maxClients + options.maxPending;
      const raiseIt = `raise it with \`ulimit -n ${wanted + FILES_RESERVED}\``;
      if (maxConnections < MIN_CONNECTIONS) throw new Failure(`only ${files} open files allowed (ulimit -n): too few to serve clients; ${raiseIt}`);
      if (wanted > maxConnections) {
        log.warn(`only ${files} open files allowed (ulimit -n): at most ${maxConnections} connections at once, fewer than --max-clients + --max-pending (${wanted}); ${raiseIt}`);
      }
      // Unless given, one address may hold at most half of the clients the relay can hold: with
      // `ulimit -n 1024` the default 1000 let it take every connection (found in review).
      if (!given("--max-clients-per-source")) options.maxClientsPerSource = Math.max(1, Math.min(options.maxClientsPerSource, Math.floor(Math.min(options.maxClients, maxConnections) / 2)));
      let relay;
      try {
        relay = startRelay({ ...options, maxConnections, secret: secret ? secretBytes(secret) : null });
      } catch (err) {
        throw new Failure(`cannot listen on ${hostPort(options.host, options.port)}: ${listenProblem(err as NodeJS.ErrnoException)}`);
      }
      log.info(`smts relay listening on ${hostPort(relay.host, relay.port)} (${secret ? "join secret required" : "OPEN: anyone may join"})`);
      // Refusals and drops, which clients see and the operator otherwise would not:
      // one line per minute in which any happened (bounded, whatever the load).
      let before = { ...relay.stats().counters };
      const summary = (when: string) => {
        const now = { ...relay.stats().counters };
        const line = notableSince(before, now);
        if (line) log.warn(`${line} ${when} (${counted((now.joins ?? 0) - (before.joins ?? 0), "join", "joins")} in that time; ${counted(relay.stats().clients, "client", "clients")} online)`);
        before = now;
      };
      setInterval(() => summary("in the last minute"), 60_000).unref();
      // A clean stop (cmd/signals.ts): clients are told `shutdown`.
      let stopping = false;
      const stop = async (signal: string) => {
        stopping = true;
        log.info(`${signal}: telling ${relay.stats().clients} clients and shutting down`);
        summary("since the last minute's summary"); // the minute cut short is reported too (found in audit)
        await relay.stop();
        const c = relay.stats().counters;
        log.info(`served ${counted(c.connections ?? 0, "connection", "connections")}, ${counted(c.joins ?? 0, "join", "joins")}, forwarded ${counted(c.framesForwarded ?? 0, "frame", "frames")} (${formatSize(c.bytesForwarded ?? 0)})`);
        process.exit(0);
      };
      onStopSignals(() => stopping, (signal) => void stop(signal));
    });
  },
});

/** What the relay's counters say went wrong for someone between two readings, in words; null if nothing. */
export function notableSince(before: Record<string, number>, now: Record<string, number>): string | null {
  const parts = Object.entries(NOTABLE)
    .map(([counter, [one, many]]) => counted((now[counter] ?? 0) - (before[counter] ?? 0), one, many))
    .filter((part) => !part.startsWith("0 "));
  return parts.length ? parts.join(", ") : null;
}

const counted = (n: number, one: string, many: string) => `${n} ${n === 1 ? one : many}`;

const NOTABLE: Record<string, [string, string]> = {
  closed_auth_failed: ["join with a wrong secret", "joins with a wrong secret"],
  closed_version: ["join with an unsupported protocol version", "joins with an unsupported protocol version"],
  closed_relay_full: ["connection refused or evicted (relay full)", "connections refused or evicted (relay full)"],
  closed_join_timeout: ["connection that did not join in time", "connections that did not join in time"],
  closed_slow_consumer: ["client dropped for not reading", "clients dropped for not reading"],
  closed_idle_timeout: ["client dropped as silent or for a frame too slow to arrive", "clients dropped as silent or for a frame too slow to arrive"],
  partialEvicted: ["of them for a frame stalled while the relay held too many unfinished ones", "of them for frames stalled while the relay held too many unfinished ones"],
  closed_bad_frame: ["connection closed for a malformed frame", "connections closed for a malformed frame"],
  closed_frame_too_large: ["connection closed for a frame over --max-frame", "connections closed for a frame over --max-frame"],
  closed_not_joined: ["connection closed for sending before joining", "connections closed for sending before joining"],
  drops: ["frame dropped for a recipient not reading", "frames dropped for recipients not reading"],
  listsOwed: ["`list` deferred (an address past --list-rate)", "`list`s deferred (addresses past --list-rate)"],
};

/** `--host`: an address or name; an IPv6 address may be written in brackets, as `smts chat` takes it. */
function parseListenHost(text: string): string {
  const host = /^\[(.*)\]$/.exec(text)?.[1] ?? text;
  if (!host) throw new UsageError("--host needs an address or a name (0.0.0.0 for every IPv4 address, :: for every address)");
  return host;
}


/** Why listening failed, in words: Bun's message only repeats the address. */
function listenProblem(err: NodeJS.ErrnoException): string {
  switch (err.code) {
    case "EADDRINUSE":
      return "the port is in use (EADDRINUSE)";
    case "EACCES":
      return "permission denied (EACCES; ports below 1024 need privileges)";
    case "EADDRNOTAVAIL":
      return "no such address on this machine (EADDRNOTAVAIL)";
    case undefined:
      return `${err.message} (is the host name right?)`;
    default:
      return `${err.code}: ${err.message}`;
  }
}

/** Descriptors kept for the runtime itself (its own files, pipes and workers), beyond the connections; a quarter of a lower limit. */
const FILES_RESERVED = 64;
/** Fewer connections than this is no relay: it refuses to start. */
const MIN_CONNECTIONS = 16;

/** The soft limit on open files (ulimit -n), where the OS tells (Linux); null elsewhere. */
function openFilesLimit(): number | null {
  try {
    const m = /^Max open files\s+(\d+)/m.exec(readFileSync("/proc/self/limits", "utf8"));
    return m ? Number(m[1]) : null;
  } catch {
    return null;
  }
}
