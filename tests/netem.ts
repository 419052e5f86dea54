// An impaired network for the fault tests (tests/faults.test.ts): two network
// namespaces, one for the relay and one for the clients, joined by a veth
// pair, with latency and packet loss on the link in both directions.
//
//   relay ns  [<pfx>a 10.203.0.1] ==== veth ==== [<pfx>b 10.203.0.2]  clients ns
//
// Mechanisms, best first:
//   1. netem: `tc qdisc ... netem delay D loss L` on both ends of the veth.
//   2. Kernels without sch_netem: iptables in each namespace, on packets
//      arriving from the link (INPUT -i veth): `-m statistic --mode random
//      --probability L -j DROP` for loss, then `-j NFQUEUE` to
//      tests/nfqueue-delay.py, which holds each packet D ms before accepting
//      it. The delay sits on the receiving side on purpose: packets queued on
//      the sending side still count against the sending socket (TCP small
//      queues), which then stalls at a few packets per delay; received packets
//      were already orphaned by ip_rcv, so they hold nothing back.
//   3. The delayer cannot run (no python3): loss only, and said so.
// Needs root (namespaces, veth, qdiscs, iptables). When something is not
// permitted or missing, impairedNetwork() returns the reason and the caller
// skips; everything created so far is removed. Names carry the pid, so
// parallel runs do not collide.
import type { Subprocess } from "bun";
import { ROOT, waitFor } from "./helpers.ts";

export interface NetworkOptions {
  /** Added to each direction, so the round trip gains twice this. */
  delayMs: number;
  /** Probability of dropping each packet, per direction (0.01 = 1 %). */
  loss: number;
}

export interface Counters {
  /** Packets dropped by the loss emulation (both directions). */
  dropped: number;
  /** Packets that went through the delay (both directions; 0 without delay). */
  delayed: number;
  /** TCP segments retransmitted by either namespace's stack. */
  retransmitted: number;
}

export interface ImpairedNetwork {
  /** What emulates what, for the test's report line. */
  mechanism: string;
  /** True when latency is emulated (netem, or the NFQUEUE delayer runs). */
  delayed: boolean;
  relayHost: string;
  clientHost: string;
  /** argv prefixed to run in the relay's / the clients' namespace. */
  inRelay(argv: string[]): string[];
  inClients(argv: string[]): string[];
  counters(): Counters;
  /** Median of 5 TCP connects from the clients' namespace to relayHost:port (1 RTT each), in ms. */
  connectRtt(port: number): Promise<number>;
  /** Removes everything; safe to call twice. */
  close(): void;
}

const PREFIX = "smf"; // namespaces smf<pid>r / smf<pid>c, veths smf<pid>a / smf<pid>b
const QUEUE = 7;

function run(argv: string[]): { ok: boolean; out: string; err: string } {
  try {
    const r = Bun.spawnSync(argv, { stdin: "ignore", env: { ...process.env, DEBIAN_FRONTEND: "noninteractive" } });
    return { ok: r.exitCode === 0, out: r.stdout.toString(), err: r.stderr.toString().trim() || `exit code ${r.exitCode}` };
  } catch (err) {
    return { ok: false, out: "", err: (err as Error).message };
  }
}

class NotPermitted extends Error {}
function must(argv: string[]): string {
  const r = run(argv);
  if (!r.ok) throw new NotPermitted(`\`${argv.join(" ")}\` failed: ${r.err}`);
  return r.out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch {
    return false;
  }
}

/** Namespaces left by an earlier run that was killed before its cleanup (its pid is gone). */
function removeStale(): void {
  for (const line of run(["ip", "netns", "list"]).out.split("\n")) {
    const m = new RegExp(`^(${PREFIX}(\\d+)[rc])\\b`).exec(line);
    if (m && !alive(Number(m[2]))) run(["ip", "netns", "del", m[1]!]);
  }
}

/** iptables, installed quietly from the distribution when missing (the brief allows apt-get here). */
function ensureIptables(): void {
  if (Bun.which("iptables")) return;
  if (!Bun.which("apt-get")) throw new NotPermitted("iptables is not installed and there is no apt-get to install it");
  console.log("netem: installing iptables with apt-get (only this once)");
  if (!run(["apt-get", "install", "-y", "-qq", "iptables"]).ok) {
    run(["apt-get", "update", "-qq"]);
    const r = run(["apt-get", "install", "-y", "-qq", "iptables"]);
    if (!r.ok) throw new NotPermitted(`iptables is missing and apt-get could not install it: ${r.err.split("\n").at(-1)}`);
  }
  if (!Bun.which("iptables")) throw new NotPermitted("iptables is still missing after apt-get install");
}

/** Starts the NFQUEUE delayer in one namespace; resolves once it bound the queue, or null if it could not. */
async function startDelayer(ns: string, delayMs: number): Promise<Subprocess<"pipe", "pipe", "pipe"> | null> {
  const python = Bun.which("python3");
  if (!python) return null;
  const proc = Bun.spawn(["ip", "netns", "exec", ns, python, `${ROOT}tests/nfqueue-delay.py`, String(QUEUE), String(delayMs)], { stdin: "pipe", stdout: "pipe", stderr: "pipe" });
  let out = "";
  (async () => {
    for await (const chunk of proc.stdout) out += new TextDecoder().decode(chunk);
  })();
  const ok = await waitFor(() => out.includes("ready") || proc.exitCode !== null, "the NFQUEUE delayer", 10_000).catch(() => false);
  if (ok && out.includes("ready")) {
    // Without its delayer an NFQUEUE rule drops every packet: say so, or a test would only time out.
    proc.exited.then(async (code) => {
      if (proc.signalCode === null) console.error(`netem: the NFQUEUE delayer in ${ns} exited (code ${code}): ${await new Response(proc.stderr).text()}; the link now drops everything`);
    });
    return proc;
  }
  proc.kill();
  console.warn(`netem: the NFQUEUE delayer did not start in ${ns}: ${await new Response(proc.stderr).text()}`);
  return null;
}

export async function impairedNetwork(opts: NetworkOptions): Promise<ImpairedNetwork | { notPermitted: string }> {
  const id = `${PREFIX}${process.pid}`;
  const nsR = `${id}r`;
  const nsC = `${id}c`;
  const devR = `${id}a`;
  const devC = `${id}b`;
  const relayHost = "10.203.0.1";
  const clientHost = "10.203.0.2";
  const delayers: Subprocess[] = [];
  let closed = false;
  const close = () => {
    if (closed) return;
    closed = true;
    for (const d of delayers) d.kill();
    // Deleting a namespace removes its end of the veth (and so the pair) and its iptables rules.
    run(["ip", "netns", "del", nsR]);
    run(["ip", "netns", "del", nsC]);
    run(["ip", "link", "del", devR]); // only if setup stopped before moving it
    process.off("exit", close);
  };
  process.on("exit", close); // the test process may exit without running afterAll

  try {
    if (process.getuid?.() !== 0) throw new NotPermitted("not running as root (network namespaces need CAP_SYS_ADMIN and CAP_NET_ADMIN)");
    if (!Bun.which("ip")) throw new NotPermitted("the `ip` command (iproute2) is not installed");
    removeStale();
    must(["ip", "netns", "add", nsR]);
    must(["ip", "netns", "add", nsC]);
    must(["ip", "link", "add", devR, "type", "veth", "peer", "name", devC]);
    must(["ip", "link", "set", devR, "netns", nsR]);
    must(["ip", "link", "set", devC, "netns", nsC]);
    for (const [ns, dev, addr] of [
      [nsR, devR, relayHost],
      [nsC, devC, clientHost],
    ] as const) {
      must(["ip", "-n", ns, "addr", "add", `${addr}/30`, "dev", dev]);
      must(["ip", "-n", ns, "link", "set", "lo", "up"]);
      must(["ip", "-n", ns, "link", "set", dev, "up"]);
      // No segmentation offload: loss then hits single MTU-sized packets, as on a
      // real link, instead of 64 KiB super-packets. Older iproute2 lacks the option.
      run(["ip", "-n", ns, "link", "set", dev, "gso_max_segs", "1"]);
    }

    const inNs = (ns: string) => (argv: string[]) => ["ip", "netns", "exec", ns, ...argv];
    const ends = [
      [nsR, devR],
      [nsC, devC],
    ] as const;
    const percent = `${+(opts.loss * 100).toFixed(3)}%`;
    let mechanism: string;
    let delayed = true;
    let counters: () => Omit<Counters, "retransmitted">;

    const netem = ends.map(([ns, dev]) => run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "netem", "delay", `${opts.delayMs}ms`, "loss", percent, "limit", "100000"]));
    if (netem.every((r) => r.ok)) {
      mechanism = `netem (delay ${opts.delayMs} ms + loss ${percent} on each veth end)`;
      counters = () => {
        let dropped = 0;
        let sent = 0;
        for (const [ns, dev] of ends) {
          const s = run(["ip", "netns", "exec", ns, "tc", "-s", "qdisc", "show", "dev", dev]).out;
          dropped += Number(/dropped (\d+)/.exec(s)?.[1] ?? 0);
          sent += Number(/Sent \d+ bytes (\d+) pkt/.exec(s)?.[1] ?? 0);
        }
        return { dropped, delayed: sent };
      };
    } else {
      const why = netem.find((r) => !r.ok)!.err;
      for (const [ns, dev] of ends) run(["ip", "netns", "exec", ns, "tc", "qdisc", "del", "dev", dev, "root"]);
      try {
        ensureIptables();
        for (const [ns, dev] of ends) {
          must(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", dev, "-m", "statistic", "--mode", "random", "--probability", String(opts.loss), "-j", "DROP"]);
          must(["ip", "netns", "exec", ns, "iptables", "-A", "INPUT", "-i", dev, "-j", "NFQUEUE", "--queue-num", String(QUEUE)]);
        }
      } catch (err) {
        if (!(err instanceof NotPermitted)) throw err;
        throw new NotPermitted(`no netem qdisc (${why}), and ${err.message}`);
      }
      for (const [ns] of ends) {
        const d = await startDelayer(ns, opts.delayMs);
        if (d) delayers.push(d);
        else delayed = false;
      }
      if (delayed) {
        mechanism = `iptables statistic DROP ${percent} + NFQUEUE delayer ${opts.delayMs} ms, on the receiving side of each direction (no netem here: ${why})`;
      } else {
        // Without a delayer an NFQUEUE rule drops everything: remove it.
        for (const d of delayers.splice(0)) d.kill();
        for (const [ns, dev] of ends) must(["ip", "netns", "exec", ns, "iptables", "-D", "INPUT", "-i", dev, "-j", "NFQUEUE", "--queue-num", String(QUEUE)]);
        mechanism = `iptables statistic DROP ${percent} only: NO LATENCY emulated (no netem here: ${why}; the NFQUEUE delayer could not run)`;
      }
      counters = () => {
        let dropped = 0;
        let queued = 0;
        for (const [ns] of ends) {
          for (const line of run(["ip", "netns", "exec", ns, "iptables", "-L", "INPUT", "-v", "-n", "-x"]).out.split("\n")) {
            const pkts = Number(line.trim().split(/\s+/)[0]);
            if (/\bDROP\b/.test(line)) dropped += pkts;
            if (/\bNFQUEUE\b/.test(line)) queued += pkts;
          }
        }
        return { dropped, delayed: queued };
      };
    }

    const retransmitted = () => {
      let n = 0;
      for (const [ns] of ends) {
        const tcp = run(["ip", "netns", "exec", ns, "cat", "/proc/net/snmp"]).out.split("\n").filter((l) => l.startsWith("Tcp:"));
        const names = tcp[0]?.split(/\s+/) ?? [];
        n += Number(tcp[1]?.split(/\s+/)[names.indexOf("RetransSegs")] ?? 0);
      }
      return n;
    };

    return {
      mechanism,
      delayed,
      relayHost,
      clientHost,
      inRelay: inNs(nsR),
      inClients: inNs(nsC),
      counters: () => ({ ...counters(), retransmitted: retransmitted() }),
      async connectRtt(port) {
        // Bun.connect resolves when the handshake completed: SYN out, SYN-ACK back.
        const script = `const t=[];for(let i=0;i<5;i++){const s=performance.now();const c=await Bun.connect({hostname:${JSON.stringify(relayHost)},port:${port},socket:{data(){}}});t.push(performance.now()-s);c.terminate();}t.sort((a,b)=>a-b);console.log(t[2].toFixed(1));`;
        const proc = Bun.spawn(inNs(nsC)([process.execPath, "-e", script]), { stdin: "ignore", stdout: "pipe", stderr: "pipe" });
        const [out, err, code] = await Promise.all([new Response(proc.stdout).text(), new Response(proc.stderr).text(), proc.exited]);
        if (code !== 0) throw new Error(`RTT probe failed: ${err}`);
        return Number(out.trim());
      },
      close,
    };
  } catch (err) {
    close();
    if (err instanceof NotPermitted) return { notPermitted: err.message };
    throw err;
  }
}
