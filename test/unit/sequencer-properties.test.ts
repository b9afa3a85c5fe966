// Properties of the sequencer over any number of concurrent tasks and any order of
// completion, interleaved across tasks, checked against a plain model.

import { fc, test } from "@fast-check/vitest";
import { describe, expect } from "vitest";
import { SequencerError, type UndispatchedRange } from "../../src/sequencer/errors.js";
import { Sequencer, type SubtaskLike } from "../../src/sequencer/sequencer.js";

interface Sub extends SubtaskLike {
  readonly k: number;
  readonly j: number;
}

interface TaskSpec {
  readonly id: number;
  readonly firstSeq: number;
  readonly count: number;
}

/** What may happen before the n-th add: fail one task, or all of them. */
type Event =
  { readonly at: number; readonly fail: number } | { readonly at: number; readonly failAll: true };

interface Scenario {
  readonly tasks: TaskSpec[];
  /** Completion order: [task index, position in task]. */
  readonly order: (readonly [number, number])[];
  /** Begin each task just before its first completion, rather than all up front. */
  readonly lazyBegin: boolean;
  readonly events: Event[];
  /** "k:j" of subtasks whose dispatch callback throws. */
  readonly poisoned: Set<string>;
}

const specsArb = fc
  .integer({ min: 1, max: 12 })
  .chain((n) =>
    fc.tuple(
      // Ids both small and huge, to exercise the task table's hashing.
      fc.uniqueArray(fc.oneof(fc.nat(64), fc.maxSafeNat()), { minLength: n, maxLength: n }),
      fc.array(fc.record({ firstSeq: fc.nat(1000), count: fc.integer({ min: 1, max: 40 }) }), {
        minLength: n,
        maxLength: n,
      }),
    ),
  )
  .map(([ids, shapes]) => shapes.map((s, k) => ({ id: ids[k]!, ...s })));

function scenarioArb(withFailures: boolean): fc.Arbitrary<Scenario> {
  return specsArb.chain((tasks) => {
    const keys = tasks.flatMap((t, k) =>
      Array.from({ length: t.count }, (_, j) => [k, j] as const),
    );
    const n = keys.length;
    const eventArb: fc.Arbitrary<Event> = fc.oneof(
      { weight: 5, arbitrary: fc.record({ at: fc.nat(n), fail: fc.nat(tasks.length - 1) }) },
      { weight: 1, arbitrary: fc.record({ at: fc.nat(n), failAll: fc.constant(true as const) }) },
    );
    return fc.record({
      tasks: fc.constant(tasks),
      order: fc.shuffledSubarray(keys, { minLength: n, maxLength: n }),
      lazyBegin: fc.boolean(),
      events: withFailures ? fc.array(eventArb, { maxLength: 4 }) : fc.constant([]),
      poisoned: withFailures
        ? fc
            .subarray(keys, { maxLength: Math.min(3, n) })
            .map((ks) => new Set(ks.map(([k, j]) => `${k}:${j}`)))
        : fc.constant(new Set<string>()),
    });
  });
}

interface Outcome {
  problems: string[];
  /** Per task, positions handed to the dispatch callback without it throwing. */
  delivered: number[][];
  /** Per task, what the sequencer reported as never dispatched. */
  reported: (UndispatchedRange | undefined)[];
  seq: Sequencer<Sub>;
  outOfOrder: number;
}

function run(s: Scenario): Outcome {
  const { tasks } = s;
  const problems: string[] = [];
  const added = tasks.map((t) => new Array<boolean>(t.count).fill(false));
  const delivered: number[][] = tasks.map(() => []);
  const reported: (UndispatchedRange | undefined)[] = tasks.map(() => undefined);
  const begun = tasks.map(() => false);
  const ended = tasks.map(() => false); // failed, or every subtask dispatched
  let outOfOrder = 0;

  const seq = new Sequencer<Sub>({
    dispatch: (sub) => {
      const { k, j } = sub;
      if (j !== delivered[k]!.length)
        problems.push(`task ${k}: ${j} dispatched after ${delivered[k]!.length}`);
      if (!added[k]![j]) problems.push(`task ${k}: ${j} dispatched before it was added`);
      if (s.poisoned.has(`${k}:${j}`)) throw new Error(`poisoned ${k}:${j}`);
      delivered[k]!.push(j);
    },
    now: () => 0,
    waitSampling: 3,
  });
  const begin = (k: number): void => {
    const t = tasks[k]!;
    seq.begin(t.id, t.firstSeq, t.count);
    begun[k] = true;
  };
  /** Model: what is queued, and the next position the task may dispatch. */
  const pending = (k: number): { next: number; queued: number } => {
    const next = delivered[k]!.length;
    return { next, queued: added[k]!.filter((a, j) => a && j >= next).length };
  };
  const failOne = (k: number, got: UndispatchedRange | undefined): void => {
    const t = tasks[k]!;
    const active = begun[k] && !ended[k];
    if (!active) {
      if (got !== undefined)
        problems.push(`task ${k}: fail reported ${JSON.stringify(got)} for an inactive task`);
      return;
    }
    const { next, queued } = pending(k);
    const want = {
      taskId: t.id,
      from: t.firstSeq + next,
      to: t.firstSeq + t.count,
      dropped: queued,
    };
    if (JSON.stringify(got) !== JSON.stringify(want)) {
      problems.push(
        `task ${k}: fail reported ${JSON.stringify(got)}, expected ${JSON.stringify(want)}`,
      );
    }
    reported[k] = got;
    ended[k] = true;
  };

  if (!s.lazyBegin) tasks.forEach((_, k) => begin(k));
  s.order.forEach(([k, j], n) => {
    for (const e of s.events) {
      if (e.at !== n) continue;
      if ("failAll" in e) {
        const got = new Map(seq.failAll().map((r) => [r.taskId, r]));
        tasks.forEach((t, i) => failOne(i, got.get(t.id)));
      } else {
        failOne(e.fail, seq.fail(tasks[e.fail]!.id));
      }
    }
    if (ended[k]) return; // failed: the host stage adds no more of it
    if (!begun[k]) begin(k);
    const t = tasks[k]!;
    if (j !== delivered[k]!.length) outOfOrder++;
    added[k]![j] = true;
    try {
      seq.add({ taskId: t.id, seq: t.firstSeq + j, k, j });
    } catch (err) {
      if (!(err instanceof SequencerError) || err.code !== "ESEQ_DISPATCH") throw err;
      // The subtask that threw is reported with the rest; the model has not delivered it.
      const { next, queued } = pending(k);
      const want = {
        taskId: t.id,
        from: t.firstSeq + next,
        to: t.firstSeq + t.count,
        dropped: queued - 1,
      };
      if (JSON.stringify(err.failed) !== JSON.stringify(want)) {
        problems.push(
          `task ${k}: ESEQ_DISPATCH reported ${JSON.stringify(err.failed)}, expected ${JSON.stringify(want)}`,
        );
      }
      reported[k] = err.failed;
      ended[k] = true;
      return;
    }
    // Claim 7: after the add, everything that could go has gone.
    let firstMissing = 0;
    while (firstMissing < t.count && added[k]![firstMissing]) firstMissing++;
    if (delivered[k]!.length !== firstMissing) {
      problems.push(
        `task ${k}: after adding ${j}, ${delivered[k]!.length} dispatched, expected ${firstMissing}`,
      );
    }
    if (firstMissing === t.count) {
      ended[k] = true;
      if (seq.has(t.id)) problems.push(`task ${k}: record not retired`);
    } else {
      if (seq.indexOf(t.id) !== t.firstSeq + firstMissing)
        problems.push(`task ${k}: index ${seq.indexOf(t.id)}`);
      if (seq.queuedOf(t.id) !== pending(k).queued)
        problems.push(`task ${k}: queued ${seq.queuedOf(t.id)}`);
    }
  });
  return { problems, delivered, reported, seq, outOfOrder };
}

describe("sequencer properties", () => {
  test.prop([scenarioArb(false)])(
    "dispatches every subtask once, in order per task, never before its predecessors",
    (s) => {
      const { problems, delivered, seq, outOfOrder } = run(s);
      expect(problems).toEqual([]);
      s.tasks.forEach((t, k) => {
        expect(delivered[k]).toEqual(Array.from({ length: t.count }, (_, j) => j));
      });
      const total = s.order.length;
      expect(seq.tasksActive).toBe(0);
      expect(seq.subtasksQueued).toBe(0);
      expect(seq.stats()).toMatchObject({
        tasksBegun: s.tasks.length,
        tasksCompleted: s.tasks.length,
        subtasksAdded: total,
        subtasksDispatched: total,
        subtasksOutOfOrder: outOfOrder,
        subtasksDropped: 0,
      });
      expect(seq.stats().wait.count).toBe(Math.ceil(total / 3));
    },
  );

  test.prop([scenarioArb(true)])(
    "after failures, exactly the undispatched subtasks are reported",
    (s) => {
      const { problems, delivered, reported, seq } = run(s);
      expect(problems).toEqual([]);
      s.tasks.forEach((t, k) => {
        const d = delivered[k]!;
        // What was dispatched is a prefix of the task, in order.
        expect(d).toEqual(Array.from({ length: d.length }, (_, j) => j));
        const r = reported[k];
        if (r === undefined) {
          // Never failed while active, so every subtask was added and dispatched.
          expect(d.length).toBe(t.count);
        } else {
          // Dispatched and reported together cover the task exactly once.
          expect(r.from).toBe(t.firstSeq + d.length);
          expect(r.to).toBe(t.firstSeq + t.count);
        }
      });
      expect(seq.tasksActive).toBe(0);
      expect(seq.subtasksQueued).toBe(0);
    },
  );
});
