// Load with real clients (issue 7, item 2, end to end): 1,000 chat clients of
// lib/client (startChat) in 2 processes, paired across the processes into 500
// sessions by real key exchanges; then, for a fixed time, every client sends a
// short text to its partner every 50 ms (20 msgs/s each), sealed, MACed,
// forwarded by one relay process, verified and decrypted. scripts/load.ts
// loads the relay alone with raw frames; this run adds everything a client
// does. Reported: time to establish the sessions, messages delivered vs sent
// (must be equal, each sender's in order), latency from sendText() to the
// partner's `message` event (p50/p99, one clock for all processes on this
// machine), relay and client RSS and CPU.
//   bun scripts/load-e2e.ts [--quick] [--clients N] [--seconds N] [--no-write]
// --quick: 200 clients for 3 s.
import type { Subprocess } from "bun";
import { startChat, type ChatClient } from "../lib/client/chat-client.ts";
import { startDhEngine } from "../lib/crypto/dh.ts";
import { lineReader, machine, percentile, procCpuSeconds, procMemMiB, recordTargets, ROOT, utcMinute, writeSection } from "./bench-util.ts";

const argv = process.argv.slice(2);
const opt = (name: string, dflt: number) => (argv.includes(name) ? Number(argv[argv.indexOf(name) + 1]) : dflt);
const RATE = 20; // msgs/s per client
const TICK_MS = 10;
const now = () => performance.timeOrigin + performance.now(); // shared by the processes
const say = (o: object) => process.stdout.write(`${JSON.stringify(o)}\n`);

if (argv[0] === "--client") await clientMain(Number(argv[1]), Number(argv[2]));
else await parentMain();

// ---- A client process: `count` chat clients, driven by JSON lines on stdin ---------
async function clientMain(port: number, count: number): Promise<void> {
  const dh = startDhEngine();
  const clients: ChatClient[] = [];
  const next = new Map<string, number>(); // sender ID → next expected sequence number
  const latencies: number[] = [];
  let received = 0;
  let outOfOrder = 0;
  const errors: Record<string, number> = {};
  for (let i = 0; i < count; i++) {
    clients.push(
      await startChat({
        host: "127.0.0.1",
        port,
        secret: null,
        dh,
        onEvent(e) {
          if (e.event === "error") errors[e.code] = (errors[e.code] ?? 0) + 1;
          if (e.event !== "message") return;
          const [seq, sentAt] = e.text.split(" ").map(Number);
          if (seq !== (next.get(e.from) ?? 0)) outOfOrder++;
          next.set(e.from, seq! + 1);
          latencies.push(now() - sentAt!);
          received++;
        },
      }),
    );
  }
  say({ ids: clients.map((c) => c.id) });
  /** Runs `job` for every client, at most `width` at a time. */
  const eachClient = async (width: number, job: (c: ChatClient, i: number) => Promise<void>) => {
    let at = 0;
    await Promise.all(Array.from({ length: width }, async () => {
      while (at < clients.length) {
        const i = at++;
        await job(clients[i]!, i);
      }
    }));
  };
  for await (const line of console) {
    const m = JSON.parse(line) as { cmd: string; peers: string[]; durationMs: number };
    if (m.cmd === "connect" || m.cmd === "await") {
      const t0 = performance.now();
      let failed = 0;
      await eachClient(32, (c, i) => (m.cmd === "connect" ? c.connect(m.peers[i]!) : c.waitSession(m.peers[i]!, 120_000)).catch(() => void failed++));
      say({ ms: performance.now() - t0, failed });
    } else if (m.cmd === "run") {
      // Each client sends every 1000/RATE ms, the clients spread evenly over that period.
      const period = 1000 / RATE;
      const due = clients.map((_, i) => performance.now() + (i * period) / clients.length);
      const seq = clients.map(() => 0);
      const end = performance.now() + m.durationMs;
      await new Promise<void>((resolve) => {
        const timer = setInterval(() => {
          const t = performance.now();
          for (let i = 0; i < clients.length; i++) {
            while (due[i]! <= t && due[i]! < end) {
              clients[i]!.sendText(m.peers[i]!, `${seq[i]!++} ${now()}`);
              due[i]! += period;
            }
          }
          if (t >= end) clearInterval(timer), resolve();
        }, TICK_MS);
      });
      await Promise.all(clients.map((c) => c.flush()));
      say({ sent: seq.reduce((a, b) => a + b, 0) });
    } else if (m.cmd === "status") say({ received, outOfOrder, errors });
    else if (m.cmd === "latencies") say({ latencies });
  }
}

// ---- The parent: relay, two client processes, the report --------------------------
async function parentMain(): Promise<void> {
  const QUICK = argv.includes("--quick");
  const CLIENTS = opt("--clients", QUICK ? 200 : 1000);
  const DURATION_MS = opt("--seconds", QUICK ? 3 : 10) * 1000;
  if (!(CLIENTS >= 2 && CLIENTS % 2 === 0) || !(DURATION_MS > 0)) {
    console.error("usage: bun scripts/load-e2e.ts [--quick] [--clients EVEN] [--seconds N] [--no-write]");
    process.exit(2);
  }
  const procs: Subprocess[] = [];
  const killAll = () => procs.forEach((p) => p.exitCode === null && p.kill("SIGKILL"));
  process.on("exit", killAll);
  // One descriptor per client in the relay: raise the soft limit for every process.
  const withFds = (cmd: string[]) => ["sh", "-c", `ulimit -n 8192 2>/dev/null || ulimit -n $(ulimit -Hn); exec ${cmd.map((a) => `'${a}'`).join(" ")}`];
  const status = (pid: number) => procMemMiB(pid).rss;
  const mib = (x: number) => `${x.toFixed(1)} MiB`;

  try {
    const relay = Bun.spawn(withFds([process.execPath, `${ROOT}cmd/smts.ts`, "relay", "--open", "--max-clients-per-source", "20000", "--join-rate", "100000", "--list-rate", "1GiB", "--host", "127.0.0.1", "--port", "0"]), { stdout: "ignore", stderr: "pipe" });
    procs.push(relay);
    const relayLog = lineReader(relay.stderr);
    let port = 0;
    while (!port) port = Number(/listening on [^\s]+:(\d+)/.exec(await relayLog.next(15_000))?.[1] ?? 0);
    const relayPid = relay.pid; // `exec` in withFds: the shell became the relay

    console.log(`load-e2e: ${CLIENTS} clients in 2 processes, ${CLIENTS / 2} sessions, ${RATE} msgs/s each for ${DURATION_MS / 1000} s`);
    const kids = [0, 1].map(() => {
      const proc = Bun.spawn(withFds([process.execPath, import.meta.path, "--client", String(port), String(CLIENTS / 2)]), { stdin: "pipe", stdout: "pipe", stderr: "inherit" });
      procs.push(proc);
      const lines = lineReader(proc.stdout);
      return {
        proc,
        send: (o: object) => (proc.stdin.write(`${JSON.stringify(o)}\n`), proc.stdin.flush()),
        next: async (timeoutMs = 120_000) => JSON.parse(await lines.next(timeoutMs)),
      };
    });
    const [a, b] = kids as [(typeof kids)[0], (typeof kids)[0]];
    const t0 = performance.now();
    const idsA = (await a.next()).ids as string[];
    const idsB = (await b.next()).ids as string[];
    const joinMs = performance.now() - t0;

    // A's client i opens the session with B's client i; B's side waits for it.
    const cpu0 = procCpuSeconds(relayPid);
    a.send({ cmd: "connect", peers: idsB });
    b.send({ cmd: "await", peers: idsA });
    const [conA, conB] = await Promise.all([a.next(300_000), b.next(300_000)]);
    if (conA.failed || conB.failed) throw new Error(`sessions failed: ${conA.failed} + ${conB.failed}`);
    console.log(`load-e2e: ${CLIENTS / 2} sessions in ${(conA.ms / 1000).toFixed(2)} s`);

    let peak = 0;
    const perSecond: number[] = [];
    let samples = 0;
    const sampler = setInterval(() => {
      const rss = status(relayPid);
      peak = Math.max(peak, rss);
      if (samples++ % 10 === 0) perSecond.push(rss);
    }, 100);
    const cpuRun0 = procCpuSeconds(relayPid);
    const kidCpu0 = kids.map((k) => procCpuSeconds(k.proc.pid));
    a.send({ cmd: "run", peers: idsB, durationMs: DURATION_MS });
    b.send({ cmd: "run", peers: idsA, durationMs: DURATION_MS });
    const sent = (await Promise.all(kids.map((k) => k.next(DURATION_MS + 60_000)))).reduce((s, r) => s + (r.sent as number), 0);
    const cpuRun = procCpuSeconds(relayPid) - cpuRun0;
    const kidCpu = kids.map((k, i) => procCpuSeconds(k.proc.pid) - kidCpu0[i]!);
    // Drain: until everything sent has arrived, or 15 s.
    let st: { received: number; outOfOrder: number; errors: Record<string, number> }[] = [];
    for (const deadline = performance.now() + 15_000; ; await Bun.sleep(200)) {
      kids.forEach((k) => k.send({ cmd: "status" }));
      st = await Promise.all(kids.map((k) => k.next()));
      if (st.reduce((s, x) => s + x.received, 0) >= sent || performance.now() > deadline) break;
    }
    clearInterval(sampler);
    const delivered = st.reduce((s, x) => s + x.received, 0);
    const outOfOrder = st.reduce((s, x) => s + x.outOfOrder, 0);
    const errors = st.map((x) => x.errors).filter((e) => Object.keys(e).length);
    kids.forEach((k) => k.send({ cmd: "latencies" }));
    const lat = (await Promise.all(kids.map((k) => k.next()))).flatMap((x) => x.latencies as number[]).sort((x, y) => x - y);
    const kidRss = kids.map((k) => status(k.proc.pid));
    const [p50, p99, max] = [percentile(lat, 50), percentile(lat, 99), lat.at(-1) ?? NaN];
    console.log(`load-e2e: sent ${sent}, delivered ${delivered}, out of order ${outOfOrder}, p50 ${p50.toFixed(2)} ms, p99 ${p99.toFixed(2)} ms`);

    const ok = delivered === sent && outOfOrder === 0 && errors.length === 0;
    const body = `
Measured ${utcMinute()} by \`bun scripts/load-e2e.ts${QUICK ? " --quick" : ""}\` on ${machine()}.

| what | measured |
|---|---|
| clients, sessions | ${CLIENTS} chat clients (lib/client \`startChat\`) in 2 processes, joined in ${(joinMs / 1000).toFixed(2)} s; ${CLIENTS / 2} sessions across the processes, established in ${(conA.ms / 1000).toFixed(2)} s (32 exchanges in flight per process, one DH worker each; relay CPU ${(cpuRun0 - cpu0).toFixed(2)} s) |
| traffic | every client sends its partner ${RATE} msgs/s for ${DURATION_MS / 1000} s (${((CLIENTS * RATE) / 1000).toFixed(0)}k E2E msgs/s offered), each in its own record |
| messages delivered vs sent | **${delivered.toLocaleString("en")} / ${sent.toLocaleString("en")}**, ${outOfOrder} out of order${errors.length ? `; client errors ${JSON.stringify(errors)}` : ", no client errors"} |
| latency sendText() → partner's \`message\` event, p50 / p99 / max | ${p50.toFixed(2)} / ${p99.toFixed(2)} / ${max.toFixed(1)} ms |
| relay CPU / RSS during the run | ${((100 * cpuRun) / (DURATION_MS / 1000)).toFixed(0)} % of one core; RSS peak ${mib(peak)}, each second ${perSecond.map((x) => x.toFixed(0)).join(", ")} MiB |
| client processes: CPU during the run / RSS at the end | ${kidCpu.map((c) => `${((100 * c) / (DURATION_MS / 1000)).toFixed(0)} %`).join(", ")} of one core; ${kidRss.map(mib).join(", ")} |

All processes share the machine's cores, so latency includes the client processes' own scheduling; the relay sees only ciphertext (each text is one \`rec\` of about 150 bytes).
`;
    console.log(body);
    if (!argv.includes("--no-write")) {
      writeSection("Load, end to end (issue 7)", body);
      recordTargets("load-e2e", `bun scripts/load-e2e.ts${QUICK ? " --quick" : ""}`, [
        {
          id: "load-e2e",
          what: `${CLIENTS} real chat clients in ${CLIENTS / 2} E2E sessions × ${RATE} msgs/s × ${DURATION_MS / 1000} s through one relay`,
          measured: `${delivered.toLocaleString("en")} delivered of ${sent.toLocaleString("en")} sent, ${outOfOrder} out of order; p50 / p99 ${p50.toFixed(2)} / ${p99.toFixed(2)} ms`,
          reference: "–",
          ratio: "–",
          target: "delivered = sent (issue 7)",
          met: ok,
        },
      ]);
    }
    process.exit(ok ? 0 : 1);
  } finally {
    killAll();
  }
}
