// What the primary does with a new connection to its remote before mirroring
// over it, and once a resync has made the remote whole: compare generations,
// take the remote's marks, and keep the remote's pair record up to date
// through its control page (a peercopy secondary) — or, with any other NBD
// server, trust this side's own metadata.
import type { NbdClient } from "../../nbd/client/index.js";
import type { Logger } from "../../nbd/logger.js";
import type { TrackState } from "../mirror/tracks.js";
import {
  CONTROL_PAGE_SIZE,
  decodeRecord,
  encodeCommand,
  type ControlCommand,
  type PairRecord,
} from "./control.js";
import { afterResync, compareGenerations, hex, SyncDecision } from "./generations.js";
import { newPairId, type PairSide } from "./side.js";

/** The metadata context in which a peercopy controller publishes its out-of-sync tracks. */
export const OUT_OF_SYNC_CONTEXT = "peercopy:out-of-sync";

export interface ConnectOutcome {
  readonly action: "mirror" | "refuse";
  /** "trusted": a remote without a pair record, taken to be the one this side's metadata knows. */
  readonly decision: SyncDecision | "trusted";
  readonly remote: PairRecord | undefined;
  /** Tracks this side changed that the remote lacks, and the remote's own marks. */
  readonly localTracks: number;
  readonly remoteTracks: number;
  readonly reason: string;
}

export interface ConnectOptions {
  readonly client: NbdClient;
  /** The remote is a peercopy secondary: it keeps a pair record in its control page. */
  readonly controlPage: boolean;
  readonly side: PairSide;
  readonly tracks: TrackState;
  /** The operator's word: the remote's own changes may be overwritten. */
  readonly discardRemote: boolean;
  readonly logger: Logger;
}

export async function readPairRecord(client: NbdClient): Promise<PairRecord> {
  const page = Buffer.alloc(CONTROL_PAGE_SIZE);
  await client.read(page, client.size - CONTROL_PAGE_SIZE);
  return decodeRecord(page);
}

export function sendControl(client: NbdClient, command: ControlCommand): Promise<void> {
  return client.write(encodeCommand(command), client.size - CONTROL_PAGE_SIZE);
}

export async function onConnect(o: ConnectOptions): Promise<ConnectOutcome> {
  const { client, side, tracks } = o;
  const localTracks = tracks.outOfSyncTracks;
  if (!o.controlPage) {
    // No pair record to compare: a first start copies everything, later ones trust the bitmap.
    if (side.state.fresh) tracks.markStale(0, tracks.trackCount);
    return outcome("mirror", "trusted", undefined, localTracks, 0, "remote keeps no pair record");
  }
  const remote = await readPairRecord(client);
  const local = side.state;
  const samePair = remote.pairId !== "" && remote.pairId === local.pairId;
  let decision = compareGenerations({ ...local.generations, fresh: local.fresh }, remote);
  // A first copy that was cut short: this side's marks still cover what it did not copy.
  if (remote.fresh && samePair && remote.bitmap === 0n) decision = SyncDecision.INCREMENTAL;
  if (remote.pairId !== "" && local.pairId !== "" && !samePair && !remote.fresh)
    decision = SyncDecision.UNRELATED;
  const remoteTracks = remote.outOfSyncTracks;
  if (remote.role === "primary")
    return outcome(
      "refuse",
      decision,
      remote,
      localTracks,
      remoteTracks,
      "the remote was promoted and takes host writes; demote it, or make it the primary and this side its secondary",
    );
  const conflict =
    decision === SyncDecision.SPLIT_BRAIN ||
    decision === SyncDecision.REMOTE_NEWER ||
    decision === SyncDecision.UNRELATED;
  if (conflict && !o.discardRemote)
    return outcome("refuse", decision, remote, localTracks, remoteTracks, conflictReason(decision));

  if (decision === SyncDecision.FULL || decision === SyncDecision.UNRELATED) {
    tracks.markStale(0, tracks.trackCount);
  } else if (remoteTracks > 0) {
    // The remote's own marks: tracks it changed, or wrote as a primary and never sent on.
    await addRemoteMarks(client, tracks, o.logger);
  }
  if (local.pairId === "" || !samePair) await side.update({ pairId: newPairId() });
  if (
    tracks.outOfSyncTracks > 0 ||
    remote.inconsistent ||
    remote.current !== local.generations.current
  )
    await sendControl(client, {
      op: "begin-resync",
      pairId: side.state.pairId,
      tracks: tracks.outOfSyncTracks,
    });
  return outcome("mirror", decision, remote, localTracks, remoteTracks, "");
}

/** The remote now holds this side's current generation. */
export async function onInSync(
  client: NbdClient,
  controlPage: boolean,
  side: PairSide,
): Promise<void> {
  // The resync's clears reach the metadata first: a crash from here on must not
  // find the tracks just copied still marked (clears are otherwise written lazily).
  await side.flushBits();
  const g = side.state.generations;
  if (controlPage) {
    await client.flush();
    await sendControl(client, { op: "in-sync", pairId: side.state.pairId, current: g.current });
  }
  await side.update({ generations: afterResync(g), fresh: false });
}

/** A clean stop or a demotion: the secondary may be promoted at once, and knows whether it is whole. */
export async function onRelease(client: NbdClient, side: PairSide, inSync: boolean): Promise<void> {
  await sendControl(client, { op: "release", pairId: side.state.pairId, inSync });
}

async function addRemoteMarks(
  client: NbdClient,
  tracks: TrackState,
  logger: Logger,
): Promise<void> {
  if (!client.metaContexts.has(OUT_OF_SYNC_CONTEXT)) {
    logger.warn(
      { context: OUT_OF_SYNC_CONTEXT },
      "the remote has marked tracks but does not publish them; copying every track",
    );
    tracks.markStale(0, tracks.trackCount);
    return;
  }
  const size = tracks.volumeSize;
  const span = 256 * 1024 * 1024;
  for (let offset = 0; offset < size;) {
    const extents = await client.blockStatusOf(
      OUT_OF_SYNC_CONTEXT,
      offset,
      Math.min(span, size - offset),
    );
    for (const e of extents) {
      const length = Math.min(e.length, size - offset);
      if ((e.flags & 1) !== 0 && length > 0) {
        const first = Math.floor(offset / tracks.trackSize);
        const last = Math.floor((offset + length - 1) / tracks.trackSize);
        tracks.markStale(first, last - first + 1);
      }
      offset += length;
      if (offset >= size) break;
    }
  }
}

function conflictReason(d: SyncDecision): string {
  if (d === SyncDecision.SPLIT_BRAIN)
    return "split brain: both sides were written since their last common state; nothing is copied until you discard one side's changes (peercopy resolve --discard remote|local)";
  if (d === SyncDecision.REMOTE_NEWER)
    return "the remote has writes this side does not (it was promoted since); copying would destroy them: make it the primary, or discard its changes (peercopy resolve --discard remote)";
  return "the remote holds a different volume (unrelated generations); to overwrite it with a full copy, peercopy resolve --discard remote";
}

function outcome(
  action: ConnectOutcome["action"],
  decision: ConnectOutcome["decision"],
  remote: PairRecord | undefined,
  localTracks: number,
  remoteTracks: number,
  reason: string,
): ConnectOutcome {
  return { action, decision, remote, localTracks, remoteTracks, reason };
}

export { hex };
