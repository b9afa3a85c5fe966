// Pair states, in the PPRC vocabulary.
export const PairState = {
  SIMPLEX: "simplex",
  DUPLEX_PENDING: "duplex-pending",
  FULL_DUPLEX: "full-duplex",
  SUSPENDED: "suspended",
  /** Both sides changed since they last agreed, or the remote did: nothing is copied. */
  SPLIT_BRAIN: "split-brain",
} as const;
export type PairState = (typeof PairState)[keyof typeof PairState];

export const SuspendReason = {
  OPERATOR: "operator",
  LINK: "link",
  LAG: "lag",
  /** The remote cannot take the stream as configured (read-only, too small). */
  CONFIG: "config",
  /** The remote was promoted: it takes host writes and no longer the stream. */
  PEER_PROMOTED: "peer-promoted",
  /** The remote holds writes this side lacks, or another volume: nothing is copied. */
  CONFLICT: "conflict",
  /** The local volume could not be read for a resync: the pair cannot reach full duplex. */
  LOCAL_DISK: "local-disk",
} as const;
export type SuspendReason = (typeof SuspendReason)[keyof typeof SuspendReason];

export const MirrorMode = { SYNC: "sync", ASYNC: "async" } as const;
export type MirrorMode = (typeof MirrorMode)[keyof typeof MirrorMode];

export const LagPolicy = { BLOCK: "block", SUSPEND: "suspend" } as const;
export type LagPolicy = (typeof LagPolicy)[keyof typeof LagPolicy];

export const LinkLossPolicy = { SUSPEND: "suspend", FAIL: "fail" } as const;
export type LinkLossPolicy = (typeof LinkLossPolicy)[keyof typeof LinkLossPolicy];
