// What an NBD export must provide: the contract between the NBD server (or a
// client acting as a remote volume) and the storage behind it. Offsets and
// lengths are bytes; `flags` are the request's NBD_CMD_FLAG_* bits.

export interface ExportCapabilities {
  readonly readOnly: boolean;
  readonly flush: boolean;
  readonly fua: boolean;
  readonly trim: boolean;
  readonly zero: boolean;
  readonly fastZero: boolean;
  readonly cache: boolean;
  readonly blockStatus: boolean;
  /** FLUSH and FUA effects are visible across connections (NBD_FLAG_CAN_MULTI_CONN). */
  readonly multiConn: boolean;
}

export interface BlockSizeConstraints {
  readonly minimum: number;
  readonly preferred: number;
  readonly maximum: number;
}

/** One extent of base:allocation: `flags` holds NBD_STATE_HOLE / NBD_STATE_ZERO. */
export interface Extent {
  length: number;
  flags: number;
}

export interface Export {
  readonly size: number;
  readonly capabilities: ExportCapabilities;
  readonly blockSizes?: BlockSizeConstraints;
  /** Fill `into` entirely with the bytes at `offset`. */
  read(into: Buffer, offset: number): Promise<void>;
  write(data: Buffer, offset: number, flags: number): Promise<void>;
  /**
   * Optional: write `parts` one after another from `offset`, as one request. A
   * server hands a payload that arrived in pieces here without joining it. The
   * parts are lent: once the promise settles the server may fill them with the
   * next payload, so anything kept longer must be a copy.
   */
  writev?(parts: readonly Buffer[], offset: number, flags: number): Promise<void>;
  /** Make every write that already completed durable. */
  flush(): Promise<void>;
  trim(offset: number, length: number, flags: number): Promise<void>;
  /** NBD_CMD_FLAG_NO_HOLE and NBD_CMD_FLAG_FAST_ZERO are honoured here. */
  zero(offset: number, length: number, flags: number): Promise<void>;
  cache(offset: number, length: number): Promise<void>;
  /** Extents covering at least the first byte of the range, none past its end. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
  close(): Promise<void>;
}

/**
 * A metadata context beyond base:allocation ("Metadata querying"), read with
 * NBD_CMD_BLOCK_STATUS. `flags` of its extents are the context's own bits.
 */
export interface MetaContextSource {
  /** "namespace:leaf-name", e.g. "peercopy:out-of-sync". */
  readonly name: string;
  /** Extents covering at least the first byte of the range, none past its end. */
  blockStatus(offset: number, length: number): Promise<Extent[]>;
}
