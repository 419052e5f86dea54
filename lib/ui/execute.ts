// Carries out one parsed command against the chat client. Shared by the
// interactive prompt and scripted (stdin) mode; in scripted mode commands
// that need a session wait for it instead of failing at once.
import { ChatError, type ChatClient, type ChatEvent } from "../client/chat-client.ts";
import { HELP, type Command } from "./commands.ts";

export interface ExecuteContext {
  client: ChatClient;
  emit: (e: ChatEvent) => void;
  /** Plain informational output (the help text). */
  print: (line: string) => void;
  scripted: boolean;
  sessionTimeoutMs: number;
  /** Work that finishes later (a file transfer); its outcome counts at end of input. */
  background(outcome: Promise<boolean>): void;
}

/** Returns true on success; failures are emitted as `error` events. */
export async function execute(cmd: Command, ctx: ExecuteContext): Promise<boolean> {
  const { client, emit } = ctx;
  const fail = (code: string, message: string, peer?: string) => {
    emit({ event: "error", code, message, ...(peer ? { peer } : {}) });
    return false;
  };
  // Fails at once (a scripted /msg would otherwise wait --timeout for a session with ourselves).
  if ("peer" in cmd && cmd.peer === client.id) return fail("bad_peer", "that is your own ID");
  try {
    switch (cmd.kind) {
      case "empty":
        return true;
      case "invalid":
        return fail("usage", cmd.message);
      case "help":
        ctx.print(HELP);
        return true;
      case "list":
        emit({ event: "list", peers: client.peers() });
        return true;
      case "connect":
        await client.connect(cmd.peer);
        return true;
      case "msg":
        if (ctx.scripted && !client.hasSession(cmd.peer)) await client.waitSession(cmd.peer, ctx.sessionTimeoutMs);
        client.sendText(cmd.peer, cmd.text);
        return true;
      case "bmsg": {
        const members = client.broadcastText(cmd.text);
        if (!ctx.scripted) ctx.print(`* to ${members.length === 1 ? "1 peer" : `${members.length} peers`}: ${members.join(", ")}`);
        return true;
      }
      case "send":
      case "bsend": {
        if (cmd.kind === "send" && ctx.scripted && !client.hasSession(cmd.peer)) await client.waitSession(cmd.peer, ctx.sessionTimeoutMs);
        const done = cmd.kind === "send" ? client.sendFile(cmd.peer, cmd.path) : client.broadcastFile(cmd.path);
        // The command returns at once (transfers run side by side); failures are reported when they happen.
        ctx.background(
          done.then(
            () => true,
            (err) => (err instanceof ChatError ? fail(err.code, err.message, err.peer) : Promise.reject(err)),
          ),
        );
        return true;
      }
      case "cancel": {
        const n = client.cancel(cmd.id);
        const why = client.awaitingAnswer(cmd.id) > 0 ? " (a file sent in full only waits for the receiver's answer)" : "";
        if (n === 0) return fail("no_transfer", `${cmd.id ? `no transfer ${cmd.id}` : "no transfer"} to cancel${why}`);
        return true;
      }
      case "verify":
        // A script pinning a fingerprint before there is a session (it cannot branch
        // on a failure): checked when the session comes, also after this wait ran out.
        if (ctx.scripted && cmd.fingerprint !== undefined && !client.hasSession(cmd.peer)) {
          client.pin(cmd.peer, cmd.fingerprint);
          await client.waitSession(cmd.peer, ctx.sessionTimeoutMs);
          if (!client.peers().find((p) => p.id === cmd.peer)?.verified) return false; // the mismatch was reported when the session came
        } else client.verify(cmd.peer, cmd.fingerprint);
        emit({ event: "verified", peer: cmd.peer, fingerprint: client.fingerprint(cmd.peer)! });
        return true;
      case "fingerprint": {
        const fp = client.fingerprint(cmd.peer, true);
        if (!fp) return fail("no_session", `no session with ${cmd.peer}`, cmd.peer);
        emit({ event: "fingerprint", peer: cmd.peer, fingerprint: fp });
        return true;
      }
      case "exit":
        return true;
    }
  } catch (err) {
    if (err instanceof ChatError) return fail(err.code, err.message, err.peer);
    throw err;
  }
}
