// The TLS options of every command that serves NBD (serve, primary, secondary).
import { clientTlsFromUri } from "../../nbd/client/client.js";
import {
  loadServerTls,
  parseTrustedPeer,
  TlsConfigError,
  trustOnly,
  type ServerTls,
  type TlsPeer,
  type TrustedPeer,
} from "../../nbd/tls.js";
import { parseNbdUri } from "../../nbd/uri.js";
import { asUsage } from "./common.js";
import { oneOf, UsageError } from "./args.js";

export const TLS_OPTIONS = {
  tls: { type: "string" },
  "tls-certificates": { type: "string" },
  "tls-psk": { type: "string" },
  "tls-verify-peer": { type: "boolean" },
} as const;

export const TLS_HELP = `  --tls off|on|require    offer NBD_OPT_STARTTLS (on) or refuse every option
                          but STARTTLS and ABORT until TLS is up (require);
                          default off, or require when credentials are given
  --tls-certificates DIR  X.509: ca-cert.pem, server-cert.pem, server-key.pem
                          (ca-crl.pem optional), as nbdkit and qemu lay them out
  --tls-psk FILE          pre-shared keys, "identity:hexkey" lines (psktool)
  --tls-verify-peer       X.509: clients need a certificate the CA signed`;

interface TlsValues {
  tls?: string;
  "tls-certificates"?: string;
  "tls-psk"?: string;
  "tls-verify-peer"?: boolean;
}

/**
 * The server's TLS, or undefined for --tls off; configuration mistakes are usage
 * errors. `requestPeer`: ask clients for a certificate even without --tls-verify-peer.
 */
export async function parseTlsArgs(
  values: TlsValues,
  requestPeer = false,
): Promise<ServerTls | undefined> {
  const certificates = values["tls-certificates"];
  const psk = values["tls-psk"];
  const credentials = certificates !== undefined || psk !== undefined;
  const mode = oneOf(
    values.tls ?? (credentials ? "require" : "off"),
    ["off", "on", "require"] as const,
    "--tls",
  );
  if (mode === "off") {
    if (credentials || values["tls-verify-peer"] === true)
      throw new UsageError("--tls off: drop --tls-certificates, --tls-psk and --tls-verify-peer");
    return undefined;
  }
  if (!credentials)
    throw new UsageError(`--tls ${mode} needs --tls-certificates DIR or --tls-psk FILE`);
  if (certificates !== undefined && psk !== undefined)
    throw new UsageError("give --tls-certificates or --tls-psk, not both");
  if (psk !== undefined && values["tls-verify-peer"] === true)
    throw new UsageError("--tls-verify-peer applies to --tls-certificates, not to --tls-psk");
  try {
    return await loadServerTls({
      mode,
      certificates,
      psk,
      verifyPeer: values["tls-verify-peer"] === true,
      requestPeer: requestPeer && certificates !== undefined,
    });
  } catch (err) {
    if (err instanceof TlsConfigError) throw new UsageError(err.message, { cause: err });
    throw err;
  }
}

/**
 * Check an NBD URI the command will connect to, reading its TLS files now so a
 * missing key is a usage error at start, not a link that never comes up.
 */
export async function checkRemoteUri(uri: string, option: string): Promise<void> {
  const parsed = asUsage(() => parseNbdUri(uri, { allowTls: true }), option);
  if (!parsed.tls) return;
  try {
    await clientTlsFromUri(parsed);
  } catch (err) {
    if (err instanceof TlsConfigError)
      throw new UsageError(`${option}: ${err.message}`, { cause: err });
    throw err;
  }
}

/** The URI hosts should use: nbds:// when the server insists on TLS. */
export function tlsUri(uri: string, tls: ServerTls | undefined): string {
  return tls?.mode === "require" ? uri.replace(/^nbd(\+unix)?:/, "nbds$1:") : uri;
}

export const REPLICATION_PEER_HELP = `  --replication-peer WHO  with TLS: the primary allowed on the replication
                          export: cn:NAME or sha256:FINGERPRINT of its client
                          certificate (signed by ca-cert.pem), or psk:IDENTITY;
                          repeatable. Hosts need no client certificate unless
                          --tls-verify-peer`;

/** --replication-peer values, parsed (usage errors name the bad one). */
export function parseTrustedPeers(values: readonly string[] | undefined): TrustedPeer[] {
  return (values ?? []).map((text) => {
    try {
      return parseTrustedPeer(text);
    } catch (err) {
      throw new UsageError(`--replication-peer ${(err as Error).message}`, { cause: err });
    }
  });
}

/** The replication export's authorize hook from --replication-peer, checked against the TLS set-up. */
export function replicationAuthorizer(
  trusted: readonly TrustedPeer[],
  tls: ServerTls | undefined,
): ((peer: TlsPeer | null) => string | undefined) | undefined {
  if (tls === undefined) {
    if (trusted.length > 0) throw new UsageError("--replication-peer needs --tls on or require");
    return undefined;
  }
  if (trusted.length === 0)
    throw new UsageError(
      tls.kind === "psk"
        ? "with TLS, name the primary allowed to replicate: --replication-peer psk:IDENTITY"
        : "with TLS, name the primary allowed to replicate: --replication-peer cn:NAME or sha256:FINGERPRINT",
    );
  for (const t of trusted) {
    if (t.kind === "psk" && tls.kind !== "psk")
      throw new UsageError(`--replication-peer psk:${t.value} needs --tls-psk`);
    if (t.kind === "psk" && tls.keys?.has(t.value) !== true)
      throw new UsageError(
        `--replication-peer psk:${t.value}: the PSK file has no key for "${t.value}"`,
      );
    if (t.kind !== "psk" && tls.kind !== "x509")
      throw new UsageError(`--replication-peer ${t.kind}:${t.value} needs --tls-certificates`);
  }
  return trustOnly(trusted, "the replication export");
}
