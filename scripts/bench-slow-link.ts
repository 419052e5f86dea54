// How long a message waits behind a file on a slow link. One client sits in
// a network namespace whose only link to the relay is rate-limited (a veth
// pair with a `tbf` queue of 100 ms); the other and the relay are local. A
// file goes one way, and every second the sender also sends a short message:
// the time each takes to arrive is printed, with the file's time.
//
//   --direction up    the sender is behind the slow link (its uplink)
//   --direction down  the receiver is (its downlink: messages then wait at the relay)
//   --lowat BYTES     net.ipv4.tcp_notsent_lowat (Linux's cap on unsent bytes in a
//                     socket; the default is no cap) where the data enters the slow
//                     link: inside the namespace (up), or for the relay (down: the
//                     machine's own setting, put back afterwards)
//
// Needs root, `ip` and `tc` (Linux). Only prints; docs/BENCHMARKS.md is not touched.
// Usage: sudo bun scripts/bench-slow-link.ts [--rate 20mbit] [--mib 40] [--direction up|down] [--lowat BYTES]
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { lineReader, machine, median, ROOT, spawnBenchRelay, writeRandomFile } from "./bench-util.ts";

const { values } = parseArgs({
  options: { rate: { type: "string", default: "20mbit" }, mib: { type: "string", default: "40" }, direction: { type: "string", default: "up" }, lowat: { type: "string" } },
});
const mib = Number(values.mib);
const up = values.direction === "up";
if (!(mib > 0) || !["up", "down"].includes(values.direction!) || !/^\d+[kmg]?bit$/.test(values.rate!) || (values.lowat !== undefined && !/^\d+$/.test(values.lowat))) {
  console.error("usage: sudo bun scripts/bench-slow-link.ts [--rate 20mbit] [--mib 40] [--direction up|down] [--lowat BYTES]");
  process.exit(2);
}

const NS = "smts-slow";
const [RELAY_IP, NS_IP] = ["10.201.0.1", "10.201.0.2"];
const sh = (...argv: string[]) => {
  const r = Bun.spawnSync(argv, { stderr: "pipe" });
  if (r.exitCode !== 0) throw new Error(`${argv.join(" ")}: ${r.stderr.toString().trim()}`);
};
const inNs = (...argv: string[]) => ["ip", "netns", "exec", NS, ...argv];

function setUp(): void {
  sh("ip", "netns", "add", NS);
  sh("ip", "link", "add", "smts-r", "type", "veth", "peer", "name", "smts-s");
  sh("ip", "link", "set", "smts-s", "netns", NS);
  sh("ip", "addr", "add", `${RELAY_IP}/24`, "dev", "smts-r");
  sh("ip", "link", "set", "smts-r", "up");
  sh(...inNs("ip", "addr", "add", `${NS_IP}/24`, "dev", "smts-s"));
  sh(...inNs("ip", "link", "set", "smts-s", "up"));
  // The queue of a slow link's modem: packets over 100 ms of it are dropped.
  const shaped = up ? inNs("tc", "qdisc", "add", "dev", "smts-s") : ["tc", "qdisc", "add", "dev", "smts-r"];
  sh(...shaped, "root", "tbf", "rate", values.rate!, "burst", "32kbit", "latency", "100ms");
  if (values.lowat !== undefined) sh(...(up ? inNs() : []), "sysctl", "-qw", `net.ipv4.tcp_notsent_lowat=${values.lowat}`);
}

const machineLowat = Bun.spawnSync(["sysctl", "-n", "net.ipv4.tcp_notsent_lowat"]).stdout.toString().trim();

function tearDown(): void {
  if (!up && /^\d+$/.test(machineLowat)) Bun.spawnSync(["sysctl", "-qw", `net.ipv4.tcp_notsent_lowat=${machineLowat}`], { stderr: "ignore" });
  Bun.spawnSync(["ip", "link", "del", "smts-r"], { stderr: "ignore" });
  Bun.spawnSync(["ip", "netns", "del", NS], { stderr: "ignore" });
}

type Event = Record<string, any> & { at: number };

function chat(port: number, inNamespace: boolean, downloads: string) {
  const argv = [process.execPath, `${ROOT}cmd/smts.ts`, "chat", `${RELAY_IP}:${port}`, "--json", "--download-dir", downloads, "--max-file-size", "1GiB"];
  const proc = Bun.spawn(inNamespace ? inNs(...argv) : argv, { stdin: "pipe", stdout: "pipe", stderr: "ignore", env: { PATH: process.env.PATH ?? "" } });
  const lines = lineReader(proc.stdout);
  const events: Event[] = [];
  void (async () => {
    for (;;) events.push({ ...JSON.parse(await lines.next(3_600_000)), at: performance.now() });
  })().catch(() => {});
  return {
    proc,
    send: (line: string) => void (proc.stdin.write(`${line}\n`), proc.stdin.flush()),
    async wait(match: (e: Event) => boolean, timeoutMs = 120_000): Promise<Event> {
      const deadline = performance.now() + timeoutMs;
      for (;;) {
        const e = events.find(match);
        if (e) return e;
        if (performance.now() > deadline) throw new Error("timed out waiting for an event");
        await Bun.sleep(2);
      }
    },
  };
}

const work = mkdtempSync(join(tmpdir(), "smts-bench-slow-"));
const procs: { kill(): void }[] = [];
tearDown(); // a run stopped half-way leaves them
try {
  setUp();
  const src = join(work, "file.bin");
  writeRandomFile(src, mib * 1024 * 1024);
  const relay = await spawnBenchRelay(["--host", RELAY_IP]);
  procs.push(relay.proc);
  const receiver = chat(relay.port, !up, work);
  procs.push(receiver.proc);
  const receiverId = (await receiver.wait((e) => e.event === "ready")).id as string;
  const sender = chat(relay.port, up, work);
  procs.push(sender.proc);
  await sender.wait((e) => e.event === "ready");
  sender.send(`/connect ${receiverId}`);
  await sender.wait((e) => e.event === "session");
  const t0 = performance.now();
  sender.send(`/send ${receiverId} ${src}`);
  const waits: number[] = [];
  let saved = false;
  const file = receiver.wait((e) => e.event === "file", 600_000).finally(() => (saved = true));
  for (;;) {
    await Bun.sleep(1000);
    if (saved) break;
    const text = `ping ${waits.length}`;
    const sent = performance.now();
    sender.send(`/msg ${receiverId} ${text}`);
    const got = await receiver.wait((e) => e.event === "message" && e.text === text);
    waits.push(got.at - sent);
  }
  const savedAt = (await file).at;
  console.log(`${machine()}; ${mib} MiB file, the ${up ? "sender's uplink" : "receiver's downlink"} at ${values.rate} (tbf, 100 ms queue), tcp_notsent_lowat ${values.lowat ?? "default"}`);
  console.log(`file saved after ${((savedAt - t0) / 1000).toFixed(1)} s; ${waits.length} messages sent meanwhile, one a second, arrived after median ${median(waits).toFixed(0)} ms (${waits.map((w) => w.toFixed(0)).join(", ")} ms)`);
} finally {
  for (const p of procs) p.kill();
  tearDown();
  rmSync(work, { recursive: true, force: true });
}
