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
// `process.execve` replaces the process image: same PID, same standard
// streams, the same arguments and environment plus the setting. A value the
// user has set wins. Where execve is missing (Windows) the program just runs
// on with the default.

const SETTING = "MIMALLOC_PURGE_HOLES";

/** Start this process again with the allocator setting, unless it is already set. Returns only if it is not restarted. */
export function restartWithAllocatorSettings(): void {
  if (process.env[SETTING] !== undefined || typeof process.execve !== "function") return;
  // A compiled binary sees [argv0, "/$bunfs/root/smts", ...args]; a source run
  // [bun, script, ...args] with Bun's own options in execArgv.
  const compiled = Bun.main.startsWith("/$bunfs/");
  const args = compiled ? [process.argv0, ...process.argv.slice(2)] : [process.argv0, ...process.execArgv, process.argv[1]!, ...process.argv.slice(2)];
  try {
    process.execve(process.execPath, args, { ...process.env, [SETTING]: "0" });
  } catch {
    // Not supported here: the default costs speed after a pause, nothing else.
  }
}
