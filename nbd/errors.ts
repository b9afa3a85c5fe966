import {
  NBD_EINVAL,
  NBD_EIO,
  NBD_ENOMEM,
  NBD_ENOSPC,
  NBD_ENOTSUP,
  NBD_EOVERFLOW,
  NBD_EPERM,
  NBD_ERROR_NAMES,
  NBD_ESHUTDOWN,
} from "./constants.js";

/** A request that failed; the connection lives on. `errno` is an NBD error value. */
export class NbdRequestError extends Error {
  readonly code: string;
  constructor(
    readonly errno: number,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "NbdRequestError";
    this.code = NBD_ERROR_NAMES[errno] ?? "EIO";
  }
}

/** A peer that broke the protocol; the connection is closed. */
export class NbdProtocolError extends Error {
  readonly code = "NBD_PROTOCOL";
  constructor(message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = "NbdProtocolError";
  }
}

const SYSTEM_TO_NBD: Readonly<Record<string, number>> = {
  EPERM: NBD_EPERM,
  EACCES: NBD_EPERM,
  EROFS: NBD_EPERM,
  EIO: NBD_EIO,
  ENOMEM: NBD_ENOMEM,
  EINVAL: NBD_EINVAL,
  ENOSPC: NBD_ENOSPC,
  EFBIG: NBD_ENOSPC,
  EDQUOT: NBD_ENOSPC,
  EOVERFLOW: NBD_EOVERFLOW,
  ENOTSUP: NBD_ENOTSUP,
  EOPNOTSUPP: NBD_ENOTSUP,
  ESHUTDOWN: NBD_ESHUTDOWN,
};

/** The one place that maps any failure to the NBD error value sent on the wire. */
export function toNbdErrno(err: unknown): number {
  if (err instanceof NbdRequestError) return err.errno;
  const code = (err as { code?: unknown } | null)?.code;
  if (typeof code === "string") return SYSTEM_TO_NBD[code] ?? NBD_EIO;
  return NBD_EIO;
}
