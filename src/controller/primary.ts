// The first storage controller: serves hosts, mirrors every write to the remote.
import { NbdServer } from "../../nbd/server/server.js";
import type { Endpoint } from "../../nbd/transport.js";
import type { Logger } from "../../nbd/logger.js";
import { MirrorFilter, type MirrorOptions } from "../mirror/mirror.js";
import { SuspendReason } from "../mirror/pair.js";
import { openVolume, type VolumeSpec } from "../volume.js";
import { endpointUri } from "../cli/common.js";
import { primaryStatus } from "../admin/status.js";

export interface PrimaryOptions {
  volume: VolumeSpec;
  listen: Endpoint;
  exportName: string;
  mirror: Omit<MirrorOptions, "logger">;
  logger: Logger;
}

export interface RunningPrimary {
  hostUri: string;
  mirror: MirrorFilter;
  server: NbdServer;
  status: () => Record<string, unknown>;
  actions: Record<string, () => unknown>;
  /** Stop taking host requests, drain the link (bounded), flush both sides. */
  stop(timeoutMs: number): Promise<boolean>;
}

export async function startPrimary(options: PrimaryOptions): Promise<RunningPrimary> {
  const volume = await openVolume(options.volume);
  for (const w of volume.warnings) options.logger.warn(w);
  const local = volume.backend;
  const mirror = new MirrorFilter(local, { ...options.mirror, logger: options.logger });
  const server = new NbdServer({
    exports: [
      { name: options.exportName, description: `${volume.description} (primary)`, volume: mirror },
    ],
    logger: options.logger,
  });
  await mirror.start();
  const listener = await server.listen(options.listen);
  const hostUri = endpointUri(listener.endpoint, options.exportName);
  options.logger.info(
    {
      uri: hostUri,
      remote: options.mirror.remote,
      mode: mirror.mode,
      size: local.size,
      volume: volume.description,
    },
    "listening",
  );
  const info = {
    role: "primary" as const,
    hostUri,
    volume: volume.description,
    size: local.size,
    hostConnections: () => server.connectionCount,
  };
  return {
    hostUri,
    mirror,
    server,
    status: () => primaryStatus(info, mirror),
    actions: {
      suspend: () => {
        mirror.suspend(SuspendReason.OPERATOR);
        return { pairState: mirror.state };
      },
      resume: () => {
        mirror.resume();
        return { pairState: mirror.state };
      },
      "link/cut": () => {
        mirror.link.cut();
        return { link: mirror.link.state };
      },
    },
    async stop(timeoutMs: number) {
      await server.close();
      const drained = await mirror.stop(timeoutMs);
      mirror.lag.close();
      await local.close();
      return drained;
    },
  };
}
