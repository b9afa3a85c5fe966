// The client's side of the handshake (spec: "Fixed newstyle negotiation",
// NBD_OPT_GO, NBD_OPT_STRUCTURED_REPLY, NBD_OPT_SET_META_CONTEXT), with the
// fallbacks old servers need: NBD_OPT_EXPORT_NAME when NBD_OPT_GO is not
// supported or the server is not fixed newstyle, simple replies when
// structured replies are refused.
import {
  BASE_ALLOCATION,
  NBD_FLAG_C_FIXED_NEWSTYLE,
  NBD_FLAG_C_NO_ZEROES,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_FLAG_NO_ZEROES,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_MAX_STRING,
  NBD_OPT_GO,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  isOptionReplyError,
} from "../constants.js";
import type { OptionReply } from "../codec/client-handshake.js";
import {
  applyInfoReply,
  decodeMetaContextReply,
  encodeClientFlags,
  encodeExportNameOption,
  encodeInfoOption,
  encodeMetaContextOption,
  encodeOption,
  optionName,
  optionReplyName,
  type ExportDetails,
} from "../codec/client-options.js";
import { NbdProtocolError } from "../errors.js";
import type { BlockSizeConstraints } from "../export.js";
import type { HandshakeChannel } from "./channel.js";
import { NbdDisconnectedError, NbdHandshakeError } from "./errors.js";

export interface NegotiateOptions {
  readonly exportName: string;
  /** Ask for NBD_OPT_STRUCTURED_REPLY (and then base:allocation). Default true. */
  readonly structuredReplies?: boolean;
  /** Ask for the base:allocation metadata context. Default true. */
  readonly blockStatus?: boolean;
  /** Further metadata contexts to select with NBD_OPT_SET_META_CONTEXT. */
  readonly metaContexts?: readonly string[];
  /**
   * Do TLS: send NBD_OPT_STARTTLS first and, after its NBD_REP_ACK, go on over
   * the channel this returns (the stream upgraded to TLS).
   */
  readonly startTls?: (channel: HandshakeChannel) => Promise<HandshakeChannel>;
}

export interface NegotiatedExport {
  readonly exportName: string;
  readonly size: number;
  readonly transmissionFlags: number;
  readonly blockSizes: BlockSizeConstraints | undefined;
  readonly structuredReplies: boolean;
  /** Metadata context name → id, as returned for NBD_OPT_SET_META_CONTEXT. */
  readonly metaContexts: ReadonlyMap<string, number>;
  /** "newstyle-fixed" or "newstyle" (the latter only allows NBD_OPT_EXPORT_NAME). */
  readonly protocol: "newstyle-fixed" | "newstyle";
  /** How transmission was entered. */
  readonly via: "NBD_OPT_GO" | "NBD_OPT_EXPORT_NAME";
  readonly description: string | undefined;
}

export function checkExportName(name: string): void {
  if (Buffer.byteLength(name) > NBD_MAX_STRING) {
    throw new NbdHandshakeError("EINVAL", `export name longer than ${NBD_MAX_STRING} bytes`);
  }
}

/** Turn an error reply into the error the caller sees. */
export function refusal(option: number, reply: OptionReply, what: string): NbdHandshakeError {
  const text = reply.payload.length > 0 ? `: ${reply.payload.toString("utf8")}` : "";
  return new NbdHandshakeError(
    optionReplyName(reply.type),
    `${what}: the server answered ${optionName(option)} with ${optionReplyName(reply.type)}${text}`,
  );
}

export function unexpected(option: number, reply: OptionReply): NbdProtocolError {
  return new NbdProtocolError(
    `unexpected ${optionReplyName(reply.type)} in reply to ${optionName(option)}`,
  );
}

/** Read the greeting and answer with client flags; returns the handshake flags. */
export async function greet(channel: HandshakeChannel): Promise<number> {
  const greeting = await channel.next(() => channel.parser.readGreeting());
  if (!greeting.newstyle) {
    throw new NbdHandshakeError("NBD_OLDSTYLE", "the server speaks the oldstyle handshake");
  }
  const flags = greeting.handshakeFlags;
  const fixed = (flags & NBD_FLAG_FIXED_NEWSTYLE) !== 0;
  const noZeroes = (flags & NBD_FLAG_NO_ZEROES) !== 0;
  channel.send(
    encodeClientFlags(
      (fixed ? NBD_FLAG_C_FIXED_NEWSTYLE : 0) | (noZeroes ? NBD_FLAG_C_NO_ZEROES : 0),
    ),
  );
  channel.optionHaggling = fixed;
  return flags;
}

/**
 * NBD_OPT_STARTTLS as the first option ("Client-side requirements"): a client
 * that wants TLS ends the session when the server will not do it.
 */
export async function startTls(
  channel: HandshakeChannel,
  upgrade: (channel: HandshakeChannel) => Promise<HandshakeChannel>,
): Promise<HandshakeChannel> {
  const reply = await channel.option(NBD_OPT_STARTTLS, encodeOption(NBD_OPT_STARTTLS));
  if (isOptionReplyError(reply.type))
    throw refusal(NBD_OPT_STARTTLS, reply, "the server will not do TLS");
  if (reply.type !== NBD_REP_ACK) throw unexpected(NBD_OPT_STARTTLS, reply);
  const next = await upgrade(channel);
  next.optionHaggling = true;
  return next;
}

export async function negotiate(
  first: HandshakeChannel,
  options: NegotiateOptions,
): Promise<NegotiatedExport> {
  const { exportName } = options;
  checkExportName(exportName);
  const flags = await greet(first);
  const noZeroes = (flags & NBD_FLAG_NO_ZEROES) !== 0;
  if ((flags & NBD_FLAG_FIXED_NEWSTYLE) === 0) {
    if (options.startTls !== undefined)
      throw new NbdHandshakeError(
        "NBD_NOT_FIXED_NEWSTYLE",
        "the server is not fixed newstyle, so it cannot do TLS",
      );
    return exportNameFallback(first, exportName, noZeroes, false, new Map(), "newstyle");
  }
  const channel = options.startTls === undefined ? first : await startTls(first, options.startTls);
  const structuredReplies =
    options.structuredReplies !== false && (await requestStructuredReplies(channel));
  const queries = metaContextQueries(options);
  const metaContexts =
    structuredReplies && queries.length > 0
      ? await setMetaContexts(channel, exportName, queries)
      : new Map<string, number>();

  const details: ExportDetails = {};
  const request = encodeInfoOption(NBD_OPT_GO, exportName, [
    NBD_INFO_BLOCK_SIZE,
    NBD_INFO_DESCRIPTION,
  ]);
  let reply = await channel.option(NBD_OPT_GO, request);
  while (reply.type === NBD_REP_INFO) {
    applyInfoReply(reply.payload, details);
    reply = await channel.reply(NBD_OPT_GO);
  }
  if (reply.type === NBD_REP_ERR_UNSUP) {
    return exportNameFallback(
      channel,
      exportName,
      noZeroes,
      structuredReplies,
      metaContexts,
      "newstyle-fixed",
    );
  }
  if (isOptionReplyError(reply.type)) {
    throw refusal(NBD_OPT_GO, reply, `cannot open export "${exportName}"`);
  }
  if (reply.type !== NBD_REP_ACK) throw unexpected(NBD_OPT_GO, reply);
  if (details.size === undefined || details.transmissionFlags === undefined) {
    throw new NbdProtocolError("NBD_OPT_GO succeeded without NBD_INFO_EXPORT");
  }
  channel.optionHaggling = false;
  return {
    exportName,
    size: details.size,
    transmissionFlags: details.transmissionFlags,
    blockSizes: details.blockSizes,
    structuredReplies,
    metaContexts,
    protocol: "newstyle-fixed",
    via: "NBD_OPT_GO",
    description: details.description,
  };
}

/** base:allocation (unless turned off) and the extra contexts, each once. */
export function metaContextQueries(options: NegotiateOptions): string[] {
  const queries = new Set<string>();
  if (options.blockStatus !== false) queries.add(BASE_ALLOCATION);
  for (const name of options.metaContexts ?? []) {
    if (!name.includes(":") || Buffer.byteLength(name) > NBD_MAX_STRING) {
      throw new NbdHandshakeError(
        "EINVAL",
        `metadata context ${JSON.stringify(name)} is not "namespace:leaf-name" of at most ${NBD_MAX_STRING} bytes`,
      );
    }
    queries.add(name);
  }
  return [...queries];
}

export async function requestStructuredReplies(channel: HandshakeChannel): Promise<boolean> {
  const reply = await channel.option(
    NBD_OPT_STRUCTURED_REPLY,
    encodeOption(NBD_OPT_STRUCTURED_REPLY),
  );
  if (reply.type === NBD_REP_ACK) return true;
  if (reply.type === NBD_REP_ERR_SHUTDOWN) {
    throw refusal(NBD_OPT_STRUCTURED_REPLY, reply, "the server is shutting down");
  }
  // NBD_REP_ERR_UNSUP and other refusals: carry on with simple replies.
  if (isOptionReplyError(reply.type)) return false;
  throw unexpected(NBD_OPT_STRUCTURED_REPLY, reply);
}

export async function setMetaContexts(
  channel: HandshakeChannel,
  exportName: string,
  queries: readonly string[],
): Promise<Map<string, number>> {
  const contexts = new Map<string, number>();
  const request = encodeMetaContextOption(NBD_OPT_SET_META_CONTEXT, exportName, queries);
  let reply = await channel.option(NBD_OPT_SET_META_CONTEXT, request);
  while (reply.type === NBD_REP_META_CONTEXT) {
    const { id, name } = decodeMetaContextReply(reply.payload);
    contexts.set(name, id);
    reply = await channel.reply(NBD_OPT_SET_META_CONTEXT);
  }
  if (reply.type === NBD_REP_ACK) return contexts;
  if (reply.type === NBD_REP_ERR_SHUTDOWN) {
    throw refusal(NBD_OPT_SET_META_CONTEXT, reply, "the server is shutting down");
  }
  // The spec says to disregard contexts sent before an error: no block status.
  if (isOptionReplyError(reply.type)) return new Map();
  throw unexpected(NBD_OPT_SET_META_CONTEXT, reply);
}

async function exportNameFallback(
  channel: HandshakeChannel,
  exportName: string,
  noZeroes: boolean,
  structuredReplies: boolean,
  metaContexts: ReadonlyMap<string, number>,
  protocol: NegotiatedExport["protocol"],
): Promise<NegotiatedExport> {
  channel.send(encodeExportNameOption(exportName));
  channel.optionHaggling = false;
  let reply;
  try {
    reply = await channel.next(() => channel.parser.readExportNameReply(!noZeroes));
  } catch (err) {
    // The only way a server can refuse NBD_OPT_EXPORT_NAME is to hang up.
    if (!(err instanceof NbdDisconnectedError)) throw err;
    throw new NbdHandshakeError(
      "NBD_REP_ERR_UNKNOWN",
      `the server closed the connection after NBD_OPT_EXPORT_NAME "${exportName}" (no such export?)`,
      { cause: err },
    );
  }
  return {
    exportName,
    size: reply.size,
    transmissionFlags: reply.transmissionFlags,
    blockSizes: undefined,
    structuredReplies,
    metaContexts,
    protocol,
    via: "NBD_OPT_EXPORT_NAME",
    description: undefined,
  };
}
