/**
 * Hostile input against the userdb socket. Each test ends by proving that a well-behaved client on
 * another connection still gets the right record: bad input on one connection never affects others.
 */
import net from 'node:net';
import test, { type ExecutionContext } from 'ava';
import fc from 'fast-check';
import { userDatabaseInterfaces } from '../src/userdb/service.js';
import { VarlinkClient } from '../src/varlink/client.js';
import type { VarlinkServerOptions } from '../src/varlink/server.js';
import type { InnerAccount } from '../src/registry-client/view.js';
import { labTable } from './support/lab-machines.js';
import { eventually, RawPeer, startServer } from './support/varlink.js';

const RECORD =
  '{"userName":"vu-testct-1000","uid":656360,"gid":65534,"realName":"UID 1000 of Container testct","homeDirectory":"/","shell":"/usr/sbin/nologin","locked":true,"service":"io.systemd.Machine","disposition":"container"}';
const LOOKUP =
  '{"method":"io.systemd.UserDatabase.GetUserRecord","parameters":{"service":"io.systemd.Machine","uid":656360}}';
const ENUMERATE =
  '{"method":"io.systemd.UserDatabase.GetUserRecord","parameters":{"service":"io.systemd.Machine"},"more":true}';

/** 3000 accounts inside `big`, so that one enumeration is about 0.8 MB of replies. */
const BIG_USERS: InnerAccount[] = Array.from({ length: 3000 }, (_, i) => ({ name: `u${i}`, id: 1000 + i }));

async function userdbServer(t: ExecutionContext, options: Partial<VarlinkServerOptions> = {}) {
  const view = labTable([
    { name: 'big', uidMap: [{ inner: 0, outer: 5000000, count: 65536 }], innerUsers: BIG_USERS },
  ]);
  return startServer(
    t,
    (server) => {
      for (const iface of userDatabaseInterfaces(view)) server.addInterface(iface);
    },
    options,
  );
}

/** The well-behaved client: a fresh connection, one lookup, the exact record. */
async function stillAnswers(t: ExecutionContext, path: string): Promise<void> {
  const client = await VarlinkClient.connect(path, { timeoutMs: 10_000 });
  try {
    const replies = await client.call(
      'io.systemd.UserDatabase.GetUserRecord',
      { service: 'io.systemd.Machine', uid: 656360 },
      { timeoutMs: 10_000 },
    );
    t.is(JSON.stringify(replies[0]?.parameters.record), RECORD);
  } finally {
    client.close();
  }
}

async function closedWithoutReply(t: ExecutionContext, path: string, data: string | Buffer): Promise<void> {
  const peer = await RawPeer.connect(path);
  peer.send(data);
  t.deepEqual((await peer.untilClosed()).messages, []);
}

test('random bytes never get an answer to garbage or stop the service', async (t) => {
  const { path, logger } = await userdbServer(t);
  const samples = fc.sample(fc.uint8Array({ minLength: 1, maxLength: 512 }), { numRuns: 60, seed: 4242 });
  await Promise.all(
    samples.map(async (bytes) => {
      const peer = await RawPeer.connect(path);
      // NUL-terminate so that each sample is judged as a message, not buffered forever.
      peer.send(Buffer.concat([Buffer.from(bytes), Buffer.from([0])]));
      const { messages } = await peer.untilClosed();
      // Only a syntactically valid call could be answered; random bytes never are one.
      t.deepEqual(messages, []);
    }),
  );
  t.true(logger.lines.some((l) => l.includes('protocol violation')));
  await stillAnswers(t, path);
});

test('a message that never ends is buffered without effect on others', async (t) => {
  const { path, server } = await userdbServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(Buffer.alloc(1024 * 1024, 0x20)); // 1 MiB of whitespace, no NUL
  await stillAnswers(t, path);
  t.false(peer.ended);
  // It is still a live connection: completing the message gets an answer.
  peer.send(LOOKUP + '\0');
  t.is(await peer.next(), `{"parameters":{"record":${RECORD}}}`);
  peer.close();
  t.true(server.connectionCount >= 0);
});

test('a 20 MiB message closes that connection only', async (t) => {
  const { path, logger } = await userdbServer(t);
  await closedWithoutReply(t, path, Buffer.alloc(20 * 1024 * 1024, 0x20));
  t.true(logger.lines.some((l) => l.includes('bytes without a NUL')));
  await stillAnswers(t, path);
});

test('1000 idle connections do not keep a client from being answered', async (t) => {
  const { path, server } = await userdbServer(t);
  const idle = await Promise.all(Array.from({ length: 1000 }, () => RawPeer.connect(path)));
  await eventually(() => server.connectionCount >= 1000);
  await stillAnswers(t, path);
  for (const peer of idle) peer.close();
});

test('at the connection limit the longest idle connection makes room, and the new client is answered', async (t) => {
  const { path, server } = await userdbServer(t, { maxConnections: 20 });
  const idle: RawPeer[] = [];
  for (let i = 0; i < 20; i++) {
    idle.push(await RawPeer.connect(path)); // one after the other: idle[0] has been idle the longest
    await eventually(() => server.connectionCount === i + 1);
  }
  // idle[1] sends half a message: a partial message is not activity, it keeps its place in line
  idle[1]?.send(LOOKUP.slice(0, 20));
  const newcomer = await RawPeer.connect(path);
  newcomer.send(LOOKUP + '\0');
  t.is(await newcomer.next(), `{"parameters":{"record":${RECORD}}}`);
  await idle[0]?.closed;
  t.is(server.connectionCount, 20);
  const second = await RawPeer.connect(path);
  second.send(LOOKUP + '\0');
  t.is(await second.next(), `{"parameters":{"record":${RECORD}}}`);
  await idle[1]?.closed;
  t.false(idle[2]?.ended);
  await stillAnswers(t, path);
  for (const peer of [...idle, newcomer, second]) peer.close();
});

test('a client that never reads is not read from either, loses nothing and keeps its connection', async (t) => {
  // 1 MiB output cap: ignoring back-pressure would pass it at once (20 enumerations are ~16 MB).
  const { path } = await userdbServer(t, { maxOutputBytes: 1024 * 1024 });
  const calls = 20;
  const lazy = net.createConnection(path);
  await new Promise<void>((resolve) => lazy.once('connect', resolve));
  let closed = false;
  lazy.once('close', () => (closed = true));
  lazy.write((ENUMERATE + '\0').repeat(calls));
  await stillAnswers(t, path);
  await stillAnswers(t, path);
  t.false(closed);
  // Now read everything: every enumeration arrives complete, in order, the last reply final.
  const perCall = 1 + BIG_USERS.length + 5; // big's inner 0 and accounts, plus the lab's five
  let pending = Buffer.alloc(0);
  let messages = 0;
  let finals = 0;
  await new Promise<void>((resolve, reject) => {
    lazy.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      for (let nul = pending.indexOf(0); nul !== -1; nul = pending.indexOf(0)) {
        const message = pending.subarray(0, nul).toString();
        pending = pending.subarray(nul + 1);
        messages++;
        if (!message.endsWith(',"continues":true}')) finals++;
      }
      if (finals === calls) resolve();
    });
    lazy.once('close', () => {
      reject(new Error(`closed after ${messages} messages`));
    });
  });
  t.is(messages, calls * perCall);
  lazy.destroy();
});

test('nesting deeper than the limit closes the connection only', async (t) => {
  const { path } = await userdbServer(t);
  await closedWithoutReply(t, path, '{"method":"x.Y","parameters":{"a":' + '['.repeat(100_000) + '\0');
  await stillAnswers(t, path);
});

test('invalid UTF-8 closes the connection only', async (t) => {
  const { path } = await userdbServer(t);
  const message = Buffer.concat([
    Buffer.from(
      '{"method":"io.systemd.UserDatabase.GetUserRecord","parameters":{"service":"io.systemd.Machine","userName":"',
    ),
    Buffer.from([0xc0, 0x80]),
    Buffer.from('"}}\0'),
  ]);
  await closedWithoutReply(t, path, message);
  await stillAnswers(t, path);
});

test('oneway together with more closes the connection only', async (t) => {
  const { path } = await userdbServer(t);
  await closedWithoutReply(t, path, LOOKUP.slice(0, -1) + ',"oneway":true,"more":true}\0');
  await closedWithoutReply(t, path, LOOKUP.slice(0, -1) + ',"more":true,"oneway":false}\0');
  await stillAnswers(t, path);
});

test('unknown top-level keys close the connection only, and calls after them are not answered', async (t) => {
  const { path } = await userdbServer(t);
  for (const key of ['upgrade', 'x', '', 'Method'])
    await closedWithoutReply(
      t,
      path,
      LOOKUP.slice(0, -1) + `,${JSON.stringify(key)}:false}\0` + LOOKUP + '\0',
    );
  const peer = await RawPeer.connect(path);
  peer.send(LOOKUP + '\0' + '{"method":"x.Y","vendor.ext":{}}\0' + LOOKUP + '\0');
  t.deepEqual(await peer.untilClosed(), { messages: [`{"parameters":{"record":${RECORD}}}`], partial: '' });
  await stillAnswers(t, path);
});

test('a message split into single bytes is answered like a whole one', async (t) => {
  const { path } = await userdbServer(t);
  const peer = await RawPeer.connect(path);
  for (const byte of Buffer.from(' \n' + LOOKUP + '\0')) {
    peer.socket.write(Buffer.from([byte]));
    await new Promise<void>((resolve) => setImmediate(resolve));
  }
  t.is(await peer.next(), `{"parameters":{"record":${RECORD}}}`);
  peer.close();
});
