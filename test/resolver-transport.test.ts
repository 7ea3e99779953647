import test from 'ava';
import dgram from 'node:dgram';
import net from 'node:net';
import { once } from 'node:events';
import { machineRecord } from './support/records.js';
import { dig, kdig } from './support/dig.js';
import { query, RCODE, summarize } from './support/dns.js';
import { startStub } from './support/stub.js';
import type { RecordSpec } from './support/records.js';
import { TurnShare } from '../src/turn-share.js';

const machines: RecordSpec[] = [
  { name: 'alpha', addresses: ['192.0.2.10', 'fd42::10'] },
  // 40 AAAA records: 1160 bytes, more than 512, less than 1232.
  { name: 'big', addresses: Array.from({ length: 40 }, (_, i) => `fd42::1:${(i + 1).toString(16)}`) },
];

// ---- real clients: dig (BIND) and kdig (Knot) ------------------------------------------------------

test('dig over UDP on 127.0.0.1 gets the A record, authoritative', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await dig('127.0.0.1', port, 'alpha.machine', 'A');
  t.is(r.status, 'NOERROR', r.text);
  t.deepEqual(r.answers, ['alpha.machine. 0 A 192.0.2.10']);
  t.true(r.flags.includes('aa'));
});

test('dig over UDP on ::1 gets the AAAA record', async (t) => {
  const { port6 } = await startStub(t, machines);
  const r = await dig('::1', port6, 'alpha.machine', 'AAAA');
  t.deepEqual(r.answers, ['alpha.machine. 0 AAAA fd42::10'], r.text);
});

test('dig +tcp gets the answer over TCP with the question case echoed', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await dig('127.0.0.1', port, '+tcp', 'AlPhA.MACHINE', 'A');
  t.deepEqual(r.answers, ['AlPhA.MACHINE. 0 A 192.0.2.10'], r.text);
  t.regex(r.text, /\(TCP\)/);
});

test('dig over TCP on ::1 works too', async (t) => {
  const { port6 } = await startStub(t, machines);
  const r = await dig('::1', port6, '+tcp', 'alpha', 'A');
  t.deepEqual(r.answers, ['alpha. 0 A 192.0.2.10'], r.text);
});

test('dig +norec still gets the authoritative answer, without RD', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await dig('127.0.0.1', port, '+norec', 'alpha.machine', 'A');
  t.deepEqual(r.answers, ['alpha.machine. 0 A 192.0.2.10'], r.text);
  t.false(r.flags.includes('rd'));
});

test('dig gets NXDOMAIN with the SOA for an unknown machine', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await dig('127.0.0.1', port, 'nosuch.machine', 'A');
  t.is(r.status, 'NXDOMAIN', r.text);
  t.regex(r.authority.join('\n'), /^machine\. 0 SOA machine\. nobody\.invalid\. \d+ 3600 1200 604800 0$/);
});

test('dig +bufsize=512 on a big answer gets TC and retries over TCP for all of it', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await dig('127.0.0.1', port, '+bufsize=512', 'big.machine', 'AAAA');
  t.regex(r.text, /Truncated, retrying in TCP mode/);
  t.is(r.answers.length, 40, r.text);
});

test('dig +bufsize=1232 gets the big answer over UDP untruncated', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await dig('127.0.0.1', port, '+bufsize=1232', 'big.machine', 'AAAA');
  t.notRegex(r.text, /Truncated/);
  t.is(r.answers.length, 40, r.text);
});

test('dig +ignore +noedns shows the TC bit on a UDP answer over 512 bytes', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await dig('127.0.0.1', port, '+ignore', '+noedns', 'big.machine', 'AAAA');
  t.true(r.flags.includes('tc'), r.text);
  t.deepEqual(r.answers, []);
});

test('kdig over UDP and TCP gets the same answer', async (t) => {
  const { port } = await startStub(t, machines);
  const udp = await kdig('127.0.0.1', port, 'alpha.machine', 'A');
  const tcp = await kdig('127.0.0.1', port, '+tcp', 'alpha.machine', 'A');
  t.deepEqual(udp.answers, ['alpha.machine. 0 A 192.0.2.10'], udp.text);
  t.deepEqual(tcp.answers, udp.answers, tcp.text);
  t.regex(tcp.text, /\(TCP\)/);
});

test('kdig +bufsize=512 +ignore sees TC, kdig +tcp gets all 40 records', async (t) => {
  const { port } = await startStub(t, machines);
  const udp = await kdig('127.0.0.1', port, '+bufsize=512', '+ignore', 'big.machine', 'AAAA');
  t.true(udp.flags.includes('tc'), udp.text);
  const tcp = await kdig('127.0.0.1', port, '+tcp', 'big.machine', 'AAAA');
  t.is(tcp.answers.length, 40, tcp.text);
});

test('kdig PTR of a machine address names the machine', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await kdig('127.0.0.1', port, '-x', '192.0.2.10');
  t.deepEqual(r.answers, ['10.2.0.192.in-addr.arpa. 0 PTR alpha.machine.'], r.text);
});

test('kdig with EDNS version 1 gets BADVERS', async (t) => {
  const { port } = await startStub(t, machines);
  const r = await kdig('127.0.0.1', port, '+edns=1', 'alpha.machine', 'A');
  t.regex(r.text, /BADVERS/, r.text);
});

test('a machine registered after start is answered at once, and not after removal', async (t) => {
  const { port, table } = await startStub(t, machines);
  t.is((await dig('127.0.0.1', port, 'late.machine', 'A')).status, 'NXDOMAIN');
  table.upsert(machineRecord({ name: 'late', addresses: ['192.0.2.99'] }));
  t.deepEqual((await dig('127.0.0.1', port, 'late.machine', 'A')).answers, ['late.machine. 0 A 192.0.2.99']);
  table.remove('late');
  t.is((await dig('127.0.0.1', port, 'late.machine', 'A')).status, 'NXDOMAIN');
});

test('a collision is logged once as a warning', async (t) => {
  const { port, table, logger } = await startStub(t, machines);
  table.upsert(machineRecord({ name: 'Web', addresses: ['192.0.2.21'] }));
  table.upsert(machineRecord({ name: 'web', addresses: ['192.0.2.22'] }));
  const r = await dig('127.0.0.1', port, 'WEB.machine', 'A');
  t.is(r.status, 'SERVFAIL');
  table.upsert(machineRecord({ name: 'other', addresses: ['192.0.2.23'] }));
  await dig('127.0.0.1', port, 'WEB.machine', 'A');
  t.is(logger.lines.filter((l) => l.includes('differ only in case')).length, 1, logger.lines.join('\n'));
});

// ---- listeners -------------------------------------------------------------------------------------

test('start resolves to the real bound addresses, UDP and TCP on the same port', async (t) => {
  const { listeners } = await startStub(t, machines);
  const v4 = listeners.filter((l) => l.family === 4);
  t.deepEqual(
    v4.map((l) => l.transport),
    ['udp', 'tcp'],
  );
  t.true((v4[0]?.port ?? 0) > 0);
  t.is(v4[0]?.port, v4[1]?.port);
  t.true(listeners.some((l) => l.address === '::1'));
});

test('a listener that cannot bind rejects start with DNS_BIND_FAILED, exit status 1', async (t) => {
  const { port } = await startStub(t, machines);
  const { DnsServer } = await import('../src/resolver/index.js');
  const { MachineTable } = await import('../src/registry-client/registry.js');
  const { silentLogger } = await import('../src/log.js');
  const second = new DnsServer({
    view: new MachineTable(),
    logger: silentLogger,
    listen: [`127.0.0.1:${port}`],
  });
  const error = await t.throwsAsync(second.start());
  t.like(error, { code: 'DNS_BIND_FAILED', exitStatus: 1 });
  t.regex(error.message, new RegExp(`127\\.0\\.0\\.1:${port}`));
});

// ---- who may ask -----------------------------------------------------------------------------------

test('a client outside allowNets gets no answer at all over UDP', async (t) => {
  const { port } = await startStub(t, machines, { allowNets: ['192.0.2.0/24'] });
  const r = await dig('127.0.0.1', port, '+time=1', 'alpha.machine', 'A');
  t.is(r.exitCode, 9, r.text); // dig: no reply from the server
});

test('a TCP connection from outside allowNets is closed without an answer', async (t) => {
  const { port } = await startStub(t, machines, { allowNets: ['::1'] });
  const socket = net.connect(port, '127.0.0.1');
  const received: Buffer[] = [];
  socket.on('data', (d: Buffer) => received.push(d));
  socket.on('error', () => undefined);
  socket.write(tcpFrame(query('alpha.machine', 'A')));
  await closed(socket);
  t.deepEqual(received, []);
});

test('loopback is allowed by default, over IPv4 and IPv6', async (t) => {
  const { port, port6 } = await startStub(t, machines, { hostAddresses: [] });
  t.is((await dig('127.0.0.1', port, 'alpha.machine', 'A')).status, 'NOERROR');
  t.is((await dig('::1', port6, 'alpha.machine', 'A')).status, 'NOERROR');
});

// ---- raw UDP -----------------------------------------------------------------------------------------

async function udpAsk(port: number, bytes: Buffer): Promise<Buffer> {
  const socket = dgram.createSocket('udp4');
  try {
    socket.send(bytes, port, '127.0.0.1');
    const [reply] = (await once(socket, 'message')) as [Buffer];
    return reply;
  } finally {
    socket.close();
  }
}

test('a malformed query with a header gets FORMERR over UDP', async (t) => {
  const { port } = await startStub(t, machines);
  const reply = await udpAsk(port, Buffer.from([0xbe, 0xef, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 9, 0x61]));
  t.is(reply.readUInt16BE(0), 0xbeef);
  t.is(reply.readUInt16BE(2) & 0x0f, RCODE.FORMERR);
});

test('silence for a short datagram, and the stub keeps answering', async (t) => {
  const { port } = await startStub(t, machines);
  const socket = dgram.createSocket('udp4');
  t.teardown(() => socket.close());
  const replies: Buffer[] = [];
  socket.on('message', (m: Buffer) => replies.push(m));
  socket.send(Buffer.from([1, 2, 3]), port, '127.0.0.1');
  socket.send(query('alpha.machine', 'A', { id: 77 }), port, '127.0.0.1');
  await once(socket, 'message');
  t.is(replies.length, 1);
  t.is(summarize(replies[0] ?? Buffer.alloc(0)).id, 77, 'the only reply is the one to the real query');
});

// ---- raw TCP framing ---------------------------------------------------------------------------------

function tcpFrame(message: Buffer): Buffer {
  const head = Buffer.alloc(2);
  head.writeUInt16BE(message.length, 0);
  return Buffer.concat([head, message]);
}

/** Collects `count` framed answers (or fewer if the server closes first). */
function readAnswers(socket: net.Socket, count: number): Promise<Buffer[]> {
  return new Promise((resolve) => {
    let pending = Buffer.alloc(0);
    const out: Buffer[] = [];
    const finish = (): void => {
      socket.off('data', onData);
      resolve(out);
    };
    const onData = (chunk: Buffer): void => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        const length = pending.readUInt16BE(0);
        out.push(pending.subarray(2, 2 + length));
        pending = pending.subarray(2 + length);
      }
      if (out.length >= count) finish();
    };
    socket.on('data', onData);
    socket.once('close', finish);
  });
}

/** Resolves when the socket has closed (whatever error came first: resets are expected here). */
function closed(socket: net.Socket): Promise<void> {
  return new Promise((resolve) => {
    if (socket.closed) resolve();
    else
      socket.once('close', () => {
        resolve();
      });
  });
}

async function connect(port: number): Promise<net.Socket> {
  const socket = net.connect(port, '127.0.0.1');
  socket.setNoDelay(true);
  socket.on('error', () => undefined);
  await once(socket, 'connect');
  return socket;
}

test('a length prefix split across two writes is reassembled', async (t) => {
  const { port } = await startStub(t, machines);
  const socket = await connect(port);
  t.teardown(() => socket.destroy());
  const answers = readAnswers(socket, 1);
  const bytes = tcpFrame(query('alpha.machine', 'A', { id: 5 }));
  socket.write(bytes.subarray(0, 1));
  socket.write(bytes.subarray(1));
  const [reply] = await answers;
  t.is(summarize(reply ?? Buffer.alloc(0)).id, 5);
});

test('a query written one byte per write is answered', async (t) => {
  const { port } = await startStub(t, machines);
  const socket = await connect(port);
  t.teardown(() => socket.destroy());
  const answers = readAnswers(socket, 1);
  const bytes = tcpFrame(query('alpha.machine', 'A', { id: 6 }));
  for (const byte of bytes) socket.write(Buffer.from([byte]));
  const [reply] = await answers;
  t.deepEqual(summarize(reply ?? Buffer.alloc(0)).answers, ['alpha.machine 0 A 192.0.2.10']);
});

test('several pipelined queries in one write are answered in order', async (t) => {
  const { port } = await startStub(t, machines);
  const socket = await connect(port);
  t.teardown(() => socket.destroy());
  const answers = readAnswers(socket, 4);
  socket.write(
    Buffer.concat([
      tcpFrame(query('alpha.machine', 'A', { id: 1 })),
      tcpFrame(query('nosuch.machine', 'A', { id: 2 })),
      tcpFrame(query('big.machine', 'AAAA', { id: 3 })),
      tcpFrame(query('alpha.machine', 'AAAA', { id: 4 })),
    ]),
  );
  const replies = (await answers).map(summarize);
  t.deepEqual(
    replies.map((r) => r.id),
    [1, 2, 3, 4],
  );
  t.is(replies[1]?.rcode, RCODE.NXDOMAIN);
  t.is(replies[2]?.answers.length, 40, 'a TCP answer is never truncated');
});

test('with a zero share (one TCP query a turn) pipelined queries on several connections are all answered, in order', async (t) => {
  const share = new TurnShare(0);
  const { port } = await startStub(t, machines, { streamShare: share });
  const sockets = await Promise.all([connect(port), connect(port), connect(port)]);
  t.teardown(() => {
    for (const s of sockets) s.destroy();
  });
  const replies = await Promise.all(
    sockets.map((socket, c) => {
      const answers = readAnswers(socket, 100);
      const ids = Array.from({ length: 100 }, (_, i) => c * 1000 + i);
      socket.write(Buffer.concat(ids.map((id) => tcpFrame(query('alpha.machine', 'A', { id })))));
      socket.end(); // half-closed: every answer still comes, then the stub ends the connection
      return answers;
    }),
  );
  replies.forEach((r, c) => {
    t.deepEqual(
      r.map((b) => summarize(b).id),
      Array.from({ length: 100 }, (_, i) => c * 1000 + i),
    );
  });
  await Promise.all(sockets.map(closed));
  t.true(share.deferrals >= 250, `${share.deferrals} queries waited for a later turn`);
});

test('a UDP query is answered while a TCP flood waits its turns (zero share)', async (t) => {
  const share = new TurnShare(0);
  const { port } = await startStub(t, machines, { streamShare: share });
  const socket = await connect(port);
  t.teardown(() => socket.destroy());
  const FLOOD = 2_000;
  let tcpAnswers = 0;
  let pending = Buffer.alloc(0);
  const all = new Promise<void>((resolve) => {
    socket.on('data', (chunk: Buffer) => {
      pending = Buffer.concat([pending, chunk]);
      while (pending.length >= 2 && pending.length >= 2 + pending.readUInt16BE(0)) {
        pending = pending.subarray(2 + pending.readUInt16BE(0));
        if (++tcpAnswers === FLOOD) resolve();
      }
    });
  });
  socket.write(
    Buffer.concat(Array.from({ length: FLOOD }, (_, i) => tcpFrame(query('alpha.machine', 'A', { id: i })))),
  );
  // the flood is in the stub's socket before the datagram is sent
  await new Promise((resolve) => setTimeout(resolve, 20));
  const udp = await udpAsk(port, query('alpha.machine', 'AAAA', { id: 7 }));
  const seenBefore = tcpAnswers;
  t.is(summarize(udp).id, 7);
  t.true(seenBefore < FLOOD / 2, `${seenBefore} of ${FLOOD} TCP answers came before the UDP one`);
  await all;
  t.is(tcpAnswers, FLOOD);
});

test('an oversized length prefix closes the connection without an answer', async (t) => {
  const { port } = await startStub(t, machines);
  const socket = await connect(port);
  const answers = readAnswers(socket, 1);
  socket.write(Buffer.from([0xff, 0xff, 0, 0, 0]));
  t.deepEqual(await answers, []);
  t.true(socket.destroyed || socket.readableEnded);
});

test('a connection that stays quiet is closed after the idle timeout', async (t) => {
  // 600 ms, not less: on a loaded 2-core machine the first answer once took over 200 ms.
  const { port } = await startStub(t, machines, { tcpIdleTimeoutMs: 600 });
  const socket = await connect(port);
  const answers = readAnswers(socket, 2);
  socket.write(tcpFrame(query('alpha.machine', 'A', { id: 9 })));
  const started = Date.now();
  await closed(socket);
  t.is((await answers).length, 1, 'the query before going quiet was answered');
  t.true(Date.now() - started >= 500);
});

test('a half-sent query does not keep the connection open past the idle timeout', async (t) => {
  const { port } = await startStub(t, machines, { tcpIdleTimeoutMs: 200 });
  const socket = await connect(port);
  socket.write(tcpFrame(query('alpha.machine', 'A')).subarray(0, 5));
  const started = Date.now();
  await closed(socket);
  t.true(Date.now() - started < 5000);
});

test('a client dripping one byte at a time is closed after the idle timeout', async (t) => {
  const { port } = await startStub(t, machines, { tcpIdleTimeoutMs: 300 });
  const socket = await connect(port);
  // A frame announcing 4000 bytes, sent a byte every 20 ms: each byte is activity, but no query
  // ever completes, so the connection must not live longer than the idle timeout.
  const drip = setInterval(() => {
    if (!socket.destroyed) socket.write(Buffer.from([0x0f]));
  }, 20);
  t.teardown(() => {
    clearInterval(drip);
  });
  socket.write(Buffer.from([0x0f, 0xa0]));
  const started = Date.now();
  await closed(socket);
  clearInterval(drip);
  const lived = Date.now() - started;
  t.true(lived < 2000, `lived ${lived} ms`);
});

test('at the connection cap a new client is served and the connection idle the longest is closed (RFC 7766 §6.2.3)', async (t) => {
  const { port } = await startStub(t, machines, { maxTcpConnections: 2 });
  const first = await connect(port);
  const second = await connect(port);
  t.teardown(() => {
    first.destroy();
    second.destroy();
  });
  // Both accepted and used, first before second: first has been idle the longest.
  for (const [i, s] of [first, second].entries()) {
    const a = readAnswers(s, 1);
    s.write(tcpFrame(query('alpha.machine', 'A', { id: 10 + i })));
    t.is((await a).length, 1);
  }
  const third = await connect(port);
  t.teardown(() => third.destroy());
  const answers = readAnswers(third, 1);
  third.write(tcpFrame(query('alpha.machine', 'A', { id: 13 })));
  t.is(summarize((await answers)[0] ?? Buffer.alloc(0)).id, 13);
  await closed(first);
  const again = readAnswers(second, 1);
  second.write(tcpFrame(query('alpha.machine', 'A', { id: 12 })));
  t.is(summarize((await again)[0] ?? Buffer.alloc(0)).id, 12);
});

test('a client that never reads cannot make the stub buffer without bound', async (t) => {
  const { port } = await startStub(t, machines, { tcpIdleTimeoutMs: 500 });
  const socket = await connect(port);
  socket.pause(); // never read: answers pile up in the kernel, then the stub must stop reading
  const batch = Buffer.concat(Array.from({ length: 2000 }, () => tcpFrame(query('big.machine', 'AAAA'))));
  const ceiling = 256 * 1024 * 1024;
  let written = 0;
  const writeMore = (): void => {
    while (written < ceiling && !socket.destroyed) {
      written += batch.length;
      if (!socket.write(batch)) return; // wait for 'drain', which only comes if the stub reads
    }
  };
  socket.on('drain', writeMore);
  writeMore();
  // The stub stops reading once its writes back up, so our writes stall; then the idle rule
  // closes the connection. Had it kept reading, we would have pushed the whole ceiling.
  await closed(socket);
  t.true(written < ceiling, `wrote ${written} bytes`);
});

test('the stub keeps answering other clients while one client does not read', async (t) => {
  const { port } = await startStub(t, machines, { tcpIdleTimeoutMs: 2000 });
  const stuck = await connect(port);
  stuck.pause();
  t.teardown(() => stuck.destroy());
  const batch = Buffer.concat(Array.from({ length: 2000 }, () => tcpFrame(query('big.machine', 'AAAA'))));
  await new Promise<void>((resolve) => {
    const more = (): void => {
      while (stuck.write(batch));
      resolve();
    };
    more();
  });
  const r = await dig('127.0.0.1', port, 'alpha.machine', 'A');
  t.deepEqual(r.answers, ['alpha.machine. 0 A 192.0.2.10']);
});

test('close answers what a TCP client already asked, then closes the connection', async (t) => {
  const stub = await startStub(t, machines);
  const socket = await connect(stub.port);
  const answers = readAnswers(socket, 1);
  socket.write(tcpFrame(query('alpha.machine', 'A', { id: 21 })));
  const [first] = await answers;
  t.is(summarize(first ?? Buffer.alloc(0)).id, 21);
  const socketClosed = closed(socket);
  await stub.server.close();
  await socketClosed;
  t.true(socket.readableEnded, 'the stub ended the connection cleanly');
});
