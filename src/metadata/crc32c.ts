// CRC-32C (Castagnoli), the checksum of iSCSI, ext4 and btrfs metadata. Table
// driven, one byte at a time: metadata slots are a few KiB and are checksummed
// only when written or opened, so slicing-by-8 would not pay for its tables.

const POLY = 0x82f63b78; // reflected 0x1EDC6F41

const TABLE = ((): Uint32Array => {
  const t = new Uint32Array(256);
  for (let n = 0; n < 256; n++) {
    let c = n;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ POLY : c >>> 1;
    t[n] = c >>> 0;
  }
  return t;
})();

/** CRC-32C of `buf[start, end)`. crc32c("123456789") is 0xe3069283. */
export function crc32c(buf: Uint8Array, start = 0, end = buf.length): number {
  let c = 0xffffffff;
  for (let i = start; i < end; i++)
    c = (TABLE[(c ^ (buf[i] as number)) & 0xff] as number) ^ (c >>> 8);
  return (c ^ 0xffffffff) >>> 0;
}
