// The error the chat client's calls reject with: a stable `code` (the same
// codes as the `error` events of the NDJSON contract) and the peer involved.
export class ChatError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly peer?: string,
  ) {
    super(message);
  }
}
