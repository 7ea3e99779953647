import test from 'ava';
import dgram from 'node:dgram';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { silentLogger } from '../src/log.js';
import { MachineTable } from '../src/registry-client/registry.js';
import { parseResolvConf, parseUpstream } from '../src/resolver/config.js';
import { DnsServer } from '../src/resolver/index.js';
import { dig } from './support/dig.js';
import { query, RCODE, summarize } from './support/dns.js';
import type { RecordSpec } from './support/records.js';
import { startStub } from './support/stub.js';
import { deadPort, startUpstream } from './support/upstream.js';

const machines: RecordSpec[] = [{ name: 'alpha', addresses: ['192.0.2.10'] }];
const fast = { forwardTimeoutMs: 300 };

test('a name outside the zone is answered by the upstream and passed through', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  const r = await dig('127.0.0.1', port, 'www.example.com', 'A');
  t.is(r.status, 'NOERROR', r.text);
  t.deepEqual(r.answers, ['www.example.com. 60 A 203.0.113.1']);
  t.true(r.flags.includes('ra'));
  t.is(upstream.seen.length, 1);
});

test('names of our zone are never forwarded', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  t.deepEqual((await dig('127.0.0.1', port, 'alpha.machine', 'A')).answers, [
    'alpha.machine. 0 A 192.0.2.10',
  ]);
  t.is((await dig('127.0.0.1', port, 'nosuch.machine', 'A')).status, 'NXDOMAIN');
  t.deepEqual(upstream.seen, []);
});

test('the upstream sees a fresh ID, the client gets its own ID back', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  const socket = dgram.createSocket('udp4');
  t.teardown(() => socket.close());
  const ids = new Set<number>();
  for (let i = 0; i < 8; i++) {
    socket.send(query('www.example.com', 'A', { id: 4242 }), port, '127.0.0.1');
    const [reply] = (await once(socket, 'message')) as [Buffer];
    t.is(summarize(reply).id, 4242);
    ids.add(upstream.seen.at(-1)?.id ?? -1);
  }
  t.false(ids.has(4242));
  t.true(ids.size >= 7, 'IDs are random, not a counter of the client ID');
});

test('a client EDNS size above 1232 is lowered to 1232 toward the upstream', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  await dig('127.0.0.1', port, '+bufsize=4096', 'www.example.com', 'A');
  t.is(upstream.seen[0]?.udpSize, 1232);
});

test('a truncated upstream answer is retried over TCP', async (t) => {
  const upstream = await startUpstream(t, 'truncate-udp');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  // 30 A records in ~1000 bytes: fits the client's 1232, so the client gets it all over UDP.
  const r = await dig('127.0.0.1', port, '+bufsize=1232', 'many.example.com', 'A');
  t.is(r.answers.length, 30, r.text);
  t.notRegex(r.text, /Truncated/);
  t.deepEqual(
    upstream.seen.map((q) => q.transport),
    ['udp', 'tcp'],
  );
});

test('a forwarded answer too big for the client UDP size reaches it truncated, then in full over TCP', async (t) => {
  const upstream = await startUpstream(t, 'truncate-udp');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  const r = await dig('127.0.0.1', port, '+noedns', 'many.example.com', 'A');
  t.regex(r.text, /Truncated, retrying in TCP mode/);
  t.is(r.answers.length, 30, r.text);
});

test('a dead upstream is failed over to the next', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const dead = await deadPort();
  const { port } = await startStub(t, machines, {
    forward: [`127.0.0.1:${dead}`, `127.0.0.1:${upstream.port}`],
    forwardTimeoutMs: 5000,
  });
  const started = Date.now();
  const r = await dig('127.0.0.1', port, 'www.example.com', 'A');
  t.deepEqual(r.answers, ['www.example.com. 60 A 203.0.113.1'], r.text);
  t.true(Date.now() - started < 2000, 'port unreachable fails over at once, not after the timeout');
});

test('a silent upstream times out and the next one answers', async (t) => {
  const silent = await startUpstream(t, 'silent');
  const good = await startUpstream(t, 'answer');
  const { port } = await startStub(t, machines, {
    forward: [`127.0.0.1:${silent.port}`, `127.0.0.1:${good.port}`],
    ...fast,
  });
  const r = await dig('127.0.0.1', port, 'www.example.com', 'A');
  t.deepEqual(r.answers, ['www.example.com. 60 A 203.0.113.1'], r.text);
  t.is(silent.seen.length, 1);
});

test('when every upstream times out the client gets SERVFAIL with an extended error', async (t) => {
  const silent = await startUpstream(t, 'silent');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${silent.port}`], ...fast });
  const socket = dgram.createSocket('udp4');
  t.teardown(() => socket.close());
  socket.send(query('www.example.com', 'A', { id: 9, edns: {} }), port, '127.0.0.1');
  const [reply] = (await once(socket, 'message')) as [Buffer];
  const r = summarize(reply);
  t.is(r.rcode, RCODE.SERVFAIL);
  t.is(r.id, 9);
  t.is(r.opt?.ede?.code, 22);
});

test('a response with a wrong ID is ignored, the right one is taken', async (t) => {
  const upstream = await startUpstream(t, 'wrong-id-first');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  const r = await dig('127.0.0.1', port, 'www.example.com', 'A');
  t.deepEqual(r.answers, ['www.example.com. 60 A 203.0.113.1'], r.text);
});

test('TCP clients are forwarded too', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const { port } = await startStub(t, machines, { forward: [`127.0.0.1:${upstream.port}`], ...fast });
  const r = await dig('127.0.0.1', port, '+tcp', 'www.example.com', 'A');
  t.deepEqual(r.answers, ['www.example.com. 60 A 203.0.113.1'], r.text);
});

test('a client outside allowNets is not forwarded for', async (t) => {
  const upstream = await startUpstream(t, 'answer');
  const { port } = await startStub(t, machines, {
    forward: [`127.0.0.1:${upstream.port}`],
    allowNets: ['192.0.2.0/24'],
    ...fast,
  });
  const r = await dig('127.0.0.1', port, '+time=1', 'www.example.com', 'A');
  t.is(r.exitCode, 9);
  t.deepEqual(upstream.seen, []);
});

test('close waits for a forwarded answer in flight', async (t) => {
  const upstream = await startUpstream(t, 'held');
  const stub = await startStub(t, machines, {
    forward: [`127.0.0.1:${upstream.port}`],
    forwardTimeoutMs: 5000,
  });
  const socket = dgram.createSocket('udp4');
  t.teardown(() => socket.close());
  const asked = upstream.nextQuery();
  socket.send(query('www.example.com', 'A', { id: 31 }), stub.port, '127.0.0.1');
  await asked;
  let closed = false;
  const closing = stub.server.close().then(() => {
    closed = true;
  });
  const replied = once(socket, 'message');
  t.false(closed);
  upstream.release();
  const [reply] = (await replied) as [Buffer];
  t.is(summarize(reply).id, 31);
  await closing;
  t.true(closed);
});

// ---- configuration -----------------------------------------------------------------------------------

test('forwarding to our own listen address is refused with exit status 2', async (t) => {
  const port = await deadPort();
  const server = new DnsServer({
    view: new MachineTable(),
    logger: silentLogger,
    listen: [`127.0.0.1:${port}`],
    forward: [`127.0.0.1:${port}`],
  });
  const error = await t.throwsAsync(server.start());
  t.like(error, { code: 'DNS_FORWARD_LOOP', exitStatus: 2 });
  t.regex(error.message, /our own listen address/);
});

test('forwarding to loopback while listening on the wildcard address is refused', async (t) => {
  const server = new DnsServer({
    view: new MachineTable(),
    logger: silentLogger,
    listen: ['0.0.0.0:5353'],
    forward: ['127.0.0.1:5353'],
  });
  t.like(await t.throwsAsync(server.start()), { code: 'DNS_FORWARD_LOOP' });
});

test('forwarding to the port 0 listener, once bound, is refused too', async (t) => {
  // The real port is only known after binding; the check runs again on the bound addresses.
  const first = await startStub(t, machines);
  const server = new DnsServer({
    view: new MachineTable(),
    logger: silentLogger,
    listen: ['127.0.0.2:0'],
    forward: [`127.0.0.1:${first.port}`],
  });
  t.teardown(() => server.close());
  await t.notThrowsAsync(server.start(), 'another port on another address is not a loop');
});

test('resolv.conf naming only this stub leaves no upstream: exit status 2', async (t) => {
  const dir = await mkdtemp(join(tmpdir(), 'mymachinesd-resolv-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const path = join(dir, 'resolv.conf');
  await writeFile(path, '# only us\nnameserver 127.0.0.1\n');
  const server = new DnsServer({
    view: new MachineTable(),
    logger: silentLogger,
    listen: ['127.0.0.1:53'],
    forward: ['resolv.conf'],
    resolvConfPath: path,
  });
  t.like(await t.throwsAsync(server.start()), { code: 'DNS_NO_UPSTREAM', exitStatus: 2 });
});

test('an unreadable resolv.conf is a configuration error', async (t) => {
  const server = new DnsServer({
    view: new MachineTable(),
    logger: silentLogger,
    listen: ['127.0.0.1:0'],
    forward: ['resolv.conf'],
    resolvConfPath: '/nonexistent/resolv.conf',
  });
  t.like(await t.throwsAsync(server.start()), { code: 'DNS_NO_UPSTREAM' });
});

test('resolv.conf is read like glibc: nameserver lines, first three', (t) => {
  const text =
    '; comment\nsearch example\nnameserver 10.0.0.1\n  nameserver ::1\nnameserver fe80::1%eth0\nnameserver 10.0.0.4\n';
  t.deepEqual(parseResolvConf(text), ['10.0.0.1', '::1', 'fe80::1%eth0']);
});

const upstreamSpecs: [string, ReturnType<typeof parseUpstream>][] = [
  ['10.0.0.1', { address: '10.0.0.1', port: 53, family: 4 }],
  ['10.0.0.1:5353', { address: '10.0.0.1', port: 5353, family: 4 }],
  ['::1', { address: '::1', port: 53, family: 6 }],
  ['[::1]:5353', { address: '::1', port: 5353, family: 6 }],
  ['[fe80::1%eth0]:53', { address: 'fe80::1%eth0', port: 53, family: 6 }],
  ['example.com', undefined],
  ['10.0.0.1:99999', undefined],
  ['[10.0.0.1]:53', undefined],
  ['::1:53:x', undefined],
];
for (const [spec, expected] of upstreamSpecs) {
  test(`upstream spec ${spec} is ${expected ? 'read' : 'rejected'}`, (t) => {
    t.deepEqual(parseUpstream(spec), expected);
  });
}

test('a bad upstream spec is refused when the server is made, with exit status 2', (t) => {
  t.like(
    t.throws(
      () => new DnsServer({ view: new MachineTable(), logger: silentLogger, forward: ['dns.example'] }),
    ),
    { code: 'DNS_BAD_UPSTREAM', exitStatus: 2 },
  );
});
