// The interactive prompt: one readline interface for the whole process
// (notes §5). Lines from the network are printed above the prompt and the
// line being typed is redrawn intact. Once the prompt is closed (/exit,
// Ctrl-D, Ctrl-C, a signal), lines still printed while the client shuts down
// (a transfer cancelled) are written plainly and no prompt is drawn again.
import readline from "node:readline";
import { terminalRows } from "./format.ts";

export interface Terminal {
  print(text: string): void;
  /** Shows `text` (transfer progress) in front of the prompt; "" clears it. */
  status(text: string): void;
  close(): void;
}

export function startTerminal(onLine: (line: string) => void, onClose: () => void): Terminal {
  const rl = readline.createInterface({ input: process.stdin, output: process.stdout, prompt: "> ", terminal: true });
  let open = true;
  rl.on("line", (line) => {
    onLine(line);
    if (open) rl.prompt(); // /exit closes it
  });
  rl.on("close", () => {
    open = false;
    onClose();
  });
  rl.prompt();
  return {
    print(text) {
      if (!open) return void process.stdout.write(`${text}\n`);
      readline.clearLine(process.stdout, 0);
      readline.cursorTo(process.stdout, 0);
      process.stdout.write(`${terminalRows(text, process.stdout.columns)}\n`);
      rl.prompt(true);
    },
    status(text) {
      if (!open) return;
      rl.setPrompt(text ? `[${text}] > ` : "> ");
      readline.clearLine(process.stdout, 0);
      readline.cursorTo(process.stdout, 0);
      rl.prompt(true);
    },
    close() {
      if (open) rl.close();
    },
  };
}
