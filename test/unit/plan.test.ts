import { fc, test } from "@fast-check/vitest";
import { describe, expect, it } from "vitest";
import { NBD_CMD_TRIM, NBD_CMD_WRITE, NBD_CMD_WRITE_ZEROES } from "../../nbd/constants.js";
import { PlanError } from "../../src/sequencer/errors.js";
import {
  DEFAULT_TRACK_SIZE,
  MAX_TASK_ID,
  MAX_TRACK_SIZE,
  MIN_TRACK_SIZE,
  NBD_CMD_FOR_KIND,
  SubtaskKind,
  TaskIdAllocator,
  TaskPlanner,
  planTask,
  trackRange,
  validateTrackSize,
  type TaskRequest,
  type WriteTask,
} from "../../src/sequencer/plan.js";

const KiB = 1024;
const MiB = 1024 * KiB;

function planError(fn: () => unknown): PlanError {
  try {
    fn();
  } catch (err) {
    expect(err).toBeInstanceOf(PlanError);
    return err as PlanError;
  }
  throw new Error("expected a PlanError");
}

describe("validateTrackSize", () => {
  it("accepts powers of two from 4 KiB to 16 MiB", () => {
    for (let size = MIN_TRACK_SIZE; size <= MAX_TRACK_SIZE; size *= 2) {
      expect(validateTrackSize(size)).toBe(size);
    }
    expect(DEFAULT_TRACK_SIZE).toBe(64 * KiB);
  });

  it("names a size out of range", () => {
    for (const size of [0, -4096, 2 * KiB, 4 * KiB - 1, 32 * MiB, 1.5, NaN, Infinity]) {
      expect(planError(() => validateTrackSize(size)).code).toBe("EPLAN_TRACK_SIZE_RANGE");
    }
  });

  it("names a size that is not a power of two", () => {
    for (const size of [12 * KiB, 64 * KiB + 512, 16 * MiB - 4096]) {
      const err = planError(() => validateTrackSize(size));
      expect(err.code).toBe("EPLAN_TRACK_SIZE_NOT_POWER_OF_TWO");
      expect(err.message).toContain(String(size));
    }
  });

  it("is applied by TaskPlanner", () => {
    expect(new TaskPlanner().trackSize).toBe(DEFAULT_TRACK_SIZE);
    expect(new TaskPlanner({ trackSize: 4 * KiB }).trackSize).toBe(4 * KiB);
    expect(planError(() => new TaskPlanner({ trackSize: 48 * KiB })).code).toBe(
      "EPLAN_TRACK_SIZE_NOT_POWER_OF_TWO",
    );
  });
});

describe("planTask", () => {
  it("splits a write across a track boundary into views of the payload", () => {
    const data = Buffer.alloc(100, 7);
    const task = planTask(9, { kind: "write", offset: 65_500, data, flags: 1 }, 64 * KiB);
    expect(task).toMatchObject({ taskId: 9, kind: "write", offset: 65_500, length: 100 });
    expect(task.firstSeq).toBe(0);
    expect(task.count).toBe(2);
    const [a, b] = task.subtasks;
    expect(a).toMatchObject({ taskId: 9, seq: 0, offset: 65_500, length: 36, trackOffset: 65_500 });
    expect(b).toMatchObject({ taskId: 9, seq: 1, offset: 65_536, length: 64, trackOffset: 0 });
    expect(a!.flags).toBe(1);
    data[0] = 42;
    data[36] = 43;
    expect(a!.data![0]).toBe(42);
    expect(b!.data![0]).toBe(43);
  });

  it("keeps a write inside one track as one subtask", () => {
    const data = Buffer.alloc(4096);
    const task = planTask(1, { kind: "write", offset: 3 * 65_536 + 512, data }, 64 * KiB);
    expect(task.count).toBe(1);
    expect(task.subtasks[0]).toMatchObject({ seq: 3, trackOffset: 512, length: 4096 });
    expect(task.subtasks[0]!.data!.buffer).toBe(data.buffer);
  });

  it("plans zero and trim without data, a trim may span thousands of tracks", () => {
    const zero = planTask(2, { kind: "zero", offset: 0, length: 8192, flags: 2 }, 4 * KiB);
    expect(zero.subtasks.map((s) => [s.seq, s.data, s.flags])).toEqual([
      [0, undefined, 2],
      [1, undefined, 2],
    ]);
    const trim = planTask(3, { kind: "trim", offset: 1 * MiB, length: 1024 * MiB }, 64 * KiB);
    expect(trim.count).toBe(16_384);
    expect(trim.firstSeq).toBe(16);
    expect(trim.subtasks.at(-1)).toMatchObject({ seq: 16 + 16_383, kind: "trim", length: 65_536 });
  });

  it("rejects what is not a valid request, naming the task", () => {
    const cases: [TaskRequest, string][] = [
      [{ kind: "zero", offset: -1, length: 1 }, "EPLAN_OFFSET"],
      [{ kind: "zero", offset: 0.5, length: 1 }, "EPLAN_OFFSET"],
      [{ kind: "trim", offset: 0, length: 0 }, "EPLAN_LENGTH"],
      [{ kind: "trim", offset: 0, length: 2.5 }, "EPLAN_LENGTH"],
      [{ kind: "trim", offset: Number.MAX_SAFE_INTEGER, length: 1 }, "EPLAN_LENGTH"],
      [{ kind: "write", offset: 0, data: Buffer.alloc(0) }, "EPLAN_LENGTH"],
      [{ kind: "zero", offset: 0, length: 1, data: Buffer.alloc(1) } as TaskRequest, "EPLAN_DATA"],
    ];
    for (const [request, code] of cases) {
      const err = planError(() => planTask(77, request, 64 * KiB));
      expect(err.code).toBe(code);
      expect(err.message).toContain("task 77");
    }
    expect(planError(() => planTask(0, cases[0]![0], 64 * KiB)).code).toBe("EPLAN_TASK_ID");
  });

  it("maps each kind to the NBD command the link sends", () => {
    expect(NBD_CMD_FOR_KIND[SubtaskKind.WRITE]).toBe(NBD_CMD_WRITE);
    expect(NBD_CMD_FOR_KIND[SubtaskKind.ZERO]).toBe(NBD_CMD_WRITE_ZEROES);
    expect(NBD_CMD_FOR_KIND[SubtaskKind.TRIM]).toBe(NBD_CMD_TRIM);
  });
});

describe("task ids", () => {
  it("are unique and consecutive from the planner", () => {
    const planner = new TaskPlanner({ firstTaskId: 5 });
    const ids = [0, 1, 2].map(() => planner.plan({ kind: "trim", offset: 0, length: 1 }).taskId);
    expect(ids).toEqual([5, 6, 7]);
  });

  it("wrap to 1 after MAX_TASK_ID", () => {
    const ids = new TaskIdAllocator(MAX_TASK_ID - 1);
    expect([ids.next(), ids.next(), ids.next()]).toEqual([MAX_TASK_ID - 1, MAX_TASK_ID, 1]);
    expect(planError(() => new TaskIdAllocator(0)).code).toBe("EPLAN_TASK_ID");
  });
});

const trackSizeArb = fc.integer({ min: 12, max: 24 }).map((bits) => 2 ** bits);

/** The checks every plan must pass, whatever the request; returns what is wrong. */
function tilingProblems(
  task: WriteTask,
  offset: number,
  length: number,
  trackSize: number,
): string[] {
  const problems: string[] = [];
  const { first, count } = trackRange(offset, length, trackSize);
  if (task.firstSeq !== first || task.count !== count || task.subtasks.length !== count) {
    problems.push(`first ${task.firstSeq}, count ${task.count}, expected ${first}, ${count}`);
  }
  let pos = offset;
  task.subtasks.forEach((s, i) => {
    const where = `subtask ${i}`;
    if (s.taskId !== task.taskId) problems.push(`${where}: task id ${s.taskId}`);
    if (s.seq !== first + i) problems.push(`${where}: seq ${s.seq}, expected ${first + i}`);
    if (s.offset !== pos) problems.push(`${where}: offset ${s.offset}, expected ${pos}`);
    if (s.length < 1) problems.push(`${where}: empty`);
    // Never crosses a track boundary: first and last byte are in track `seq`.
    if (Math.floor(s.offset / trackSize) !== s.seq) problems.push(`${where}: starts off track`);
    if (Math.floor((s.offset + s.length - 1) / trackSize) !== s.seq) {
      problems.push(`${where}: crosses into the next track`);
    }
    if (s.trackOffset !== s.offset - s.seq * trackSize) problems.push(`${where}: trackOffset`);
    pos += s.length;
  });
  if (pos !== offset + length) problems.push(`tiles up to ${pos}, expected ${offset + length}`);
  return problems;
}

describe("planning properties", () => {
  test.prop([
    trackSizeArb,
    fc.integer({ min: 0, max: 2 ** 44 }),
    fc.integer({ min: 1, max: 256 * KiB }),
  ])("a write is tiled exactly by views of its payload", (trackSize, offset, length) => {
    const data = Buffer.alloc(length);
    const task = planTask(1, { kind: "write", offset, data }, trackSize);
    expect(tilingProblems(task, offset, length, trackSize)).toEqual([]);
    const views = task.subtasks.filter(
      (s) =>
        s.data?.buffer === data.buffer &&
        s.data.byteOffset === data.byteOffset + (s.offset - offset) &&
        s.data.length === s.length,
    );
    expect(views.length).toBe(task.count);
  });

  test.prop([
    trackSizeArb,
    fc.integer({ min: 0, max: 2 ** 50 }),
    fc.integer({ min: 1, max: 2000 }),
    fc.constantFrom("zero" as const, "trim" as const),
  ])("zero and trim are tiled exactly", (trackSize, offset, tracks, kind) => {
    const length = Math.max(1, Math.floor((tracks * trackSize) / 3));
    const task = planTask(2, { kind, offset, length }, trackSize);
    expect(tilingProblems(task, offset, length, trackSize)).toEqual([]);
    expect(task.subtasks.every((s) => s.kind === kind && s.data === undefined)).toBe(true);
  });
});
