// Reading a socket into buffers the reader chooses instead of through 'data'
// events: the state behind net.Socket's `onread` option, set on a socket that
// is already connected. Node then reads (or, on a TLS socket, decrypts) into
// the buffer the target hands out rather than into a fresh one per read, and
// skips the stream machinery a 'data' event goes through.
import type net from "node:net";

/** Where a socket's input goes when it is read without 'data' events (readInto). */
export interface ReadTarget {
  /** The buffer the next bytes are written to; never empty. */
  next(): Buffer;
  /** `n` bytes were written at the start of the buffer next() returned last. */
  got(n: number): void;
}

/** What readInto sets on a socket: the state behind net.Socket's `onread` option. */
interface UserBufferSocket {
  _handle?: { useUserBuffer?: (buffer: Uint8Array) => void } | null;
}

/**
 * Read `socket` into buffers `target` chooses from now on. On a plain socket
 * the kernel's bytes go straight there; on a TLS socket each decrypted record
 * is copied there (one allocation and one trip through the stream's machinery
 * per 16 KiB record saved). net.Socket takes the `onread` option only when it
 * connects, and tls.TLSSocket ignores it when it wraps a socket that is already
 * connected, as STARTTLS does; so the option's state is set here.
 *
 * pause() and resume() keep working (they stop and start reading the socket);
 * 'end', 'error' and 'close' come as before while the socket flows. Returns
 * what had arrived already, to be taken before anything `target` gets; null,
 * leaving the socket as it was, where this Node lacks the means (then listen
 * to 'data').
 */
export function readInto(socket: net.Socket, target: ReadTarget): Buffer[] | null {
  const handle = (socket as unknown as UserBufferSocket)._handle;
  const symbols = Object.getOwnPropertySymbols(socket);
  const find = (name: string): symbol | undefined => symbols.find((s) => s.description === name);
  const kBuffer = find("kBuffer");
  const kBufferCb = find("kBufferCb");
  const kBufferGen = find("kBufferGen");
  if (
    kBuffer === undefined ||
    kBufferCb === undefined ||
    kBufferGen === undefined ||
    typeof handle?.useUserBuffer !== "function"
  )
    return null;
  const fields = socket as unknown as Record<symbol, unknown>;
  const first = target.next();
  fields[kBufferGen] = () => target.next();
  fields[kBufferCb] = (n: number) => target.got(n);
  fields[kBuffer] = first;
  handle.useUserBuffer(first);
  const arrived: Buffer[] = [];
  for (
    let chunk = socket.read() as Buffer | null;
    chunk !== null;
    chunk = socket.read() as Buffer | null
  )
    arrived.push(chunk);
  return arrived;
}
