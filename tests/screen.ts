// What a terminal shows for a stream of output: a minimal VT100 screen, enough
// for what readline and smts write (text with autowrap, CR, LF (down only), backspace,
// cursor moves CSI A B C D G, erase CSI K J; other sequences are skipped). The
// rows that scrolled off the top are kept, so the result is the scrollback and
// the screen together, one string per row, trailing spaces removed.
// Wide characters (Bun.stringWidth 2) take two cells.
export function renderScreen(output: string, columns: number): string[] {
  const rows: string[][] = [[]];
  let row = 0;
  let col = 0;
  let pendingWrap = false; // the last column was written: the next character wraps (xterm)
  const line = () => (rows[row] ??= []);
  const put = (ch: string) => {
    const w = Math.max(1, Bun.stringWidth(ch));
    if (pendingWrap || col + w > columns) (row++, (col = 0), (pendingWrap = false));
    line()[col] = ch;
    if (w === 2) line()[col + 1] = "";
    col += w;
    if (col >= columns) (col = columns - 1), (pendingWrap = true);
  };
  for (let i = 0; i < output.length; ) {
    const ch = String.fromCodePoint(output.codePointAt(i)!);
    i += ch.length;
    if (ch === "\x1b") {
      const csi = /^\[([?0-9;]*)([A-Za-z])/.exec(output.slice(i));
      const osc = /^\][^\x07\x1b]*(\x07|\x1b\\)/.exec(output.slice(i));
      if (osc) i += osc[0].length;
      else if (csi) {
        i += csi[0].length;
        const n = csi[1] === "" ? null : Number(csi[1]);
        pendingWrap = false;
        if (csi[2] === "A") row = Math.max(0, row - (n ?? 1));
        else if (csi[2] === "B") row += n ?? 1;
        else if (csi[2] === "C") col = Math.min(columns - 1, col + (n ?? 1));
        else if (csi[2] === "D") col = Math.max(0, col - (n ?? 1));
        else if (csi[2] === "G") col = Math.min(columns - 1, (n ?? 1) - 1);
        else if (csi[2] === "K") {
          if ((n ?? 0) === 0) line().length = Math.min(line().length, col);
          else if (n === 1) line().fill(" ", 0, col + 1);
          else rows[row] = [];
        } else if (csi[2] === "J" && (n ?? 0) === 0) {
          line().length = Math.min(line().length, col);
          rows.length = row + 1;
        }
      } else i++;
    } else if (ch === "\r") (col = 0), (pendingWrap = false);
    else if (ch === "\n") row++, (pendingWrap = false); // the terminal turned "\n" into "\r\n" already (ONLCR)
    else if (ch === "\b") (col = Math.max(0, col - 1)), (pendingWrap = false);
    else if (ch >= " ") put(ch);
  }
  return Array.from(rows, (r) => Array.from(r ?? [], (c) => c ?? " ").join("").trimEnd());
}
