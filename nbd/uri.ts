// NBD URIs as defined by the NBD URI standard (doc/uri.md in the NBD project):
//   nbd://host[:port]/export          TCP, port 10809 by default
//   nbd+unix:///export?socket=PATH    Unix domain socket
//   nbds://…, nbds+unix://…           the same over TLS
import { NBD_MAX_STRING } from "./constants.js";
import type { Endpoint } from "./transport.js";

export const NBD_DEFAULT_PORT = 10809;

export interface NbdUri {
  readonly endpoint: Endpoint;
  /** The path without its leading "/", percent-decoded; "" is the default export. */
  readonly exportName: string;
  readonly tls: boolean;
  /** The URI's user name (nbds://USER@host/…), the PSK identity as libnbd uses it. */
  readonly username?: string;
  /** TLS (`tls-*`) and experimental (`x-*`) query parameters, kept verbatim (decoded). */
  readonly params: Readonly<Record<string, string>>;
}

export interface ParseNbdUriOptions {
  /** Accept nbds:// and nbds+unix:// (the caller then has to do TLS itself). Default false. */
  readonly allowTls?: boolean;
}

/** A malformed or unsupported NBD URI; the message says what is wrong. */
export class NbdUriError extends Error {
  readonly code = "EURI";
  constructor(
    readonly uri: string,
    problem: string,
    options?: { cause?: unknown },
  ) {
    super(`invalid NBD URI "${uri}": ${problem}`, options);
    this.name = "NbdUriError";
  }
}

const SCHEMES: Readonly<Record<string, { unix: boolean; tls: boolean }>> = {
  nbd: { unix: false, tls: false },
  nbds: { unix: false, tls: true },
  "nbd+unix": { unix: true, tls: false },
  "nbds+unix": { unix: true, tls: true },
};

const TLS_PARAMS = new Set([
  "tls-type",
  "tls-hostname",
  "tls-verify-peer",
  "tls-certificates",
  "tls-psk-file",
  "tls-username",
]);

// RFC 3986 appendix B, restricted to URIs that have an authority.
const URI_RE = /^([A-Za-z][A-Za-z0-9+.-]*):\/\/([^/?#]*)([^?#]*)(?:\?([^#]*))?(?:#.*)?$/s;

export function parseNbdUri(uri: string, options: ParseNbdUriOptions = {}): NbdUri {
  const fail = (problem: string, cause?: unknown): never => {
    throw new NbdUriError(uri, problem, cause === undefined ? undefined : { cause });
  };
  const match = URI_RE.exec(uri);
  if (match === null) {
    return fail('expected "nbd://host[:port]/export" or "nbd+unix:///export?socket=PATH"');
  }
  const scheme = (match[1] ?? "").toLowerCase();
  const authority = match[2] ?? "";
  const path = match[3] ?? "";
  const query = match[4];
  const kind = SCHEMES[scheme];
  if (kind === undefined) {
    return fail(
      scheme.includes("vsock")
        ? `scheme "${scheme}" (AF_VSOCK) is not supported`
        : `unknown scheme "${scheme}" (use nbd, nbd+unix, nbds or nbds+unix)`,
    );
  }
  if (kind.tls && options.allowTls !== true) {
    return fail(`TLS not supported yet (scheme "${scheme}"); use nbd:// or nbd+unix://`);
  }

  const params = parseQuery(query ?? "", fail);
  const socket = params.get("socket");
  params.delete("socket");
  const extra: Record<string, string> = {};
  for (const [key, value] of params) {
    if (key.startsWith("x-") || (kind.tls && TLS_PARAMS.has(key))) {
      extra[key] = value;
    } else if (TLS_PARAMS.has(key)) {
      fail(`query parameter "${key}" needs a TLS scheme (nbds or nbds+unix)`);
    } else {
      fail(`unknown query parameter "${key}"`);
    }
  }

  const exportName = decode(path.startsWith("/") ? path.slice(1) : path, "export name", fail);
  if (exportName.includes("\0")) fail("the export name contains a NUL character");
  if (Buffer.byteLength(exportName) > NBD_MAX_STRING) {
    fail(`the export name is longer than ${NBD_MAX_STRING} bytes`);
  }

  let endpoint: Endpoint;
  if (kind.unix) {
    if (authority !== "") {
      fail(`a ${scheme} URI takes no host ("${authority}"); give the socket as ?socket=PATH`);
    }
    if (socket === undefined || socket === "") {
      return fail(`a ${scheme} URI needs a socket=PATH query parameter`);
    }
    endpoint = { kind: "unix", path: socket };
  } else {
    if (socket !== undefined) fail(`socket= is only valid with nbd+unix, not ${scheme}`);
    endpoint = parseAuthority(authority, fail);
  }
  // Only TLS uses the user name (the PSK identity), as in libnbd.
  const at = kind.tls ? authority.lastIndexOf("@") : -1;
  const user = at < 0 ? undefined : authority.slice(0, at).split(":")[0];
  const username = user === undefined || user === "" ? undefined : decode(user, "user name", fail);
  return username === undefined
    ? { endpoint, exportName, tls: kind.tls, params: extra }
    : { endpoint, exportName, tls: kind.tls, username, params: extra };
}

function parseQuery(query: string, fail: (problem: string) => never): Map<string, string> {
  const params = new Map<string, string>();
  if (query === "") return params;
  for (const part of query.split("&")) {
    if (part === "") continue;
    const eq = part.indexOf("=");
    const key = decode(eq < 0 ? part : part.slice(0, eq), "query parameter name", fail);
    const value = eq < 0 ? "" : decode(part.slice(eq + 1), `value of "${key}"`, fail);
    if (params.has(key)) fail(`query parameter "${key}" is given twice`);
    params.set(key, value);
  }
  return params;
}

function parseAuthority(authority: string, fail: (problem: string) => never): Endpoint {
  // userinfo (the PSK user name) is read by parseNbdUri.
  const at = authority.lastIndexOf("@");
  const hostPort = at < 0 ? authority : authority.slice(at + 1);
  let host: string;
  let portText: string | undefined;
  if (hostPort.startsWith("[")) {
    const close = hostPort.indexOf("]");
    if (close < 0) return fail("unterminated IPv6 address (missing ']')");
    host = hostPort.slice(1, close);
    if (!/^[0-9A-Fa-f:.]+$/.test(host)) fail(`"${host}" is not an IPv6 address`);
    const rest = hostPort.slice(close + 1);
    if (rest !== "" && !rest.startsWith(":")) fail(`unexpected "${rest}" after the IPv6 address`);
    portText = rest === "" ? undefined : rest.slice(1);
  } else {
    const colon = hostPort.lastIndexOf(":");
    host = decode(colon < 0 ? hostPort : hostPort.slice(0, colon), "host", fail);
    portText = colon < 0 ? undefined : hostPort.slice(colon + 1);
    if (host.includes(":")) fail("an IPv6 address must be written in brackets, e.g. [::1]");
  }
  if (host === "") return fail("a TCP URI needs a host, e.g. nbd://127.0.0.1/export");
  let port = NBD_DEFAULT_PORT;
  if (portText !== undefined && portText !== "") {
    if (!/^[0-9]{1,5}$/.test(portText)) fail(`port "${portText}" is not a number`);
    port = Number(portText);
    if (port < 1 || port > 65535) fail(`port ${port} is out of range 1-65535`);
  }
  return { kind: "tcp", host, port };
}

function decode(text: string, what: string, fail: (problem: string, cause?: unknown) => never) {
  try {
    return decodeURIComponent(text);
  } catch (err) {
    return fail(`bad percent-encoding in the ${what} "${text}"`, err);
  }
}

// Characters left as they are: RFC 3986 unreserved, plus those that are safe
// in a path segment or a query value and make URIs easier to read.
function encode(text: string, keep: RegExp): string {
  let out = "";
  for (const ch of text) {
    out += keep.test(ch) ? ch : encodeURIComponent(ch).replace(/[!'()*]/g, percent);
  }
  return out;
}

function percent(ch: string): string {
  return `%${ch.charCodeAt(0).toString(16).toUpperCase()}`;
}

const KEEP_PATH = /^[A-Za-z0-9\-._~!$'()*,;:@/]$/;
const KEEP_QUERY = /^[A-Za-z0-9\-._~!$'()*,;:@/]$/;

/** The canonical URI for an export: parseNbdUri(formatNbdUri(u)) gives back u. */
export function formatNbdUri(uri: {
  readonly endpoint: Endpoint;
  readonly exportName: string;
  readonly tls?: boolean;
  readonly params?: Readonly<Record<string, string>>;
}): string {
  const tls = uri.tls === true;
  const path = `/${encode(uri.exportName, KEEP_PATH)}`;
  const query: string[] = [];
  let head: string;
  if (uri.endpoint.kind === "unix") {
    head = `${tls ? "nbds" : "nbd"}+unix://`;
    query.push(`socket=${encode(uri.endpoint.path, KEEP_QUERY)}`);
  } else {
    const { host, port } = uri.endpoint;
    const h = host.includes(":") ? `[${host}]` : encode(host, /^[A-Za-z0-9\-._~!$'()*,;]$/);
    head = `${tls ? "nbds" : "nbd"}://${h}${port === NBD_DEFAULT_PORT ? "" : `:${port}`}`;
  }
  for (const [key, value] of Object.entries(uri.params ?? {})) {
    query.push(`${encode(key, KEEP_QUERY)}=${encode(value, KEEP_QUERY)}`);
  }
  return `${head}${path}${query.length > 0 ? `?${query.join("&")}` : ""}`;
}
