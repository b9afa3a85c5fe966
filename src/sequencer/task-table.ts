// Task records by task id: an open-addressing hash table with linear probing and
// backward-shift deletion. It exists because a Map under the sequencer's pattern
// (every task inserted once, looked up per subtask, deleted once) cost 70-100 ns per
// task in V8, mostly rehashing its tombstones; this table allocates nothing per
// entry and costs a few ns. Keys are non-negative safe integers.

const EMPTY = -1;
const MIN_CAPACITY = 16;
/** Never shrink below this: bursts that drain to zero would otherwise resize every time. */
const SHRINK_FLOOR = 4096;
const GOLDEN = 0x9e3779b1;

export class TaskTable<V> {
  private keys: Float64Array;
  private values: (V | undefined)[];
  private mask: number;
  /** 32 - log2(capacity), for Fibonacci hashing (spreads sequential ids and strides alike). */
  private shift: number;
  private count = 0;

  constructor() {
    this.keys = new Float64Array(MIN_CAPACITY).fill(EMPTY);
    this.values = new Array<V | undefined>(MIN_CAPACITY).fill(undefined);
    this.mask = MIN_CAPACITY - 1;
    this.shift = 32 - Math.log2(MIN_CAPACITY);
  }

  get size(): number {
    return this.count;
  }

  private home(key: number): number {
    return Math.imul((key | 0) ^ ((key / 0x1_0000_0000) | 0), GOLDEN) >>> this.shift;
  }

  get(key: number): V | undefined {
    const keys = this.keys;
    for (let i = this.home(key); ; i = (i + 1) & this.mask) {
      const k = keys[i]!;
      if (k === key) return this.values[i];
      if (k === EMPTY) return undefined;
    }
  }

  has(key: number): boolean {
    return this.get(key) !== undefined;
  }

  /** Inserts `key`, which must not be present; `value` must not be undefined. */
  insert(key: number, value: V): void {
    if (2 * (this.count + 1) > this.keys.length) this.resize(2 * this.keys.length);
    this.place(key, value);
    this.count++;
  }

  delete(key: number): boolean {
    const keys = this.keys;
    const mask = this.mask;
    let i = this.home(key);
    for (;;) {
      const k = keys[i]!;
      if (k === key) break;
      if (k === EMPTY) return false;
      i = (i + 1) & mask;
    }
    // Backward shift: pull later entries of the probe run into the hole unless that
    // would move one before its home slot, so lookups never meet a false EMPTY.
    for (let j = (i + 1) & mask; ; j = (j + 1) & mask) {
      const k = keys[j]!;
      if (k === EMPTY) break;
      const h = this.home(k);
      const stays = i <= j ? i < h && h <= j : i < h || h <= j;
      if (!stays) {
        keys[i] = k;
        this.values[i] = this.values[j];
        i = j;
      }
    }
    keys[i] = EMPTY;
    this.values[i] = undefined;
    this.count--;
    if (this.keys.length > SHRINK_FLOOR && 8 * this.count < this.keys.length) {
      this.resize(this.keys.length / 2);
    }
    return true;
  }

  /** A snapshot of the values, so callers may delete while walking it. */
  snapshot(): V[] {
    const out: V[] = [];
    for (const v of this.values) if (v !== undefined) out.push(v);
    return out;
  }

  private place(key: number, value: V): void {
    let i = this.home(key);
    while (this.keys[i] !== EMPTY) i = (i + 1) & this.mask;
    this.keys[i] = key;
    this.values[i] = value;
  }

  private resize(capacity: number): void {
    const oldKeys = this.keys;
    const oldValues = this.values;
    this.keys = new Float64Array(capacity).fill(EMPTY);
    this.values = new Array<V | undefined>(capacity).fill(undefined);
    this.mask = capacity - 1;
    this.shift = 32 - Math.log2(capacity);
    for (let i = 0; i < oldKeys.length; i++) {
      const k = oldKeys[i]!;
      if (k !== EMPTY) this.place(k, oldValues[i] as V);
    }
  }
}
