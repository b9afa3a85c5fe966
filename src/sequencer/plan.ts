// Task planning: a host write, write-zeroes or trim becomes one write data task,
// split at track boundaries into subtasks numbered by the track they cover on the
// secondary (claim 8), so a task's sequence numbers run consecutively from its
// first track and the sequencer can hold its subqueue in a slot array.

import { NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES } from "../../nbd/constants.js";
import { PlanError, PlanErrorCode } from "./errors.js";

export const MIN_TRACK_SIZE = 4 * 1024;
export const MAX_TRACK_SIZE = 16 * 1024 * 1024;
/** A fixed-block track on the reference hardware. */
export const DEFAULT_TRACK_SIZE = 64 * 1024;

export const SubtaskKind = { WRITE: "write", ZERO: "zero", TRIM: "trim" } as const;
export type SubtaskKind = (typeof SubtaskKind)[keyof typeof SubtaskKind];

/** The command the link sends to the secondary for each kind of subtask. */
export const NBD_CMD_FOR_KIND: Readonly<Record<SubtaskKind, number>> = {
  write: NBD_CMD_WRITE,
  zero: NBD_CMD_WRITE_ZEROES,
  trim: NBD_CMD_TRIM,
};

/** The part of a write data task that falls in one track. */
export class Subtask {
  constructor(
    /** The write data task this is a subtask of (claim 4). */
    readonly taskId: number,
    /** Sequence number: the track number on the secondary device (claim 8). */
    readonly seq: number,
    readonly kind: SubtaskKind,
    /** Absolute byte offset on the device. */
    readonly offset: number,
    readonly length: number,
    /** Byte offset of `offset` inside the track. */
    readonly trackOffset: number,
    /** For writes, a view of the host's payload (shares its memory); else undefined. */
    readonly data: Buffer | undefined,
    /** The host request's NBD_CMD_FLAG_* bits, carried to the secondary. */
    readonly flags: number,
  ) {}
}

export interface WriteTask {
  readonly taskId: number;
  readonly kind: SubtaskKind;
  readonly offset: number;
  readonly length: number;
  readonly flags: number;
  /** Sequence number (track) of the first subtask. */
  readonly firstSeq: number;
  /** Number of subtasks; their sequence numbers are firstSeq .. firstSeq + count - 1. */
  readonly count: number;
  readonly subtasks: readonly Subtask[];
}

export type TaskRequest =
  | {
      readonly kind: typeof SubtaskKind.WRITE;
      readonly offset: number;
      readonly data: Buffer;
      readonly flags?: number;
    }
  | {
      readonly kind: typeof SubtaskKind.ZERO | typeof SubtaskKind.TRIM;
      readonly offset: number;
      readonly length: number;
      readonly flags?: number;
    };

/** Returns `size` if it is a valid track size, else throws a PlanError saying why. */
export function validateTrackSize(size: number): number {
  if (!Number.isInteger(size) || size < MIN_TRACK_SIZE || size > MAX_TRACK_SIZE) {
    throw new PlanError(
      PlanErrorCode.TRACK_SIZE_RANGE,
      `track size ${size} is outside ${MIN_TRACK_SIZE}..${MAX_TRACK_SIZE} bytes`,
    );
  }
  if ((size & (size - 1)) !== 0) {
    throw new PlanError(
      PlanErrorCode.TRACK_SIZE_NOT_POWER_OF_TWO,
      `track size ${size} is not a power of two`,
    );
  }
  return size;
}

/** The tracks that [offset, offset + length) touches; length must be positive. */
export function trackRange(
  offset: number,
  length: number,
  trackSize: number,
): { first: number; count: number } {
  const first = Math.floor(offset / trackSize);
  const last = Math.floor((offset + length - 1) / trackSize);
  return { first, count: last - first + 1 };
}

/**
 * Splits one host request into a write data task. `trackSize` must already have
 * passed validateTrackSize (TaskPlanner does that once, not per request).
 */
export function planTask(taskId: number, request: TaskRequest, trackSize: number): WriteTask {
  if (!Number.isSafeInteger(taskId) || taskId < 1) {
    throw new PlanError(PlanErrorCode.TASK_ID, `task id ${taskId} is not a positive integer`);
  }
  const { kind, offset } = request;
  const flags = request.flags ?? 0;
  let data: Buffer | undefined;
  let length: number;
  if (request.kind === SubtaskKind.WRITE) {
    data = request.data;
    length = data.length;
  } else {
    if ("data" in request) {
      throw new PlanError(PlanErrorCode.DATA, `task ${taskId}: a ${kind} carries no data`);
    }
    length = request.length;
  }
  if (!Number.isSafeInteger(offset) || offset < 0) {
    throw new PlanError(PlanErrorCode.OFFSET, `task ${taskId}: offset ${offset} is not valid`);
  }
  if (!Number.isSafeInteger(length) || length < 1 || !Number.isSafeInteger(offset + length)) {
    throw new PlanError(
      PlanErrorCode.LENGTH,
      `task ${taskId}: length ${length} at offset ${offset} is not valid`,
    );
  }

  const end = offset + length;
  const { first, count } = trackRange(offset, length, trackSize);
  const subtasks: Subtask[] = [];
  let pos = offset;
  for (let seq = first; seq < first + count; seq++) {
    const trackStart = seq * trackSize;
    const stop = Math.min(trackStart + trackSize, end);
    const view = data === undefined ? undefined : data.subarray(pos - offset, stop - offset);
    subtasks.push(new Subtask(taskId, seq, kind, pos, stop - pos, pos - trackStart, view, flags));
    pos = stop;
  }
  return { taskId, kind, offset, length, flags, firstSeq: first, count, subtasks };
}

/** Largest task id; ids stay small integers, which keeps Map lookups on the fast path. */
export const MAX_TASK_ID = 0x7fff_ffff;

/**
 * Hands out task ids 1, 2, 3 … and wraps to 1 after MAX_TASK_ID. An id comes back
 * only after two billion tasks; the sequencer refuses to begin an id still active
 * (ESEQ_TASK_EXISTS), so a task that somehow outlived that many would be noticed.
 */
export class TaskIdAllocator {
  private last: number;
  constructor(first = 1) {
    if (!Number.isInteger(first) || first < 1 || first > MAX_TASK_ID) {
      throw new PlanError(PlanErrorCode.TASK_ID, `first task id ${first} is not valid`);
    }
    this.last = first - 1;
  }
  next(): number {
    this.last = this.last >= MAX_TASK_ID ? 1 : this.last + 1;
    return this.last;
  }
}

/** Plans host requests with one validated track size and fresh task ids. */
export class TaskPlanner {
  readonly trackSize: number;
  private readonly ids: TaskIdAllocator;

  constructor(options: { trackSize?: number; firstTaskId?: number } = {}) {
    this.trackSize = validateTrackSize(options.trackSize ?? DEFAULT_TRACK_SIZE);
    this.ids = new TaskIdAllocator(options.firstTaskId);
  }

  plan(request: TaskRequest): WriteTask {
    return planTask(this.ids.next(), request, this.trackSize);
  }
}
