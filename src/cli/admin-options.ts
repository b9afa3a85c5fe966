// The admin API options of the primary and the secondary: where it listens,
// the token actions need, and HTTPS.
import { AdminAuthError, isLoopback, loadAdminToken, type AdminToken } from "../admin/auth.js";
import { startAdmin, type AdminOptions, type AdminServer } from "../admin/server.js";
import type { Logger } from "../../nbd/logger.js";
import { readPem, TlsConfigError } from "../../nbd/tls.js";
import { homedir } from "node:os";
import { join } from "node:path";
import { createSecureContext } from "node:tls";
import { parseListen, UsageError } from "./args.js";

export const ADMIN_OPTIONS = {
  admin: { type: "string" },
  "admin-token-file": { type: "string" },
  "admin-tls-certificates": { type: "string" },
} as const;

export const ADMIN_HELP = `  --admin-token-file FILE  the token POST actions need (its first line; e.g.
                          openssl rand -hex 32 > FILE); without it a random one
                          is written to ~/.peercopy/admin-HOST-PORT.token
                          (or under $XDG_RUNTIME_DIR), where peercopy's
                          commands find it. GET is open on loopback only
  --admin-tls-certificates DIR
                          serve the admin API over HTTPS with DIR's
                          server-cert.pem and server-key.pem`;

/** The directory of generated token files: $XDG_RUNTIME_DIR/peercopy, else ~/.peercopy. */
export function tokenDir(): string {
  const runtime = process.env.XDG_RUNTIME_DIR;
  return runtime !== undefined && runtime !== ""
    ? join(runtime, "peercopy")
    : join(homedir(), ".peercopy");
}

interface AdminValues {
  admin?: string;
  "admin-token-file"?: string;
  "admin-tls-certificates"?: string;
}

export interface AdminSpec {
  readonly host: string;
  readonly port: number;
  readonly tokenFile: string | undefined;
  readonly certificates: string | undefined;
}

/** The admin options, checked (no files read yet); undefined without --admin. */
export function parseAdminArgs(values: AdminValues): AdminSpec | undefined {
  const tokenFile = values["admin-token-file"];
  const certificates = values["admin-tls-certificates"];
  if (values.admin === undefined) {
    if (tokenFile !== undefined || certificates !== undefined)
      throw new UsageError(
        "--admin-token-file and --admin-tls-certificates need --admin HOST:PORT",
      );
    return undefined;
  }
  const at = parseListen(values.admin, "--admin");
  if (at.kind !== "tcp") throw new UsageError("--admin takes HOST:PORT");
  if (!isLoopback(at.host) && tokenFile === undefined)
    throw new UsageError(
      `--admin ${values.admin} is off loopback: give --admin-token-file FILE (and --admin-tls-certificates DIR, so that the token is not sent in the clear)`,
    );
  return { host: at.host, port: at.port, tokenFile, certificates };
}

/** Start the admin API as the options say; files that do not work are usage errors. */
export async function startAdminFromArgs(
  spec: AdminSpec | undefined,
  api: Pick<AdminOptions, "status" | "actions" | "dashboard">,
  logger: Logger,
): Promise<AdminServer | undefined> {
  if (spec === undefined) return undefined;
  let token: AdminToken | undefined;
  let tls: { cert: Buffer; key: Buffer } | undefined;
  try {
    if (spec.tokenFile !== undefined)
      token = await loadAdminToken(spec.tokenFile, (message) => logger.warn(message));
    if (spec.certificates !== undefined) {
      const [cert, key] = await Promise.all([
        readPem(spec.certificates, "server-cert.pem", true),
        readPem(spec.certificates, "server-key.pem", true),
      ]);
      tls = { cert: cert as Buffer, key: key as Buffer };
      try {
        createSecureContext(tls);
      } catch (err) {
        throw new TlsConfigError(`${spec.certificates}: ${(err as Error).message}`, {
          cause: err,
        });
      }
    }
  } catch (err) {
    if (err instanceof AdminAuthError || err instanceof TlsConfigError)
      throw new UsageError(err.message, { cause: err });
    throw err;
  }
  if (!isLoopback(spec.host) && tls === undefined)
    logger.warn(
      { admin: `${spec.host}:${spec.port}` },
      "the admin API is off loopback without TLS: the token crosses the network in the clear",
    );
  const started = await startAdmin({
    host: spec.host,
    port: spec.port,
    ...api,
    logger,
    token,
    tokenDir: tokenDir(),
    tls,
  });
  return started.server;
}
