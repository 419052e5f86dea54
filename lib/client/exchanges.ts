// Key exchanges in progress, at most one per peer (docs/PROTOCOL.md §16–§18):
// which step each one is at, its timeout, and the key material it holds until
// it ends. The chat client (chat-client.ts) owns the sessions they produce.
//
// A peer can send hellos as fast as it likes, so at most one key pair per
// peer is ever being made: hellos that arrive meanwhile are not queued, the
// newest one is answered; and none is answered while our queue to the relay
// is congested. A relay can also send hellos under as many made-up IDs as it
// likes: at most MAX_ANSWERING exchanges that peers started run at once, and
// those of peers we hold no session with start at ANSWERS_PER_SECOND at most
// (after a burst of MAX_ANSWERING); up to MAX_WAITING hellos wait their turn,
// oldest first, the rest are not answered (found in audit: 40,000 hellos held
// 40,000 exchanges and kept the DH worker busy for minutes). A peer we hold a
// session with re-keys without waiting for the rate: one exchange at a time
// is all it can have anyway.
//
// Promises: each exchange has a `token`; after every await of the DH worker
// the code checks that its token is still the current one and otherwise
// erases what it computed, so a newer exchange (or a failure) is never
// overwritten by an older one. An exchange ends exactly once: `established`
// (its keys handed over), `failed` (reported), or `end` (dropped silently);
// in the last two its private exponent or pending keys are erased.
import type { DhEngine } from "../crypto/dh.ts";
import { wipe } from "../crypto/primitives.ts";
import {
  HandshakeError,
  initiatorConfirm,
  initiatorFinish,
  parseHello,
  replyTo,
  responderFinish,
  startInitiator,
  type Hello,
  type InitiatorState,
  type PendingConfirm,
  type ResponderState,
  type SessionKeys,
} from "../session/handshake.ts";
import type { Frame } from "../wire/frame.ts";
import { ChatError } from "./chat-error.ts";

export const HANDSHAKE_TIMEOUT_MS = 15_000;
/** Exchanges started by peers that may run at once; also the burst of new ones allowed. */
export const MAX_ANSWERING = 64;
/** New exchanges started by peers allowed per second, on average (each costs the DH worker a key pair and a secret, ~2 ms). */
export const ANSWERS_PER_SECOND = 50;
/** Hellos that wait for a slot or for their turn; more are not answered (their exchanges time out). */
const MAX_WAITING = 1024;

type Step =
  | { role: "initiator"; step: "starting" } // waiting for our key pair
  | { role: "initiator"; step: "hello"; state: InitiatorState }
  | { role: "initiator"; step: "finishing" } // computing keys from the reply
  | { role: "initiator"; step: "confirm"; pending: PendingConfirm }
  | { role: "responder"; step: "starting"; hello: Hello } // waiting for our key pair; answers the newest hello
  | { role: "responder"; step: "reveal"; state: ResponderState }
  | { role: "responder"; step: "finishing" };
type Exchange = Step & { token: object; timer: Timer };

export interface ExchangeDeps {
  dh: DhEngine;
  myId(): string;
  sendE2E(peer: string, frame: Frame): void;
  /** The exchange with `peer` completed; the session now owns `keys`. */
  /** `byUs`: we started this exchange (/connect), or the peer did. */
  established(peer: string, keys: SessionKeys, byUs: boolean): void;
  /** The current exchange with `peer` failed (never called for one a newer exchange replaced). */
  failed(peer: string, err: ChatError): void;
  /** A handshake message that belongs to no exchange of ours was rejected. */
  stray(peer: string, err: ChatError): void;
  /** True while the relay is not taking our data, or `peer` is not reading it: its hello is then not answered (its exchange times out). */
  congested(peer: string): boolean;
  /** Whether we hold a session with `peer` (its re-keys are not rate-limited). */
  known(peer: string): boolean;
  /** How long each step waits for the peer (default HANDSHAKE_TIMEOUT_MS; shorter in tests). */
  stepTimeoutMs?: number;
}

export type Exchanges = ReturnType<typeof createExchanges>;

export function createExchanges(deps: ExchangeDeps) {
  const { dh } = deps;
  const running = new Map<string, Exchange>();
  let tokens = MAX_ANSWERING; // new ones we may still start now (refilled at ANSWERS_PER_SECOND)
  let refilled = performance.now();
  const waiting = new Map<string, Hello>(); // the newest hello of each peer waiting its turn, oldest peer first
  let waitTimer: Timer | null = null;

  /** Whether a hello from `peer`, which has no exchange of its own, may start one now (taking a token if it is a new peer). */
  function mayAnswer(peer: string): boolean {
    if (answering() >= MAX_ANSWERING) return false;
    if (deps.known(peer)) return true;
    const now = performance.now();
    tokens = Math.min(MAX_ANSWERING, tokens + ((now - refilled) / 1000) * ANSWERS_PER_SECOND);
    refilled = now;
    if (tokens < 1) return false;
    tokens--;
    return true;
  }

  /** Exchanges under way that a peer started. */
  function answering(): number {
    let n = 0;
    for (const h of running.values()) if (h.role === "responder") n++;
    return n;
  }

  function remove(peer: string, h: Exchange): void {
    clearTimeout(h.timer);
    running.delete(peer);
  }

  /** Keeps `hello` until a slot and a token are free (answerWaiting). */
  function wait(peer: string, hello: Hello): void {
    if (waiting.has(peer) || waiting.size < MAX_WAITING) waiting.set(peer, hello);
    waitLater();
  }

  function waitLater(): void {
    if (waitTimer || !waiting.size) return;
    waitTimer = setTimeout(answerWaiting, 1000 / ANSWERS_PER_SECOND);
    waitTimer.unref();
  }

  function answerWaiting(): void {
    waitTimer = null;
    for (const [peer, hello] of waiting) {
      if (!mayAnswer(peer)) break;
      waiting.delete(peer);
      // An exchange of ours still running is one the hello was to replace (our
      // /connect crossed it, and the peer's ID is the smaller): as when not delayed.
      if (running.get(peer)?.role !== "responder" && !deps.congested(peer)) void respond(peer, hello);
    }
    waitLater();
  }

  /** Answers `hello` as the responder: a new exchange (replacing any other with `peer`). */
  async function respond(peer: string, hello: Hello): Promise<void> {
    const mine = begin(peer, { role: "responder", step: "starting", hello });
    try {
      const kp = await dh.keypair();
      const now = running.get(peer);
      if (now?.token !== mine || now.role !== "responder" || now.step !== "starting") return dh.forget(kp.handle);
      const { state, reply } = replyTo(kp, deps.myId(), peer, now.hello);
      advance(peer, mine, { role: "responder", step: "reveal", state });
      deps.sendE2E(peer, reply);
    } catch (err) {
      fail(peer, mine, new ChatError("internal", `key exchange with ${peer} failed: ${(err as Error).message}`, peer));
    }
  }

  /** Forgets the exchange with `peer`, erasing any key material it holds. */
  function end(peer: string): void {
    waiting.delete(peer);
    const h = running.get(peer);
    if (!h) return;
    remove(peer, h);
    if (h.step === "hello" || h.step === "reveal") dh.forget(h.state.kp.handle);
    if (h.step === "confirm") wipe(h.pending.keys.sendChain, h.pending.keys.receiveChain);
  }

  /** Each step has its own timeout, counted from our last message (PROTOCOL.md §17.4). */
  function stepTimer(peer: string, token: object): Timer {
    const timer = setTimeout(() => fail(peer, token, new ChatError("timeout", `key exchange with ${peer} timed out`, peer)), deps.stepTimeoutMs ?? HANDSHAKE_TIMEOUT_MS);
    timer.unref();
    return timer;
  }

  /** Starts a new exchange with `peer` (replacing any other) and returns its token. */
  function begin(peer: string, first: Step): object {
    end(peer);
    const token = {};
    running.set(peer, { ...first, token, timer: stepTimer(peer, token) });
    return token;
  }

  const isCurrent = (peer: string, token: object) => running.get(peer)?.token === token;

  /** Moves the exchange `token` to its next step, with a new timeout; false if it is no longer current. */
  function advance(peer: string, token: object, next: Step): boolean {
    const h = running.get(peer);
    if (h?.token !== token) return false;
    clearTimeout(h.timer);
    running.set(peer, { ...next, token, timer: stepTimer(peer, token) });
    return true;
  }

  function fail(peer: string, token: object, err: ChatError): void {
    if (!isCurrent(peer, token)) return; // a newer exchange replaced it
    end(peer);
    deps.failed(peer, err);
  }

  function finish(peer: string, keys: SessionKeys): void {
    const h = running.get(peer);
    if (h) remove(peer, h); // its keys are the session's now: not erased
    deps.established(peer, keys, h?.role === "initiator");
  }

  return {
    has: (peer: string) => running.has(peer),
    peers: () => [...running.keys()],
    end,

    /**
     * True while our pairwise content for `peer` must wait: after our reveal in
     * a re-key the peer already uses the new keys, so content is held until the
     * exchange completes (or fails) instead of being sealed with the old ones.
     */
    holdsContent(peer: string): boolean {
      const h = running.get(peer);
      return h?.role === "initiator" && h.step === "confirm";
    },

    /** Fails the exchange with `peer`, if one is running. */
    fail(peer: string, err: ChatError): void {
      const h = running.get(peer);
      if (h) fail(peer, h.token, err);
    },

    /** Starts an exchange as the initiator (replacing any other with `peer`). */
    async start(peer: string): Promise<void> {
      const token = begin(peer, { role: "initiator", step: "starting" });
      try {
        const { state, hello } = await startInitiator(dh, deps.myId(), peer);
        if (!advance(peer, token, { role: "initiator", step: "hello", state })) return dh.forget(state.kp.handle);
        deps.sendE2E(peer, hello);
      } catch (err) {
        fail(peer, token, new ChatError("internal", `key exchange with ${peer} failed: ${(err as Error).message}`, peer));
      }
    },

    /** Handles one handshake message; failures end this exchange only if it is still current. */
    async onFrame(peer: string, m: Frame): Promise<void> {
      const h = running.get(peer);
      const token = h?.token ?? null; // the exchange this message belongs to
      try {
        switch (m.t) {
          case "hello": {
            const hello = parseHello(m);
            // Both sides ran /connect at once: the smaller ID stays initiator.
            if (h?.role === "initiator" && (h.step === "starting" || h.step === "hello") && deps.myId() < peer) return;
            // One key pair per peer at a time, however fast hellos come: while ours is
            // being made, a newer hello only replaces the one it will answer.
            if (h?.role === "responder" && h.step === "starting") return void (h.hello = hello);
            if (deps.congested(peer)) return; // a peer must not grow our queue with replies nobody reads
            // A new exchange a peer starts: within the caps, or it waits its turn.
            if (h?.role !== "responder" && ((waiting.size && !deps.known(peer)) || !mayAnswer(peer))) return wait(peer, hello);
            return await respond(peer, hello);
          }
          case "reply": {
            if (h?.role !== "initiator" || h.step !== "hello") throw new HandshakeError("bad_message", "unexpected reply");
            advance(peer, h.token, { role: "initiator", step: "finishing" }); // the key pair is consumed below
            const { reveal, pending } = await initiatorFinish(dh, h.state, m);
            if (!advance(peer, h.token, { role: "initiator", step: "confirm", pending })) return wipe(pending.keys.sendChain, pending.keys.receiveChain);
            deps.sendE2E(peer, reveal);
            return;
          }
          case "reveal": {
            if (h?.role !== "responder" || h.step !== "reveal") throw new HandshakeError("bad_message", "unexpected reveal");
            advance(peer, h.token, { role: "responder", step: "finishing" });
            const { keys, confirm } = await responderFinish(dh, h.state, m);
            if (!isCurrent(peer, h.token)) return wipe(keys.sendChain, keys.receiveChain);
            deps.sendE2E(peer, confirm);
            finish(peer, keys);
            return;
          }
          case "confirm": {
            if (h?.role !== "initiator" || h.step !== "confirm") throw new HandshakeError("bad_message", "unexpected confirm");
            finish(peer, initiatorConfirm(h.pending, m));
            return;
          }
        }
      } catch (err) {
        const code = err instanceof HandshakeError ? err.code : "internal";
        const failure = new ChatError(code, `key exchange with ${peer} failed: ${(err as Error).message}`, peer);
        if (token && isCurrent(peer, token)) fail(peer, token, failure);
        else deps.stray(peer, failure); // no exchange of ours to end
      }
    },
  };
}
