/**
 * Medians, ranges and percentiles of benchmark samples, and their text form. Benchmarks on a 2-vCPU
 * VM are noisy (shared/reference/perf-anchors.md, caveats): every figure is reported as the median
 * of repeated runs with the range of those runs, never a single run.
 */

/** Nearest-rank percentile (`q` in 0..1) of values sorted ascending; NaN when there are none. */
export function percentile(sorted: readonly number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const rank = Math.ceil(q * sorted.length);
  return sorted[Math.min(sorted.length - 1, Math.max(0, rank - 1))] ?? Number.NaN;
}

export function sortedCopy(values: Iterable<number>): number[] {
  return Array.from(values).sort((a, b) => a - b);
}

/** The median of repeated runs and the range they span. */
export interface Spread {
  readonly median: number;
  readonly min: number;
  readonly max: number;
  readonly runs: number;
}

export function spread(values: readonly number[]): Spread {
  const sorted = sortedCopy(values);
  const n = sorted.length;
  const mid =
    n % 2 === 1 ? (sorted[(n - 1) / 2] ?? Number.NaN) : ((sorted[n / 2 - 1] ?? 0) + (sorted[n / 2] ?? 0)) / 2;
  return {
    median: n === 0 ? Number.NaN : mid,
    min: sorted[0] ?? Number.NaN,
    max: sorted[n - 1] ?? Number.NaN,
    runs: n,
  };
}

/** Latency percentiles of one run. */
export interface LatencySummary {
  readonly count: number;
  readonly p50: number;
  readonly p90: number;
  readonly p99: number;
  readonly p999: number;
  readonly max: number;
}

export function latencySummary(values: Iterable<number>): LatencySummary {
  const sorted = sortedCopy(values);
  return {
    count: sorted.length,
    p50: percentile(sorted, 0.5),
    p90: percentile(sorted, 0.9),
    p99: percentile(sorted, 0.99),
    p999: percentile(sorted, 0.999),
    max: sorted[sorted.length - 1] ?? Number.NaN,
  };
}

/** Significant digits that keep small numbers readable (0.0712, 1.24, 13.1, 269k). */
export function num(value: number, digits = 3): string {
  if (!Number.isFinite(value)) return '—';
  const abs = Math.abs(value);
  if (abs >= 10_000) return `${(value / 1000).toPrecision(digits)}k`.replace(/\.0+k$/, 'k');
  if (abs >= 100) return value.toFixed(0);
  return value.toPrecision(digits);
}

/** `median (min–max)`, or just the value for a single run. */
export function formatSpread(s: Spread, unit = '', digits = 3): string {
  const m = `${num(s.median, digits)}${unit}`;
  if (s.runs <= 1 || num(s.min, digits) === num(s.max, digits)) return m;
  return `${m} (${num(s.min, digits)}–${num(s.max, digits)}${unit})`;
}
