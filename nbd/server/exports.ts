import {
  NBD_FLAG_CAN_MULTI_CONN,
  NBD_FLAG_HAS_FLAGS,
  NBD_FLAG_READ_ONLY,
  NBD_FLAG_SEND_CACHE,
  NBD_FLAG_SEND_DF,
  NBD_FLAG_SEND_FAST_ZERO,
  NBD_FLAG_SEND_FLUSH,
  NBD_FLAG_SEND_FUA,
  NBD_FLAG_SEND_TRIM,
  NBD_FLAG_SEND_WRITE_ZEROES,
  NBD_MAX_PAYLOAD,
} from "../constants.js";
import type {
  BlockSizeConstraints,
  Export,
  ExportCapabilities,
  MetaContextSource,
} from "../export.js";
import type { TlsPeer } from "../tls.js";

/** A volume offered under a name. The empty name is the default export. */
export interface ServedExport {
  readonly name: string;
  readonly description: string;
  readonly volume: Export;
  /** Metadata contexts offered besides base:allocation (which `volume` provides). */
  readonly metaContexts?: readonly MetaContextSource[];
  /**
   * Who may use the export: given the session's TLS peer (null without TLS),
   * the reason to refuse it (sent with NBD_REP_ERR_POLICY), or undefined.
   */
  readonly authorize?: (peer: TlsPeer | null) => string | undefined;
}

export const DEFAULT_BLOCK_SIZES: BlockSizeConstraints = {
  minimum: 1,
  preferred: 4096,
  maximum: NBD_MAX_PAYLOAD,
};

/** Transmission flags from what the volume can do ("Transmission flags"). */
export function transmissionFlags(caps: ExportCapabilities, structured: boolean): number {
  let flags = NBD_FLAG_HAS_FLAGS;
  if (caps.readOnly) flags |= NBD_FLAG_READ_ONLY;
  if (caps.flush) flags |= NBD_FLAG_SEND_FLUSH;
  if (caps.fua) flags |= NBD_FLAG_SEND_FUA;
  if (!caps.readOnly && caps.trim) flags |= NBD_FLAG_SEND_TRIM;
  if (!caps.readOnly && caps.zero) {
    flags |= NBD_FLAG_SEND_WRITE_ZEROES;
    if (caps.fastZero) flags |= NBD_FLAG_SEND_FAST_ZERO;
  }
  // DF means "at most one content chunk", which this server always does.
  if (structured) flags |= NBD_FLAG_SEND_DF;
  if (caps.multiConn) flags |= NBD_FLAG_CAN_MULTI_CONN;
  if (caps.cache) flags |= NBD_FLAG_SEND_CACHE;
  return flags;
}
