/**
 * The daemon's heap policy (src/daemon/heap.ts): growth is free while the first sync and the first
 * zone build the live data, and limited once the daemon is ready, after one full collection. Each
 * case runs in a fresh node process (test/support/heap-child.ts), since V8's flags are process-wide
 * and a collection's effect is measured on a heap nothing else shares.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { z } from 'zod';
import { DAEMON_NODE_FLAGS } from '../src/daemon/heap.js';

const run = promisify(execFile);
const CHILD = fileURLToPath(new URL('./support/heap-child.js', import.meta.url));

const Report = z.object({
  majorDuringGrowth: z.number(),
  majorDuringSettle: z.number(),
  usedBeforeSettle: z.number(),
  usedAfterSettle: z.number(),
  usedAfterSecond: z.number(),
  collectMs: z.number().nullable(),
  line: z.string(),
});

async function child(settleAt: 'start' | 'end'): Promise<z.infer<typeof Report>> {
  const { stdout } = await run(process.execPath, [...DAEMON_NODE_FLAGS, CHILD, settleAt], {
    timeout: 60_000,
  });
  return Report.parse(JSON.parse(stdout));
}

test('settleHeap runs one full collection that brings the heap back to its live data, and says so', async (t) => {
  const r = await child('end');
  t.true(r.majorDuringSettle >= 1, JSON.stringify(r));
  t.not(r.collectMs, null);
  // the garbage of the growth is gone, and a second collection right after finds almost nothing
  t.true(r.usedAfterSettle < r.usedBeforeSettle, JSON.stringify(r));
  t.true(r.usedAfterSettle - r.usedAfterSecond < 1e6, JSON.stringify(r));
  t.regex(r.line, /^heap: [\d.]+ MB in use after a full collection \(\d+ ms\), growth limited from now on$/);
});

test('a heap limited to 20 % growth from the start needs more full collections to build the same live data than one limited after it', async (t) => {
  // Why serve settles the heap at `ready` and not when it starts: the first sync builds all of the
  // live data, and each 20 % of growth under the limit was a full collection (14 at 10,000 machines).
  const limitedFirst = await child('start');
  const limitedAfter = await child('end');
  t.true(
    limitedFirst.majorDuringGrowth > limitedAfter.majorDuringGrowth + 2,
    `limited from the start: ${limitedFirst.majorDuringGrowth}; after the growth: ${limitedAfter.majorDuringGrowth}`,
  );
});
