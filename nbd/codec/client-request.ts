// Request messages (spec: "Request message"): 28 bytes of header, followed by
// the payload for NBD_CMD_WRITE, which the caller writes separately.
import { NBD_REQUEST_MAGIC, NBD_REQUEST_SIZE } from "../constants.js";
import { writeU64 } from "./client-bytes.js";

/**
 * Write a request header at `buf[at…at+28)`. The cookie is a counter kept in
 * the 8 opaque bytes; replies carry it back (read it with readU64).
 */
export function encodeRequest(
  buf: Buffer,
  at: number,
  flags: number,
  type: number,
  cookie: number,
  offset: number,
  length: number,
): void {
  buf.writeUInt32BE(NBD_REQUEST_MAGIC, at);
  buf.writeUInt16BE(flags, at + 4);
  buf.writeUInt16BE(type, at + 6);
  writeU64(buf, cookie, at + 8);
  writeU64(buf, offset, at + 16);
  buf.writeUInt32BE(length, at + 24);
}

const SLAB_SIZE = 64 * NBD_REQUEST_SIZE * 16;

/**
 * Hands out 28-byte header buffers carved from a larger slab. A socket keeps a
 * reference to each buffer until it is written, so a region is never handed
 * out twice; an exhausted slab is dropped and freed once its writes are done.
 */
export class RequestHeaderSlab {
  private slab = Buffer.allocUnsafe(SLAB_SIZE);
  private used = 0;

  take(): Buffer {
    if (this.used + NBD_REQUEST_SIZE > this.slab.length) {
      this.slab = Buffer.allocUnsafe(SLAB_SIZE);
      this.used = 0;
    }
    const header = this.slab.subarray(this.used, this.used + NBD_REQUEST_SIZE);
    this.used += NBD_REQUEST_SIZE;
    return header;
  }
}
