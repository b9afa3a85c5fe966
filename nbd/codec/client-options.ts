// Client side of option haggling (spec: "Fixed newstyle negotiation", "Option
// types", "Option reply types"): encoders for what the client sends and
// decoders for the payloads of the server's option replies.
import {
  IHAVEOPT,
  NBD_INFO_BLOCK_SIZE,
  NBD_INFO_DESCRIPTION,
  NBD_INFO_EXPORT,
  NBD_INFO_NAME,
  NBD_OPTION_HEADER_SIZE,
  NBD_OPT_ABORT,
  NBD_OPT_EXPORT_NAME,
  NBD_OPT_EXTENDED_HEADERS,
  NBD_OPT_GO,
  NBD_OPT_INFO,
  NBD_OPT_LIST,
  NBD_OPT_LIST_META_CONTEXT,
  NBD_OPT_SET_META_CONTEXT,
  NBD_OPT_STARTTLS,
  NBD_OPT_STRUCTURED_REPLY,
  NBD_REP_ACK,
  NBD_REP_ERR_BLOCK_SIZE_REQD,
  NBD_REP_ERR_EXT_HEADER_REQD,
  NBD_REP_ERR_INVALID,
  NBD_REP_ERR_PLATFORM,
  NBD_REP_ERR_POLICY,
  NBD_REP_ERR_SHUTDOWN,
  NBD_REP_ERR_TLS_REQD,
  NBD_REP_ERR_TOO_BIG,
  NBD_REP_ERR_UNKNOWN,
  NBD_REP_ERR_UNSUP,
  NBD_REP_INFO,
  NBD_REP_META_CONTEXT,
  NBD_REP_SERVER,
} from "../constants.js";
import { NbdProtocolError } from "../errors.js";
import type { BlockSizeConstraints } from "../export.js";
import { readU64 } from "./client-bytes.js";

export const NBD_OPT_NAMES: Readonly<Record<number, string>> = {
  [NBD_OPT_EXPORT_NAME]: "NBD_OPT_EXPORT_NAME",
  [NBD_OPT_ABORT]: "NBD_OPT_ABORT",
  [NBD_OPT_LIST]: "NBD_OPT_LIST",
  [NBD_OPT_STARTTLS]: "NBD_OPT_STARTTLS",
  [NBD_OPT_INFO]: "NBD_OPT_INFO",
  [NBD_OPT_GO]: "NBD_OPT_GO",
  [NBD_OPT_STRUCTURED_REPLY]: "NBD_OPT_STRUCTURED_REPLY",
  [NBD_OPT_LIST_META_CONTEXT]: "NBD_OPT_LIST_META_CONTEXT",
  [NBD_OPT_SET_META_CONTEXT]: "NBD_OPT_SET_META_CONTEXT",
  [NBD_OPT_EXTENDED_HEADERS]: "NBD_OPT_EXTENDED_HEADERS",
};

export function optionName(option: number): string {
  return NBD_OPT_NAMES[option] ?? `option ${option}`;
}

export const NBD_OPTION_REPLY_NAMES: Readonly<Record<number, string>> = {
  [NBD_REP_ACK]: "NBD_REP_ACK",
  [NBD_REP_SERVER]: "NBD_REP_SERVER",
  [NBD_REP_INFO]: "NBD_REP_INFO",
  [NBD_REP_META_CONTEXT]: "NBD_REP_META_CONTEXT",
  [NBD_REP_ERR_UNSUP]: "NBD_REP_ERR_UNSUP",
  [NBD_REP_ERR_POLICY]: "NBD_REP_ERR_POLICY",
  [NBD_REP_ERR_INVALID]: "NBD_REP_ERR_INVALID",
  [NBD_REP_ERR_PLATFORM]: "NBD_REP_ERR_PLATFORM",
  [NBD_REP_ERR_TLS_REQD]: "NBD_REP_ERR_TLS_REQD",
  [NBD_REP_ERR_UNKNOWN]: "NBD_REP_ERR_UNKNOWN",
  [NBD_REP_ERR_SHUTDOWN]: "NBD_REP_ERR_SHUTDOWN",
  [NBD_REP_ERR_BLOCK_SIZE_REQD]: "NBD_REP_ERR_BLOCK_SIZE_REQD",
  [NBD_REP_ERR_TOO_BIG]: "NBD_REP_ERR_TOO_BIG",
  [NBD_REP_ERR_EXT_HEADER_REQD]: "NBD_REP_ERR_EXT_HEADER_REQD",
};

export function optionReplyName(type: number): string {
  return NBD_OPTION_REPLY_NAMES[type] ?? `reply type 0x${type.toString(16)}`;
}

/** C: 32 bits, client flags. */
export function encodeClientFlags(flags: number): Buffer {
  const buf = Buffer.alloc(4);
  buf.writeUInt32BE(flags >>> 0, 0);
  return buf;
}

/** IHAVEOPT, option, length, data. */
export function encodeOption(option: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const buf = Buffer.alloc(NBD_OPTION_HEADER_SIZE + data.length);
  buf.writeBigUInt64BE(IHAVEOPT, 0);
  buf.writeUInt32BE(option, 8);
  buf.writeUInt32BE(data.length, 12);
  data.copy(buf, NBD_OPTION_HEADER_SIZE);
  return buf;
}

export function encodeExportNameOption(exportName: string): Buffer {
  return encodeOption(NBD_OPT_EXPORT_NAME, Buffer.from(exportName, "utf8"));
}

/** NBD_OPT_INFO / NBD_OPT_GO: name length, name, number of requests, NBD_INFO_* list. */
export function encodeInfoOption(
  option: number,
  exportName: string,
  infoRequests: readonly number[],
): Buffer {
  const name = Buffer.from(exportName, "utf8");
  const data = Buffer.alloc(4 + name.length + 2 + 2 * infoRequests.length);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  let at = 4 + name.length;
  data.writeUInt16BE(infoRequests.length, at);
  at += 2;
  for (const info of infoRequests) {
    data.writeUInt16BE(info, at);
    at += 2;
  }
  return encodeOption(option, data);
}

/** NBD_OPT_SET_META_CONTEXT / NBD_OPT_LIST_META_CONTEXT: name, query count, queries. */
export function encodeMetaContextOption(
  option: number,
  exportName: string,
  queries: readonly string[],
): Buffer {
  const name = Buffer.from(exportName, "utf8");
  const encoded = queries.map((q) => Buffer.from(q, "utf8"));
  const size = 4 + name.length + 4 + encoded.reduce((sum, q) => sum + 4 + q.length, 0);
  const data = Buffer.alloc(size);
  data.writeUInt32BE(name.length, 0);
  name.copy(data, 4);
  let at = 4 + name.length;
  data.writeUInt32BE(encoded.length, at);
  at += 4;
  for (const q of encoded) {
    data.writeUInt32BE(q.length, at);
    q.copy(data, at + 4);
    at += 4 + q.length;
  }
  return encodeOption(option, data);
}

/** What NBD_REP_INFO replies (or the NBD_OPT_EXPORT_NAME reply) told about an export. */
export interface ExportDetails {
  size?: number;
  transmissionFlags?: number;
  name?: string;
  description?: string;
  blockSizes?: BlockSizeConstraints;
}

function isPowerOfTwo(n: number): boolean {
  return n > 0 && (n & (n - 1)) === 0;
}

/** Merge one NBD_REP_INFO payload into `details`; unknown types are ignored as the spec asks. */
export function applyInfoReply(payload: Buffer, details: ExportDetails): void {
  if (payload.length < 2) throw new NbdProtocolError("NBD_REP_INFO shorter than 2 bytes");
  const type = payload.readUInt16BE(0);
  const expect = (length: number, name: string): void => {
    if (payload.length !== length) {
      throw new NbdProtocolError(`${name} has length ${payload.length}, expected ${length}`);
    }
  };
  switch (type) {
    case NBD_INFO_EXPORT: {
      expect(12, "NBD_INFO_EXPORT");
      const size = readU64(payload, 2);
      if (size < 0) throw new NbdProtocolError("export size exceeds 2^53 - 1 bytes");
      details.size = size;
      details.transmissionFlags = payload.readUInt16BE(10);
      return;
    }
    case NBD_INFO_NAME:
      details.name = payload.toString("utf8", 2);
      return;
    case NBD_INFO_DESCRIPTION:
      details.description = payload.toString("utf8", 2);
      return;
    case NBD_INFO_BLOCK_SIZE: {
      expect(14, "NBD_INFO_BLOCK_SIZE");
      details.blockSizes = checkBlockSizes(
        payload.readUInt32BE(2),
        payload.readUInt32BE(6),
        payload.readUInt32BE(10),
      );
      return;
    }
    default:
      return;
  }
}

/** Spec "Size constraints": the rules a client relies on when splitting requests. */
export function checkBlockSizes(
  minimum: number,
  preferred: number,
  maximum: number,
): BlockSizeConstraints {
  const bad = (why: string): never => {
    throw new NbdProtocolError(
      `invalid NBD_INFO_BLOCK_SIZE (minimum ${minimum}, preferred ${preferred}, maximum ${maximum}): ${why}`,
    );
  };
  if (!isPowerOfTwo(minimum) || minimum > 65536) bad("minimum must be a power of 2 up to 65536");
  if (!isPowerOfTwo(preferred) || preferred < minimum) {
    bad("preferred must be a power of 2 no smaller than minimum");
  }
  if (maximum < minimum) bad("maximum is smaller than minimum");
  return { minimum, preferred, maximum };
}

/** NBD_REP_SERVER: name length, name, then an optional human-readable description. */
export function decodeServerReply(payload: Buffer): { name: string; description: string } {
  if (payload.length < 4) throw new NbdProtocolError("NBD_REP_SERVER shorter than 4 bytes");
  const nameLength = payload.readUInt32BE(0);
  if (nameLength > payload.length - 4) {
    throw new NbdProtocolError(
      `NBD_REP_SERVER name length ${nameLength} exceeds its payload of ${payload.length} bytes`,
    );
  }
  return {
    name: payload.toString("utf8", 4, 4 + nameLength),
    description: payload.toString("utf8", 4 + nameLength),
  };
}

/** NBD_REP_META_CONTEXT: context id, then the context name. */
export function decodeMetaContextReply(payload: Buffer): { id: number; name: string } {
  if (payload.length < 5) {
    throw new NbdProtocolError(`NBD_REP_META_CONTEXT of ${payload.length} bytes is too short`);
  }
  return { id: payload.readUInt32BE(0), name: payload.toString("utf8", 4) };
}
