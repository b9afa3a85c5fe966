import { randomBytes } from "node:crypto";

/** A random non-zero generation identifier (0n means "none" on disk). */
export function newGeneration(): bigint {
  for (;;) {
    const g = randomBytes(8).readBigUInt64LE();
    if (g !== 0n) return g;
  }
}

export function checkPairId(pairId: string): void {
  if (pairId !== "" && !/^[0-9a-f]{32}$/.test(pairId))
    throw new TypeError(`pair id ${JSON.stringify(pairId)}: must be 32 lowercase hex digits or ""`);
}
