/**
 * GroupedWarnings (src/registry-client/grouped-warnings.ts): a few warnings of a kind in full, the
 * rest counted in one line per window. Through the registry: registry-sync ("grouped" test).
 */
import test from 'ava';
import { memoryLogger } from '../src/log.js';
import { GroupedWarnings } from '../src/registry-client/grouped-warnings.js';

const sleep = (ms: number): Promise<void> => new Promise((resolve) => setTimeout(resolve, ms));

test('the first warnings of a kind are told in full, the rest counted in one line per window', async (t) => {
  const logger = memoryLogger('debug');
  const w = new GroupedWarnings(logger, { individually: 2, windowMs: 100, namesShown: 3 });
  for (let i = 0; i < 10; i++) w.warn('no root', `m${i}`, `cannot read /proc/${100 + i}/root`);
  t.deepEqual(
    logger.lines.map((l) => l.replace(/^.*?(machine|\d+ more)/, '$1')),
    ['machine m0: cannot read /proc/100/root', 'machine m1: cannot read /proc/101/root'],
  );
  await logger.waitFor(/more machine/, 2_000);
  const counted = logger.lines.filter((l) => l.includes('more machine'));
  t.is(counted.length, 1);
  t.regex(counted[0] ?? '', /8 more machine\(s\) with the same problem: no root \(m2, m3, m4, …\)/);
  t.regex(counted[0] ?? '', /^<4>/, 'logged at warning level');
});

test('kinds are counted apart; a burst goes on in counted lines; a quiet window starts over', async (t) => {
  const logger = memoryLogger('debug');
  const w = new GroupedWarnings(logger, { individually: 1, windowMs: 80 });
  w.warn('a', 'x1', 'A on x1');
  w.warn('b', 'y1', 'B on y1');
  w.warn('a', 'x2', 'A on x2');
  await logger.waitFor(/1 more machine\(s\) with the same problem: a \(x2\)/, 2_000);
  w.warn('a', 'x3', 'A on x3'); // still the same burst: counted, not told in full
  await logger.waitFor(/1 more machine\(s\) with the same problem: a \(x3\)/, 2_000);
  t.false(
    logger.lines.some((l) => l.includes('A on x2') || l.includes('A on x3')),
    'counted ones not in full',
  );
  t.false(
    logger.lines.some((l) => l.includes('problem: b')),
    'b had no more than its first',
  );
  await sleep(400); // quiet windows: both kinds forgotten
  w.warn('a', 'x4', 'A on x4');
  t.true(
    logger.lines.some((l) => l.includes('A on x4')),
    'told in full again',
  );
});

test('flush tells what is counted at once (the daemon stopping)', (t) => {
  const logger = memoryLogger('debug');
  const w = new GroupedWarnings(logger, { individually: 1, windowMs: 60_000 });
  w.warn('a', 'x1', 'A on x1');
  w.warn('a', 'x2', 'A on x2');
  w.warn('a', 'x3', 'A on x3');
  t.false(logger.lines.some((l) => l.includes('more machine')));
  w.flush();
  t.true(logger.lines.some((l) => /2 more machine\(s\) with the same problem: a \(x2, x3\)/.test(l)));
});
