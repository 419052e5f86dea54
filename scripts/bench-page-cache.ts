// What a received file's pages cost on this machine: writes 10 MiB files
// (128 KiB writeSync calls, as the receiver does) into the page cache, once
// removing each file right after it is written, so the next one reuses its
// pages, and once keeping them all, so each file needs pages nothing has used
// lately. On this VM the second kind cost about 15 times more once the kept
// files passed a few hundred MiB (docs/BENCHMARKS.md, "Seventeenth look"),
// which is why bench-files.ts removes each received file right after its
// transfer, as its floor pipeline always did. Only prints.
//
// Usage: bun scripts/bench-page-cache.ts [--files N]   (default 60: 600 MiB kept)
import { closeSync, mkdtempSync, openSync, rmSync, unlinkSync, writeSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { parseArgs } from "node:util";
import { machine, median } from "./bench-util.ts";

const { values } = parseArgs({ options: { files: { type: "string", default: "60" } } });
const files = Number(values.files);
if (!(Number.isInteger(files) && files > 0)) {
  console.error("usage: bun scripts/bench-page-cache.ts [--files N]");
  process.exit(2);
}
const MiB = 1024 * 1024;
const block = Buffer.alloc(128 * 1024, 0x5a);
const dir = mkdtempSync(join(tmpdir(), "smts-bench-page-cache-"));

/** ms to write each of `files` 10 MiB files. */
function writeFiles(keep: boolean): number[] {
  const ms: number[] = [];
  for (let f = 0; f < files; f++) {
    const path = join(dir, `f${f}`);
    const t0 = performance.now();
    const fd = openSync(path, "w", 0o600);
    for (let i = 0; i < (10 * MiB) / block.length; i++) writeSync(fd, block);
    closeSync(fd);
    ms.push(performance.now() - t0);
    if (!keep) unlinkSync(path);
  }
  return ms;
}

try {
  const reused = writeFiles(false);
  const kept = writeFiles(true);
  const show = (xs: number[]) => xs.map((x) => x.toFixed(1)).join(" ");
  console.log(`${machine()}; ${files} files of 10 MiB each way, writeSync of 128 KiB`);
  console.log(`each file removed after writing: median ${median(reused).toFixed(1)} ms per file (${show(reused)})`);
  const half = Math.floor(files / 2);
  console.log(`all files kept: median ${median(kept).toFixed(1)} ms per file; first half ${median(kept.slice(0, half)).toFixed(1)}, second half ${median(kept.slice(half)).toFixed(1)} (${show(kept)})`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
