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
      const line = formatEvent({ event: "message", from: "98n9envz", text, broadcast: false })!;
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
