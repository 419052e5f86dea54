// lib/ui/format.ts terminalRows: a line for a terminal is cut into rows with
// every continuation row indented, so a peer cannot pad a message to the
// terminal's width and have its tail show as a line from someone else
// (found in audit: "[98n9envz] see you at 5" + padding + "[7hd2xw0a] ...").
import { expect, test } from "bun:test";
import { formatEvent, terminalRows } from "../lib/ui/format.ts";

const rowsOf = (line: string, columns: number) => terminalRows(line, columns).split("\n");

test("a padded message cannot start a row of its own: continuation rows are indented, and no row is wider than the terminal", () => {
  for (const columns of [20, 80, 81, 132]) {
    for (const pad of [" ", "\t", "x", "文", "😀"]) {
      const text = `see you at 5${pad.repeat(200)}[7hd2xw0a] the door code changed`;
      const line = formatEvent({ event: "message", from: "98n9envz", text, broadcast: false, verified: false })!;
      const rows = rowsOf(line, columns);
      expect(rows[0]).toStartWith("[98n9envz] ");
      for (const row of rows.slice(1)) expect(row).toStartWith("    ");
      for (const row of rows) expect(Bun.stringWidth(row.replaceAll("\t", " ".repeat(8)))).toBeLessThanOrEqual(columns);
      expect(terminalRows(line, columns).replace(/\n {4}/g, "")).toBe(line); // nothing lost or changed
    }
  }
});

test("a line that fits, a terminal of unknown width, and the rows of a multi-line text", () => {
  expect(terminalRows("[ab] hello", 80)).toBe("[ab] hello");
  expect(terminalRows("x".repeat(500), undefined)).toBe("x".repeat(500));
  expect(rowsOf(`${"a".repeat(30)}\n${"b".repeat(30)}`, 20)).toEqual(["a".repeat(20), `    ${"a".repeat(10)}`, "b".repeat(20), `    ${"b".repeat(10)}`]);
  expect(rowsOf("文".repeat(15), 20)).toEqual(["文".repeat(10), `    ${"文".repeat(5)}`]); // wide characters count 2 cells
});

// Found in audit: Bun.stringWidth counts a soft hyphen (and U+FE0F, ZWSP, combining
// marks) as 0 cells where terminals draw some of them as 1, so 47 soft hyphens
// fitted one row by our count and the terminal wrapped the tail to column 0.
test("characters Bun counts as 0 cells count as 1, regional indicators as 2: a padded message still cannot start a row of its own", () => {
  // The most cells a terminal draws for each: soft hyphen 1 (xterm, tmux), U+FE0F 1 (❤️ is 2), a regional indicator 2, a combining mark 1 if drawn apart, ZWSP 1.
  const widest = new Map([[0xad, 1], [0xfe0f, 1], [0x1f1e9, 2], [0x1f1ea, 2], [0x301, 1], [0x200b, 1]]);
  const cells = (row: string) => [...row].reduce((n, ch) => n + (widest.get(ch.codePointAt(0)!) ?? Bun.stringWidth(ch)), 0);
  for (const columns of [20, 60, 80]) {
    for (const pad of ["\u00ad", "\u2764\ufe0f", "\u{1F1E9}\u{1F1EA}", "e\u0301", "\u200b"]) {
      const text = `ok${pad.repeat(100)}[7hd2xw0a] yes, it's me: approved, send it`;
      const line = formatEvent({ event: "message", from: "98n9envz", text, broadcast: false, verified: false })!;
      const rows = rowsOf(line, columns);
      for (const row of rows.slice(1)) expect(row).toStartWith("    ");
      for (const row of rows) expect(cells(row)).toBeLessThanOrEqual(columns);
      expect(terminalRows(line, columns).replace(/\n {4}/g, "")).toBe(line);
    }
  }
});

// Found in audit: rows were cut at the last cell, in the middle of words and hashes.
test("rows end after a space when the next word fits the following row; longer words are still cut", () => {
  const line = "* secure session with mzzr9af0, fingerprint 612d-9dde-8c6e. Compare it with mzzr9af0 over another channel, then /verify mzzr9af0";
  for (const columns of [20, 33, 60, 80]) {
    const rows = rowsOf(line, columns);
    expect(rows.join("\n").replace(/\n {4}/g, "")).toBe(line);
    for (const row of rows) expect(Bun.stringWidth(row)).toBeLessThanOrEqual(columns);
    const words = line.split(" ");
    for (const row of rows) for (const word of row.trim().split(" ")) expect(words).toContain(word); // no word cut
  }
  const hash = "ab".repeat(32);
  expect(rowsOf(`* 7hd2xw0a has report.pdf (2.0 KiB), its sha256 matches ours: ${hash}`, 80)).toEqual(["* 7hd2xw0a has report.pdf (2.0 KiB), its sha256 matches ours: ", `    ${hash}`]);
  expect(rowsOf("x".repeat(30), 20)).toEqual(["x".repeat(20), `    ${"x".repeat(10)}`]); // no space: cut
});

// Found in the second audit: a word that ended exactly at the last column left its space to start the next row.
test("a word ending at the last column moves with the space after it: continuation rows start with exactly 4 spaces", () => {
  const line = `${"a".repeat(15)} ${"b".repeat(4)} next words`; // "bbbb" ends at column 20
  expect(rowsOf(line, 20)).toEqual([`${"a".repeat(15)} `, `    ${"b".repeat(4)} next words`]);
  for (const columns of [20, 24, 33, 100]) {
    for (const row of rowsOf(`* new key exchange with fkd4sxrg (you started it): fingerprint is now bc03-1e64-84ce (not verified). Compare it again, then /verify fkd4sxrg`, columns).slice(1)) {
      expect(row).toMatch(/^ {4}\S/);
    }
  }
});
