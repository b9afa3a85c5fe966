// The pair's control page: one 4 KiB page past the end of a peercopy
// secondary's replication export. Reading it returns the secondary's pair
// record (role, pair id, generations, flags) as JSON; writing a JSON command
// to it changes that record. It is plain NBD, so `nbdcopy` or `nbdsh` read it
// too, and commands travel on the replication connection itself.
import { NBD_EINVAL, NBD_EPERM } from "../../nbd/constants.js";
import { NbdRequestError } from "../../nbd/errors.js";
import { Filter } from "../backend/filter.js";
import type { Backend } from "../backend/types.js";
import { hex, parseHex, type SideGenerations } from "./generations.js";

export const CONTROL_PAGE_SIZE = 4096;

/** What a secondary says of itself. */
export interface PairRecord extends SideGenerations {
  readonly role: "primary" | "secondary";
  readonly pairId: string;
  /** Mid-resync: its image is not a state the primary ever had. */
  readonly inconsistent: boolean;
  readonly volumeSize: number;
  readonly trackSize: number;
  readonly outOfSyncTracks: number;
}

export type ControlCommand =
  | { readonly op: "begin-resync"; readonly pairId: string; readonly tracks: number }
  | { readonly op: "in-sync"; readonly pairId: string; readonly current: bigint }
  /** A clean stop or a demotion: the primary lets go, and says whether it was in sync. */
  | { readonly op: "release"; readonly pairId: string; readonly inSync: boolean };

export function encodeRecord(r: PairRecord): Buffer {
  const page = Buffer.alloc(CONTROL_PAGE_SIZE);
  page.write(
    JSON.stringify({
      peercopy: 1,
      role: r.role,
      pairId: r.pairId,
      current: hex(r.current),
      bitmap: hex(r.bitmap),
      history: r.history.map(hex),
      fresh: r.fresh,
      inconsistent: r.inconsistent,
      volumeSize: r.volumeSize,
      trackSize: r.trackSize,
      outOfSyncTracks: r.outOfSyncTracks,
    }),
  );
  return page;
}

function jsonOf(page: Buffer): Record<string, unknown> {
  const end = page.indexOf(0);
  const text = page.subarray(0, end < 0 ? page.length : end).toString("utf8");
  const value: unknown = JSON.parse(text);
  if (typeof value !== "object" || value === null) throw new Error("not a JSON object");
  return value as Record<string, unknown>;
}

/** Throws on anything that is not a record this version understands. */
export function decodeRecord(page: Buffer): PairRecord {
  const j = jsonOf(page);
  if (j.peercopy !== 1) throw new Error("not a peercopy pair record");
  const history = Array.isArray(j.history) ? j.history : [];
  const num = (v: unknown): number => (typeof v === "number" && Number.isSafeInteger(v) ? v : 0);
  return {
    role: j.role === "primary" ? "primary" : "secondary",
    pairId: typeof j.pairId === "string" ? j.pairId : "",
    current: parseHex(j.current),
    bitmap: parseHex(j.bitmap),
    history: [parseHex(history[0] ?? "0"), parseHex(history[1] ?? "0")],
    fresh: j.fresh === true,
    inconsistent: j.inconsistent === true,
    volumeSize: num(j.volumeSize),
    trackSize: num(j.trackSize),
    outOfSyncTracks: num(j.outOfSyncTracks),
  };
}

export function encodeCommand(c: ControlCommand): Buffer {
  const page = Buffer.alloc(CONTROL_PAGE_SIZE);
  const body =
    c.op === "in-sync" ? { op: c.op, pairId: c.pairId, current: hex(c.current) } : { ...c };
  page.write(JSON.stringify(body));
  return page;
}

export function decodeCommand(page: Buffer): ControlCommand {
  const j = jsonOf(page);
  const pairId = typeof j.pairId === "string" ? j.pairId : "";
  if (j.op === "begin-resync")
    return { op: "begin-resync", pairId, tracks: typeof j.tracks === "number" ? j.tracks : 0 };
  if (j.op === "in-sync") return { op: "in-sync", pairId, current: parseHex(j.current) };
  if (j.op === "release") return { op: "release", pairId, inSync: j.inSync === true };
  throw new Error(`unknown control command ${JSON.stringify(j.op)}`);
}

export interface ControlHost {
  record(): PairRecord;
  command(c: ControlCommand): Promise<void>;
  /** False once this side was promoted: the stream must not overwrite its writes. */
  takesStream(): boolean;
}

/** The replication export of a secondary: the volume, then the control page. */
export class ControlFilter extends Filter {
  /** When a request last arrived: a primary keeps the link busy or reads the page as a heartbeat. */
  lastRequestAt = 0;
  declare writev?: (parts: readonly Buffer[], offset: number, flags: number) => Promise<void>;

  constructor(
    next: Backend,
    private readonly host: ControlHost,
  ) {
    super(next);
    const below = next.writev?.bind(next);
    if (below !== undefined)
      this.writev = (parts, offset, flags) => {
        // A control command whose payload came in several socket chunks (rare and small).
        if (offset >= this.next.size) return this.write(Buffer.concat(parts), offset, flags);
        let end = offset;
        for (const part of parts) end += part.length;
        const refused = this.refusal(end);
        if (refused) return Promise.reject(refused);
        return below(parts, offset, flags);
      };
  }

  override get size(): number {
    return this.next.size + CONTROL_PAGE_SIZE;
  }

  override async read(into: Buffer, offset: number): Promise<void> {
    this.lastRequestAt = performance.now();
    const volumeSize = this.next.size;
    const end = offset + into.length;
    if (end <= volumeSize) return this.next.read(into, offset);
    if (offset < volumeSize) await this.next.read(into.subarray(0, volumeSize - offset), offset);
    const page = encodeRecord(this.host.record());
    const from = Math.max(offset, volumeSize) - volumeSize;
    page.copy(into, Math.max(0, volumeSize - offset), from, end - volumeSize);
  }

  override write(data: Buffer, offset: number, flags: number): Promise<void> {
    const volumeSize = this.next.size;
    if (offset >= volumeSize) {
      this.lastRequestAt = performance.now();
      if (offset !== volumeSize)
        return Promise.reject(
          new NbdRequestError(NBD_EINVAL, "a control command starts at the control page"),
        );
      let command: ControlCommand;
      try {
        command = decodeCommand(data);
      } catch (err) {
        return Promise.reject(
          new NbdRequestError(NBD_EINVAL, `bad control command: ${(err as Error).message}`),
        );
      }
      return this.host.command(command);
    }
    const refused = this.refusal(offset + data.length);
    if (refused) return Promise.reject(refused);
    return this.next.write(data, offset, flags);
  }

  override zero(offset: number, length: number, flags: number): Promise<void> {
    const refused = this.refusal(offset + length);
    if (refused) return Promise.reject(refused);
    return this.next.zero(offset, length, flags);
  }

  override trim(offset: number, length: number, flags: number): Promise<void> {
    const refused = this.refusal(offset + length);
    if (refused) return Promise.reject(refused);
    return this.next.trim(offset, length, flags);
  }

  override async blockStatus(offset: number, length: number) {
    const volumeSize = this.next.size;
    if (offset >= volumeSize) return [{ length: Math.min(length, CONTROL_PAGE_SIZE), flags: 0 }];
    return this.next.blockStatus(offset, Math.min(length, volumeSize - offset));
  }

  /** Data writes: inside the volume, and only while this side takes the stream. */
  private refusal(end: number): NbdRequestError | undefined {
    this.lastRequestAt = performance.now();
    if (!this.host.takesStream())
      return new NbdRequestError(
        NBD_EPERM,
        "this controller was promoted; it no longer takes the replication stream",
      );
    if (end > this.next.size)
      return new NbdRequestError(NBD_EINVAL, "a data write crosses into the control page");
    return undefined;
  }
}
