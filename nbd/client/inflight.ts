// Requests between submission and reply, keyed by cookie. A cookie is a
// counter (unique for the life of the connection), so a late or forged reply
// can never be matched to a newer request that reused its cookie.
import type { ReplyHandler, ReplyTarget } from "../codec/client-replies.js";
import type { Extent } from "../export.js";

function unset(): void {
  throw new Error("request settled before it was submitted");
}

export class ClientRequest implements ReplyTarget {
  cookie = 0;
  /** On the wire; replies for requests still queued in the client are protocol errors. */
  sent = false;
  errno = 0;
  message = "";
  errorOffset = -1;
  extents: Extent[] | undefined = undefined;
  contextExtents: Map<number, Extent[]> | undefined = undefined;
  received = 0;
  spans: number[] | undefined = undefined;
  resolve: (request: ClientRequest) => void = unset;
  reject: (err: Error) => void = unset;

  constructor(
    readonly command: number,
    readonly flags: number,
    readonly offset: number,
    readonly length: number,
    readonly into: Buffer | undefined,
    /** NBD_CMD_WRITE data, dropped once handed to the socket. */
    public payload: Buffer | undefined,
  ) {}
}

export class InflightTable implements ReplyHandler<ClientRequest> {
  private readonly requests = new Map<number, ClientRequest>();
  private nextCookie = 1;

  constructor(private readonly settled: (request: ClientRequest) => void) {}

  /** Requests submitted and not yet answered, including those queued in the client. */
  get size(): number {
    return this.requests.size;
  }

  takeCookie(): number {
    return this.nextCookie++;
  }

  add(request: ClientRequest): void {
    request.cookie = this.nextCookie++;
    this.requests.set(request.cookie, request);
  }

  lookup(cookie: number): ClientRequest | undefined {
    const request = this.requests.get(cookie);
    return request?.sent === true ? request : undefined;
  }

  complete(cookie: number, request: ClientRequest): void {
    this.requests.delete(cookie);
    this.settled(request);
  }

  failAll(err: Error): void {
    const pending = [...this.requests.values()];
    this.requests.clear();
    for (const request of pending) request.reject(err);
  }
}
