/**
 * How far V8 lets the heap grow past what survived the last full collection. The default (up to 4×
 * for a fast-allocating process) suits short programs; a daemon that allocates in bursts (the first
 * sync, every address refresh) then keeps a heap sized for its worst burst. With 10,000 machines,
 * whose live data is about 45 MB, the daemon's RSS went to 320–380 MiB; growing by at most 20 % keeps
 * it near 185 MiB for about the same throughput, and costs nothing measurable at 1,000 machines
 * (BENCHMARKS.md, bench:scale and bench:dns). V8 reads the factor at each collection, so setting it
 * when the daemon starts is enough.
 */
import v8 from 'node:v8';

export const HEAP_GROWING_PERCENT = 20;

export function limitHeapGrowth(): void {
  v8.setFlagsFromString(`--heap-growing-percent=${HEAP_GROWING_PERCENT}`);
}

/**
 * Node flags every daemon launch carries (bin/mymachinesd's `#!/usr/bin/env -S node …` line, and the
 * test and bench harnesses that start `process.execPath bin/mymachinesd`). A young generation of
 * 2 × 4 MiB instead of up to 2 × 16 MiB: at 10,000 machines RSS after DNS load was about 26 MiB
 * lower (206 → 179 and 201 → 174 MiB in two back-to-back pairs; BENCHMARKS.md, bench:scale). V8
 * reads it only when the process starts.
 */
export const DAEMON_NODE_FLAGS: readonly string[] = ['--max-semi-space-size=4'];
