// The remote controller: serves its volume read-only to hosts and takes the
// replication stream on a second export, applied in arrival order.
import { NbdServer } from "../../nbd/server/server.js";
import type { Endpoint } from "../../nbd/transport.js";
import type { Logger } from "../../nbd/logger.js";
import { ReadOnlyFilter } from "../backend/filter.js";
import { OrderedFilter } from "../backend/ordered.js";
import { ORDERED_STREAM_DESCRIPTION } from "../mirror/link.js";
import { openVolume, type VolumeSpec } from "../volume.js";
import { endpointUri } from "../cli/common.js";

export interface SecondaryOptions {
  volume: VolumeSpec;
  listen: Endpoint;
  exportName: string;
  replicationExport: string;
  logger: Logger;
}

export interface RunningSecondary {
  hostUri: string;
  replicationUri: string;
  server: NbdServer;
  status: () => Record<string, unknown>;
  stop(): Promise<void>;
}

export async function startSecondary(options: SecondaryOptions): Promise<RunningSecondary> {
  if (options.exportName === options.replicationExport)
    throw new Error(`the host export and the replication export must have different names`);
  // The stream is applied one write at a time (OrderedFilter): doing writes up to a
  // track's usual size on the event loop saves a thread-pool round trip on each.
  const volume = await openVolume({ inlineMax: 1024 * 1024, ...options.volume });
  for (const w of volume.warnings) options.logger.warn(w);
  const local = volume.backend;
  const server = new NbdServer({
    exports: [
      {
        name: options.exportName,
        description: `${volume.description} (secondary, read-only)`,
        volume: new ReadOnlyFilter(local),
      },
      {
        name: options.replicationExport,
        description: ORDERED_STREAM_DESCRIPTION,
        volume: new OrderedFilter(local),
      },
    ],
    logger: options.logger,
  });
  const listener = await server.listen(options.listen);
  const hostUri = endpointUri(listener.endpoint, options.exportName);
  const replicationUri = endpointUri(listener.endpoint, options.replicationExport);
  options.logger.info(
    { uri: hostUri, replicationUri, size: local.size, volume: volume.description },
    "listening",
  );
  return {
    hostUri,
    replicationUri,
    server,
    status: () => ({
      role: "secondary",
      host: { uri: hostUri, volume: volume.description, size: local.size },
      replicationUri,
      connections: server.connectionCount,
    }),
    async stop() {
      await server.close();
      await local.flush();
      await local.close();
    },
  };
}
