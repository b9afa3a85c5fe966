// The sequencer: completed subtasks come in any order, leave in sequence order per task.
//
// Where each claim of reference/patent-claims.txt lives (claims 9-24 restate 1-8 as
// an article and a system; the same code serves them):
//
//  1. "maintaining in a first data structure … a first index": TaskRecord, made by
//     begin(); TaskRecord.index is the sequence number of the next subtask that may
//     be sent. "adding a subtask … to a queue": add(). "comparing the sequence
//     number … to the index": the `seq === rec.index` test in add() and the
//     slot-at-index test in release(). "sending the subtask to a second processor":
//     the `dispatch` callback, called only from release().
//  2. A second data structure and index for a second task: one TaskRecord per active
//     task, held in `tasks` (a TaskTable keyed by task id), as many as there are
//     tasks in flight.
//  3. Adding, comparing and sending for the second task: the same add()/release()
//     code, applied to whichever record the subtask belongs to.
//  4. The task-id fields and identifying the record through them: SubtaskLike.taskId
//     and TaskRecord.taskId; `this.tasks.get(subtask.taskId)` at the top of add().
//  5. One subqueue per task: TaskRecord.slots; the queue is the set of all of them.
//  6. Each subqueue sorted in sequential order: a task's sequence numbers are the
//     contiguous range [firstSeq, end), so slot `seq - firstSeq` is the sorted
//     position of `seq`; the subqueue is sorted by construction and its head is the
//     slot at `index - firstSeq`.
//  7. Identifying and comparing repeated for each queued subtask each time one is
//     added: an add changes only its own task's subqueue, and in a sorted subqueue
//     only the head can equal the index. So add() identifies the record, compares,
//     and release() keeps comparing the head with the advancing index until they
//     differ. After every add no queued subtask anywhere carries its task's index,
//     which is exactly what comparing every queued subtask would leave.
//  8. Sequence number = track on the secondary: Subtask.seq from planTask() in
//     plan.ts; the sequencer relies only on the numbers being consecutive.
//
// Costs: add() is O(1) plus the subtasks it releases, each of which was queued once,
// so O(1) amortised per subtask. Memory: one record per active task; a task gets a
// subqueue only once a subtask of it arrives out of order, one slot per subtask of
// the task (whole up to 4096 slots, grown by doubling beyond); and a pool of retired
// records with a fixed cap (task-record.ts).

import { SequencerError, SequencerErrorCode, type UndispatchedRange } from "./errors.js";
import { RecordPool, type TaskRecord } from "./task-record.js";
import { TaskTable } from "./task-table.js";
import { WaitHistogram, type WaitSnapshot } from "./wait-histogram.js";

export interface SubtaskLike {
  readonly taskId: number;
  readonly seq: number;
}

export interface SequencerOptions<T extends SubtaskLike> {
  /**
   * The "second processor": receives subtasks in sequence order per task. It may
   * call back into the sequencer (add, fail, begin). If it throws, the task is
   * failed and add() throws ESEQ_DISPATCH (see SequencerError.failed).
   */
  readonly dispatch: (subtask: T) => void;
  /**
   * Clock for waiting times, in milliseconds (e.g. performance.now). It is read at
   * most once per add(), and only for sampled subtasks. Without it no clock is read
   * and no waiting time is recorded.
   */
  readonly now?: () => number;
  /**
   * Time one subtask in this many (default DEFAULT_WAIT_SAMPLING; 1 times them all).
   * The choice is made on add(), in arrival order, whether the subtask is then
   * dispatched at once (a wait of 0, no clock read) or queued. A clock read costs
   * more than the rest of add() on some hosts (50-200 ns under kvm-clock).
   */
  readonly waitSampling?: number;
}

export const DEFAULT_WAIT_SAMPLING = 8;

export interface SequencerStats {
  readonly tasksActive: number;
  readonly tasksBegun: number;
  /** Tasks whose last subtask was dispatched. */
  readonly tasksCompleted: number;
  /**
   * Tasks ended by fail(), failAll() or a throwing dispatch callback (a throw on a
   * task's last subtask leaves the task counted as completed).
   */
  readonly tasksFailed: number;
  readonly subtasksAdded: number;
  readonly subtasksQueued: number;
  readonly subtasksQueuedMax: number;
  /** Subtasks that could not be dispatched on arrival and had to be queued. */
  readonly subtasksOutOfOrder: number;
  readonly subtasksDispatched: number;
  /** Queued subtasks discarded because their task failed. */
  readonly subtasksDropped: number;
  readonly dispatchErrors: number;
  /** Waiting time from add to dispatch, in clock units. */
  readonly wait: WaitSnapshot;
}

export interface TaskView {
  readonly taskId: number;
  readonly firstSeq: number;
  readonly end: number;
  readonly index: number;
  readonly queued: number;
}

export class Sequencer<T extends SubtaskLike> {
  private readonly tasks = new TaskTable<TaskRecord<T>>();
  private readonly dispatch: (subtask: T) => void;
  private readonly now: (() => number) | undefined;
  private readonly sampling: number;
  /** Adds to go until the next sampled one; never reaches 0 without a clock. */
  private countdown: number;
  private readonly histogram = new WaitHistogram();
  private readonly pool = new RecordPool<T>();
  private queuedNow = 0;
  private queuedMax = 0;
  private begun = 0;
  private completed = 0;
  private failed = 0;
  private added = 0;
  private outOfOrder = 0;
  private dispatched = 0;
  private dropped = 0;
  private dispatchErrors = 0;

  constructor(options: SequencerOptions<T>) {
    this.dispatch = options.dispatch;
    this.now = options.now;
    const sampling = options.waitSampling ?? DEFAULT_WAIT_SAMPLING;
    if (!Number.isSafeInteger(sampling) || sampling < 1) {
      throw new SequencerError(
        SequencerErrorCode.BAD_OPTION,
        `waitSampling ${sampling} is not a positive integer`,
      );
    }
    this.sampling = sampling;
    this.countdown = this.now === undefined ? Infinity : 1;
  }

  /** Creates the record of a task whose subtasks are numbered firstSeq .. firstSeq + count - 1. */
  begin(taskId: number, firstSeq: number, count: number): void {
    if (
      !Number.isSafeInteger(taskId) ||
      taskId < 0 ||
      !Number.isSafeInteger(firstSeq) ||
      firstSeq < 0 ||
      !Number.isSafeInteger(count) ||
      count < 1 ||
      !Number.isSafeInteger(firstSeq + count)
    ) {
      throw new SequencerError(
        SequencerErrorCode.BAD_TASK,
        `task ${taskId}: cannot begin with first sequence number ${firstSeq} and count ${count}`,
      );
    }
    if (this.tasks.has(taskId)) {
      throw new SequencerError(SequencerErrorCode.TASK_EXISTS, `task ${taskId} is already active`);
    }
    this.tasks.insert(taskId, this.pool.take(taskId, firstSeq, firstSeq + count));
    this.begun++;
  }

  /** Adds a subtask the first processor has finished, and dispatches what is now in order. */
  add(subtask: T): void {
    const rec = this.tasks.get(subtask.taskId);
    if (rec === undefined) throw this.rejection(subtask, undefined);
    const seq = subtask.seq;
    if (seq === rec.index) {
      this.added++;
      if (this.sampled()) this.histogram.record(0);
      this.release(rec, subtask);
      return;
    }
    if (!(seq > rec.index && seq < rec.end && Number.isInteger(seq))) {
      throw this.rejection(subtask, rec);
    }
    const i = seq - rec.firstSeq;
    const bit = 1 << (i & 31);
    let slots = rec.slots;
    if (slots !== undefined && i < slots.length && (rec.filled![i >>> 5]! & bit) !== 0) {
      throw this.rejection(subtask, rec);
    }
    const t = this.sampled() ? this.now!() : NaN;
    if (slots === undefined || i >= slots.length) {
      slots = this.pool.ensureSlot(rec, i, this.now !== undefined);
    }
    slots[i] = subtask;
    rec.filled![i >>> 5]! |= bit;
    if (rec.addedAt !== undefined) rec.addedAt[i] = t;
    rec.queued++;
    this.added++;
    this.outOfOrder++;
    if (++this.queuedNow > this.queuedMax) this.queuedMax = this.queuedNow;
  }

  /**
   * Ends a task early (its write failed, or it is cancelled): drops its queued
   * subtasks and returns the sequence numbers never dispatched. Undefined if the
   * task is not active (never begun, or already retired after its last dispatch).
   */
  fail(taskId: number): UndispatchedRange | undefined {
    const rec = this.tasks.get(taskId);
    return rec === undefined ? undefined : this.drop(rec);
  }

  /** Fails every active task (link lost, shutdown). */
  failAll(): UndispatchedRange[] {
    const out: UndispatchedRange[] = [];
    for (const rec of this.tasks.snapshot()) out.push(this.drop(rec));
    return out;
  }

  has(taskId: number): boolean {
    return this.tasks.has(taskId);
  }

  /** The task's index: the sequence number it will dispatch next. */
  indexOf(taskId: number): number | undefined {
    return this.tasks.get(taskId)?.index;
  }

  /** Subtasks of the task waiting for a predecessor (0 if the task is not active). */
  queuedOf(taskId: number): number {
    return this.tasks.get(taskId)?.queued ?? 0;
  }

  *activeTasks(): IterableIterator<TaskView> {
    for (const r of this.tasks.snapshot()) {
      yield {
        taskId: r.taskId,
        firstSeq: r.firstSeq,
        end: r.end,
        index: r.index,
        queued: r.queued,
      };
    }
  }

  get tasksActive(): number {
    return this.tasks.size;
  }

  get subtasksQueued(): number {
    return this.queuedNow;
  }

  /** Waiting times from add to dispatch; read it, do not record into it. */
  get waits(): WaitHistogram {
    return this.histogram;
  }

  stats(): SequencerStats {
    return {
      tasksActive: this.tasks.size,
      tasksBegun: this.begun,
      tasksCompleted: this.completed,
      tasksFailed: this.failed,
      subtasksAdded: this.added,
      subtasksQueued: this.queuedNow,
      subtasksQueuedMax: this.queuedMax,
      subtasksOutOfOrder: this.outOfOrder,
      subtasksDispatched: this.dispatched,
      subtasksDropped: this.dropped,
      dispatchErrors: this.dispatchErrors,
      wait: this.histogram.snapshot(),
    };
  }

  /**
   * Dispatches `subtask` (whose seq equals rec.index), then every queued subtask that
   * follows it without a gap. State is updated before each callback, so a callback
   * that re-enters the sequencer sees it consistent; the loop re-reads the record and
   * stops if the record has left the task meanwhile (failed by the callback).
   */
  private release(rec: TaskRecord<T>, subtask: T): void {
    const generation = rec.generation;
    const { taskId, end } = rec;
    let t = NaN;
    for (;;) {
      const seq = rec.index;
      rec.index = seq + 1;
      this.dispatched++;
      const last = seq + 1 === end;
      if (last) {
        this.tasks.delete(taskId);
        rec.generation++;
        this.completed++;
      }
      try {
        this.dispatch(subtask);
      } catch (err) {
        throw this.dispatchFailed(rec, generation, taskId, seq, end, err);
      }
      if (last) {
        this.pool.give(rec);
        return;
      }
      if (rec.generation !== generation) return;
      const slots = rec.slots;
      if (slots === undefined) return;
      const i = rec.index - rec.firstSeq;
      const next = slots[i];
      if (next === undefined) return;
      slots[i] = undefined;
      rec.filled![i >>> 5]! &= ~(1 << (i & 31));
      rec.queued--;
      this.queuedNow--;
      const addedAt = rec.addedAt;
      if (addedAt !== undefined) {
        const a = addedAt[i]!;
        // NaN marks a subtask that was not sampled; the clock is read once per release.
        if (a === a) {
          if (t !== t) t = this.now!();
          this.histogram.record(t - a);
        }
      }
      subtask = next;
    }
  }

  /** Whether the subtask being added is one whose waiting time is measured. */
  private sampled(): boolean {
    if (--this.countdown !== 0) return false;
    this.countdown = this.sampling;
    return true;
  }

  private drop(rec: TaskRecord<T>): UndispatchedRange {
    const { taskId, index, end } = rec;
    const dropped = rec.queued;
    const slots = rec.slots;
    if (slots !== undefined && dropped > 0) {
      slots.fill(undefined, index - rec.firstSeq, Math.min(slots.length, end - rec.firstSeq));
      rec.filled!.fill(0);
    }
    rec.queued = 0;
    rec.generation++;
    this.tasks.delete(taskId);
    this.pool.give(rec);
    this.queuedNow -= dropped;
    this.dropped += dropped;
    this.failed++;
    return { taskId, from: index, to: end, dropped };
  }

  private dispatchFailed(
    rec: TaskRecord<T>,
    generation: number,
    taskId: number,
    seq: number,
    end: number,
    cause: unknown,
  ): SequencerError {
    this.dispatchErrors++;
    // The task may have ended during the callback (its last subtask, or the callback
    // failed it); otherwise fail it now. The subtask whose callback threw may or may
    // not have been sent, so it is reported with the rest.
    const dropped = rec.generation === generation ? this.drop(rec).dropped : 0;
    return new SequencerError(
      SequencerErrorCode.DISPATCH,
      `task ${taskId}: dispatch of subtask ${seq} threw; sequence numbers ${seq}..${end - 1} may be unsent`,
      { cause, failed: { taskId, from: seq, to: end, dropped } },
    );
  }

  /** Why add() refuses a subtask; nothing has been changed when this is called. */
  private rejection(subtask: T, rec: TaskRecord<T> | undefined): SequencerError {
    const { taskId, seq } = subtask;
    if (rec === undefined) {
      return new SequencerError(
        SequencerErrorCode.UNKNOWN_TASK,
        `task ${taskId}: subtask ${seq} added but the task is not active`,
      );
    }
    if (Number.isInteger(seq) && seq >= rec.firstSeq && seq < rec.end) {
      return new SequencerError(
        SequencerErrorCode.DUPLICATE,
        `task ${taskId}: subtask ${seq} added twice (${seq < rec.index ? "already dispatched" : "already queued"})`,
      );
    }
    return new SequencerError(
      SequencerErrorCode.RANGE,
      `task ${taskId}: subtask ${seq} is outside the task's ${rec.firstSeq}..${rec.end - 1}`,
    );
  }
}
