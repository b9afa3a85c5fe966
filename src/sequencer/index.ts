export {
  DEFAULT_TRACK_SIZE,
  MAX_TASK_ID,
  MAX_TRACK_SIZE,
  MIN_TRACK_SIZE,
  NBD_CMD_FOR_KIND,
  Subtask,
  SubtaskKind,
  TaskIdAllocator,
  TaskPlanner,
  planTask,
  trackRange,
  validateTrackSize,
  type TaskRequest,
  type WriteTask,
} from "./plan.js";
export {
  DEFAULT_WAIT_SAMPLING,
  Sequencer,
  type SequencerOptions,
  type SequencerStats,
  type SubtaskLike,
  type TaskView,
} from "./sequencer.js";
export {
  PlanError,
  PlanErrorCode,
  SequencerError,
  SequencerErrorCode,
  type UndispatchedRange,
} from "./errors.js";
export { WaitHistogram, type HistogramBucket, type WaitSnapshot } from "./wait-histogram.js";
