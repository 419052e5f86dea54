// Where a received file may be saved. A peer chooses the name it offers, so
// the name is reduced to a harmless base name, and the file is only ever
// created anew (never over an existing one).
//
// Promises: safeName() returns a non-empty single path component with no
// separators, no control or terminal-escape characters, no invisible
// characters, in NFC, no leading dots, no trailing dots or spaces, no Windows
// device name, at most 200 bytes of UTF-8.
// claimFinalName() moves a finished temporary file to `dir/name`, or to
// `name (1).ext`, `name (2).ext`, ... if taken, without overwriting anything:
// a hard link to the temporary file is made under the name (link() fails on
// any existing name and never follows a symlink), then the temporary name is
// removed. Where a filesystem has no hard links (FAT, say), the name is
// created exclusively (O_EXCL) and the temporary file renamed onto that empty
// placeholder. The link comes first because on ext4 a rename over an existing
// file starts writing the whole file back to disk before it returns
// (auto_da_alloc): about 1 ms for 10 MiB, at the end of every transfer.
// tempName() is where a file is received; removeStaleParts() clears those a
// killed client left behind.
import { closeSync, linkSync, lstatSync, openSync, readdirSync, renameSync, rmSync } from "node:fs";
import { join } from "node:path";

// Windows also reserves COM and LPT with a superscript 1, 2 or 3.
const DEVICE = /^(con|prn|aux|nul|com[0-9\u00b9\u00b2\u00b3]|lpt[0-9\u00b9\u00b2\u00b3]|conin\$|conout\$)$/i;
const MAX_BYTES = 200;

export function safeName(offered: string): string {
  // Last component of either kind of path, then drop everything unsafe.
  let name = offered.split(/[/\\]/).pop() ?? "";
  name = name
    .replace(/[\u0000-\u001f\u007f-\u009f]/g, "") // controls, including ESC
    // Invisible (zero-width, soft hyphen, variation selectors, fillers, tags, bidi
    // controls) and line separators: with them "report\u00ad.pdf" showed as an
    // existing report.pdf, and was not numbered (found in audit).
    .replace(/[\p{Default_Ignorable_Code_Point}\u2028\u2029]/gu, "")
    .normalize("NFC") // so does a decomposed "résumé.pdf" beside a composed one
    .replace(/[<>:"|?*]/g, "_"); // reserved on Windows
  name = trimEnds(name);
  const stem = (name.split(".")[0] ?? "").trimEnd();
  if (DEVICE.test(stem)) name = `_${name}`;
  // Cut last, so that the prefix counts too; the cut keeps the start, so it
  // cannot make a device name (those are under 8 characters).
  if (Buffer.byteLength(name) > MAX_BYTES) name = trimEnds(cutKeepingExtension(name));
  return name || "file";
}

/** No hidden files, no "..", no leading spaces; no trailing dots or spaces (Windows drops them). */
function trimEnds(name: string): string {
  return name.replace(/^[.\s]+/, "").replace(/[.\s]+$/, "");
}

/** The longest whole-code-point start of the stem that fits MAX_BYTES with the extension; one pass, as offered names can be 100,000s of characters. */
function cutKeepingExtension(name: string): string {
  const dot = name.lastIndexOf(".");
  const ext = dot > 0 && name.length - dot <= 16 ? name.slice(dot) : "";
  let bytes = Buffer.byteLength(ext);
  let stem = "";
  for (const ch of name.slice(0, name.length - ext.length)) {
    bytes += Buffer.byteLength(ch);
    if (bytes > MAX_BYTES) break;
    stem += ch;
  }
  return stem + ext;
}

/** `report.pdf` → `report (n).pdf`; `archive.tar.gz` → `archive (n).tar.gz`. */
export function numbered(name: string, n: number): string {
  if (n === 0) return name;
  const m = /^(.+?)((?:\.[^.\s]{1,10}){0,2})$/.exec(name);
  return m ? `${m[1]} (${n})${m[2]}` : `${name} (${n})`;
}

/** Gives the finished temporary file its final name; returns the path used. `link` is replaceable for tests. */
export function claimFinalName(tempPath: string, dir: string, name: string, link = linkSync): string {
  let hardLinks = true;
  for (let n = 0; n < 10_000; n++) {
    const path = join(dir, numbered(name, n));
    if (hardLinks) {
      try {
        link(tempPath, path);
      } catch (err) {
        const code = (err as NodeJS.ErrnoException).code;
        if (code === "EEXIST") continue;
        if (code === "ENOENT") throw err; // the temporary file is gone
        hardLinks = false; // no hard links here: the placeholder way, from this same name
      }
      if (hardLinks) {
        try {
          rmSync(tempPath);
        } catch {} // the file is saved; a leftover temporary name is a stale part, removed later
        return path;
      }
    }
    try {
      closeSync(openSync(path, "wx", 0o600));
    } catch (err) {
      if ((err as NodeJS.ErrnoException).code === "EEXIST") continue;
      throw err;
    }
    try {
      renameSync(tempPath, path);
    } catch (err) {
      rmSync(path, { force: true }); // never leave the empty placeholder under the final name
      throw err;
    }
    return path;
  }
  throw new Error(`no free name for ${name} in ${dir}`);
}

/** The hidden temporary name a transfer writes to (`salt` after a collision). */
export function tempName(transferId: string, salt?: string): string {
  return salt ? `.${transferId}.${salt}.smts-part` : `.${transferId}.smts-part`;
}
const TEMP = /^\.[0-9a-f]{32}(\.[0-9a-f]{8})?\.smts-part$/;

/**
 * Removes temporary files of transfers that cannot be running any more: a
 * live transfer writes at least once per idle timeout or fails and removes
 * its own file, so one untouched for longer was left by a killed client.
 * Only our own names, only regular files; errors are ignored (best effort).
 */
export function removeStaleParts(dir: string, olderThanMs: number): number {
  let removed = 0;
  try {
    for (const name of readdirSync(dir)) {
      if (!TEMP.test(name)) continue;
      const st = lstatSync(join(dir, name), { throwIfNoEntry: false });
      if (st?.isFile() && Date.now() - st.mtimeMs > olderThanMs) rmSync(join(dir, name), { force: true }), removed++;
    }
  } catch {}
  return removed;
}
