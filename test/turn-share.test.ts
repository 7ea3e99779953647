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
  const share = new TurnShare(5);
  t.true(share.allows(), 'the first request of a turn');
  t.true(share.allows(), 'within the share');
  spin(6);
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
  t.deepEqual(allowed, [true, false], 'the first resumed gets the new turn, the next must wait again');
  t.is(share.deferrals, 2);
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(order, ['a', 'b'], 'not run again');
});
