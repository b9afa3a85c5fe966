import { describe, expect, it } from "vitest";
import { SequencerError } from "../../src/sequencer/errors.js";
import { TaskPlanner } from "../../src/sequencer/plan.js";
import { Sequencer, type SubtaskLike } from "../../src/sequencer/sequencer.js";

interface Sub extends SubtaskLike {
  readonly label: string;
}

function sub(taskId: number, seq: number): Sub {
  return { taskId, seq, label: `${taskId}:${seq}` };
}

/** A sequencer whose dispatches are recorded as "task:seq" labels. */
function recording(options: { now?: () => number; waitSampling?: number } = {}) {
  const sent: string[] = [];
  const seq = new Sequencer<Sub>({ dispatch: (s) => sent.push(s.label), ...options });
  return { seq, sent };
}

function seqError(fn: () => unknown): SequencerError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(SequencerError);
    return err as SequencerError;
  }
  throw new Error("expected a SequencerError");
}

describe("claim 1: one task, its index, the queue and sending", () => {
  it("sends a subtask whose number equals the index at once and advances the index", () => {
    const { seq, sent } = recording();
    seq.begin(1, 10, 3);
    expect(seq.indexOf(1)).toBe(10);
    seq.add(sub(1, 10));
    expect(sent).toEqual(["1:10"]);
    expect(seq.indexOf(1)).toBe(11);
  });

  it("queues a subtask whose number is not the index", () => {
    const { seq, sent } = recording();
    seq.begin(1, 10, 3);
    seq.add(sub(1, 12));
    expect(sent).toEqual([]);
    expect(seq.queuedOf(1)).toBe(1);
    expect(seq.indexOf(1)).toBe(10);
  });
});

describe("claims 2 and 3: a second task with its own index", () => {
  it("keeps the tasks' indexes apart", () => {
    const { seq, sent } = recording();
    seq.begin(1, 0, 2);
    seq.begin(2, 100, 2);
    seq.add(sub(1, 1)); // waits for 1:0
    seq.add(sub(2, 100)); // task 2 is not held up by task 1
    expect(sent).toEqual(["2:100"]);
    expect(seq.indexOf(1)).toBe(0);
    expect(seq.indexOf(2)).toBe(101);
  });
});

describe("claim 4: the record is found through the subtask's task id", () => {
  it("does not confuse two tasks writing the same tracks", () => {
    const { seq, sent } = recording();
    seq.begin(1, 5, 2);
    seq.begin(2, 5, 2);
    seq.add(sub(2, 6));
    seq.add(sub(1, 5)); // must not release 2:6, whose task's index is still 5
    expect(sent).toEqual(["1:5"]);
    seq.add(sub(2, 5));
    expect(sent).toEqual(["1:5", "2:5", "2:6"]);
  });
});

describe("claims 5 and 6: one sorted subqueue per task", () => {
  it("holds each task's queued subtasks apart and releases them in ascending order", () => {
    const { seq, sent } = recording();
    seq.begin(1, 0, 5);
    seq.begin(2, 0, 3);
    for (const s of [4, 2, 3, 1]) seq.add(sub(1, s));
    seq.add(sub(2, 2));
    expect(seq.queuedOf(1)).toBe(4);
    expect(seq.queuedOf(2)).toBe(1);
    expect(seq.subtasksQueued).toBe(5);
    seq.add(sub(1, 0));
    expect(sent).toEqual(["1:0", "1:1", "1:2", "1:3", "1:4"]);
    expect(seq.queuedOf(2)).toBe(1);
  });
});

describe("claim 7: each add compares the queue with the index again", () => {
  it("releases every queued subtask that has become next, and stops at a gap", () => {
    const { seq, sent } = recording();
    seq.begin(1, 0, 6);
    for (const s of [5, 1, 3, 2]) seq.add(sub(1, s));
    expect(sent).toEqual([]);
    seq.add(sub(1, 0));
    expect(sent).toEqual(["1:0", "1:1", "1:2", "1:3"]);
    expect(seq.indexOf(1)).toBe(4);
    expect(seq.queuedOf(1)).toBe(1);
    seq.add(sub(1, 4));
    expect(sent.slice(4)).toEqual(["1:4", "1:5"]);
  });
});

describe("claim 8: sequence numbers are tracks on the secondary", () => {
  it("dispatches a planned write track by track in ascending order", () => {
    const planner = new TaskPlanner({ trackSize: 4096 });
    const task = planner.plan({
      kind: "write",
      offset: 4096 * 7 + 100,
      data: Buffer.alloc(5 * 4096),
    });
    const tracks: number[] = [];
    const seq = new Sequencer({
      dispatch: (s: (typeof task.subtasks)[number]) => tracks.push(s.seq),
    });
    seq.begin(task.taskId, task.firstSeq, task.count);
    for (const s of [...task.subtasks].reverse()) seq.add(s);
    expect(tracks).toEqual([7, 8, 9, 10, 11, 12]);
  });
});

describe("task records", () => {
  it("retire when the last subtask is dispatched", () => {
    const { seq } = recording();
    seq.begin(1, 0, 2);
    seq.add(sub(1, 1));
    expect(seq.has(1)).toBe(true);
    seq.add(sub(1, 0));
    expect(seq.has(1)).toBe(false);
    expect(seq.tasksActive).toBe(0);
    expect(seqError(() => seq.add(sub(1, 0))).code).toBe("ESEQ_UNKNOWN_TASK");
    seq.begin(1, 0, 1); // the id may be used again once retired
    expect(seq.has(1)).toBe(true);
  });

  it("refuses a task id that is active, and invalid task shapes", () => {
    const { seq } = recording();
    seq.begin(3, 0, 1);
    expect(seqError(() => seq.begin(3, 9, 1)).code).toBe("ESEQ_TASK_EXISTS");
    for (const [id, first, count] of [
      [-1, 0, 1],
      [1.5, 0, 1],
      [4, -1, 1],
      [4, 0, 0],
      [4, 0, 2.5],
      [4, Number.MAX_SAFE_INTEGER, 2],
    ] as const) {
      expect(seqError(() => seq.begin(id, first, count)).code).toBe("ESEQ_BAD_TASK");
    }
    expect(seq.tasksActive).toBe(1);
  });

  it("grow a large task's subqueue while keeping what is queued", () => {
    const { seq, sent } = recording({ now: () => 0 });
    const n = 20_000;
    seq.begin(1, 1_000_000, n);
    seq.add(sub(1, 1_000_000 + 5)); // small subqueue first
    for (let s = n - 1; s >= 1; s--) if (s !== 5) seq.add(sub(1, 1_000_000 + s));
    expect(seq.queuedOf(1)).toBe(n - 1);
    seq.add(sub(1, 1_000_000));
    expect(sent.length).toBe(n);
    expect(sent.every((label, i) => label === `1:${1_000_000 + i}`)).toBe(true);
  });
});

describe("refused subtasks", () => {
  function refuses(add: Sub, code: string, setup: (s: Sequencer<Sub>) => void): void {
    const { seq, sent } = recording();
    setup(seq);
    const before = { stats: seq.stats(), queued: seq.queuedOf(add.taskId), sent: sent.length };
    const err = seqError(() => seq.add(add));
    expect(err.code).toBe(code);
    expect(err.message).toContain(`task ${add.taskId}`);
    expect(err.message).toContain(`subtask ${add.seq}`);
    expect(seq.stats()).toEqual(before.stats);
    expect(seq.queuedOf(add.taskId)).toBe(before.queued);
    expect(sent.length).toBe(before.sent);
  }

  it("a subtask queued twice", () => {
    refuses(sub(7, 3), "ESEQ_DUPLICATE", (s) => {
      s.begin(7, 0, 5);
      s.add(sub(7, 3));
    });
  });

  it("a subtask already dispatched", () => {
    refuses(sub(7, 0), "ESEQ_DUPLICATE", (s) => {
      s.begin(7, 0, 5);
      s.add(sub(7, 0));
    });
  });

  it("a subtask of a task never begun", () => {
    refuses(sub(8, 0), "ESEQ_UNKNOWN_TASK", (s) => s.begin(7, 0, 5));
  });

  it("a subtask before the task's first or past its last", () => {
    refuses(sub(7, 9), "ESEQ_RANGE", (s) => s.begin(7, 10, 5));
    refuses(sub(7, 15), "ESEQ_RANGE", (s) => s.begin(7, 10, 5));
    refuses(sub(7, 12.5), "ESEQ_RANGE", (s) => s.begin(7, 10, 5));
  });

  it("leave the sequencer working", () => {
    const { seq, sent } = recording();
    seq.begin(7, 0, 3);
    seq.add(sub(7, 2));
    expect(() => seq.add(sub(7, 2))).toThrow(SequencerError);
    expect(() => seq.add(sub(7, 3))).toThrow(SequencerError);
    seq.add(sub(7, 1));
    seq.add(sub(7, 0));
    expect(sent).toEqual(["7:0", "7:1", "7:2"]);
    expect(seq.tasksActive).toBe(0);
  });
});

describe("failing tasks", () => {
  it("drops the queued subtasks and reports the range never dispatched", () => {
    const { seq, sent } = recording();
    seq.begin(1, 10, 6);
    seq.add(sub(1, 10));
    seq.add(sub(1, 13));
    seq.add(sub(1, 15));
    expect(seq.fail(1)).toEqual({ taskId: 1, from: 11, to: 16, dropped: 2 });
    expect(sent).toEqual(["1:10"]);
    expect(seq.has(1)).toBe(false);
    expect(seq.subtasksQueued).toBe(0);
    expect(seq.fail(1)).toBeUndefined();
    expect(seqError(() => seq.add(sub(1, 11))).code).toBe("ESEQ_UNKNOWN_TASK");
    const stats = seq.stats();
    expect(stats.tasksFailed).toBe(1);
    expect(stats.subtasksDropped).toBe(2);
  });

  it("fails every task on link loss", () => {
    const { seq } = recording();
    seq.begin(1, 0, 3);
    seq.begin(2, 50, 2);
    seq.begin(3, 7, 1);
    seq.add(sub(1, 0));
    seq.add(sub(2, 51));
    const failed = seq.failAll().sort((a, b) => a.taskId - b.taskId);
    expect(failed).toEqual([
      { taskId: 1, from: 1, to: 3, dropped: 0 },
      { taskId: 2, from: 50, to: 52, dropped: 1 },
      { taskId: 3, from: 7, to: 8, dropped: 0 },
    ]);
    expect(seq.tasksActive).toBe(0);
    expect(seq.subtasksQueued).toBe(0);
  });

  it("a reused record carries nothing over from its failed task", () => {
    const { seq, sent } = recording();
    seq.begin(1, 0, 4);
    seq.add(sub(1, 2));
    seq.add(sub(1, 3));
    seq.fail(1);
    seq.begin(2, 0, 4); // takes the pooled record
    seq.add(sub(2, 3)); // slots 2 and 3 were filled by task 1: not duplicates now
    seq.add(sub(2, 2));
    expect(sent).toEqual([]);
    seq.add(sub(2, 1));
    seq.add(sub(2, 0));
    expect(sent).toEqual(["2:0", "2:1", "2:2", "2:3"]);
  });
});

describe("a dispatch callback that throws", () => {
  it("fails its task and reports the subtask that threw as maybe unsent", () => {
    const boom = new Error("link down");
    const sent: string[] = [];
    const seq = new Sequencer<Sub>({
      dispatch: (s) => {
        if (s.label === "1:2") throw boom;
        sent.push(s.label);
      },
    });
    seq.begin(1, 0, 6);
    seq.begin(2, 0, 1);
    for (const s of [1, 2, 3, 5]) seq.add(sub(1, s));
    const err = seqError(() => seq.add(sub(1, 0)));
    expect(err.code).toBe("ESEQ_DISPATCH");
    expect(err.cause).toBe(boom);
    expect(err.failed).toEqual({ taskId: 1, from: 2, to: 6, dropped: 2 });
    expect(sent).toEqual(["1:0", "1:1"]);
    expect(seq.has(1)).toBe(false);
    expect(seq.subtasksQueued).toBe(0);
    expect(seq.stats().dispatchErrors).toBe(1);
    seq.add(sub(2, 0)); // other tasks carry on
    expect(sent).toEqual(["1:0", "1:1", "2:0"]);
  });

  it("on a task's last subtask reports that one alone", () => {
    const seq = new Sequencer<Sub>({
      dispatch: (s) => {
        if (s.seq === 1) throw new Error("x");
      },
    });
    seq.begin(4, 0, 2);
    seq.add(sub(4, 0));
    expect(seqError(() => seq.add(sub(4, 1))).failed).toEqual({
      taskId: 4,
      from: 1,
      to: 2,
      dropped: 0,
    });
    expect(seq.tasksActive).toBe(0);
  });
});

describe("re-entrant dispatch callbacks", () => {
  it("may fail their own task mid-release; the release stops there", () => {
    const sent: string[] = [];
    let failed: unknown;
    const seq: Sequencer<Sub> = new Sequencer<Sub>({
      dispatch: (s) => {
        sent.push(s.label);
        if (s.seq === 1) failed = seq.fail(1);
      },
    });
    seq.begin(1, 0, 4);
    for (const s of [3, 2, 1]) seq.add(sub(1, s));
    seq.add(sub(1, 0));
    expect(sent).toEqual(["1:0", "1:1"]);
    expect(failed).toEqual({ taskId: 1, from: 2, to: 4, dropped: 2 });
    expect(seq.subtasksQueued).toBe(0);
  });

  it("may fail and begin again, reusing the record, without confusing the release", () => {
    const sent: string[] = [];
    const seq: Sequencer<Sub> = new Sequencer<Sub>({
      dispatch: (s) => {
        sent.push(s.label);
        if (s.label === "1:0") {
          seq.fail(1);
          seq.begin(2, 0, 3); // likely the record task 1 just gave back
        }
      },
    });
    seq.begin(1, 0, 3);
    seq.add(sub(1, 1));
    seq.add(sub(1, 0));
    expect(sent).toEqual(["1:0"]);
    expect(seq.indexOf(2)).toBe(0);
    seq.add(sub(2, 1));
    seq.add(sub(2, 0));
    expect(sent).toEqual(["1:0", "2:0", "2:1"]);
  });

  it("may fail their task, begin it anew and then throw: only the old task is reported", () => {
    const seq: Sequencer<Sub> = new Sequencer<Sub>({
      dispatch: (s) => {
        if (s.label !== "1:0") return;
        seq.fail(1);
        seq.begin(1, 40, 2); // the same id again, likely on the record just given back
        seq.add(sub(1, 41));
        throw new Error("late failure");
      },
    });
    seq.begin(1, 0, 3);
    seq.add(sub(1, 2));
    const err = seqError(() => seq.add(sub(1, 0)));
    expect(err.failed).toEqual({ taskId: 1, from: 0, to: 3, dropped: 0 });
    expect(seq.indexOf(1)).toBe(40);
    expect(seq.queuedOf(1)).toBe(1);
    expect(seq.stats().tasksFailed).toBe(1);
  });

  it("may add subtasks, of their own task or another", () => {
    const sent: string[] = [];
    const seq: Sequencer<Sub> = new Sequencer<Sub>({
      dispatch: (s) => {
        sent.push(s.label);
        if (s.label === "1:0") seq.add(sub(1, 1));
        if (s.label === "1:1") seq.add(sub(2, 0));
      },
    });
    seq.begin(1, 0, 3);
    seq.begin(2, 0, 1);
    seq.add(sub(1, 2));
    seq.add(sub(1, 0));
    expect(sent).toEqual(["1:0", "1:1", "2:0", "1:2"]);
    expect(seq.tasksActive).toBe(0);
  });
});

describe("observability", () => {
  it("counts arrivals out of order, dispatches, queue depth and its peak", () => {
    const { seq } = recording();
    seq.begin(1, 0, 4);
    seq.begin(2, 0, 2);
    seq.add(sub(1, 3));
    seq.add(sub(1, 2));
    seq.add(sub(2, 1));
    seq.add(sub(1, 0));
    const stats = seq.stats();
    expect(stats).toMatchObject({
      tasksActive: 2,
      tasksBegun: 2,
      tasksCompleted: 0,
      subtasksAdded: 4,
      subtasksOutOfOrder: 3,
      subtasksDispatched: 1,
      subtasksQueued: 3,
      subtasksQueuedMax: 3,
    });
    expect([...seq.activeTasks()].sort((a, b) => a.taskId - b.taskId)).toEqual([
      { taskId: 1, firstSeq: 0, end: 4, index: 1, queued: 2 },
      { taskId: 2, firstSeq: 0, end: 2, index: 0, queued: 1 },
    ]);
    seq.add(sub(1, 1));
    expect(seq.stats()).toMatchObject({
      tasksCompleted: 1,
      subtasksQueued: 1,
      subtasksQueuedMax: 3,
    });
  });

  it("measures waiting from add to dispatch with the caller's clock", () => {
    let clock = 100;
    const { seq } = recording({ now: () => clock, waitSampling: 1 });
    seq.begin(1, 0, 3);
    seq.add(sub(1, 2)); // at 100
    clock = 101.5;
    seq.add(sub(1, 1)); // at 101.5
    clock = 104;
    seq.add(sub(1, 0)); // releases all: waits 0, 2.5, 4
    const wait = seq.stats().wait;
    expect(wait.count).toBe(3);
    expect(wait.sum).toBeCloseTo(6.5);
    expect(wait.max).toBe(4);
    expect(seq.waits.quantile(1)).toBe(4);
  });

  it("reads the clock once per add at most, and samples one subtask in N", () => {
    let reads = 0;
    const { seq } = recording({ now: () => ++reads, waitSampling: 4 });
    seq.begin(1, 0, 16);
    for (let s = 15; s >= 0; s--) seq.add(sub(1, s));
    expect(seq.stats().wait.count).toBe(4);
    expect(reads).toBeLessThanOrEqual(5);
  });

  it("records no waits without a clock", () => {
    const { seq } = recording();
    seq.begin(1, 0, 2);
    seq.add(sub(1, 1));
    seq.add(sub(1, 0));
    expect(seq.stats().wait.count).toBe(0);
    expect(seqError(() => new Sequencer<Sub>({ dispatch: () => {}, waitSampling: 0 })).code).toBe(
      "ESEQ_BAD_OPTION",
    );
  });
});
