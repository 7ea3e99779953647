/**
 * Child process of test/daemon-heap.test.ts: builds a live set of about 145 MB in small arrays with
 * ten times as much garbage in between (as a first sync does), calling settleHeap before the growth
 * (`start`) or after it (`end`), and prints one JSON line: full collections during the growth and
 * during the settle, heap use before and after the settle and after a second one, and the log line
 * serve writes.
 *
 *   node heap-child.js start|end
 */
import { constants, PerformanceObserver } from 'node:perf_hooks';
import { describeSettledHeap, settleHeap } from '../../src/daemon/heap.js';

const LIVE_CHUNKS = 96;
const CHUNK_BYTES = 1e6;

let major = 0;
const observer = new PerformanceObserver((list) => {
  for (const entry of list.getEntries()) {
    // Node's gc entries carry their kind in `detail` (not in the PerformanceEntry typings)
    const detail: unknown = Reflect.get(entry, 'detail');
    const kind: unknown =
      typeof detail === 'object' && detail !== null ? Reflect.get(detail, 'kind') : undefined;
    if (kind === constants.NODE_PERFORMANCE_GC_MAJOR) major++;
  }
});
observer.observe({ entryTypes: ['gc'] });

/** Observer entries arrive after the collection, on a later turn of the event loop. */
const delivered = (): Promise<void> => new Promise((resolve) => setTimeout(resolve, 50));

async function main(): Promise<void> {
  const settleAt = process.argv[2];
  if (settleAt !== 'start' && settleAt !== 'end') throw new Error('usage: heap-child.js start|end');
  if (settleAt === 'start') settleHeap();
  await delivered();
  const before = major;
  // Live data in many small objects (arrays of numbers, as records are), garbage in between.
  const live: number[][] = [];
  let sink = 0;
  for (let chunk = 0; chunk < LIVE_CHUNKS; chunk++) {
    for (let i = 0; i < CHUNK_BYTES / 80; i++)
      live.push([chunk, i, chunk * i, i + 1, chunk + 1, i * 2, chunk * 2]);
    for (let i = 0; i < CHUNK_BYTES / 4; i++) sink += [i, chunk, i + chunk].length;
  }
  await delivered();
  const majorDuringGrowth = major - before;
  const usedBeforeSettle = process.memoryUsage().heapUsed;
  const settled = settleHeap();
  await delivered();
  const majorDuringSettle = major - before - majorDuringGrowth;
  // a second collection right away finds next to nothing more: the first reached the live data
  const usedAfterSecond = settleHeap().usedBytes;
  process.stdout.write(
    `${JSON.stringify({
      majorDuringGrowth,
      majorDuringSettle,
      usedBeforeSettle,
      usedAfterSettle: settled.usedBytes,
      usedAfterSecond,
      collectMs: settled.collectMs ?? null,
      line: describeSettledHeap(settled),
      keep: live.length + (sink > 0 ? 0 : 1),
    })}\n`,
  );
  observer.disconnect();
}

main().catch((err: unknown) => {
  process.stderr.write(`heap-child: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
