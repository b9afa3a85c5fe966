// One side of a pair as the controller sees it: its out-of-sync bits, write
// intent, and its pair record (role, pair id, generations, flags), kept in the
// persistent metadata beside the volume or, with `--metadata none`, in memory.
import { randomBytes } from "node:crypto";
import { MemoryStaleBits, type StaleBits } from "../mirror/tracks.js";
import type { Generations } from "./generations.js";

export const Role = { PRIMARY: "primary", SECONDARY: "secondary" } as const;
export type Role = (typeof Role)[keyof typeof Role];

export interface SideState {
  readonly role: Role;
  /** Shared by both sides once the first copy began; "" before. */
  readonly pairId: string;
  readonly generations: Generations;
  /** Never synced with a peer. */
  readonly fresh: boolean;
  /** Mid-resync as a target: the image is not a state its source ever had. */
  readonly inconsistent: boolean;
}

export interface Recovered {
  /** The last run did not close the metadata cleanly. */
  readonly crashed: boolean;
  /** Tracks counted out of sync because they were in the activity log at the crash. */
  readonly activityLogTracks: number;
  /** Tracks out of sync in the bitmap as found. */
  readonly bitmapTracks: number;
}

export interface PairSide {
  readonly bits: StaleBits;
  /** The metadata file, or undefined when nothing is kept (`--metadata none`). */
  readonly path: string | undefined;
  readonly state: SideState;
  readonly recovered: Recovered;
  /** Write intent (see src/metadata/): undefined when no metadata write is needed. */
  beginWrite(first: number, count: number): Promise<void> | undefined;
  endWrite(first: number, count: number): void;
  /** Durable change of the pair record. */
  update(patch: Partial<SideState>): Promise<void>;
  /** Every changed bit reaches the metadata (clears are otherwise written lazily). */
  flushBits(): Promise<void>;
  /** Clean close: the next start trusts the bitmap alone. */
  close(): Promise<void>;
}

export function newGeneration(): bigint {
  for (;;) {
    const g = randomBytes(8).readBigUInt64BE();
    if (g !== 0n) return g;
  }
}

export function newPairId(): string {
  return randomBytes(16).toString("hex");
}

/** `--metadata none`: the same interface, nothing outlives the process. */
export class MemorySide implements PairSide {
  readonly bits: StaleBits;
  readonly path = undefined;
  readonly recovered: Recovered = { crashed: false, activityLogTracks: 0, bitmapTracks: 0 };
  state: SideState;

  constructor(volumeSize: number, trackSize: number, role: Role) {
    this.bits = new MemoryStaleBits(volumeSize, trackSize);
    this.state = {
      role,
      pairId: "",
      generations: { current: newGeneration(), bitmap: 0n, history: [0n, 0n] },
      fresh: true,
      inconsistent: false,
    };
  }

  beginWrite(): undefined {
    return undefined;
  }
  endWrite(): void {}
  update(patch: Partial<SideState>): Promise<void> {
    this.state = { ...this.state, ...patch };
    return Promise.resolve();
  }
  flushBits(): Promise<void> {
    return Promise.resolve();
  }
  close(): Promise<void> {
    return Promise.resolve();
  }
}
