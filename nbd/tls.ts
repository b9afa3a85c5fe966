// TLS for NBD_OPT_STARTTLS (spec "TLS support"): credentials in the layouts
// nbdkit, qemu and libnbd use, and the upgrade of a connected stream in place.
//
// X.509: a directory with ca-cert.pem, server-cert.pem and server-key.pem on a
// server (client-cert.pem and client-key.pem on a client), ca-crl.pem optional.
// PSK: a psktool file, one "identity:hexkey" a line.
//
// Node 20 (OpenSSL 3) does PSK in TLS 1.3 through its TLS 1.2-style callbacks,
// which OpenSSL only allows with SHA-256 cipher suites (TLS_AES_128_GCM_SHA256,
// TLS_CHACHA20_POLY1305_SHA256); PSK_CIPHERS keeps those first and adds the
// TLS 1.2 (EC)DHE-PSK and PSK suites for peers that stop at 1.2.
import { readFile } from "node:fs/promises";
import { join } from "node:path";
import { userInfo } from "node:os";
import { isIP } from "node:net";
import type { Duplex } from "node:stream";
import tls from "node:tls";

export type TlsMode = "off" | "on" | "require";

/** Who is at the other end of a TLS session, as its credentials say. */
export type TlsPeer =
  | {
      readonly kind: "x509";
      /** The certificate's subject CN ("" when it has none). */
      readonly commonName: string;
      /** SHA-256 fingerprint, colon-separated upper-case hex as openssl and certtool print it. */
      readonly fingerprint: string;
      /** The certificate chains to the configured CA (always true when verification is on). */
      readonly verified: boolean;
    }
  | { readonly kind: "psk"; readonly identity: string }
  /** TLS with a server certificate only: the client showed none. */
  | { readonly kind: "anonymous" };

/** How a server offers TLS. */
export interface ServerTls {
  readonly mode: "on" | "require";
  readonly kind: "x509" | "psk";
  /** Options for the tls.Server each session goes through (see upgradeServer). */
  readonly options: tls.TlsOptions;
  /** Looks up PSK identities (PSK only). */
  readonly keys?: ReadonlyMap<string, Buffer>;
  /** Refuse clients without a certificate the CA signed (X.509 only). */
  readonly verifyPeer: boolean;
}

/** How a client does TLS. */
export interface ClientTls {
  readonly kind: "x509" | "psk";
  readonly options: tls.ConnectionOptions;
}

/** Bad TLS configuration (missing file, malformed key): the message names it. */
export class TlsConfigError extends Error {
  readonly code = "ETLSCONFIG";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TlsConfigError";
  }
}

/** The TLS handshake failed; `cause` is what OpenSSL said. */
export class TlsHandshakeError extends Error {
  readonly code = "ETLSHANDSHAKE";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "TlsHandshakeError";
  }
}

export const PSK_CIPHERS = [
  "TLS_AES_128_GCM_SHA256",
  "TLS_CHACHA20_POLY1305_SHA256",
  "ECDHE-PSK-CHACHA20-POLY1305",
  "ECDHE-PSK-AES256-CBC-SHA384",
  "ECDHE-PSK-AES128-CBC-SHA256",
  "PSK-AES256-GCM-SHA384",
  "PSK-AES128-GCM-SHA256",
  "PSK-CHACHA20-POLY1305",
].join(":");

const VERSIONS = { minVersion: "TLSv1.2", maxVersion: "TLSv1.3" } as const;

/** One PEM file of a credentials directory; a missing required one is a TlsConfigError naming it. */
export async function readPem(
  dir: string,
  name: string,
  required: boolean,
): Promise<Buffer | undefined> {
  const path = join(dir, name);
  try {
    return await readFile(path);
  } catch (err) {
    const code = (err as { code?: unknown }).code;
    if (!required && code === "ENOENT") return undefined;
    throw new TlsConfigError(
      code === "ENOENT"
        ? `${path} is missing: the certificates directory needs ${name}`
        : `cannot read ${path}: ${(err as Error).message}`,
      { cause: err },
    );
  }
}

/** Parse a psktool file: one "identity:hexkey" a line. */
export function parsePskFile(text: string, path: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = text.split("\n");
  for (let i = 0; i < lines.length; i++) {
    const line = (lines[i] ?? "").replace(/\r$/, "");
    if (line.trim() === "") continue;
    const where = `${path} line ${i + 1}`;
    const colon = line.lastIndexOf(":");
    if (colon <= 0)
      throw new TlsConfigError(`${where}: expected "identity:hexkey" as psktool writes it`);
    const identity = line.slice(0, colon);
    const hex = line.slice(colon + 1).trim();
    if (!/^([0-9a-fA-F]{2})+$/.test(hex))
      throw new TlsConfigError(`${where}: the key of "${identity}" is not hexadecimal bytes`);
    if (keys.has(identity)) throw new TlsConfigError(`${where}: "${identity}" is given twice`);
    keys.set(identity, Buffer.from(hex, "hex"));
  }
  if (keys.size === 0) throw new TlsConfigError(`${path} holds no "identity:hexkey" line`);
  return keys;
}

export async function loadPskFile(path: string): Promise<Map<string, Buffer>> {
  let text: string;
  try {
    text = await readFile(path, "utf8");
  } catch (err) {
    throw new TlsConfigError(`cannot read the PSK file ${path}: ${(err as Error).message}`, {
      cause: err,
    });
  }
  return parsePskFile(text, path);
}

export interface ServerTlsSpec {
  readonly mode: "on" | "require";
  /** Directory with ca-cert.pem, server-cert.pem, server-key.pem. */
  readonly certificates?: string;
  /** psktool file. */
  readonly psk?: string;
  /** Ask clients for a certificate and refuse those the CA did not sign (X.509 only). */
  readonly verifyPeer?: boolean;
  /**
   * Ask clients for a certificate but let those without one in (X.509 only):
   * an export's authorize hook then decides, e.g. the replication export.
   */
  readonly requestPeer?: boolean;
}

export async function loadServerTls(spec: ServerTlsSpec): Promise<ServerTls> {
  if ((spec.certificates === undefined) === (spec.psk === undefined))
    throw new TlsConfigError("TLS needs either a certificates directory or a PSK file");
  if (spec.psk !== undefined) {
    if (spec.verifyPeer === true)
      throw new TlsConfigError("verifying peer certificates applies to X.509, not to PSK");
    const keys = await loadPskFile(spec.psk);
    return {
      mode: spec.mode,
      kind: "psk",
      keys,
      verifyPeer: false,
      // upgradeServer adds the pskCallback, to learn the identity of each session.
      options: { ...VERSIONS, ciphers: PSK_CIPHERS },
    };
  }
  const dir = spec.certificates as string;
  const verifyPeer = spec.verifyPeer === true;
  const requestCert = verifyPeer || spec.requestPeer === true;
  const [ca, cert, key, crl] = await Promise.all([
    readPem(dir, "ca-cert.pem", requestCert),
    readPem(dir, "server-cert.pem", true),
    readPem(dir, "server-key.pem", true),
    readPem(dir, "ca-crl.pem", false),
  ]);
  const material = { ...VERSIONS, ca, cert, key, crl };
  try {
    tls.createSecureContext(material); // fail now, not at the first client
  } catch (err) {
    throw new TlsConfigError(`${dir}: ${(err as Error).message}`, { cause: err });
  }
  return {
    mode: spec.mode,
    kind: "x509",
    verifyPeer,
    options: { ...material, requestCert, rejectUnauthorized: verifyPeer },
  };
}

/** libnbd's URI parameters: tls-certificates, tls-psk-file, tls-username, tls-hostname, tls-verify-peer. */
export interface ClientTlsSpec {
  readonly certificates?: string;
  readonly pskFile?: string;
  /** PSK identity; libnbd's default is the local user name. */
  readonly username?: string;
  /** Name the server certificate must carry; default the host connected to. */
  readonly hostname?: string;
  /** Check the server certificate (default true). */
  readonly verifyPeer?: boolean;
}

export function clientTlsSpecFromParams(params: Readonly<Record<string, string>>): ClientTlsSpec {
  const verify = params["tls-verify-peer"];
  if (
    verify !== undefined &&
    !["true", "false", "1", "0", "yes", "no", "on", "off"].includes(verify)
  )
    throw new TlsConfigError(`tls-verify-peer="${verify}": use true or false`);
  return {
    certificates: params["tls-certificates"],
    pskFile: params["tls-psk-file"],
    username: params["tls-username"],
    hostname: params["tls-hostname"],
    verifyPeer: verify === undefined ? undefined : ["true", "1", "yes", "on"].includes(verify),
  };
}

/** Client credentials; `host` is what certificates are checked against unless spec.hostname. */
export async function loadClientTls(
  spec: ClientTlsSpec,
  host: string | undefined,
): Promise<ClientTls> {
  if (spec.pskFile !== undefined) {
    if (spec.certificates !== undefined)
      throw new TlsConfigError("give tls-certificates or tls-psk-file, not both");
    const keys = await loadPskFile(spec.pskFile);
    const identity = spec.username ?? userInfo().username;
    const psk = keys.get(identity);
    if (psk === undefined)
      throw new TlsConfigError(
        `${spec.pskFile} has no key for the identity "${identity}"; set tls-username=`,
      );
    return {
      kind: "psk",
      options: { ...VERSIONS, ciphers: PSK_CIPHERS, pskCallback: () => ({ psk, identity }) },
    };
  }
  const verify = spec.verifyPeer !== false;
  const dir = spec.certificates;
  const [ca, cert, key, crl] =
    dir === undefined
      ? [undefined, undefined, undefined, undefined]
      : await Promise.all([
          readPem(dir, "ca-cert.pem", verify),
          readPem(dir, "client-cert.pem", false),
          readPem(dir, "client-key.pem", false),
          readPem(dir, "ca-crl.pem", false),
        ]);
  if ((cert === undefined) !== (key === undefined))
    throw new TlsConfigError(`${dir}: give both client-cert.pem and client-key.pem, or neither`);
  const name = spec.hostname ?? host;
  const options: tls.ConnectionOptions = {
    ...VERSIONS,
    ca,
    cert,
    key,
    crl,
    rejectUnauthorized: verify,
    // SNI takes host names only; a certificate is still checked against an IP address.
    servername: name !== undefined && isIP(name) === 0 ? name : undefined,
    checkServerIdentity: (_servername, certificate) =>
      !verify || name === undefined ? undefined : tls.checkServerIdentity(name, certificate),
  };
  return { kind: "x509", options };
}

function handshakeError(err: Error, side: string): TlsHandshakeError {
  return new TlsHandshakeError(`TLS handshake with the ${side} failed: ${err.message.trim()}`, {
    cause: err,
  });
}

/** The identity the session established. */
export function tlsPeer(socket: tls.TLSSocket, pskIdentity: string | undefined): TlsPeer {
  if (pskIdentity !== undefined) return { kind: "psk", identity: pskIdentity };
  const cert = socket.getPeerCertificate();
  if (cert === null || Object.keys(cert).length === 0) return { kind: "anonymous" };
  const cn = cert.subject?.CN;
  return {
    kind: "x509",
    commonName: Array.isArray(cn) ? (cn[0] ?? "") : (cn ?? ""),
    fingerprint: cert.fingerprint256,
    verified: socket.authorized,
  };
}

/**
 * Turn an accepted stream into a TLS server session after NBD_REP_ACK for
 * NBD_OPT_STARTTLS went out; resolves once the handshake is done and the
 * client's credentials are accepted.
 *
 * The stream goes through a tls.Server of its own (server.emit("connection")):
 * a bare TLSSocket leaves out what tls.Server does on a secure session, such
 * as checking the client's certificate.
 */
export function upgradeServer(
  stream: Duplex,
  config: ServerTls,
  timeoutMs: number,
): Promise<{ socket: tls.TLSSocket; peer: TlsPeer }> {
  let identity: string | undefined;
  let unknown: string | undefined;
  const verify = config.verifyPeer;
  const server = tls.createServer({
    ...config.options,
    // Checked below, so that a refusal can say why.
    rejectUnauthorized: false,
    handshakeTimeout: timeoutMs,
    ...(config.keys === undefined
      ? {}
      : {
          pskCallback: (_socket: tls.TLSSocket, id: string) => {
            const key = config.keys?.get(id) ?? null;
            if (key !== null) identity = id;
            else unknown = id;
            return key;
          },
        }),
  });
  return new Promise((resolve, reject) => {
    const fail = (err: Error): void => {
      if (unknown !== undefined)
        err = new Error(`the PSK identity "${unknown}" is not in the PSK file`, { cause: err });
      else if (identity !== undefined && err.message.includes("binder does not verify"))
        err = new Error(`the client's key for "${identity}" is not the one in the PSK file`, {
          cause: err,
        });
      stream.destroy();
      reject(handshakeError(err, "client"));
    };
    server.once("tlsClientError", (err, socket) => {
      socket.destroy();
      fail(err);
    });
    const closed = (): void => fail(new Error("the client closed the connection"));
    stream.once("close", closed);
    server.once("secureConnection", (socket: tls.TLSSocket) => {
      if (verify && !socket.authorized) {
        const cert = socket.getPeerCertificate();
        const why =
          Object.keys(cert).length === 0
            ? "the client sent no certificate"
            : `the client certificate is not accepted: ${String(socket.authorizationError)}`;
        socket.destroy();
        fail(new Error(why));
        return;
      }
      stream.off("close", closed);
      resolve({ socket, peer: tlsPeer(socket, identity) });
    });
    server.emit("connection", stream);
  });
}

/** Turn a connected stream into a TLS client session (after the server's NBD_REP_ACK). */
export function upgradeClient(stream: Duplex, config: ClientTls): Promise<tls.TLSSocket> {
  const socket = tls.connect({ ...config.options, socket: stream });
  return new Promise((resolve, reject) => {
    const fail = (err: Error): void => {
      socket.destroy();
      reject(handshakeError(err, "server"));
    };
    const closed = (): void => fail(new Error("the server closed the connection"));
    socket.once("error", fail);
    socket.once("close", closed);
    socket.once("secureConnect", () => {
      socket.off("error", fail);
      socket.off("close", closed);
      resolve(socket);
    });
  });
}

/** A peer an export trusts: a certificate's CN or SHA-256 fingerprint, or a PSK identity. */
export type TrustedPeer =
  | { readonly kind: "cn"; readonly value: string }
  | { readonly kind: "sha256"; readonly value: string }
  | { readonly kind: "psk"; readonly value: string };

/** "cn:NAME", "sha256:AB:CD:…" (colons optional, any case) or "psk:IDENTITY". */
export function parseTrustedPeer(text: string): TrustedPeer {
  const colon = text.indexOf(":");
  const kind = text.slice(0, colon);
  const value = text.slice(colon + 1);
  if (colon > 0 && value !== "") {
    if (kind === "cn" || kind === "psk") return { kind, value };
    if (kind === "sha256") {
      const hex = value.replace(/:/g, "").toUpperCase();
      if (/^[0-9A-F]{64}$/.test(hex)) return { kind, value: hex.replace(/(..)(?!$)/g, "$1:") };
      throw new TlsConfigError(`"${text}": a SHA-256 fingerprint is 32 hex bytes`);
    }
  }
  throw new TlsConfigError(`"${text}": use cn:NAME, sha256:FINGERPRINT or psk:IDENTITY`);
}

/** How logs and refusals name a peer. */
export function describePeer(peer: TlsPeer | null): string {
  if (peer === null) return "plain (no TLS) client";
  if (peer.kind === "anonymous") return "TLS client without a certificate";
  return peer.kind === "psk"
    ? `PSK identity "${peer.identity}"`
    : `certificate CN "${peer.commonName}" (sha256 ${peer.fingerprint})`;
}

/** An export's authorize hook that lets in only `trusted` peers, over TLS. */
export function trustOnly(
  trusted: readonly TrustedPeer[],
  what: string,
): (peer: TlsPeer | null) => string | undefined {
  return (peer) => {
    if (peer === null) return `${what} needs TLS with a trusted identity: connect with nbds://`;
    if (peer.kind === "anonymous")
      return `${what} needs a client certificate: give the client client-cert.pem and client-key.pem`;
    if (peer.kind === "x509" && !peer.verified)
      return `${what}: the client certificate does not chain to the CA`;
    const ok = trusted.some((t) =>
      peer.kind === "psk"
        ? t.kind === "psk" && t.value === peer.identity
        : (t.kind === "cn" && t.value === peer.commonName) ||
          (t.kind === "sha256" && t.value === peer.fingerprint),
    );
    return ok ? undefined : `${what} does not trust the ${describePeer(peer)}`;
  };
}
