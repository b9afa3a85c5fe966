// Track checksums as an NBD metadata context ("peercopy:checksum"), so that an
// online verify compares the two sides without the data crossing the link. A
// BLOCK_STATUS reply in this context has one extent per track (clipped to the
// range asked for); its 32-bit status value is the first four bytes, big-endian,
// of the SHA-256 of the whole track that extent lies in. The volume is hashed
// where it lives; at most CHECKSUM_SPAN_TRACKS tracks are answered per request.
import { createHash } from "node:crypto";
import type { Backend, Extent } from "../backend/types.js";
import type { MarksContext } from "./marks.js";

export const CHECKSUM_CONTEXT = "peercopy:checksum";
export const CHECKSUM_SPAN_TRACKS = 64;

/** The context's value for one track's bytes. */
export function trackChecksum(data: Uint8Array): number {
  const digest = createHash("sha256").update(data).digest();
  return digest.readUInt32BE(0);
}

export function checksumContext(volume: Backend, trackSize: number): MarksContext {
  let buffer: Buffer | undefined;
  let tail: Promise<unknown> = Promise.resolve();
  const answer = async (offset: number, length: number): Promise<Extent[]> => {
    const size = volume.size;
    const end = Math.min(offset + length, size);
    if (end <= offset) return [];
    const first = Math.floor(offset / trackSize);
    const last = Math.min(Math.ceil(end / trackSize), first + CHECKSUM_SPAN_TRACKS);
    const from = first * trackSize;
    const to = Math.min(last * trackSize, size);
    buffer ??= Buffer.allocUnsafe(CHECKSUM_SPAN_TRACKS * trackSize);
    const data = buffer.subarray(0, to - from);
    await volume.read(data, from);
    const out: Extent[] = [];
    for (let t = first; t < last; t++) {
      const start = Math.max(offset, t * trackSize);
      const stop = Math.min((t + 1) * trackSize, end);
      if (stop <= start) break;
      const track = data.subarray(t * trackSize - from, Math.min((t + 1) * trackSize, to) - from);
      out.push({ length: stop - start, flags: trackChecksum(track) });
    }
    return out;
  };
  return {
    name: CHECKSUM_CONTEXT,
    // One request at a time: they share one buffer, and a verify asks in order anyway.
    blockStatus: (offset, length) => {
      const p = tail.then(() => answer(offset, length));
      tail = p.catch(() => undefined);
      return p;
    },
  };
}
