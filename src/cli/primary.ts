import { startPrimary } from "../controller/primary.js";
import { Dashboard } from "../admin/dashboard.js";
import { LIMIT_HELP, LIMIT_OPTIONS, parseLimitArgs } from "./limit-options.js";
import { ADMIN_HELP, ADMIN_OPTIONS, parseAdminArgs, startAdminFromArgs } from "./admin-options.js";
import { LagPolicy, LinkLossPolicy, MirrorMode } from "../mirror/pair.js";
import { validateTrackSize } from "../sequencer/plan.js";
import { createLogger } from "./log.js";
import { asUsage, openOrUsage, parseCommandLine, waitForSignal } from "./common.js";
import { HOST_HELP, HOST_OPTIONS, parseHostArgs } from "./host-options.js";
import { oneOf, parseDuration, parseSize, UsageError } from "./args.js";
import { parseMetadataArgs, stopMessage } from "./pair-options.js";
import { checkRemoteUri, parseTlsArgs, TLS_HELP, TLS_OPTIONS } from "./tls-options.js";
import { LINK_HELP, LINK_OPTIONS, parseLinkArgs } from "./link-options.js";
import { DISK_HELP, DISK_OPTIONS, parseDiskArgs } from "./disk-options.js";

const HELP = `usage: peercopy primary IMAGE --remote NBD-URI [options]

The first storage controller: serves hosts and mirrors every write, zero and
trim to the remote NBD server, track by track, in order.

  --remote NBD-URI        the secondary: a peercopy secondary's replication export
                          (nbd://HOST:PORT/replication) or any NBD server; over TLS
                          nbds://HOST:PORT/replication?tls-certificates=DIR (with
                          client-cert.pem, client-key.pem) or
                          nbds://IDENTITY@HOST:PORT/replication?tls-psk-file=FILE
  --mode sync|async       sync: a write is acknowledged once both sides have it
                          (default); async: once the local volume has it
  --track-size SIZE       replication unit, a power of two from 4K to 16M (default 64K)
  --max-lag LIMIT         async only: bound the lag, e.g. 64M, 2s, or 64M,2s
  --on-lag block|suspend  past the bound: slow hosts down (default) or stop mirroring
  --on-link-loss suspend|fail
                          when the secondary is gone: go on and mark tracks
                          (default) or fail host writes with EIO
  --ordered-remote auto|yes|no
                          whether the remote applies writes in arrival order
                          (auto: only a peercopy secondary does)
  --stop-timeout DURATION how long SIGTERM waits for the link to drain (default 30s)
  --metadata PATH|none    where the out-of-sync bitmap, activity log and pair
                          generations live (default IMAGE.pcmeta; none keeps them
                          in memory, so every start copies the whole volume)
  --init-metadata         discard a metadata file that does not fit this volume
  --al-extents N          activity-log size: 4 MiB regions hot at once (default 1024)
  --discard remote        at a split brain, overwrite the remote's own changes
  --resync-rate RATE      cap the resync, e.g. 100M (bytes per second; default none)
  --admin HOST:PORT       serve GET /status, GET /metrics and POST actions here
${ADMIN_HELP}
${LINK_HELP}
${DISK_HELP}
${HOST_HELP.replace("DEFAULT_LISTEN", "127.0.0.1:10809")}
TLS for hosts on --listen:
${TLS_HELP}
${LIMIT_HELP}`;

const OPTIONS = {
  ...HOST_OPTIONS,
  ...TLS_OPTIONS,
  ...ADMIN_OPTIONS,
  ...LIMIT_OPTIONS,
  remote: { type: "string" },
  mode: { type: "string" },
  "track-size": { type: "string" },
  "max-lag": { type: "string" },
  "on-lag": { type: "string" },
  "on-link-loss": { type: "string" },
  "ordered-remote": { type: "string" },
  "stop-timeout": { type: "string" },
  metadata: { type: "string" },
  "init-metadata": { type: "boolean" },
  "al-extents": { type: "string" },
  discard: { type: "string" },
  "resync-rate": { type: "string" },
  ...LINK_OPTIONS,
  ...DISK_OPTIONS,
} as const;

export async function primaryCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(
    { args, options: OPTIONS, allowPositionals: true, strict: true },
    HELP,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const host = parseHostArgs(values, positionals, "127.0.0.1:10809");
  if (values.remote === undefined)
    throw new UsageError("--remote NBD-URI is required, e.g. nbd://127.0.0.1:10810/replication");
  const remote = values.remote;
  await checkRemoteUri(remote, "--remote");
  const mode = oneOf(values.mode ?? "sync", Object.values(MirrorMode), "--mode");
  const trackSize =
    values["track-size"] === undefined
      ? undefined
      : parseSize(values["track-size"], "--track-size");
  if (trackSize !== undefined) asUsage(() => validateTrackSize(trackSize), "--track-size");
  let maxLagBytes: number | undefined;
  let maxLagMs: number | undefined;
  for (const part of (values["max-lag"] ?? "").split(",").filter((p) => p !== "")) {
    // "2s", "500ms" bound the time; "64M" bounds the bytes.
    if (/^\d+(\.\d+)?(ms|s)$/.test(part)) maxLagMs = parseDuration(part, "--max-lag");
    else maxLagBytes = parseSize(part, "--max-lag");
  }
  if (mode === MirrorMode.SYNC && (maxLagBytes !== undefined || maxLagMs !== undefined))
    throw new UsageError("--max-lag applies to --mode async only");
  const onLag = oneOf(values["on-lag"] ?? "block", Object.values(LagPolicy), "--on-lag");
  const onLinkLoss = oneOf(
    values["on-link-loss"] ?? "suspend",
    Object.values(LinkLossPolicy),
    "--on-link-loss",
  );
  const ordered = oneOf(
    values["ordered-remote"] ?? "auto",
    ["auto", "yes", "no"] as const,
    "--ordered-remote",
  );
  const stopTimeout = parseDuration(values["stop-timeout"] ?? "30s", "--stop-timeout");
  const admin = parseAdminArgs(values);
  const metadata = parseMetadataArgs(values);
  const discard =
    values.discard === undefined
      ? undefined
      : oneOf(values.discard, ["remote"] as const, "--discard");
  const resyncRate =
    values["resync-rate"] === undefined
      ? undefined
      : parseSize(values["resync-rate"].replace(/\/s$/, ""), "--resync-rate");
  const tls = await parseTlsArgs(values);
  const linkEmulation = parseLinkArgs(values);
  const diskFaults = parseDiskArgs(values);
  const logger = createLogger(host.logLevel);

  const primary = await openOrUsage(() =>
    startPrimary({
      volume: host.volume,
      listen: host.listen,
      exportName: host.exportName,
      mirror: {
        remote,
        mode,
        trackSize,
        maxLagBytes,
        maxLagMs,
        onLag,
        onLinkLoss,
        ordered,
        discardRemote: discard === "remote",
        resyncRate,
      },
      metadata,
      linkEmulation,
      diskFaults,
      logger,
      tls,
      limits: parseLimitArgs(values),
    }),
  );
  const adminServer = await startAdminFromArgs(
    admin,
    {
      status: primary.status,
      actions: primary.actions,
      dashboard: new Dashboard({ status: primary.status, marks: primary.mirror.tracks }),
    },
    logger,
  );
  const signal = await waitForSignal();
  logger.info({ signal }, "stopping: no new host requests; draining the link");
  const report = await primary.stop(stopTimeout);
  await adminServer?.close();
  const message = stopMessage(report);
  if (report.inSync) logger.info(report, message);
  else logger.warn(report, message);
  return 0;
}
