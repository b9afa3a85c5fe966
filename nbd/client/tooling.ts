// Option-phase queries for tools: list a server's exports (NBD_OPT_LIST) or
// describe one (NBD_OPT_INFO) without entering transmission. Each call opens
// its own connection and ends it with NBD_OPT_ABORT.
import {
  BASE_ALLOCATION,
  NBD_FLAG_FIXED_NEWSTYLE,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_NAME,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_REP_ACK,
  NBD_REP_INFO,
  NBD_REP_SERVER,
  isOptionReplyError,
} from "../constants.js";
import {
  applyInfoReply,
  decodeServerReply,
  encodeInfoOption,
  encodeOption,
  type ExportDetails,
} from "../codec/client-options.js";
import { NbdProtocolError } from "../errors.js";
import type { BlockSizeConstraints } from "../export.js";
import { connect, type Endpoint } from "../transport.js";
import { HandshakeChannel } from "./channel.js";
import { NbdHandshakeError } from "./errors.js";
import {
  checkExportName,
  greet,
  refusal,
  requestStructuredReplies,
  setMetaContexts,
  unexpected,
} from "./handshake.js";

export interface QueryOptions {
  readonly endpoint: Endpoint;
  readonly timeoutMs?: number;
}

export interface ExportListing {
  readonly name: string;
  readonly description: string;
}

export interface ExportInfo {
  readonly exportName: string;
  /** NBD_INFO_NAME, when the server's canonical name differs or it volunteers it. */
  readonly canonicalName: string | undefined;
  readonly description: string | undefined;
  readonly size: number;
  readonly transmissionFlags: number;
  readonly blockSizes: BlockSizeConstraints | undefined;
  readonly structuredReplies: boolean;
  readonly metaContexts: ReadonlyMap<string, number>;
}

async function withOptionPhase<T>(
  options: QueryOptions,
  body: (channel: HandshakeChannel) => Promise<T>,
): Promise<T> {
  const timeoutMs = options.timeoutMs ?? 10_000;
  const stream = await connect(options.endpoint, timeoutMs);
  const channel = new HandshakeChannel(stream);
  const timer = setTimeout(() => {
    const err = new Error(`NBD option phase timed out after ${timeoutMs} ms`);
    stream.destroy(Object.assign(err, { code: "ETIMEDOUT" }));
  }, timeoutMs);
  try {
    const flags = await greet(channel);
    if ((flags & NBD_FLAG_FIXED_NEWSTYLE) === 0) {
      throw new NbdHandshakeError(
        "NBD_NOT_FIXED_NEWSTYLE",
        "the server does not speak fixed newstyle, so it cannot answer this query",
      );
    }
    const result = await body(channel);
    channel.close();
    return result;
  } catch (err) {
    channel.close(err instanceof NbdProtocolError);
    throw err;
  } finally {
    clearTimeout(timer);
  }
}

/** The exports a server lists for NBD_OPT_LIST (servers may hide some). */
export function listExports(options: QueryOptions): Promise<ExportListing[]> {
  return withOptionPhase(options, async (channel) => {
    const exports: ExportListing[] = [];
    let reply = await channel.option(NBD_OPT_LIST, encodeOption(NBD_OPT_LIST));
    while (reply.type === NBD_REP_SERVER) {
      exports.push(decodeServerReply(reply.payload));
      reply = await channel.reply(NBD_OPT_LIST);
    }
    if (isOptionReplyError(reply.type)) {
      throw refusal(NBD_OPT_LIST, reply, "cannot list exports");
    }
    if (reply.type !== NBD_REP_ACK) throw unexpected(NBD_OPT_LIST, reply);
    return exports;
  });
}

/** What NBD_OPT_INFO says about one export, plus what the server would negotiate for it. */
export function queryExport(
  options: QueryOptions & { readonly exportName?: string },
): Promise<ExportInfo> {
  const exportName = options.exportName ?? "";
  checkExportName(exportName);
  return withOptionPhase(options, async (channel) => {
    const structuredReplies = await requestStructuredReplies(channel);
    const metaContexts = structuredReplies
      ? await setMetaContexts(channel, exportName, [BASE_ALLOCATION])
      : new Map<string, number>();
    const details: ExportDetails = {};
    const infos = [NBD_INFO_NAME, NBD_INFO_DESCRIPTION, NBD_INFO_BLOCK_SIZE];
    let reply = await channel.option(
      NBD_OPT_INFO,
      encodeInfoOption(NBD_OPT_INFO, exportName, infos),
    );
    while (reply.type === NBD_REP_INFO) {
      applyInfoReply(reply.payload, details);
      reply = await channel.reply(NBD_OPT_INFO);
    }
    if (isOptionReplyError(reply.type)) {
      throw refusal(NBD_OPT_INFO, reply, `cannot describe export "${exportName}"`);
    }
    if (reply.type !== NBD_REP_ACK) throw unexpected(NBD_OPT_INFO, reply);
    if (details.size === undefined || details.transmissionFlags === undefined) {
      throw new NbdProtocolError("NBD_OPT_INFO succeeded without NBD_INFO_EXPORT");
    }
    return {
      exportName,
      canonicalName: details.name,
      description: details.description,
      size: details.size,
      transmissionFlags: details.transmissionFlags,
      blockSizes: details.blockSizes,
      structuredReplies,
      metaContexts,
    };
  });
}
