// The signals that end a process cleanly, for both commands: SIGINT, SIGTERM
// and SIGHUP (its terminal or ssh session closed) start the command's own
// shutdown; one arriving while it runs exits at once, with the code of a
// process killed by that signal (128 + its number: 130, 143, 129).
import { constants as osConstants } from "node:os";

export function onStopSignals(stopping: () => boolean, stop: (signal: string, code: number) => void): void {
  for (const signal of ["SIGINT", "SIGTERM", "SIGHUP"] as const) {
    const code = 128 + osConstants.signals[signal];
    process.on(signal, () => (stopping() ? process.exit(code) : stop(signal, code)));
  }
}
