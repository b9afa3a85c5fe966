// Generation identifiers (DRBD's data generation UUIDs). Each side of a pair
// keeps a current generation, the generation its out-of-sync bitmap started
// from (0 while it is in sync with its peer) and two older ones. Comparing two
// sides tells whether anything must be copied, in which direction, and whether
// both sides were written since they last agreed (split brain).

export interface Generations {
  readonly current: bigint;
  /** The generation the out-of-sync bitmap counts from; 0n when in sync. */
  readonly bitmap: bigint;
  readonly history: readonly [bigint, bigint];
}

export const SyncDecision = {
  /** The remote holds this side's current generation: copy the marked tracks (often none). */
  INCREMENTAL: "incremental",
  /** The remote never held data of this pair, or is older than this side's bitmap: copy all. */
  FULL: "full",
  /** The remote was written after this side's last common state, and this side was not. */
  REMOTE_NEWER: "remote-newer",
  /** Both sides were written since their last common generation. */
  SPLIT_BRAIN: "split-brain",
  /** No common history at all: different volumes. */
  UNRELATED: "unrelated",
} as const;
export type SyncDecision = (typeof SyncDecision)[keyof typeof SyncDecision];

export interface SideGenerations extends Generations {
  /** Never synced with any peer (new metadata, or none kept). */
  readonly fresh: boolean;
}

/**
 * What the primary (`local`) must do for the remote to hold its data. Pure: the
 * caller applies the answer. An answer other than INCREMENTAL or FULL means
 * nothing may be overwritten until the operator says which side to discard.
 */
export function compareGenerations(local: SideGenerations, remote: SideGenerations): SyncDecision {
  if (remote.fresh) return SyncDecision.FULL;
  const lc = local.current;
  if (remote.current === lc) return SyncDecision.INCREMENTAL;
  if (local.bitmap !== 0n && remote.current === local.bitmap) return SyncDecision.INCREMENTAL;
  // The remote started a bitmap from a state this side still is in: only it moved on.
  if (remote.bitmap !== 0n && remote.bitmap === lc) return SyncDecision.REMOTE_NEWER;
  const common =
    remote.bitmap !== 0n &&
    (remote.bitmap === local.bitmap || local.history.includes(remote.bitmap));
  if (common) return SyncDecision.SPLIT_BRAIN;
  if (remote.bitmap !== 0n && remote.history.includes(lc)) return SyncDecision.REMOTE_NEWER;
  // The remote is an older state of this side, from before the bitmap began: no marks cover it.
  if (local.history.includes(remote.current)) return SyncDecision.FULL;
  return SyncDecision.UNRELATED;
}

/** The generations after a resync made the remote hold `g.current`: the bitmap becomes history. */
export function afterResync(g: Generations): Generations {
  if (g.bitmap === 0n) return g;
  return { current: g.current, bitmap: 0n, history: [g.bitmap, g.history[0]] };
}

/** The generations when this side starts taking writes its peer does not get. */
export function divergeFrom(g: Generations, fresh: bigint): Generations {
  if (g.bitmap !== 0n) return g; // already counting changes from an earlier common state
  return { current: fresh, bitmap: g.current, history: g.history };
}

export function hex(g: bigint): string {
  return g.toString(16).padStart(16, "0");
}

export function parseHex(text: unknown): bigint {
  if (typeof text !== "string" || !/^[0-9a-f]{1,16}$/.test(text))
    throw new Error(`not a generation: ${String(text)}`);
  return BigInt(`0x${text}`);
}
