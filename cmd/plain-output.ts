// Imported first by cmd/smts.ts, before citty, which decides once, when it is
// loaded, whether its usage text has colours, and only from NO_COLOR=1,
// TERM=dumb, CI or TEST. Escape codes belong on a terminal only: not in a pipe,
// a log file or a script's captured output. (Any non-empty NO_COLOR means no
// colour, per no-color.org, which citty reads as only "1".)
if (process.env.NO_COLOR || !process.stdout.isTTY || !process.stderr.isTTY) process.env.NO_COLOR = "1";

/**
 * For the commands that only print (--version, --help, --generate-secret): a
 * stdout that cannot be written (a full disk, /dev/full) ends the process with
 * one line and exit 1, not a stack trace or a silent exit 0 (found in audit);
 * a reader that went away (`| head -c1`) ends it quietly with 141, as SIGPIPE would.
 */
export function failOnStdoutError(): void {
  process.stdout.on("error", (err: NodeJS.ErrnoException) => {
    if (err.code === "EPIPE") process.exit(141);
    process.stderr.write(`smts: cannot write to stdout: ${err.code ?? err.message}\n`);
    process.exit(1);
  });
}
