// The out-of-sync tracks as an NBD metadata context ("peercopy:out-of-sync"),
// read with NBD_CMD_BLOCK_STATUS the way qemu publishes "qemu:dirty-bitmap:NAME":
// flag 1 marks a range this side holds that its peer may not have.
import type { Extent } from "../backend/types.js";
import type { StaleBits } from "../mirror/tracks.js";
import { OUT_OF_SYNC_CONTEXT } from "./handshake.js";

export const OUT_OF_SYNC_FLAG = 1;
const MAX_EXTENTS = 65536;

export interface MarksContext {
  readonly name: string;
  blockStatus(offset: number, length: number): Promise<Extent[]>;
}

export function outOfSyncContext(
  bits: StaleBits,
  trackSize: number,
  volumeSize: number,
): MarksContext {
  return {
    name: OUT_OF_SYNC_CONTEXT,
    blockStatus: (offset, length) =>
      Promise.resolve(markExtents(bits, trackSize, volumeSize, offset, length)),
  };
}

/** Runs of marked and clean tracks covering [offset, offset + length), clipped to the volume. */
export function markExtents(
  bits: StaleBits,
  trackSize: number,
  volumeSize: number,
  offset: number,
  length: number,
): Extent[] {
  const end = Math.min(offset + length, volumeSize);
  const out: Extent[] = [];
  let at = offset;
  while (at < end && out.length < MAX_EXTENTS) {
    const track = Math.floor(at / trackSize);
    const stale = bits.isStale(track);
    let next = (track + 1) * trackSize;
    if (stale) {
      let t = track + 1;
      while (t * trackSize < end && bits.isStale(t)) t++;
      next = t * trackSize;
    } else {
      const s = bits.nextStale(track + 1);
      next = s < 0 ? end : s * trackSize;
    }
    const stop = Math.min(next, end);
    out.push({ length: stop - at, flags: stale ? OUT_OF_SYNC_FLAG : 0 });
    at = stop;
  }
  return out;
}
