// Routes: the relay's answer to "where do frames for this ID go?".
//
// The relay only ever asks this small interface, so a cluster backend (for
// example NATS core pub/sub between relays, brief §8) can replace or extend
// the local socket table without touching the join or forwarding logic.
export interface Endpoint {
  readonly id: string;
  /** Queues bytes of a frame (`more` follows `piece`); everything is sent in order. */
  send(piece: Uint8Array, more?: Uint8Array): void;
  /** Bytes queued for this endpoint and not yet accepted by its socket. */
  readonly backlog: number;
}

export interface Routes<E extends Endpoint = Endpoint> {
  get(id: string): E | undefined;
  add(endpoint: E): void;
  remove(id: string): void;
  readonly size: number;
  ids(): IterableIterator<string>;
  endpoints(): IterableIterator<E>;
}

/** The first backend: clients connected to this relay process. */
export function localRoutes<E extends Endpoint>(): Routes<E> {
  const table = new Map<string, E>();
  return {
    get: (id) => table.get(id),
    add: (endpoint) => void table.set(endpoint.id, endpoint),
    remove: (id) => void table.delete(id),
    get size() {
      return table.size;
    },
    ids: () => table.keys(),
    endpoints: () => table.values(),
  };
}
