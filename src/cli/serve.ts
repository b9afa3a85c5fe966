import { NbdServer } from "../../nbd/server/server.js";
import { LARGE_INLINE_WRITES, openVolume } from "../volume.js";
import { createLogger } from "./log.js";
import { endpointUri, openOrUsage, parseCommandLine, waitForSignal } from "./common.js";
import { HOST_HELP, HOST_OPTIONS, parseHostArgs } from "./host-options.js";
import { parseTlsArgs, TLS_HELP, TLS_OPTIONS, tlsUri } from "./tls-options.js";
import { LIMIT_HELP, LIMIT_OPTIONS, parseLimitArgs } from "./limit-options.js";

const HELP = `usage: peercopy serve IMAGE [options]
       peercopy serve --memory SIZE [options]

Serve one volume (file, block device or RAM) over NBD until SIGINT or SIGTERM.

${HOST_HELP.replace("DEFAULT_LISTEN", "127.0.0.1:10809")}
  --read-only         refuse writes
${TLS_HELP}
${LIMIT_HELP}

Sizes take K, M, G or T suffixes (powers of 1024).`;

const OPTIONS = {
  ...HOST_OPTIONS,
  ...TLS_OPTIONS,
  ...LIMIT_OPTIONS,
  "read-only": { type: "boolean" },
} as const;

export async function serveCommand(args: string[]): Promise<number> {
  const parsed = parseCommandLine(
    { args, options: OPTIONS, allowPositionals: true, strict: true },
    HELP,
  );
  if (parsed === undefined) return 0;
  const { values, positionals } = parsed;
  const host = parseHostArgs(values, positionals, "127.0.0.1:10809", values["read-only"] === true);
  const tls = await parseTlsArgs(values);
  const limits = parseLimitArgs(values);
  const logger = createLogger(host.logLevel);
  const volume = await openOrUsage(() =>
    openVolume({ inlineMax: LARGE_INLINE_WRITES, ...host.volume }),
  );
  for (const warning of volume.warnings) logger.warn(warning);
  const server = new NbdServer({
    exports: [{ name: host.exportName, description: volume.description, volume: volume.backend }],
    logger,
    tls,
    limits,
  });
  const listener = await server.listen(host.listen);
  logger.info(
    {
      uri: tlsUri(endpointUri(listener.endpoint, host.exportName), tls),
      size: volume.backend.size,
      volume: volume.description,
      tls: tls === undefined ? "off" : `${tls.mode} (${tls.kind})`,
    },
    "listening",
  );
  const signal = await waitForSignal();
  logger.info({ signal }, "stopping: finishing requests in flight");
  await server.close();
  await volume.backend.flush();
  await volume.backend.close();
  logger.info("stopped");
  return 0;
}
