// Decoders for the data of option requests. Each returns null when the data
// is syntactically invalid, which the server answers with NBD_REP_ERR_INVALID.
import { NBD_MAX_STRING } from "../constants.js";

export interface GoRequest {
  name: string;
  infos: number[];
}

export interface MetaContextRequest {
  name: string;
  queries: string[];
}

// ignoreBOM: a leading U+FEFF is part of the name, not a byte-order mark.
const decoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

function utf8(data: Buffer, start: number, end: number): string | null {
  if (end - start > NBD_MAX_STRING) return null;
  try {
    return decoder.decode(data.subarray(start, end));
  } catch {
    return null;
  }
}

/** NBD_OPT_INFO / NBD_OPT_GO: 32-bit name length, name, 16-bit count, 16-bit info types. */
export function parseGoRequest(data: Buffer): GoRequest | null {
  if (data.length < 6) return null;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 6) return null;
  const name = utf8(data, 4, 4 + nameLength);
  if (name === null) return null;
  let at = 4 + nameLength;
  const count = data.readUInt16BE(at);
  at += 2;
  if (data.length !== at + 2 * count) return null;
  const infos: number[] = [];
  for (let i = 0; i < count; i++, at += 2) infos.push(data.readUInt16BE(at));
  return { name, infos };
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT. */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest | null {
  if (data.length < 8) return null;
  const nameLength = data.readUInt32BE(0);
  if (nameLength > data.length - 8) return null;
  const name = utf8(data, 4, 4 + nameLength);
  if (name === null) return null;
  let at = 4 + nameLength;
  const count = data.readUInt32BE(at);
  at += 4;
  // Each query needs at least its 4-byte length: reject counts the data cannot hold.
  if (count > (data.length - at) / 4) return null;
  const queries: string[] = [];
  for (let i = 0; i < count; i++) {
    if (data.length - at < 4) return null;
    const length = data.readUInt32BE(at);
    at += 4;
    if (length > data.length - at) return null;
    const query = utf8(data, at, at + length);
    if (query === null) return null;
    queries.push(query);
    at += length;
  }
  if (at !== data.length) return null;
  return { name, queries };
}

/** NBD_OPT_EXPORT_NAME: the whole data is the name. */
export function parseExportName(data: Buffer): string | null {
  return utf8(data, 0, data.length);
}
