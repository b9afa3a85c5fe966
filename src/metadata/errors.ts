// Errors of the metadata file. Each carries a stable `code`; the message names
// the file, what is wrong, and what the operator can do about it.

export const MetadataErrorCode = {
  /** No header slot with the right magic and checksum, or a damaged activity log. */
  EMETA_CORRUPT: "EMETA_CORRUPT",
  /** The file describes a different volume (size or track size). */
  EMETA_MISMATCH: "EMETA_MISMATCH",
  /** Written by a format version this build does not read. */
  EMETA_VERSION: "EMETA_VERSION",
  /** The file is missing and the caller asked not to create it. */
  EMETA_MISSING: "EMETA_MISSING",
  /** Another process has the file open (its lock file names the pid). */
  EMETA_IN_USE: "EMETA_IN_USE",
  /** Reading or writing the file failed. */
  EMETA_IO: "EMETA_IO",
} as const;
export type MetadataErrorCode = (typeof MetadataErrorCode)[keyof typeof MetadataErrorCode];

export const REINIT_ADVICE =
  "restart with --init-metadata to discard it and start with a full copy, or point --metadata at the right file";

export class MetadataError extends Error {
  override readonly name = "MetadataError";
  constructor(
    readonly code: MetadataErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
  }
}
