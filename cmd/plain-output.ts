// Imported first by cmd/smts.ts, before citty, which decides once, when it is
// loaded, whether its usage text has colours, and only from NO_COLOR=1,
// TERM=dumb, CI or TEST. Escape codes belong on a terminal only: not in a pipe,
// a log file or a script's captured output. (Any non-empty NO_COLOR means no
// colour, per no-color.org, which citty reads as only "1".)
if (process.env.NO_COLOR || !process.stdout.isTTY || !process.stderr.isTTY) process.env.NO_COLOR = "1";
