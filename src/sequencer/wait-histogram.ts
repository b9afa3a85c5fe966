// A fixed-bucket histogram of waiting times: recording is a few arithmetic
// operations on preallocated typed arrays, so it can sit on the per-subtask path.
//
// Values are in the caller's clock unit, taken to be milliseconds (as from
// performance.now()). Bucket 0 holds waits under 1 µs; bucket i (1..32) holds
// [2^(i-1), 2^i) µs; the last bucket holds anything from 2^32 µs (about 71 minutes).

const BUCKETS = 34;
const OVERFLOW = BUCKETS - 1;
const US_PER_UNIT = 1000;
const TWO_POW_32 = 2 ** 32;

/** Upper bound of bucket `i` in clock units (Infinity for the overflow bucket). */
function upperBound(i: number): number {
  if (i >= OVERFLOW) return Infinity;
  return 2 ** i / US_PER_UNIT;
}

function lowerBound(i: number): number {
  return i === 0 ? 0 : 2 ** (i - 1) / US_PER_UNIT;
}

export interface HistogramBucket {
  /** Upper bound in clock units; the last bucket's is Infinity. */
  readonly le: number;
  /** Cumulative count of values not above `le` (Prometheus style). */
  readonly count: number;
}

export interface WaitSnapshot {
  readonly count: number;
  readonly sum: number;
  readonly max: number;
  readonly p50: number;
  readonly p99: number;
}

export class WaitHistogram {
  private readonly counts = new Float64Array(BUCKETS);
  private n = 0;
  private total = 0;
  private largest = 0;

  record(wait: number): void {
    let i: number;
    const us = wait * US_PER_UNIT;
    // Negative waits (a clock that stepped back) count as zero; NaN fails `>= 1`.
    if (!(us >= 1)) {
      i = 0;
      wait = 0;
    } else if (us >= TWO_POW_32) {
      i = OVERFLOW;
    } else {
      i = 32 - Math.clz32(us);
    }
    this.counts[i]!++;
    this.n++;
    this.total += wait;
    if (wait > this.largest) this.largest = wait;
  }

  get count(): number {
    return this.n;
  }
  get sum(): number {
    return this.total;
  }
  get max(): number {
    return this.largest;
  }

  /**
   * Estimate of the q-quantile (0 ≤ q ≤ 1), interpolated linearly inside its
   * bucket and never above the largest value seen; 0 when empty.
   */
  quantile(q: number): number {
    if (this.n === 0) return 0;
    const rank = Math.min(Math.max(q, 0), 1) * this.n;
    let seen = 0;
    for (let i = 0; i < BUCKETS; i++) {
      const c = this.counts[i]!;
      if (c > 0 && seen + c >= rank) {
        const lo = lowerBound(i);
        const hi = Math.min(upperBound(i), this.largest);
        const estimate = lo + ((hi - lo) * (rank - seen)) / c;
        return Math.min(Math.max(estimate, lo), this.largest);
      }
      seen += c;
    }
    return this.largest;
  }

  /** Cumulative buckets, ending with le = Infinity. */
  buckets(): HistogramBucket[] {
    const out: HistogramBucket[] = [];
    let cumulative = 0;
    for (let i = 0; i < BUCKETS; i++) {
      cumulative += this.counts[i]!;
      out.push({ le: upperBound(i), count: cumulative });
    }
    return out;
  }

  snapshot(): WaitSnapshot {
    return {
      count: this.n,
      sum: this.total,
      max: this.largest,
      p50: this.quantile(0.5),
      p99: this.quantile(0.99),
    };
  }
}
