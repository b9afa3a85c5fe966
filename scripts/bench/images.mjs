// Image files for the benchmarks and sizes as written on their command lines.
import { randomBytes } from "node:crypto";
import { open, rm } from "node:fs/promises";

/** "64M", "1G", "512K", "4096": bytes (powers of 1024), or NaN. */
export function sizeOf(text) {
  const m = /^(\d+)\s*([KMGT]?)(?:i?B)?$/i.exec(text.trim());
  if (m === null) return NaN;
  return Number(m[1]) * 1024 ** " KMGT".indexOf((m[2] || " ").toUpperCase());
}

/**
 * `bytes` of non-zero data, the same `chunk` repeated (1 MiB of random bytes by
 * default), fsynced: every block allocated and holding data, so no write
 * allocates, no read hits a hole, and no copy can skip a range as zeros.
 * @param {string} path
 * @param {number} bytes
 * @param {Buffer} [chunk]
 */
export async function fillImage(path, bytes, chunk = randomBytes(1 << 20)) {
  const fh = await open(path, "w");
  try {
    await fh.truncate(bytes);
    for (let offset = 0; offset < bytes; offset += chunk.length)
      await fh.write(chunk, 0, Math.min(chunk.length, bytes - offset), offset);
    await fh.sync();
  } finally {
    await fh.close();
  }
}

/** A sparse file of `bytes`, fsynced; with `metadata`, the pair metadata beside it goes too. */
export async function sparseImage(path, bytes, { metadata = false } = {}) {
  if (metadata) await rm(`${path}.pcmeta`, { force: true });
  const fh = await open(path, "w");
  try {
    await fh.truncate(bytes);
    await fh.sync();
  } finally {
    await fh.close();
  }
}
