/**
 * The benchmark harness's own parts (bench/harness): the statistics every figure goes through, the
 * report that keeps BENCHMARKS.md's summary to the latest run of each benchmark, and dnsperf's
 * arguments and output, read from the real dnsperf against a loopback server.
 */
import test from 'ava';
import { execFile } from 'node:child_process';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { dnsperfArgs, parseDnsperf, type DnsperfRun } from '../bench/harness/dnsperf.js';
import type { MachineInfo } from '../bench/harness/machine.js';
import { BenchReport, type BenchName } from '../bench/harness/report.js';
import { formatSpread, latencySummary, num, percentile, sortedCopy, spread } from '../bench/harness/stats.js';
import { prng } from './support/prng.js';
import { startUpstream } from './support/upstream.js';

const run = promisify(execFile);

const MACHINE: MachineInfo = {
  cpu: 'Test CPU',
  vcpus: 2,
  memoryGiB: 1,
  kernel: '6.0.0-test',
  debian: '12',
  node: 'v20.0.0',
  packages: new Map([['dnsperf', '2.10.0-2']]),
  commit: 'abc1234',
};

async function tempFile(t: { teardown(fn: () => Promise<void>): void }): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'mmd-bench-harness-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  return join(dir, 'BENCHMARKS.md');
}

/** The summary rows between the markers, as written. */
function summaryRows(text: string): string[] {
  const begin = text.indexOf('<!-- summary:begin -->');
  const end = text.indexOf('<!-- summary:end -->');
  return text
    .slice(begin, end)
    .split('\n')
    .filter((l) => l.startsWith('| ') && !l.startsWith('| bench |'));
}

async function report(
  file: string,
  bench: BenchName,
  rows: readonly { measurement: string; met: boolean | undefined }[],
): Promise<void> {
  const r = new BenchReport(bench, MACHINE, () => undefined);
  r.paragraph(`raw numbers of ${bench}`);
  for (const row of rows)
    r.summary({ ...row, ours: '1 ms', anchor: 'anchor 2 ms', ratio: '2× faster', target: 'a | b' });
  await r.write(file);
}

// ---- statistics -------------------------------------------------------------------------------

test('percentile is the nearest rank, spread the median and range, of any sample', (t) => {
  const random = prng(20261206);
  for (let round = 0; round < 200; round++) {
    const n = 1 + Math.floor(random() * 40);
    const values = Array.from({ length: n }, () => Math.floor(random() * 1000) / 10);
    const sorted = [...values].sort((a, b) => a - b);
    t.deepEqual(sortedCopy(values), sorted);
    for (const permille of [500, 900, 990, 999, 1000]) {
      // the smallest value with at least q·n values at or below it, in integers
      const oracle = sorted.find((v) => sorted.filter((w) => w <= v).length * 1000 >= permille * n);
      t.is<number | undefined, number | undefined>(
        percentile(sorted, permille / 1000),
        oracle,
        `q ${permille}‰ of ${sorted.join(',')}`,
      );
    }
    const s = spread(values);
    const mid = n % 2 === 1 ? sorted[(n - 1) / 2] : ((sorted[n / 2 - 1] ?? 0) + (sorted[n / 2] ?? 0)) / 2;
    t.deepEqual(s, { median: mid, min: sorted[0], max: sorted[n - 1], runs: n });
    t.is(latencySummary(values).p99, percentile(sorted, 0.99));
    t.is<number | undefined, number | undefined>(latencySummary(values).max, sorted[n - 1]);
  }
  t.deepEqual(spread([3, 1, 2, 10]), { median: 2.5, min: 1, max: 10, runs: 4 });
  t.is(percentile(sortedCopy(Array.from({ length: 100 }, (_, i) => i + 1)), 0.99), 99);
  t.true(Number.isNaN(percentile([], 0.5)));
  t.true(Number.isNaN(spread([]).median));
});

test('figures are written with three significant digits, a range only when it differs', (t) => {
  t.is(num(0.071234), '0.0712');
  t.is(num(1.2449), '1.24');
  t.is(num(13.06), '13.1');
  t.is(num(269.4), '269');
  t.is(num(99_499), '99.5k');
  t.is(num(120_000), '120k');
  t.is(num(Number.NaN), '—');
  t.is(formatSpread(spread([2.44, 3.36, 2.43]), ' s'), '2.44 s (2.43–3.36 s)');
  t.is(formatSpread(spread([5]), ' ms'), '5.00 ms');
  t.is(formatSpread(spread([1.0001, 1.0002]), ' ms'), '1.00 ms');
});

// ---- BENCHMARKS.md ----------------------------------------------------------------------------

test('a report starts BENCHMARKS.md when there is none, then replaces only its own benchmark’s summary rows', async (t) => {
  const file = await tempFile(t);
  await report(file, 'scale', [{ measurement: 'first sync', met: false }]);
  let text = await readFile(file, 'utf8');
  t.true(text.startsWith('# Benchmarks\n'));
  t.regex(text, /\n### bench:scale — \d{4}-\d\d-\d\d \d\d:\d\d UTC\n/);
  t.regex(text, /- commit: abc1234\n/);
  t.regex(text, /- command: `(BENCH_\S+ )*npm run bench:scale`\n/);
  t.true(text.includes('raw numbers of scale'));
  const [scaleRow] = summaryRows(text);
  t.truthy(scaleRow);
  // cells with a `|` are escaped; a missed target is marked in bold
  t.regex(
    scaleRow ?? '',
    /^\| scale \| first sync \| 1 ms \| anchor 2 ms \| 2× faster \| a \\\| b \| \*\*no\*\* \| scale \d{4}-/,
  );

  await report(file, 'dns', [
    { measurement: 'q/s', met: true },
    { measurement: 'p50', met: undefined },
  ]);
  await report(file, 'micro', [{ measurement: 'answer()', met: undefined }]);
  text = await readFile(file, 'utf8');
  // in BENCH_NAMES order, each benchmark's rows in their own order
  t.deepEqual(
    summaryRows(text).map((l) => l.split(' | ').slice(0, 2).join(' | ')),
    ['| dns | q/s', '| dns | p50', '| scale | first sync', '| micro | answer()'],
  );
  t.true(summaryRows(text)[0]?.includes('| **yes** |'));
  t.true(summaryRows(text)[1]?.includes('| — |'));

  // a second dns run replaces the dns rows only, and its section is appended after the others
  await report(file, 'dns', [{ measurement: 'q/s again', met: false }]);
  text = await readFile(file, 'utf8');
  t.deepEqual(
    summaryRows(text).map((l) => l.split(' | ').slice(0, 2).join(' | ')),
    ['| dns | q/s again', '| scale | first sync', '| micro | answer()'],
  );
  const sections = [...text.matchAll(/^### bench:(\w+) /gm)].map((m) => m[1]);
  t.deepEqual(sections, ['scale', 'dns', 'micro', 'dns']);
  t.true(text.endsWith('raw numbers of dns\n'));
});

test('a report refuses a BENCHMARKS.md without the summary markers and leaves it as it was', async (t) => {
  const file = await tempFile(t);
  const before = '# Benchmarks\n\nsomeone removed the summary\n';
  await writeFile(file, before);
  const err = await t.throwsAsync(report(file, 'userdb', [{ measurement: 'x', met: true }]));
  t.regex(err?.message ?? '', /no summary markers/);
  t.is(await readFile(file, 'utf8'), before);
});

// ---- dnsperf ----------------------------------------------------------------------------------

test('dnsperf with the harness’s arguments, its output read back: every query it counts was seen by a loopback server', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const file = await tempFile(t);
  const queries = join(file, '..', 'queries.txt');
  await writeFile(queries, 'alpha.example A\nbravo.example A\ncharlie.example A\n');

  const base = {
    server: '127.0.0.1',
    port: upstream.port,
    queryFile: queries,
    seconds: 1,
    cpu: 0,
    clients: 1,
  };
  const dnsperf = async (args: string[]): Promise<{ stdout: string; run: DnsperfRun }> => {
    const { stdout } = await run('dnsperf', args, { timeout: 30_000 });
    return { stdout, run: parseDnsperf(stdout, `dnsperf ${args.join(' ')}`) };
  };

  // closed loop, as the throughput runs
  const { stdout: closedOut, run: cr } = await dnsperf(dnsperfArgs({ ...base, outstanding: 4 }));
  t.true(cr.completed > 0, closedOut);
  t.is(cr.lost, 0);
  t.is(cr.sent, cr.completed);
  t.is(cr.rcodes.get('NOERROR'), cr.completed);
  t.true(cr.qps > 0 && cr.avgLatencyMs > 0);
  t.deepEqual(cr.latenciesMs, []);
  t.is(upstream.seen.length, cr.completed);

  // open loop at a fixed rate with per-query latencies, as the latency runs
  upstream.seen.length = 0;
  const open = dnsperfArgs({ ...base, rate: 200 });
  t.true(open.includes('-Q') && open.includes('-v'));
  const { run: or } = await dnsperf(open);
  t.is(or.lost, 0);
  t.true(or.completed >= 150 && or.completed <= 250, `${or.completed} queries at 200 q/s for 1 s`);
  t.is(or.latenciesMs.length, or.completed);
  t.true(or.latenciesMs.every((ms) => ms >= 0 && ms < 1000));
  // the per-query lines are in seconds, like dnsperf's own average: both read as ms agree
  const mean = or.latenciesMs.reduce((a, b) => a + b, 0) / or.latenciesMs.length;
  t.true(
    Math.abs(mean - or.avgLatencyMs) <= 0.05 * or.avgLatencyMs + 0.001,
    `${mean} against ${or.avgLatencyMs} ms`,
  );
  t.is(upstream.seen.length, or.completed);
  t.deepEqual(
    new Set(upstream.seen.map((q) => q.name)),
    new Set(['alpha.example', 'bravo.example', 'charlie.example']),
  );
});

test('dnsperf output without its statistics is an error that shows the output', (t) => {
  const err = t.throws(() =>
    parseDnsperf('[Status] Command line: dnsperf\nError: could not open file\n', 'dnsperf'),
  );
  t.regex(err?.message ?? '', /without "Queries per second"[\s\S]*could not open file/);
});
