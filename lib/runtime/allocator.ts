// Allocator settings for the long-running commands (`smts relay`, `smts chat`).
//
// Bun's allocator (its fork of mimalloc) gives the free blocks inside its
// partly used pages ("holes") back to the system once the process has been
// idle for 100-200 ms. A file transfer's buffers (socket reads, cipher
// outputs, frames: 96 KiB and up) live in such pages, so every transfer that
// starts after a pause faulted them all in again, 4 KiB at a time: about 200
// minor faults per MiB in each of the three processes, and 10 MiB took 69-72 ms
// after a pause of 0.4-3 s against 56-58 ms with hole purging off
// (docs/BENCHMARKS.md, fifteenth look). MIMALLOC_PURGE_HOLES=0 turns it off;
// pages with nothing left in use are still given back. The price: each process
// keeps a few MiB more after a transfer (6 MiB after 40 s idle, measured).
//
// The allocator reads its options once, before any JavaScript runs, so a
// program can only set one by starting again with it in the environment.
// `process.execve` replaces the process image: same PID, standard streams,
// arguments, and the environment the process was started with, plus the
// setting. It is done only on Linux, where it was measured, and only when it
// loses nothing: Bun closes every other descriptor on execve, so a process
// given one (`--secret-file <(...)`) runs on with the default (found in
// review). A value the user set wins.
import { readdirSync, readFileSync, readlinkSync } from "node:fs";

const SETTING = "MIMALLOC_PURGE_HOLES";

/** Start this process again with the allocator setting, where that is safe. Returns only if it is not restarted. */
export function restartWithAllocatorSettings(): void {
  if (process.platform !== "linux" || process.env[SETTING] !== undefined || typeof process.execve !== "function") return;
  if (!onlyOwnDescriptors()) return;
  // A compiled binary sees [argv0, "/$bunfs/root/smts", ...args]; a source run
  // [bun, script, ...args] with Bun's own options in execArgv, where a --cwd
  // has been applied already (again, a relative one would fail).
  const compiled = Bun.main.startsWith("/$bunfs/");
  const bunOptions = process.execArgv.filter((a, i, all) => !a.startsWith("--cwd=") && a !== "--cwd" && all[i - 1] !== "--cwd");
  const args = compiled ? [process.argv0, ...process.argv.slice(2)] : [process.argv0, ...bunOptions, process.argv[1]!, ...process.argv.slice(2)];
  // What the process was started with: not what Bun has added since (a .env file's
  // values, which the new image reads again itself; NO_COLOR).
  const env: Record<string, string> = {};
  for (const entry of readFileSync("/proc/self/environ", "utf8").split("\0")) {
    const at = entry.indexOf("=");
    if (at > 0) env[entry.slice(0, at)] = entry.slice(at + 1);
  }
  env[SETTING] = "0";
  // A failed execve (E2BIG, say) would print Bun's "experimental feature" warning.
  const quiet = process.env.NODE_NO_WARNINGS;
  process.env.NODE_NO_WARNINGS = "1";
  try {
    process.execve(process.execPath, args, env);
  } catch {
    // Not restarted: the default costs speed after a pause, nothing else.
  }
  setImmediate(() => (quiet === undefined ? delete process.env.NODE_NO_WARNINGS : (process.env.NODE_NO_WARNINGS = quiet)));
}

/** Whether every descriptor above 2 is the runtime's own (its event loop's, or a copy of a standard stream), none passed by whoever started us. */
function onlyOwnDescriptors(): boolean {
  const target = (fd: string) => {
    try {
      return readlinkSync(`/proc/self/fd/${fd}`);
    } catch {
      return null; // the directory listing's own descriptor, closed by now
    }
  };
  const standard = new Set(["0", "1", "2"].map(target));
  for (const fd of readdirSync("/proc/self/fd")) {
    const t = target(fd);
    if (Number(fd) > 2 && t !== null && !t.startsWith("anon_inode:") && !standard.has(t)) return false;
  }
  return true;
}
