// Caller's mistakes in planning or sequencing: thrown at once, with a stable `code`.

export const PlanErrorCode = {
  /** The track size is not a power of two. */
  TRACK_SIZE_NOT_POWER_OF_TWO: "EPLAN_TRACK_SIZE_NOT_POWER_OF_TWO",
  /** The track size is outside [MIN_TRACK_SIZE, MAX_TRACK_SIZE]. */
  TRACK_SIZE_RANGE: "EPLAN_TRACK_SIZE_RANGE",
  /** The offset is not a non-negative safe integer. */
  OFFSET: "EPLAN_OFFSET",
  /** The length is not a positive safe integer, or offset + length overflows. */
  LENGTH: "EPLAN_LENGTH",
  /** Data given where none belongs, or missing where it is needed. */
  DATA: "EPLAN_DATA",
  /** The task id is not a positive safe integer. */
  TASK_ID: "EPLAN_TASK_ID",
} as const;
export type PlanErrorCode = (typeof PlanErrorCode)[keyof typeof PlanErrorCode];

export class PlanError extends Error {
  constructor(
    readonly code: PlanErrorCode,
    message: string,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = "PlanError";
  }
}

export const SequencerErrorCode = {
  /** A subtask was added a second time (queued or already dispatched). */
  DUPLICATE: "ESEQ_DUPLICATE",
  /** A subtask names a task that was never begun, or has already retired. */
  UNKNOWN_TASK: "ESEQ_UNKNOWN_TASK",
  /** A subtask's sequence number lies before the task's first or past its last. */
  RANGE: "ESEQ_RANGE",
  /** `begin` was called for a task id that is still active. */
  TASK_EXISTS: "ESEQ_TASK_EXISTS",
  /** `begin` was given a task id, first sequence number or count that is not valid. */
  BAD_TASK: "ESEQ_BAD_TASK",
  /** A Sequencer option is not valid. */
  BAD_OPTION: "ESEQ_BAD_OPTION",
  /** The dispatch callback threw; the task was failed (see `failed`). */
  DISPATCH: "ESEQ_DISPATCH",
} as const;
export type SequencerErrorCode = (typeof SequencerErrorCode)[keyof typeof SequencerErrorCode];

/** Sequence numbers of one task that were never dispatched: the range [from, to). */
export interface UndispatchedRange {
  readonly taskId: number;
  readonly from: number;
  readonly to: number;
  /** How many of them were queued (completed by the host stage) and are dropped. */
  readonly dropped: number;
}

export class SequencerError extends Error {
  /** Set with ESEQ_DISPATCH: the tracks the secondary may not have received. */
  readonly failed: UndispatchedRange | undefined;
  constructor(
    readonly code: SequencerErrorCode,
    message: string,
    options?: { cause?: unknown; failed?: UndispatchedRange },
  ) {
    super(message, options);
    this.name = "SequencerError";
    this.failed = options?.failed;
  }
}
