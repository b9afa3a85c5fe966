import { parseArgs } from "node:util";
import { NbdServer } from "../../nbd/server/server.js";
import type { Endpoint } from "../../nbd/transport.js";
import { VolumeOpenError } from "../backend/file.js";
import { openVolume } from "../volume.js";
import { parseListen, parseSize, UsageError } from "./args.js";
import { createLogger } from "./log.js";
import { asUsage, endpointUri, waitForSignal } from "./common.js";

const HELP = `usage: peercopy serve IMAGE [options]
       peercopy serve --memory SIZE [options]

Serve one volume over NBD until SIGINT or SIGTERM.

  --size SIZE         create IMAGE as a sparse file of SIZE if it does not exist
  --memory SIZE       serve a RAM volume of SIZE instead of IMAGE
  --listen HOST:PORT  TCP address to listen on (default 127.0.0.1:10809; port 0 picks one)
  --socket PATH       listen on a unix socket instead of TCP
  --export NAME       export name (default: the empty name, the default export)
  --read-only         refuse writes
  --log-level LEVEL   trace, debug, info, warn, error (default info)

Sizes take K, M, G or T suffixes (powers of 1024).`;

export const SERVE_OPTIONS = {
  size: { type: "string" },
  memory: { type: "string" },
  listen: { type: "string" },
  socket: { type: "string" },
  export: { type: "string" },
  "read-only": { type: "boolean" },
  "log-level": { type: "string" },
  help: { type: "boolean", short: "h" },
} as const;

export async function serveCommand(args: string[]): Promise<number> {
  const { values, positionals } = asUsage(() =>
    parseArgs({ args, options: SERVE_OPTIONS, allowPositionals: true, strict: true }),
  );
  if (values.help === true) {
    process.stdout.write(`${HELP}\n`);
    return 0;
  }
  const memory = values.memory === undefined ? undefined : parseSize(values.memory, "--memory");
  const size = values.size === undefined ? undefined : parseSize(values.size, "--size");
  if (positionals.length > 1) throw new UsageError(`expected one IMAGE, got ${positionals.length}`);
  const image = positionals[0];
  if (image === undefined && memory === undefined)
    throw new UsageError("give an IMAGE path or --memory SIZE (see peercopy serve --help)");
  if (image !== undefined && memory !== undefined)
    throw new UsageError("give either an IMAGE path or --memory SIZE, not both");
  if (values.listen !== undefined && values.socket !== undefined)
    throw new UsageError("give either --listen or --socket, not both");
  const endpoint: Endpoint =
    values.socket !== undefined
      ? { kind: "unix", path: values.socket }
      : parseListen(values.listen ?? "127.0.0.1:10809");
  const exportName = values.export ?? "";
  const logger = createLogger(values["log-level"] ?? "info");

  let volume;
  try {
    volume = await openVolume({ image, memory, size, readOnly: values["read-only"] === true });
  } catch (err) {
    if (err instanceof VolumeOpenError) throw new UsageError(err.message, { cause: err });
    throw err;
  }
  for (const warning of volume.warnings) logger.warn(warning);
  const server = new NbdServer({
    exports: [{ name: exportName, description: volume.description, volume: volume.backend }],
    logger,
  });
  const listener = await server.listen(endpoint);
  logger.info(
    {
      uri: endpointUri(listener.endpoint, exportName),
      size: volume.backend.size,
      volume: volume.description,
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
