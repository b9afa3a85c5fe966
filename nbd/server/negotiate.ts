// Option haggling (spec "Fixed newstyle negotiation" and "Option types"):
// each option gets its replies at once; GO and EXPORT_NAME end the phase.
import {
  BASE_ALLOCATION,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
} from "../constants.js";
import { NbdProtocolError } from "../errors.js";
import {
  encodeExportNameReply,
  encodeInfoBlockSize,
  encodeInfoDescription,
  encodeInfoExport,
  encodeInfoName,
  encodeMetaContext,
  encodeOptionError,
  encodeOptionReply,
  encodeRepServer,
} from "../codec/server-replies.js";
import {
  parseExportName,
  parseGoRequest,
  parseMetaContextRequest,
} from "../codec/server-options.js";
import type { MetaContextSource } from "../export.js";
import type { TlsMode } from "../tls.js";
import type { ServedExport } from "./exports.js";
import { DEFAULT_BLOCK_SIZES, transmissionFlags } from "./exports.js";

/** The context id this server gives base:allocation. */
export const BASE_ALLOCATION_ID = 1;

export interface NegotiationHost {
  send(buffer: Buffer): void;
  findExport(name: string): ServedExport | undefined;
  listExports(): readonly ServedExport[];
  /** Enter transmission with the chosen export. */
  begin(exp: ServedExport): void;
  /** End the session (ABORT or a fatal negotiation error). */
  end(error?: NbdProtocolError): void;
  readonly tlsMode: TlsMode;
  /** Send NBD_REP_ACK for NBD_OPT_STARTTLS and run the TLS handshake; options resume after it. */
  startTls(): void;
  /** Why this session may not use `exp` (its peer is not one the export trusts), or undefined. */
  refusal(exp: ServedExport): string | undefined;
}

export class Negotiation {
  noZeroes = false;
  structured = false;
  /** Export name the contexts were last selected for, or null. */
  metaContextExport: string | null = null;
  /** What the last NBD_OPT_SET_META_CONTEXT selected. */
  metaContexts: readonly SelectedContext[] = [];
  /** NBD_OPT_STARTTLS succeeded: everything since is under TLS. */
  tls = false;

  constructor(private readonly host: NegotiationHost) {}

  clientFlags(flags: number): void {
    const known = NBD_FLAG_C_FIXED_NEWSTYLE | NBD_FLAG_C_NO_ZEROES;
    if ((flags & ~known) !== 0) {
      this.host.end(new NbdProtocolError(`unknown client flags 0x${flags.toString(16)}`));
      return;
    }
    this.noZeroes = (flags & NBD_FLAG_C_NO_ZEROES) !== 0;
  }

  oversized(option: number, length: number): void {
    this.host.send(
      encodeOptionError(option, NBD_REP_ERR_TOO_BIG, `option data of ${length} bytes is too large`),
    );
  }

  option(option: number, data: Buffer): void {
    if (option === NBD_OPT_STARTTLS) return this.startTls(data);
    // FORCEDTLS ("TLS support"): nothing but STARTTLS and ABORT before TLS.
    if (this.host.tlsMode === "require" && !this.tls && option !== NBD_OPT_ABORT) {
      if (option === NBD_OPT_EXPORT_NAME)
        return this.host.end(
          new NbdProtocolError("NBD_OPT_EXPORT_NAME without TLS; TLS is required"),
        );
      return this.host.send(
        encodeOptionError(
          option,
          NBD_REP_ERR_TLS_REQD,
          "this server requires TLS: send NBD_OPT_STARTTLS first",
        ),
      );
    }
    switch (option) {
      case NBD_OPT_EXPORT_NAME:
        return this.exportName(data);
      case NBD_OPT_ABORT:
        this.host.send(encodeOptionReply(option, NBD_REP_ACK));
        return this.host.end();
      case NBD_OPT_LIST:
        if (data.length !== 0) return this.invalid(option, "NBD_OPT_LIST takes no data");
        for (const e of this.host.listExports())
          this.host.send(encodeRepServer(option, e.name, e.description));
        return this.host.send(encodeOptionReply(option, NBD_REP_ACK));
      case NBD_OPT_INFO:
      case NBD_OPT_GO:
        return this.go(option, data);
      case NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0)
          return this.invalid(option, "NBD_OPT_STRUCTURED_REPLY takes no data");
        this.structured = true;
        return this.host.send(encodeOptionReply(option, NBD_REP_ACK));
      case NBD_OPT_LIST_META_CONTEXT:
      case NBD_OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      default:
        // Includes NBD_OPT_EXTENDED_HEADERS, not offered yet.
        return this.host.send(
          encodeOptionError(option, NBD_REP_ERR_UNSUP, `option ${option} is not supported`),
        );
    }
  }

  private startTls(data: Buffer): void {
    const option = NBD_OPT_STARTTLS;
    if (this.host.tlsMode === "off")
      return this.host.send(
        encodeOptionError(option, NBD_REP_ERR_UNSUP, "this server is not configured for TLS"),
      );
    if (data.length !== 0) return this.invalid(option, "NBD_OPT_STARTTLS takes no data");
    if (this.tls) return this.invalid(option, "TLS is already on");
    // "The server MUST NOT preserve any negotiation state" from before STARTTLS.
    this.tls = true;
    this.structured = false;
    this.select(null, []);
    this.host.send(encodeOptionReply(option, NBD_REP_ACK));
    this.host.startTls();
  }

  /** Refuse an export the session's peer may not use: true when refused. */
  private refused(option: number, exp: ServedExport): boolean {
    const why = this.host.refusal(exp);
    if (why === undefined) return false;
    this.host.send(encodeOptionError(option, NBD_REP_ERR_POLICY, why));
    return true;
  }

  private unknownExport(option: number, name: string): void {
    this.host.send(
      encodeOptionError(option, NBD_REP_ERR_UNKNOWN, `no export named ${JSON.stringify(name)}`),
    );
  }

  private invalid(option: number, message: string): void {
    this.host.send(encodeOptionError(option, NBD_REP_ERR_INVALID, message));
  }

  private exportName(data: Buffer): void {
    const name = parseExportName(data);
    const exp = name === null ? undefined : this.host.findExport(name);
    if (exp === undefined) {
      // EXPORT_NAME cannot report errors: the spec says to end the session.
      this.host.end(
        new NbdProtocolError(`NBD_OPT_EXPORT_NAME for unknown export ${JSON.stringify(name)}`),
      );
      return;
    }
    const why = this.host.refusal(exp);
    if (why !== undefined) {
      this.host.end(new NbdProtocolError(`NBD_OPT_EXPORT_NAME refused: ${why}`));
      return;
    }
    const flags = transmissionFlags(exp.volume.capabilities, this.structured);
    this.host.send(encodeExportNameReply(exp.volume.size, flags, this.noZeroes));
    this.host.begin(exp);
  }

  private go(option: number, data: Buffer): void {
    const request = parseGoRequest(data);
    if (request === null) return this.invalid(option, "malformed NBD_OPT_INFO/NBD_OPT_GO data");
    const exp = this.host.findExport(request.name);
    if (exp === undefined) {
      return this.unknownExport(option, request.name);
    }
    if (this.refused(option, exp)) return;
    const volume = exp.volume;
    this.host.send(
      encodeInfoExport(
        option,
        volume.size,
        transmissionFlags(volume.capabilities, this.structured),
      ),
    );
    if (request.infos.includes(NBD_INFO_NAME)) this.host.send(encodeInfoName(option, exp.name));
    if (request.infos.includes(NBD_INFO_DESCRIPTION) && exp.description !== "")
      this.host.send(encodeInfoDescription(option, exp.description));
    // Sent unasked too: the constraints are the defaults, so clients may ignore them.
    if (request.infos.includes(NBD_INFO_BLOCK_SIZE) || option === NBD_OPT_INFO)
      this.host.send(encodeInfoBlockSize(option, volume.blockSizes ?? DEFAULT_BLOCK_SIZES));
    this.host.send(encodeOptionReply(option, NBD_REP_ACK));
    if (option === NBD_OPT_GO) this.host.begin(exp);
  }

  private metaContext(option: number, data: Buffer): void {
    const set = option === NBD_OPT_SET_META_CONTEXT;
    // SET replaces the selection even when it fails (NBD_OPT_SET_META_CONTEXT).
    if (set) this.select(null, []);
    if (!this.structured)
      return this.invalid(option, "negotiate NBD_OPT_STRUCTURED_REPLY before meta contexts");
    const request = parseMetaContextRequest(data);
    if (request === null) return this.invalid(option, "malformed meta context request");
    const exp = this.host.findExport(request.name);
    if (exp === undefined) {
      return this.unknownExport(option, request.name);
    }
    for (const q of request.queries) {
      if (!q.includes(":"))
        return this.invalid(option, `query ${JSON.stringify(q)} lacks a namespace`);
    }
    const matched = availableContexts(exp).filter((c) =>
      set ? request.queries.includes(c.name) : listMatches(request.queries, c.name),
    );
    for (const c of matched) this.host.send(encodeMetaContext(option, set ? c.id : 0, c.name));
    if (set) this.select(exp.name, matched);
    this.host.send(encodeOptionReply(option, NBD_REP_ACK));
  }

  private select(exportName: string | null, contexts: readonly SelectedContext[]): void {
    this.metaContextExport = exportName;
    this.metaContexts = contexts;
  }
}

/** A context chosen with NBD_OPT_SET_META_CONTEXT; `source` is null for base:allocation. */
export interface SelectedContext {
  readonly id: number;
  readonly name: string;
  readonly source: MetaContextSource | null;
}

/** Every context `exp` offers, with the id SET gives it: stable for the export. */
function availableContexts(exp: ServedExport): SelectedContext[] {
  const all: SelectedContext[] = [];
  if (exp.volume.capabilities.blockStatus)
    all.push({ id: BASE_ALLOCATION_ID, name: BASE_ALLOCATION, source: null });
  const extra = exp.metaContexts ?? [];
  for (let i = 0; i < extra.length; i++) {
    const source = extra[i] as MetaContextSource;
    all.push({ id: BASE_ALLOCATION_ID + 1 + i, name: source.name, source });
  }
  return all;
}

/**
 * NBD_OPT_LIST_META_CONTEXT ("Metadata querying"): no query lists everything;
 * "namespace:" lists that namespace; any other query names one context.
 */
function listMatches(queries: readonly string[], name: string): boolean {
  if (queries.length === 0) return true;
  const namespace = name.slice(0, name.indexOf(":") + 1);
  return queries.some((q) => q === name || q === namespace);
}
