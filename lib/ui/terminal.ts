// The interactive prompt: one readline interface for the whole process
// (notes §5). Lines from the network are printed above the prompt and the
// line being typed is redrawn intact, however many rows it (or a long
// progress status in the prompt) takes. Once the prompt is closed (/exit,
// Ctrl-D, Ctrl-C, a signal, the terminal gone), it is erased, and lines still
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
  /**
   * Erases the prompt and the line typed so far, all their rows, leaving the
   * cursor at the start of the first. readline's own redraw moves up as many
   * rows as the cursor was below the prompt's start when it last drew; that
   * would climb into what we print in between (found in audit: messages
   * vanished while a typed line was longer than a row), so it is told 0.
   */
  const erasePrompt = () => {
    readline.moveCursor(out, 0, -rl.getCursorPos().rows);
    readline.cursorTo(out, 0);
    readline.clearScreenDown(out);
    (rl as unknown as { prevRows: number }).prevRows = 0;
  };
  rl.on("line", (line) => {
    onLine(line);
    if (open) rl.prompt(); // /exit closes it
  });
  // Back from Ctrl-Z (fg): readline pauses its input then; without this, keys waited for the next network line.
  rl.on("SIGCONT", () => rl.prompt(true));
  rl.on("close", () => {
    if (open) {
      open = false;
      erasePrompt(); // Ctrl-D, Ctrl-C: the shell's prompt comes next, on a clean row
    }
    onClose();
  });
  rl.prompt();
  return {
    print(text) {
      if (!open) return void out.write(`${terminalRows(text, out.columns)}\n`);
      erasePrompt();
      out.write(`${terminalRows(text, out.columns)}\n`);
      rl.prompt(true);
    },
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
