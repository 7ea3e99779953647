/**
 * The stub in a process of its own: handed already-bound sockets (socket activation), and asked
 * by glibc's getaddrinfo inside private network and mount namespaces. Nothing here touches the
 * host: port 53 is bound only inside a private network namespace, /etc files are replaced only by
 * bind mounts inside a private mount namespace, and every process started is ended by its PID.
 */
import test from 'ava';
import { execFile, spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { fileURLToPath } from 'node:url';
import dgram from 'node:dgram';
import type { BoundListener } from '../src/resolver/server.js';
import { dig } from './support/dig.js';
import { query, summarize, type Summary } from './support/dns.js';

const child = fileURLToPath(new URL('./support/stub-child.js', import.meta.url));

function available(command: string, args: string[]): Promise<boolean> {
  return new Promise((resolve) => {
    execFile(command, args, { timeout: 10_000 }, (error) => {
      resolve(!error);
    });
  });
}

/** Reads a child's stdout line by line. */
function lineReader(process: ChildProcess): () => Promise<string> {
  let buffered = '';
  const lines: string[] = [];
  const waiters: ((line: string) => void)[] = [];
  process.stdout?.setEncoding('utf8');
  process.stdout?.on('data', (chunk: string) => {
    buffered += chunk;
    for (let nl = buffered.indexOf('\n'); nl >= 0; nl = buffered.indexOf('\n')) {
      const line = buffered.slice(0, nl);
      buffered = buffered.slice(nl + 1);
      const waiter = waiters.shift();
      if (waiter) waiter(line);
      else lines.push(line);
    }
  });
  process.once('exit', () => {
    for (const waiter of waiters.splice(0)) waiter('');
  });
  return () => {
    const line = lines.shift();
    if (line !== undefined) return Promise.resolve(line);
    return new Promise((resolve) => waiters.push(resolve));
  };
}

// Binds UDP and TCP on one free loopback port as fds 3 and 4, then execs the stub with them, as
// systemd does for a socket unit with ListenDatagram= and ListenStream=.
const activator = `
import os, socket, sys
tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
tcp.bind(("127.0.0.1", 0))
tcp.listen(16)
udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
udp.bind(("127.0.0.1", tcp.getsockname()[1]))
# via high fds first: the sockets themselves may already sit on 3 and 4
os.dup2(udp.fileno(), 20)
os.dup2(tcp.fileno(), 21)
os.dup2(20, 3)
os.dup2(21, 4)
os.close(20)
os.close(21)
os.execvp(sys.argv[1], sys.argv[1:])
`;

test('replies that wait in the send queue keep their own IDs (node --test-udp-no-try-send: every UDP send is queued)', async (t) => {
  // A kept response is sent itself with the asker's ID written into it only while no reply waits in
  // a send queue. Here every send waits, so bursts of one question with 300 IDs must still get 300
  // replies with 300 different IDs; had the queued replies shared the kept bytes, they would carry
  // the last ID written.
  const config = {
    machines: [{ name: 'alpha', addresses: ['192.0.2.10'] }],
    options: { listen: ['127.0.0.1:0'] },
  };
  const stub = spawn(process.execPath, ['--test-udp-no-try-send', child, JSON.stringify(config)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  t.teardown(() => {
    if (stub.exitCode === null && stub.signalCode === null) stub.kill('SIGKILL');
  });
  const { listeners } = JSON.parse(await lineReader(stub)()) as { listeners: BoundListener[] };
  const port = listeners.find((l) => l.transport === 'udp')?.port;
  if (port === undefined) return t.fail('no udp listener');
  const client = dgram.createSocket('udp4');
  t.teardown(() => client.close());
  await new Promise<void>((resolve) => client.bind(0, '127.0.0.1', resolve));
  const COUNT = 300;
  const replies = new Map<number, Summary>();
  let received = 0;
  const all = new Promise<void>((resolve) => {
    client.on('message', (bytes: Buffer) => {
      const r = summarize(bytes);
      replies.set(r.id, r);
      received++;
      if (replies.size === COUNT) resolve();
    });
  });
  // one warm-up question first, so that every one of the burst is answered from the kept bytes
  client.send(query('alpha.machine', 'A', { id: 0 }), port, '127.0.0.1');
  await new Promise((resolve) => setTimeout(resolve, 200));
  replies.clear();
  // bursts of 30: the stub reads up to 32 datagrams in one turn (libuv), and the replies fit the
  // client's receive buffer until it reads them
  for (let id = 1; id <= COUNT; id++) {
    client.send(query('alpha.machine', 'A', { id }), port, '127.0.0.1');
    if (id % 30 === 0) await new Promise((resolve) => setTimeout(resolve, 30));
  }
  await Promise.race([all, new Promise((resolve) => setTimeout(resolve, 5_000))]);
  t.is(replies.size, COUNT, `${replies.size} different IDs in ${received} replies`);
  for (const [id, r] of replies) {
    t.true(id >= 1 && id <= COUNT);
    t.deepEqual(r.answers, ['alpha.machine 0 A 192.0.2.10']);
  }
  stub.kill('SIGTERM');
  const [code] = (await once(stub, 'exit')) as [number | null];
  t.is(code, 0);
});

test('inherited UDP and TCP sockets are served, and SIGTERM closes cleanly', async (t) => {
  if (!(await available('python3', ['-c', 'pass']))) {
    t.pass('python3 is not installed: skipped');
    return;
  }
  const config = {
    machines: [{ name: 'alpha', addresses: ['192.0.2.10'] }],
    options: {
      inherited: [
        { fd: 3, kind: 'udp', family: 4 },
        { fd: 4, kind: 'tcp', family: 4 },
      ],
    },
  };
  const proc = spawn('python3', ['-c', activator, process.execPath, child, JSON.stringify(config)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const exited = once(proc, 'exit');
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  });
  const nextLine = lineReader(proc);
  const started = JSON.parse(await nextLine()) as {
    listeners: { transport: string; port: number; inherited: boolean }[];
  };
  t.deepEqual(
    started.listeners.map((l) => [l.transport, l.inherited]),
    [
      ['udp', true],
      ['tcp', true],
    ],
  );
  const port = started.listeners[0]?.port ?? 0;
  t.deepEqual((await dig('127.0.0.1', port, 'alpha.machine', 'A')).answers, [
    'alpha.machine. 0 A 192.0.2.10',
  ]);
  t.deepEqual((await dig('127.0.0.1', port, '+tcp', 'alpha.machine', 'A')).answers, [
    'alpha.machine. 0 A 192.0.2.10',
  ]);
  proc.kill('SIGTERM');
  const [code] = (await exited) as [number | null];
  t.is(code, 0);
});

test('getaddrinfo through glibc resolves machine names and addresses via the stub', async (t) => {
  if (
    process.getuid?.() !== 0 ||
    !(await available('unshare', ['-n', '-m', '--propagation', 'private', 'true']))
  ) {
    t.pass('private namespaces are not available here: skipped');
    return;
  }
  const dir = await mkdtemp(join(tmpdir(), 'mymachinesd-gai-'));
  t.teardown(() => rm(dir, { recursive: true, force: true }));
  const resolv = join(dir, 'resolv.conf');
  const nsswitch = join(dir, 'nsswitch.conf');
  await writeFile(resolv, 'nameserver 127.0.0.1\noptions timeout:2 attempts:1\n');
  await writeFile(nsswitch, 'passwd: files\ngroup: files\nhosts: dns\n');
  const config = {
    machines: [
      { name: 'alpha', addresses: ['192.0.2.10', 'fd42::10'] },
      { name: 'beta', addresses: ['198.51.100.7'] },
    ],
    options: { listen: ['127.0.0.1:53'] },
    probes: [
      ['getent', 'ahosts', 'alpha.machine'],
      ['getent', 'ahosts', 'alpha'],
      ['getent', 'hosts', '198.51.100.7'],
      ['getent', 'hosts', 'nosuch.machine'],
    ],
  };
  // Port 53 only inside a new network namespace (its own loopback); the /etc files only inside a
  // private mount namespace.
  const script = [
    'ip link set lo up',
    `mount --bind '${resolv}' /etc/resolv.conf`,
    `mount --bind '${nsswitch}' /etc/nsswitch.conf`,
    'exec "$@"',
  ].join(' && ');
  const proc = spawn(
    'unshare',
    [
      '-n',
      '-m',
      '--propagation',
      'private',
      'sh',
      '-c',
      script,
      'sh',
      process.execPath,
      child,
      JSON.stringify(config),
    ],
    { stdio: ['ignore', 'pipe', 'inherit'] },
  );
  const exited = once(proc, 'exit');
  t.teardown(() => {
    if (proc.exitCode === null) proc.kill('SIGKILL');
  });
  const nextLine = lineReader(proc);
  t.truthy(await nextLine(), 'the stub started');
  const { probes } = JSON.parse(await nextLine()) as { probes: { code: number; stdout: string }[] };
  const [ahosts, bare, reverse, unknown] = probes;
  const addresses = new Set((ahosts?.stdout ?? '').split('\n').map((l) => l.split(/\s+/)[0] ?? ''));
  addresses.delete('');
  // glibc orders the addresses itself (RFC 6724): compare the set.
  t.deepEqual([...addresses].sort(), ['192.0.2.10', 'fd42::10'], ahosts?.stdout);
  t.regex(bare?.stdout ?? '', /^192\.0\.2\.10\s+STREAM\b/m, 'the bare single label resolves too');
  t.regex(bare?.stdout ?? '', /^\S+\s+STREAM alpha$/m, 'with the name as asked');
  t.regex(reverse?.stdout ?? '', /^198\.51\.100\.7\s+beta\.machine$/m);
  t.is(unknown?.code, 2, 'getent: not found');
  const [code] = (await exited) as [number | null];
  t.is(code, 0);
});
