// The remote controller: serves its volume read-only to hosts and takes the
// replication stream on a second export, applied in arrival order, with the
// pair's control page at its end. Promotion makes the host export writable and
// stops the stream; the writes taken then are recorded for the failback.
import { NbdServer, type ServerLimits } from "../../nbd/server/server.js";
import type { Endpoint } from "../../nbd/transport.js";
import type { Logger } from "../../nbd/logger.js";
import type { ServerTls, TlsPeer } from "../../nbd/tls.js";
import { OrderedFilter } from "../backend/ordered.js";
import { ORDERED_STREAM_DESCRIPTION } from "../mirror/link.js";
import { LARGE_INLINE_WRITES, openVolume, type VolumeSpec } from "../volume.js";
import { endpointUri } from "../cli/common.js";
import { ControlFilter, type ControlCommand, type PairRecord } from "../pair/control.js";
import { hex } from "../pair/generations.js";
import { HostGate } from "../pair/host-gate.js";
import { outOfSyncContext } from "../pair/marks.js";
import { checksumContext } from "../pair/checksums.js";
import { openSide, type MetadataSpec } from "../pair/open-side.js";
import { newGeneration, Role, type PairSide } from "../pair/side.js";
import { DEFAULT_TRACK_SIZE } from "../sequencer/plan.js";

export interface SecondaryOptions {
  volume: VolumeSpec;
  listen: Endpoint;
  exportName: string;
  replicationExport: string;
  metadata?: MetadataSpec;
  trackSize?: number;
  logger: Logger;
  /** TLS on the NBD port: the host export and the replication export. */
  tls?: ServerTls;
  /** The NBD server's limits (connections, handshake, options, bytes in flight); defaults otherwise. */
  limits?: Partial<ServerLimits>;
  /** Who may write the replication stream: the reason to refuse a session's TLS peer, or undefined. */
  authorizeReplication?: (peer: TlsPeer | null) => string | undefined;
}

/** A primary counts as connected while it sent anything this recently (its link pings every second). */
const PRIMARY_SEEN_MS = 3000;

export class PromoteRefused extends Error {
  readonly code = "EPROMOTE";
}

export interface RunningSecondary {
  hostUri: string;
  replicationUri: string;
  server: NbdServer;
  side: PairSide;
  status: () => Record<string, unknown>;
  actions: Record<string, (body: Record<string, unknown>) => unknown>;
  promote(force: boolean): Promise<void>;
  stop(): Promise<void>;
}

export async function startSecondary(options: SecondaryOptions): Promise<RunningSecondary> {
  const { logger } = options;
  if (options.exportName === options.replicationExport)
    throw new Error(`the host export and the replication export must have different names`);
  // The stream is applied one write at a time (OrderedFilter): doing writes up to a
  // track's usual size on the event loop saves a thread-pool round trip on each.
  const volume = await openVolume({ inlineMax: LARGE_INLINE_WRITES, ...options.volume });
  for (const w of volume.warnings) logger.warn(w);
  const local = volume.backend;
  const trackSize = options.trackSize ?? DEFAULT_TRACK_SIZE;
  const side = await openSide(
    options.metadata,
    options.volume,
    local.size,
    trackSize,
    Role.SECONDARY,
  );
  if (side.state.role === Role.PRIMARY)
    logger.info(
      { metadata: side.path, outOfSyncTracks: side.bits.outOfSyncTracks },
      "this volume was a primary; it becomes a secondary and keeps its marks for the resync",
    );
  const promoted = { value: false };
  /** The primary's clean stop, as it said it: promotion need not wait for its silence. */
  let released: { at: number; inSync: boolean } | undefined;
  if (side.state.role !== Role.SECONDARY) await side.update({ role: Role.SECONDARY });
  const host = new HostGate(local, side, trackSize);

  const record = (): PairRecord => ({
    role: promoted.value ? "primary" : "secondary",
    pairId: side.state.pairId,
    ...side.state.generations,
    fresh: side.state.fresh,
    inconsistent: side.state.inconsistent,
    volumeSize: local.size,
    trackSize,
    outOfSyncTracks: side.bits.outOfSyncTracks,
  });
  const command = async (c: ControlCommand): Promise<void> => {
    if (promoted.value) throw new PromoteRefused("this controller was promoted");
    if (c.op === "release") {
      released = { at: performance.now(), inSync: c.inSync && c.pairId === side.state.pairId };
      logger.info(
        { inSync: released.inSync },
        released.inSync
          ? "the primary stopped cleanly with this side in sync"
          : "the primary stopped cleanly; this side may lack some of its writes",
      );
      return;
    }
    released = undefined;
    if (c.op === "begin-resync") {
      await side.update({ pairId: c.pairId, inconsistent: true });
      logger.info({ tracks: c.tracks, pairId: c.pairId }, "resync from the primary started");
      return;
    }
    // Everything the stream carried before this command is applied (the primary flushed first).
    await local.flush();
    const bits = side.bits;
    for (let t = bits.nextStale(0); t >= 0; t = bits.nextStale(t + 1)) bits.clearStale(t);
    await side.flushBits();
    const g = side.state.generations;
    await side.update({
      pairId: c.pairId,
      generations: { current: c.current, bitmap: 0n, history: [g.current, g.history[0]] },
      fresh: false,
      inconsistent: false,
    });
    logger.info({ generation: hex(c.current) }, "in sync with the primary");
  };
  const replication = new ControlFilter(new OrderedFilter(local), {
    record,
    command,
    takesStream: () => !promoted.value,
  });
  const marks = outOfSyncContext(side.bits, trackSize, local.size);
  const checksums = checksumContext(local, trackSize);
  const server = new NbdServer({
    exports: [
      {
        name: options.exportName,
        description: `${volume.description} (secondary, read-only)`,
        volume: host,
        metaContexts: [marks, checksums],
      },
      {
        name: options.replicationExport,
        description: ORDERED_STREAM_DESCRIPTION,
        volume: replication,
        metaContexts: [marks, checksums],
        authorize: options.authorizeReplication,
      },
    ],
    logger,
    tls: options.tls,
    limits: options.limits,
  });
  const listener = await server.listen(options.listen);
  const hostUri = endpointUri(listener.endpoint, options.exportName);
  const replicationUri = endpointUri(listener.endpoint, options.replicationExport);
  logger.info(
    {
      uri: hostUri,
      replicationUri,
      size: local.size,
      volume: volume.description,
      metadata: side.path ?? "none",
    },
    "listening",
  );
  // The release command is the primary's last request; anything later is a new primary.
  const releasedInSync = (): boolean | undefined =>
    released !== undefined && replication.lastRequestAt <= released.at
      ? released.inSync
      : undefined;
  const primarySeenMsAgo = (): number | null => {
    const last = replication.lastRequestAt;
    if (last === 0 || releasedInSync() !== undefined) return null;
    return Math.round(performance.now() - last);
  };

  async function promote(force: boolean): Promise<void> {
    if (promoted.value) return;
    const seen = primarySeenMsAgo();
    if (!force && seen !== null && seen < PRIMARY_SEEN_MS)
      throw new PromoteRefused(
        `a primary is connected (its last request came ${seen} ms ago); stop or demote it first, or promote with --force if it is cut off`,
      );
    if (!force && side.state.inconsistent)
      throw new PromoteRefused(
        "this secondary is in the middle of a resync: its image is not a state the primary ever had; promote with --force to take it anyway",
      );
    if (!force && side.state.fresh)
      throw new PromoteRefused(
        "this secondary never completed a copy from a primary; promote with --force to take it anyway",
      );
    promoted.value = true;
    const g = side.state.generations;
    await side.update({
      role: Role.PRIMARY,
      generations:
        g.bitmap === 0n ? { current: newGeneration(), bitmap: g.current, history: g.history } : g,
    });
    host.writable = true;
    logger.info(
      {
        force,
        generation: hex(side.state.generations.current),
        from: hex(side.state.generations.bitmap),
        primaryStoppedInSync: releasedInSync() ?? null,
      },
      "promoted: hosts may write; changes are recorded for the failback",
    );
  }

  return {
    hostUri,
    replicationUri,
    server,
    side,
    promote,
    status: () => ({
      role: promoted.value ? "primary" : "secondary",
      promoted: promoted.value,
      pairState: promoted.value
        ? "simplex"
        : side.state.inconsistent
          ? "duplex-pending"
          : "secondary",
      host: { uri: hostUri, volume: volume.description, size: local.size, writable: host.writable },
      replicationUri,
      connections: server.connectionCount,
      primarySeenMsAgo: primarySeenMsAgo(),
      /** Whether the primary stopped cleanly in sync; null without a clean stop since its last request. */
      primaryStoppedInSync: releasedInSync() ?? null,
      trackSize,
      metadata: side.path ?? null,
      outOfSync: { tracks: side.bits.outOfSyncTracks, bytes: side.bits.outOfSyncBytes },
      pair: {
        id: side.state.pairId,
        current: hex(side.state.generations.current),
        bitmap: hex(side.state.generations.bitmap),
        fresh: side.state.fresh,
        inconsistent: side.state.inconsistent,
      },
    }),
    actions: {
      promote: async (body) => {
        const stoppedInSync = releasedInSync() ?? null;
        await promote(body.force === true);
        return {
          role: "primary",
          generation: hex(side.state.generations.current),
          primaryStoppedInSync: stoppedInSync,
        };
      },
    },
    async stop() {
      await server.close();
      await local.flush();
      await side.close();
      await local.close();
    },
  };
}
