import { startSecondary } from "../controller/secondary.js";
import { startAdmin } from "../admin/server.js";
import { createLogger } from "./log.js";
import { openOrUsage, parseCommandLine, waitForSignal } from "./common.js";
import { HOST_HELP, HOST_OPTIONS, parseHostArgs } from "./host-options.js";
import { parseListen } from "./args.js";
import { parseMetadataArgs } from "./pair-options.js";
import { parseTlsArgs, TLS_HELP, TLS_OPTIONS } from "./tls-options.js";

const HELP = `usage: peercopy secondary IMAGE [options]

The remote controller. Hosts get IMAGE read-only under --export; the primary
writes to the replication export (default "replication"), whose writes are
applied in the order they arrive. Point the primary at it with
  peercopy primary P.img --remote nbd://HOST:PORT/replication

${HOST_HELP.replace("DEFAULT_LISTEN", "127.0.0.1:10810")}
  --replication-export NAME   export the primary writes to (default replication)
  --admin HOST:PORT           serve GET /status, /metrics and POST /promote here
  --metadata PATH|none        pair record and marks (default IMAGE.pcmeta)
  --init-metadata             discard a metadata file that does not fit this volume
TLS for the port (host and replication exports):
${TLS_HELP}

Without TLS the replication export has no authentication: anyone who can reach
the port can write to it. Bind it to loopback or a private network.`;

const OPTIONS = {
  ...HOST_OPTIONS,
  ...TLS_OPTIONS,
  "replication-export": { type: "string" },
  admin: { type: "string" },
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
  const admin = values.admin === undefined ? undefined : parseListen(values.admin, "--admin");
  const tls = await parseTlsArgs(values);
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
    }),
  );
  const adminServer =
    admin?.kind === "tcp"
      ? (
          await startAdmin({
            host: admin.host,
            port: admin.port,
            status: secondary.status,
            actions: secondary.actions,
            logger,
          })
        ).server
      : undefined;
  const signal = await waitForSignal();
  logger.info({ signal }, "stopping");
  await adminServer?.close();
  await secondary.stop();
  logger.info("stopped");
  return 0;
}
