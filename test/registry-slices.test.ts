/**
 * Slices (src/registry-client/slices.ts): fetches that continue after machined's replies, all
 * resolved in one turn of the event loop, let the loop poll its sockets between slices.
 */
import test from 'ava';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { performance } from 'node:perf_hooks';
import { Slices } from '../src/registry-client/slices.js';

function spin(ms: number): void {
  const until = performance.now() + ms;
  while (performance.now() < until);
}

test('continuations resolved in one turn run a slice at a time, and a datagram waiting meanwhile is read between slices', async (t) => {
  const socket = dgram.createSocket('udp4');
  t.teardown(() => socket.close());
  socket.bind(0, '127.0.0.1');
  await once(socket, 'listening');
  const events: string[] = [];
  socket.on('message', () => events.push('datagram'));
  const slices = new Slices(1);
  // 20 fetches whose replies came in one read: their continuations all start in this turn
  const fetches = Array.from({ length: 20 }, async () => {
    await Promise.resolve(); // the reply: every continuation is queued before any of them runs
    const turn = slices.next();
    if (turn) await turn;
    spin(0.4);
    events.push('work');
  });
  // a query arrives while the first ones run
  socket.send(Buffer.from('q'), socket.address().port, '127.0.0.1');
  await Promise.all(fetches);
  const datagram = events.indexOf('datagram');
  t.true(datagram > 0 && datagram < 10, events.join(' '));
  t.true(slices.deferrals > 0);
});

test('a continuation alone in its turn goes on at once, in that turn', async (t) => {
  const slices = new Slices(1);
  const order: string[] = [];
  setImmediate(() => order.push('next turn'));
  t.is(slices.next(), undefined);
  order.push('continued');
  await new Promise((resolve) => setImmediate(resolve));
  t.deepEqual(order, ['continued', 'next turn']);
  t.is(slices.deferrals, 0);
});
