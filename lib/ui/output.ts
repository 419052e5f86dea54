// Output that pushes back. A write to stdout or stderr returns at once, and
// Bun keeps whatever the reader (a pipe into a slow script, one that stopped)
// has not taken yet, without limit: a peer sending messages faster than our
// reader reads them would grow us until we ran out of memory. The gate counts
// the bytes written and not yet taken and, past `high`, asks its owner to
// stop producing (the chat client stops reading from the relay, which then
// queues for us and holds back our peers) until the reader is down to a
// quarter of that. So the output costs at most about `high` plus what one
// read from the relay produces.
export type Write = (stream: NodeJS.WritableStream, text: string) => void;

export function outputGate(hold: (on: boolean) => void, high = 1024 * 1024): Write {
  let pending = 0;
  let held = false;
  return (stream, text) => {
    const n = Buffer.byteLength(text);
    pending += n;
    // The callback comes once the bytes are written (or failed), at once for a file or a terminal.
    stream.write(text, () => {
      pending -= n;
      if (held && pending <= high / 4) {
        held = false;
        hold(false);
      }
    });
    if (!held && pending > high) {
      held = true;
      hold(true);
    }
  };
}
