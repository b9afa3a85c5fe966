// The task record of claim 1 (one per active write data task) and a small pool of
// retired records. Reusing a record reuses its subqueue arrays, so tasks that come
// and go at a high rate allocate nothing in steady state.

/** Subqueues up to this many slots are allocated whole; larger ones grow by doubling. */
const WHOLE_SUBQUEUE = 4096;
const MAX_POOLED_RECORDS = 1024;
/** Slots (8 bytes of pointer, plus 8 of add time with a clock) kept by pooled records. */
const MAX_POOLED_SLOTS = 1 << 16;

export class TaskRecord<T> {
  /** The task this record belongs to (claim 4: the record's task-id field). */
  taskId = 0;
  firstSeq = 0;
  /** One past the last sequence number of the task. */
  end = 0;
  /** Sequence number of the next subtask that may be dispatched (claim 1). */
  index = 0;
  /** Subtasks held in `slots`. */
  queued = 0;
  /** Bumped whenever the record leaves its task, so a loop holding it can tell. */
  generation = 0;
  /** The task's subqueue (claims 5, 6): slot i holds sequence number firstSeq + i. */
  slots: (T | undefined)[] | undefined = undefined;
  /** Add times parallel to `slots`, kept only when the sequencer has a clock. */
  addedAt: Float64Array | undefined = undefined;
  /**
   * One bit per slot, set while the slot is filled. add() tests this instead of the
   * slot itself: the bitmap stays in cache, while the slot, under many large tasks,
   * is a cache miss that would stall the check; the slot is then only written.
   */
  filled: Int32Array | undefined = undefined;
}

export class RecordPool<T> {
  private readonly free: TaskRecord<T>[] = [];
  private slotsHeld = 0;

  take(taskId: number, firstSeq: number, end: number): TaskRecord<T> {
    const rec = this.free.pop() ?? new TaskRecord<T>();
    this.slotsHeld -= rec.slots?.length ?? 0;
    rec.taskId = taskId;
    rec.firstSeq = firstSeq;
    rec.end = end;
    rec.index = firstSeq;
    rec.queued = 0;
    return rec;
  }

  /**
   * Takes back a record that has left its task. Its slots from `index` on must be
   * empty; the ones before it were emptied as they were dispatched.
   */
  give(rec: TaskRecord<T>): void {
    if (this.free.length >= MAX_POOLED_RECORDS) return;
    const held = rec.slots?.length ?? 0;
    if (this.slotsHeld + held > MAX_POOLED_SLOTS) {
      rec.slots = undefined;
      rec.addedAt = undefined;
      rec.filled = undefined;
    } else {
      this.slotsHeld += held;
    }
    this.free.push(rec);
  }

  /** Makes sure slot i exists; keeps what is queued. */
  ensureSlot(rec: TaskRecord<T>, i: number, withClock: boolean): (T | undefined)[] {
    const size = rec.end - rec.firstSeq;
    const old = rec.slots;
    const oldLength = old?.length ?? 0;
    if (i < oldLength) return old!;
    const length =
      size <= WHOLE_SUBQUEUE
        ? size
        : Math.min(size, Math.max(WHOLE_SUBQUEUE, i + 1, 2 * oldLength));
    const slots = new Array<T | undefined>(length).fill(undefined);
    // Only a record that grows while in use has anything queued to carry over.
    if (old !== undefined && rec.queued > 0) {
      for (let j = rec.index - rec.firstSeq; j < oldLength; j++) slots[j] = old[j];
    }
    rec.slots = slots;
    const filled = new Int32Array((length + 31) >>> 5);
    if (rec.filled !== undefined && rec.queued > 0) filled.set(rec.filled);
    rec.filled = filled;
    if (withClock) {
      const addedAt = new Float64Array(length);
      if (rec.addedAt !== undefined && rec.queued > 0) addedAt.set(rec.addedAt);
      rec.addedAt = addedAt;
    } else {
      rec.addedAt = undefined;
    }
    return slots;
  }
}
