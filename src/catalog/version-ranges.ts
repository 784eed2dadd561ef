// Sets of versions as sorted, disjoint, inclusive ranges: the bookkeeping of which transactions
// (site, db_version) a node holds, and the arithmetic of anti-entropy sync (reference §5.4:
// SyncStateV1 carries per-site `heads` and `need` ranges).

export type VersionRange = [start: number, end: number]

export class RangeSet {
  private ranges: VersionRange[] = []

  static of(ranges: Iterable<readonly [number, number]>): RangeSet {
    const set = new RangeSet()
    for (const [start, end] of ranges) set.add(start, end)
    return set
  }

  /** Everything in 1..head except the needs: how a SyncState describes what a node holds. */
  static fromHeadAndNeeds(head: number, needs: Iterable<readonly [number, number]>): RangeSet {
    const set = new RangeSet()
    if (head >= 1) set.add(1, head)
    return set.subtract(RangeSet.of(needs))
  }

  get isEmpty(): boolean { return this.ranges.length === 0 }

  /** The highest version held, 0 when none. */
  get max(): number { return this.ranges.length === 0 ? 0 : this.ranges[this.ranges.length - 1]![1] }

  /** How many versions are held. */
  get size(): number {
    let n = 0
    for (const [s, e] of this.ranges) n += e - s + 1
    return n
  }

  toArray(): VersionRange[] { return this.ranges.map(([s, e]) => [s, e]) }

  clone(): RangeSet {
    const copy = new RangeSet()
    copy.ranges = this.toArray()
    return copy
  }

  has(version: number): boolean {
    let lo = 0
    let hi = this.ranges.length - 1
    while (lo <= hi) {
      const mid = (lo + hi) >> 1
      const [s, e] = this.ranges[mid]!
      if (version < s) hi = mid - 1
      else if (version > e) lo = mid + 1
      else return true
    }
    return false
  }

  /** True when every version of start..end is held. */
  hasAll(start: number, end: number): boolean {
    for (const [s, e] of this.ranges) {
      if (s <= start && end <= e) return true
      if (s > start) return false
    }
    return false
  }

  add(start: number, end: number = start): this {
    if (!Number.isSafeInteger(start) || !Number.isSafeInteger(end) || start < 1 || end < start) {
      throw new RangeError(`bad version range ${start}..${end}`)
    }
    const out: VersionRange[] = []
    let merged: VersionRange = [start, end]
    let placed = false
    for (const range of this.ranges) {
      if (range[1] + 1 < merged[0]) out.push(range)
      else if (merged[1] + 1 < range[0]) {
        if (!placed) { out.push(merged); placed = true }
        out.push(range)
      } else merged = [Math.min(range[0], merged[0]), Math.max(range[1], merged[1])]
    }
    if (!placed) out.push(merged)
    this.ranges = out
    return this
  }

  addAll(other: RangeSet): this {
    for (const [s, e] of other.ranges) this.add(s, e)
    return this
  }

  /** Versions in this set and not in `other`. */
  subtract(other: RangeSet): RangeSet {
    const out = new RangeSet()
    let j = 0
    const theirs = other.ranges
    for (const [start, end] of this.ranges) {
      let cursor = start
      while (j < theirs.length && theirs[j]![1] < cursor) j++
      let k = j
      while (cursor <= end) {
        const cut = theirs[k]
        if (!cut || cut[0] > end) { out.ranges.push([cursor, end]); break }
        if (cut[0] > cursor) out.ranges.push([cursor, cut[0] - 1])
        cursor = Math.max(cursor, cut[1] + 1)
        k++
      }
    }
    return out
  }

  intersect(other: RangeSet): RangeSet {
    const out = new RangeSet()
    let i = 0
    let j = 0
    const a = this.ranges
    const b = other.ranges
    while (i < a.length && j < b.length) {
      const start = Math.max(a[i]![0], b[j]![0])
      const end = Math.min(a[i]![1], b[j]![1])
      if (start <= end) out.ranges.push([start, end])
      if (a[i]![1] < b[j]![1]) i++
      else j++
    }
    return out
  }

  /** The gaps below the highest version: what a node knows it is missing (SyncStateV1 `need`). */
  gaps(): VersionRange[] {
    const out: VersionRange[] = []
    let next = 1
    for (const [s, e] of this.ranges) {
      if (s > next) out.push([next, s - 1])
      next = e + 1
    }
    return out
  }

  /** Splits into pieces of at most `maxVersions` versions each (sync answers in bounded batches). */
  *chunks(maxVersions: number): Generator<VersionRange> {
    for (const [s, e] of this.ranges) {
      for (let start = s; start <= e; start += maxVersions) yield [start, Math.min(e, start + maxVersions - 1)]
    }
  }

  equals(other: RangeSet): boolean {
    if (this.ranges.length !== other.ranges.length) return false
    return this.ranges.every(([s, e], i) => other.ranges[i]![0] === s && other.ranges[i]![1] === e)
  }
}
