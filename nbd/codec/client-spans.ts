// Which parts of a read the server has covered so far. Content chunks may come
// in any order but must not overlap (spec: NBD_REPLY_TYPE_OFFSET_DATA), and a
// successful reply must cover the whole request.

export interface Coverage {
  received: number;
  /** Disjoint, sorted, merged [start, end) pairs; undefined while untracked. */
  spans: number[] | undefined;
  readonly length: number;
}

/**
 * Record [start, start+size) as covered; false when it overlaps something
 * already covered. The usual cases (one chunk for the whole read, or chunks in
 * ascending order) cost O(1); a chunk out of order costs O(chunks so far).
 */
export function claimSpan(c: Coverage, start: number, size: number): boolean {
  const end = start + size;
  if (c.received === 0 && size === c.length) {
    c.received = size;
    return true;
  }
  const spans = c.spans;
  if (spans === undefined) {
    // Either nothing received yet, or the whole read arrived in one chunk.
    if (c.received !== 0) return false;
    c.spans = [start, end];
    c.received = size;
    return true;
  }
  let i = 0;
  while (i < spans.length && at(spans, i + 1) <= start) i += 2;
  if (i < spans.length && at(spans, i) < end) return false;
  const joinsPrevious = i > 0 && at(spans, i - 1) === start;
  const joinsNext = i < spans.length && at(spans, i) === end;
  if (joinsPrevious && joinsNext) {
    spans[i - 1] = at(spans, i + 1);
    spans.splice(i, 2);
  } else if (joinsPrevious) {
    spans[i - 1] = end;
  } else if (joinsNext) {
    spans[i] = start;
  } else {
    spans.splice(i, 0, start, end);
  }
  c.received += size;
  return true;
}

function at(spans: number[], i: number): number {
  return spans[i] ?? 0;
}
