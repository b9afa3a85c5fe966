import { startSecondary } from "../controller/secondary.js";
import { Dashboard } from "../admin/dashboard.js";
import { LIMIT_HELP, LIMIT_OPTIONS, parseLimitArgs } from "./limit-options.js";
import { ADMIN_HELP, ADMIN_OPTIONS, parseAdminArgs, startAdminFromArgs } from "./admin-options.js";
import { createLogger } from "./log.js";
import { openOrUsage, parseCommandLine, waitForSignal } from "./common.js";
import { HOST_HELP, HOST_OPTIONS, parseHostArgs } from "./host-options.js";
import { parseMetadataArgs } from "./pair-options.js";
import {
  parseTlsArgs,
  parseTrustedPeers,
  REPLICATION_PEER_HELP,
  replicationAuthorizer,
  TLS_HELP,
  TLS_OPTIONS,
} from "./tls-options.js";

const HELP = `usage: peercopy secondary IMAGE [options]

The remote controller. Hosts get IMAGE read-only under --export; the primary
writes to the replication export (default "replication"), whose writes are
applied in the order they arrive. Point the primary at it with
  peercopy primary P.img --remote nbd://HOST:PORT/replication

${HOST_HELP.replace("DEFAULT_LISTEN", "127.0.0.1:10810")}
  --replication-export NAME   export the primary writes to (default replication)
  --admin HOST:PORT           serve GET /status, /metrics and POST /promote here
${ADMIN_HELP}
  --metadata PATH|none        pair record and marks (default IMAGE.pcmeta)
  --init-metadata             discard a metadata file that does not fit this volume
TLS for the port (host and replication exports):
${TLS_HELP}
${REPLICATION_PEER_HELP}
${LIMIT_HELP}

Without TLS the replication export has no authentication: anyone who can reach
the port can write to it. Bind it to loopback or a private network, or use TLS
with --replication-peer. Hosts can only read until the secondary is promoted.`;

const OPTIONS = {
  ...HOST_OPTIONS,
  ...TLS_OPTIONS,
  ...ADMIN_OPTIONS,
  ...LIMIT_OPTIONS,
  "replication-peer": { type: "string", multiple: true },
  "replication-export": { type: "string" },
  metadata: { type: "string" },
  "init-metadata": { type: "boolean" },
} as const;

export async function secondaryCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(
    { args, options: OPTIONS, allowPositionals: true, strict: true },
    HELP,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const host = parseHostArgs(values, positionals, "127.0.0.1:10810");
  const admin = parseAdminArgs(values);
  const trusted = parseTrustedPeers(values["replication-peer"]);
  const tls = await parseTlsArgs(
    values,
    trusted.some((t) => t.kind !== "psk"),
  );
  const authorizeReplication = replicationAuthorizer(trusted, tls);
  const logger = createLogger(host.logLevel);
  const secondary = await openOrUsage(() =>
    startSecondary({
      volume: host.volume,
      listen: host.listen,
      exportName: host.exportName,
      replicationExport: values["replication-export"] ?? "replication",
      metadata: parseMetadataArgs(values),
      logger,
      tls,
      limits: parseLimitArgs(values),
      authorizeReplication,
    }),
  );
  if (tls === undefined)
    logger.warn(
      "the replication export is open to anyone who reaches the port: use TLS with --replication-peer off loopback",
    );
  else
    logger.info(
      { replicationPeers: values["replication-peer"] },
      "the replication export takes the stream only from these primaries",
    );
  const adminServer = await startAdminFromArgs(
    admin,
    {
      status: secondary.status,
      actions: secondary.actions,
      dashboard: new Dashboard({ status: secondary.status, marks: secondary.side.bits }),
    },
    logger,
  );
  const signal = await waitForSignal();
  logger.info({ signal }, "stopping");
  await adminServer?.close();
  await secondary.stop();
  logger.info("stopped");
  return 0;
}
