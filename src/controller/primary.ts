// The first storage controller: serves hosts, mirrors every write to the remote.
import { NbdServer, type ServerLimits } from "../../nbd/server/server.js";
import type { Endpoint } from "../../nbd/transport.js";
import type { Logger } from "../../nbd/logger.js";
import type { ServerTls } from "../../nbd/tls.js";
import { CountingFilter } from "../backend/counting.js";
import { MirrorFilter, type MirrorOptions } from "../mirror/mirror.js";
import { LinkState } from "../mirror/link.js";
import { PairState, SuspendReason } from "../mirror/pair.js";
import { openVolume, type VolumeSpec } from "../volume.js";
import { endpointUri } from "../cli/common.js";
import { primaryStatus } from "../admin/status.js";
import { outOfSyncContext } from "../pair/marks.js";
import { checksumContext } from "../pair/checksums.js";
import { openSide, type MetadataSpec } from "../pair/open-side.js";
import { Role } from "../pair/side.js";
import { DEFAULT_TRACK_SIZE } from "../sequencer/plan.js";
import { LinkEmulator } from "../faults/link.js";
import { DiskFaultFilter, parseDiskChange, type DiskFaults } from "../faults/disk.js";
import { parseLinkChange, type LinkChange } from "../faults/settings.js";

export interface PrimaryOptions {
  volume: VolumeSpec;
  listen: Endpoint;
  exportName: string;
  mirror: Omit<MirrorOptions, "logger" | "side">;
  metadata?: MetadataSpec;
  /** Put the link emulator on the link, with these settings to start with. */
  linkEmulation?: LinkChange;
  /** Put the disk fault filter on the local volume, with these settings to start with. */
  diskFaults?: Partial<DiskFaults>;
  logger: Logger;
  /** TLS on the NBD port. */
  tls?: ServerTls;
  /** The NBD server's limits (connections, handshake, options, bytes in flight); defaults otherwise. */
  limits?: Partial<ServerLimits>;
}

/** The remote as configured can never take the stream: a configuration error, exit 2. */
export class ConfigError extends Error {
  readonly code = "ECONFIG";
}

/** What a clean stop leaves on the secondary, said no more strongly than known. */
export interface StopReport {
  /** The pair was full-duplex, the link drained and both sides flushed. */
  readonly inSync: boolean;
  readonly outOfSyncTracks: number;
  readonly outOfSyncBytes: number;
  /** Where the marks are kept for the next start; undefined with --metadata none. */
  readonly metadata: string | undefined;
  /** The remote never completed a first copy from this side. */
  readonly neverSynced: boolean;
}

export interface RunningPrimary {
  hostUri: string;
  mirror: MirrorFilter;
  server: NbdServer;
  status: () => Record<string, unknown>;
  actions: Record<string, (body: Record<string, unknown>) => unknown>;
  /** Stop taking host requests, drain the link (bounded), flush both sides. */
  stop(timeoutMs: number): Promise<StopReport>;
}

export async function startPrimary(options: PrimaryOptions): Promise<RunningPrimary> {
  const { logger } = options;
  // Settings are checked before anything is opened.
  const emulator =
    options.linkEmulation === undefined
      ? undefined
      : new LinkEmulator(options.mirror.remote, logger);
  if (emulator !== undefined && options.linkEmulation !== undefined)
    emulator.apply(options.linkEmulation);
  const volume = await openVolume(options.volume);
  for (const w of volume.warnings) logger.warn(w);
  const disk = options.diskFaults === undefined ? undefined : new DiskFaultFilter(volume.backend);
  if (disk !== undefined && options.diskFaults !== undefined) {
    const settings = disk.apply(options.diskFaults);
    logger.info(settings, "disk fault filter");
  }
  const local = disk ?? volume.backend;
  const trackSize = options.mirror.trackSize ?? DEFAULT_TRACK_SIZE;
  const side = await openSide(
    options.metadata,
    options.volume,
    local.size,
    trackSize,
    Role.PRIMARY,
  );
  if (side.recovered.crashed)
    logger.warn(
      {
        metadata: side.path,
        activityLogTracks: side.recovered.activityLogTracks,
        bitmapTracks: side.recovered.bitmapTracks,
        outOfSyncTracks: side.bits.outOfSyncTracks,
      },
      "the last run did not stop cleanly; the tracks it may have been writing count as out of sync",
    );
  if (side.state.role !== Role.PRIMARY) await side.update({ role: Role.PRIMARY });
  const mirror = new MirrorFilter(local, {
    ...options.mirror,
    side,
    logger,
    linkConnect: emulator?.connect,
  });
  const hostIo = new CountingFilter(mirror);
  const server = new NbdServer({
    exports: [
      {
        name: options.exportName,
        description: `${volume.description} (primary)`,
        volume: hostIo,
        metaContexts: [
          outOfSyncContext(side.bits, mirror.planner.trackSize, local.size),
          checksumContext(local, mirror.planner.trackSize),
        ],
      },
    ],
    logger,
    tls: options.tls,
    limits: options.limits,
  });
  await mirror.start();
  if (mirror.link.state === LinkState.MISCONFIGURED) {
    await mirror.link.stop();
    await side.close();
    await local.close();
    throw new ConfigError(
      `configuration error: ${mirror.link.lastError ?? "the remote cannot take the stream"}`,
    );
  }
  const listener = await server.listen(options.listen);
  const hostUri = endpointUri(listener.endpoint, options.exportName);
  logger.info(
    {
      uri: hostUri,
      remote: options.mirror.remote,
      mode: mirror.mode,
      size: local.size,
      volume: volume.description,
      metadata: side.path ?? "none",
    },
    "listening",
  );
  const info = {
    role: "primary" as const,
    hostUri,
    volume: volume.description,
    size: local.size,
    metadata: side.path,
    hostConnections: () => server.connectionCount,
    hostIo,
  };
  const report = (drained: boolean): StopReport => ({
    inSync:
      drained && mirror.state === PairState.FULL_DUPLEX && mirror.tracks.outOfSyncTracks === 0,
    outOfSyncTracks: mirror.tracks.outOfSyncTracks,
    outOfSyncBytes: mirror.tracks.outOfSyncBytes,
    metadata: side.path,
    neverSynced: side.state.fresh,
  });
  const refuseDemoted = (verb: string): void => {
    if (mirror.demoted)
      throw new Error(
        `this primary was demoted: it mirrors nothing and takes no host writes, so there is nothing to ${verb}; restart this volume as a secondary (or as a primary to take hosts again)`,
      );
  };
  return {
    hostUri,
    mirror,
    server,
    status: () => withFaults(primaryStatus(info, mirror), emulator, disk),
    actions: {
      suspend: () => {
        refuseDemoted("suspend");
        mirror.suspend(SuspendReason.OPERATOR);
        return { pairState: mirror.state };
      },
      resume: () => {
        refuseDemoted("resume");
        if (mirror.state === PairState.SPLIT_BRAIN)
          throw new Error(
            `the pair is in split brain (${mirror.stateDetail ?? "both sides changed"}): resume cannot choose a side; peercopy resolve --discard remote keeps this side's data, or fail over to the remote`,
          );
        if (
          mirror.link.state === LinkState.REFUSED ||
          mirror.link.state === LinkState.MISCONFIGURED
        )
          throw new Error(
            `the remote does not take the stream: ${mirror.link.lastError ?? mirror.link.state}; ${
              mirror.link.state === LinkState.REFUSED
                ? "peercopy resolve --discard remote overwrites its changes"
                : "fix the remote's volume and restart this primary"
            }`,
          );
        mirror.resume();
        if (mirror.link.state !== LinkState.UP)
          return {
            pairState: mirror.state,
            note: `the link is ${mirror.link.state}: the marked tracks are copied once it is up`,
          };
        return { pairState: mirror.state };
      },
      "link/cut": () => {
        mirror.link.cut();
        return { link: mirror.link.state };
      },
      "link/set": (body) => {
        if (emulator === undefined)
          throw new Error(
            "the link emulator is off: start the primary with --link-emulation (or any --link-* option)",
          );
        return { emulation: emulator.apply(parseLinkChange(body, (key) => key)) };
      },
      "disk/set": (body) => {
        if (disk === undefined)
          throw new Error(
            "the disk fault filter is off: start the primary with --disk-faults (or any --disk-* option)",
          );
        const settings = disk.apply(parseDiskChange(body, (key) => key));
        logger.info(settings, "disk fault filter");
        return { diskFaults: settings };
      },
      resolve: (body) => {
        if (body.discard === "local")
          throw new Error(
            "to keep the remote's changes and discard this side's: demote this primary (peercopy demote), promote the remote, and start this volume as its secondary; the new primary then resolves with --discard remote",
          );
        if (body.discard !== "remote")
          throw new Error('give discard: "remote" (overwrite the remote\'s changes) or "local"');
        if (mirror.link.state !== LinkState.REFUSED)
          throw new Error(
            `nothing to resolve: the pair is ${mirror.state} and the link ${mirror.link.state}; resolve ends a split brain or a refused remote`,
          );
        mirror.resolve(true);
        return { pairState: mirror.state, discarded: "remote" };
      },
      verify: (body) => {
        refuseDemoted("verify");
        const rate = rateOf(body.rate ?? 0, "bytes per second of volume compared");
        if (body.resync !== undefined && typeof body.resync !== "boolean")
          throw new Error("give resync: true (copy the differing tracks, the default) or false");
        const started = mirror.verify.start({ resync: body.resync !== false, rateLimit: rate });
        return { verify: "started", ...started, resync: body.resync !== false, rateLimit: rate };
      },
      resync: (body) => {
        const rate = rateOf(body.rate, "bytes per second");
        mirror.resyncProgress.rateLimit = rate;
        return { rateLimit: rate };
      },
      demote: async (body) => {
        refuseDemoted("demote");
        const timeoutMs = typeof body.timeoutMs === "number" ? body.timeoutMs : 30_000;
        mirror.demoted = true;
        const drained = await mirror.stop(timeoutMs);
        const r = report(drained);
        await side.update({ role: Role.SECONDARY });
        mirror.setState(
          PairState.SIMPLEX,
          undefined,
          "demoted: restart this volume as a secondary",
        );
        logger.info(r, "demoted: host writes are refused; restart this volume as a secondary");
        return { role: "secondary", ...r };
      },
    },
    async stop(timeoutMs: number) {
      await server.close();
      const drained = mirror.demoted ? true : await mirror.stop(timeoutMs);
      const r = report(drained);
      mirror.lag.close();
      emulator?.close();
      await side.close();
      await local.close();
      return r;
    },
  };
}

/** The link emulator's settings and counts go beside the link's own; the disk's at the top. */
function withFaults(
  status: Record<string, unknown>,
  emulator: LinkEmulator | undefined,
  disk: DiskFaultFilter | undefined,
): Record<string, unknown> {
  if (emulator !== undefined && typeof status.link === "object" && status.link !== null)
    (status.link as Record<string, unknown>).emulation = emulator.status();
  if (disk !== undefined) status.diskFaults = disk.status();
  return status;
}

/** A rate limit from an admin request's body: a number of bytes per second, 0 for none. */
function rateOf(value: unknown, meaning: string): number {
  if (typeof value !== "number" || !Number.isFinite(value) || value < 0)
    throw new Error(`give rate: ${meaning} (0 for no limit)`);
  return value;
}
