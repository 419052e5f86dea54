// citty's usage text, laid out for a terminal: it right-aligns the option
// column and pads every row to the longest description, so `smts relay --help`
// had rows of 150 columns, each wrapping on an 80-column terminal (found in
// audit). Here the two-column tables (commands, arguments, options) are
// left-aligned, their descriptions wrapped at `width`, trailing blanks gone.
const ANSI = /\x1b\[[0-9;]*m/g;
const visible = (s: string) => s.replace(ANSI, "").length;

/** Words of `text` in lines of at most `width` visible characters (a longer word gets a line of its own). */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  let line = "";
  for (const word of text.split(" ").filter(Boolean)) {
    if (line && visible(line) + 1 + visible(word) > width) lines.push(line), (line = "");
    line = line ? `${line} ${word}` : word;
  }
  return [...lines, line];
}

export function tidyUsage(text: string, width = 80): string {
  const lines = text.split("\n");
  const out: string[] = [];
  for (let i = 0; i < lines.length; ) {
    const rows: [string, string][] = [];
    for (let m; i < lines.length && (m = /^ +(.*?\S) {4,}(\S.*?) *$/.exec(lines[i]!)); i++) rows.push([m[1]!, m[2]!]);
    if (!rows.length) {
      out.push(lines[i++]!.trimEnd());
      continue;
    }
    const left = Math.max(...rows.map(([l]) => visible(l)));
    const room = Math.max(30, width - left - 5);
    for (const [l, d] of rows) {
      // "(Default: 30)" stays in one piece.
      const [first, ...rest] = wrap(d.replace(/\(Default: /g, "(Default:\u00a0"), room).map((r) => r.replaceAll("\u00a0", " "));
      out.push(`  ${l}${" ".repeat(left - visible(l))}   ${first}`, ...rest.map((r) => `${" ".repeat(left + 5)}${r}`));
    }
  }
  return out.join("\n");
}
