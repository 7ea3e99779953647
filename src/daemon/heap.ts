/**
 * How far V8 lets the heap grow past what survived the last full collection. The default (up to 4×
 * for a fast-allocating process) suits short programs; a daemon that allocates in bursts (every
 * address refresh, the account rounds) then keeps a heap sized for its worst burst. With 10,000
 * machines, whose live data is about 45 MB, the daemon's RSS went to 320–380 MiB; growing by at most
 * 20 % keeps it near 185 MiB for about the same throughput, and costs nothing measurable at 1,000
 * machines (BENCHMARKS.md, bench:scale and bench:dns). V8 reads the factor at each collection.
 *
 * The limit applies from `ready` on (`settleHeap`), not during the first sync and the first zone:
 * there the live data grows from nothing to all of it (about 58 MB at 10,000 machines), and a heap
 * allowed 20 % past its last live size needed a full collection every 20 % of growth: 14 before
 * `ready` at 10,000 machines (`--trace-gc`), 4 with the limit from `ready` on, and 0.2–0.4 s less
 * from spawn to `ready` (BENCHMARKS.md). One full collection when the daemon is ready (about
 * 50–80 ms at 10,000 machines) brings the heap back to its live data before the limit takes over.
 */
import v8 from 'node:v8';
import { runInNewContext } from 'node:vm';

const HEAP_GROWING_PERCENT = 20;

function limitHeapGrowth(): void {
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}

export interface SettledHeap {
  /** Bytes in use after the collection (or without one, when none could be run). */
  readonly usedBytes: number;
  /** How long the full collection took, or undefined when none could be run. */
  readonly collectMs: number | undefined;
}

/**
 * Ends the start-up burst: limits heap growth from now on and runs one full collection, so that the
 * limit starts from the live data rather than from a heap grown for the burst. The collection is
 * reached through V8's `gc` extension in a fresh context (the daemon's own globals do not change);
 * should that ever be refused, the limit still applies from V8's next collection on.
 */
export function settleHeap(): SettledHeap {
  limitHeapGrowth();
  v8.setFlagsFromString('--expose-gc');
  const gc: unknown = runInNewContext('typeof gc === "function" ? gc : undefined');
  if (typeof gc !== 'function')
    return { usedBytes: v8.getHeapStatistics().used_heap_size, collectMs: undefined };
  const began = performance.now();
  Reflect.apply(gc, undefined, []);
  return { usedBytes: v8.getHeapStatistics().used_heap_size, collectMs: performance.now() - began };
}

/**
 * Node flags every daemon launch carries (bin/mymachinesd's `#!/usr/bin/env -S node …` line, and the
 * test and bench harnesses that start `process.execPath bin/mymachinesd`). A young generation of
 * 2 × 4 MiB instead of up to 2 × 16 MiB: at 10,000 machines RSS after DNS load was about 26 MiB
 * lower (206 → 179 and 201 → 174 MiB in two back-to-back pairs; BENCHMARKS.md, bench:scale). V8
 * reads it only when the process starts.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];

/** The log line `serve` writes after settleHeap. */
export function describeSettledHeap(heap: SettledHeap): string {
  const mb = (heap.usedBytes / 1e6).toFixed(1);
  return heap.collectMs === undefined
    ? `heap: ${mb} MB in use, growth limited from now on (no full collection could be run)`
    : `heap: ${mb} MB in use after a full collection (${heap.collectMs.toFixed(0)} ms), growth limited from now on`;
}
