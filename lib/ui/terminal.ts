// The interactive prompt: one readline interface for the whole process
// (notes §5). Lines from the network are printed above the prompt and the
// line being typed is redrawn intact, however many rows it (or a long
// progress status in the prompt) takes. Once the prompt is closed (/exit,
// Ctrl-D, Ctrl-C on an empty line, a signal, the terminal gone), it is erased, and lines still
// printed while the client shuts down (a transfer cancelled) are written
// plainly; no prompt is drawn again.
import readline from "node:readline";
import { terminalRows } from "./format.ts";

export interface Terminal {
  print(text: string): void;
  /** Shows `text` (transfer progress) in front of the prompt; "" clears it. */
  status(text: string): void;
  close(): void;
}

/** `complete` is readline's completer (Tab): candidates for the line so far, and the part they replace. */
export function startTerminal(onLine: (line: string) => void, onClose: () => void, complete: (line: string) => [string[], string]): Terminal {
  const out = process.stdout;
  const rl = readline.createInterface({ input: process.stdin, output: out, prompt: "> ", terminal: true, completer: complete });
  let open = true;
  let drawn = true; // false from Enter until the prompt is drawn again: the cursor is then on a fresh row
  // readline redraws by moving up as many rows as the cursor was below the
  // prompt's start when it last drew (prevRows). It does not update that when
  // typed or pasted text runs onto another row, nor when the terminal's width
  // changes, and then climbs too few rows (a ghost copy of the line's first
  // row stays) or too many (printed lines are erased); found in audit. So it
  // is set from where the cursor really is, after every key and before a resize.
  const atRow = (rows: number) => void ((rl as unknown as { prevRows: number }).prevRows = rows);
  const cursorRow = () => (drawn ? rl.getCursorPos().rows : 0);
  process.stdin.on("keypress", () => atRow(cursorRow()));
  out.prependListener("resize", () => atRow(cursorRow()));
  /** Erases the prompt and the line typed so far, all their rows, leaving the cursor at the start of the first. */
  const erasePrompt = () => {
    readline.moveCursor(out, 0, -cursorRow());
    readline.cursorTo(out, 0);
    readline.clearScreenDown(out);
    atRow(0);
  };
  rl.on("line", (line) => {
    drawn = false; // readline wrote the line's newline; what is printed now goes on fresh rows
    onLine(line);
    drawn = true;
    if (open) rl.prompt(); // /exit closes it
  });
  // Back from Ctrl-Z (fg): readline pauses its input then; without this, keys waited for the next network line.
  rl.on("SIGCONT", () => rl.prompt(true));
  // Ctrl-C with something typed clears it, as shells do; on an empty line it
  // quits (found in audit: a slip lost the half-typed line, and the session).
  let hinted = false;
  rl.on("SIGINT", () => {
    if (!rl.line) return void rl.close();
    rl.write(null, { ctrl: true, name: "e" });
    rl.write(null, { ctrl: true, name: "u" });
    if (!hinted) print("(line cleared: Ctrl-C on an empty line quits)");
    hinted = true;
  });
  rl.on("close", () => {
    if (open) {
      open = false;
      erasePrompt(); // Ctrl-D, Ctrl-C: the shell's prompt comes next, on a clean row
    }
    onClose();
  });
  function print(text: string): void {
    const rows = `${terminalRows(text, out.columns)}\n`;
    if (!open) return void out.write(rows);
    erasePrompt();
    out.write(rows);
    rl.prompt(true);
  }
  rl.prompt();
  return {
    print,
    status(text) {
      if (!open) return;
      erasePrompt();
      rl.setPrompt(text ? `[${text}] > ` : "> ");
      rl.prompt(true);
    },
    close() {
      if (!open) return;
      open = false;
      // The terminal may be gone (window closed, ssh dropped): then erasing and
      // leaving raw mode fail with EIO, and the clean-up after us must still run.
      try {
        erasePrompt();
        rl.close();
      } catch {}
    },
  };
}
