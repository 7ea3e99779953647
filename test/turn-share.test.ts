/**
 * TurnShare (src/turn-share.ts): how much stream work one event-loop iteration may do before the
 * loop gets back to its other sockets. Its effect on the servers: resolver-transport and
 * varlink-server ("zero share" tests), and reliability-load.
 */
import test from 'ava';
import { performance } from 'node:perf_hooks';
import { TurnShare } from '../src/turn-share.js';

function spin(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

test('a turn allows work until its share is spent, and a new turn starts after the check phase', async (t) => {
  // 100 ms, not 5: in the full suite on two vCPUs this process was once descheduled for over 5 ms
  // between the first two calls (2026-12-04)
  const share = new TurnShare(100);
  t.true(share.allows(), 'the first request of a turn');
  t.true(share.allows(), 'within the share');
  spin(101);
  t.false(share.allows(), 'share spent');
  t.false(share.allows());
  await new Promise((resolve) => setImmediate(resolve));
  t.true(share.allows(), 'a new turn');
});

test('a zero share allows one request a turn', async (t) => {
  const share = new TurnShare(0);
  t.true(share.allows());
  t.false(share.allows());
  await new Promise((resolve) => setImmediate(resolve));
  t.true(share.allows());
  t.false(share.allows());
});

test('work sent to a later turn runs first come first served, once each, with a fresh share', async (t) => {
  const share = new TurnShare(0);
  t.true(share.allows());
  t.false(share.allows());
  const order: string[] = [];
  const allowed: boolean[] = [];
  const done = new Promise<void>((resolve) => {
    share.later(() => {
      order.push('a');
      allowed.push(share.allows());
    });
    share.later(() => {
      order.push('b');
      allowed.push(share.allows());
      resolve();
    });
  });
  t.deepEqual(order, [], 'nothing runs in the turn that deferred it');
  await done;
  t.deepEqual(order, ['a', 'b']);
  t.deepEqual(allowed, [true, true], 'each resumed in a turn of its own, with its share');
  t.is(share.deferrals, 2);
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(order, ['a', 'b'], 'not run again');
});

test('waiting work the new share cannot cover keeps its place, uncalled, until a later turn', async (t) => {
  const share = new TurnShare(0);
  t.true(share.allows());
  const turns: string[][] = [];
  let turn: string[] = [];
  const names = ['a', 'b', 'c'];
  const done = new Promise<void>((resolve) => {
    for (const name of names)
      share.later(() => {
        turn.push(name);
        if (!share.allows()) share.later(() => turn.push(`${name} again`)); // never: it had the turn
        if (name === 'c') resolve();
      });
  });
  // record what each check phase resumed, one turn at a time
  const watch = (async (): Promise<void> => {
    for (let i = 0; i < 4; i++) {
      await new Promise((resolve) => setImmediate(resolve));
      turns.push(turn);
      turn = [];
    }
  })();
  await done;
  await watch;
  t.deepEqual(
    turns.filter((x) => x.length > 0),
    [['a'], ['b'], ['c']],
    'one a turn with a zero share, in order; none called only to be sent back',
  );
  t.is(share.deferrals, 3);
});
