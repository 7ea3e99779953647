import { spawn, spawnSync } from 'node:child_process';
import { statSync, writeFileSync, existsSync } from 'node:fs';
import net from 'node:net';
import { join } from 'node:path';
import test from 'ava';
import { z } from 'zod';
import { VarlinkClient, VarlinkClientError } from '../src/varlink/client.js';
import { method, type VarlinkInterface } from '../src/varlink/interface.js';
import { ORG_VARLINK_SERVICE_IDL } from '../src/varlink/introspection.js';
import { parameters } from '../src/varlink/parameters.js';
import { ListenError, VarlinkServer } from '../src/varlink/server.js';
import { memoryLogger } from '../src/log.js';
import { TurnShare } from '../src/turn-share.js';
import { RawPeer, startServer, tempDir } from './support/varlink.js';

const EXAMPLE_IDL = `# An interface for testing the server.
interface org.example.test

method Echo(text: string) -> (text: string)

# Answers once the test releases the key.
method Wait(key: string) -> (key: string)

# Streams 0..n-1 (with 'more').
method Count(n: int) -> (i: int)

method Throw() -> ()

error Empty()
`;

/** A controllable interface: `Wait` answers when the test calls `release(key)`. */
function exampleInterface(): { iface: VarlinkInterface; release: (key: string) => void } {
  const waiting = new Map<string, () => void>();
  const released = new Set<string>();
  const iface: VarlinkInterface = {
    name: 'org.example.test',
    description: EXAMPLE_IDL,
    methods: {
      'org.example.test.Echo': method(parameters({ text: z.string() }), ({ text }) => ({
        parameters: { text },
      })),
      'org.example.test.Wait': method(
        parameters({ key: z.string() }),
        ({ key }) =>
          new Promise((resolve) => {
            const done = (): void => {
              resolve({ parameters: { key } });
            };
            if (released.has(key)) done();
            else waiting.set(key, done);
          }),
      ),
      'org.example.test.Count': method(parameters({ n: z.number().int().nonnegative() }), ({ n }) => ({
        stream: Array.from({ length: n }, (_, i) => ({ i })),
        whenEmpty: { error: 'org.example.test.Empty', parameters: {} },
      })),
      'org.example.test.Throw': method(parameters({}), () => {
        throw new Error('handler bug');
      }),
    },
  };
  return {
    iface,
    release: (key) => {
      released.add(key);
      waiting.get(key)?.();
    },
  };
}

async function exampleServer(t: Parameters<typeof startServer>[0], options = {}) {
  const example = exampleInterface();
  const running = await startServer(
    t,
    (s) => {
      s.addInterface(example.iface);
    },
    options,
    'org.example.test',
  );
  return { ...running, release: example.release };
}

const call = (method: string, parameters: unknown = {}, extra = ''): string =>
  `{"method":${JSON.stringify(method)},"parameters":${JSON.stringify(parameters)}${extra}}\0`;

test('replies keep call order on a connection even when the first handler is asynchronous', async (t) => {
  const { path, release } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Wait', { key: 'a' }) + call('org.example.test.Echo', { text: 'b' }));
  // Another connection is not held up by the waiting call.
  const other = await VarlinkClient.connect(path);
  t.deepEqual(await other.call('org.example.test.Echo', { text: 'c' }), [
    { parameters: { text: 'c' }, error: undefined, continues: false },
  ]);
  other.close();
  release('a');
  t.is(await peer.next(), '{"parameters":{"key":"a"}}');
  t.is(await peer.next(), '{"parameters":{"text":"b"}}');
  peer.close();
});

test('a client that shuts down its sending side still gets every reply, then the connection ends', async (t) => {
  const { path, release } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Wait', { key: 'w' }) + call('org.example.test.Echo', { text: 'e' }));
  peer.socket.end();
  // Answer only after the server has seen the end of input: a round trip on another connection.
  const other = await VarlinkClient.connect(path);
  await other.call('org.example.test.Echo', { text: '' });
  other.close();
  release('w');
  t.deepEqual(await peer.untilClosed(), {
    messages: ['{"parameters":{"key":"w"}}', '{"parameters":{"text":"e"}}'],
    partial: '',
  });
});

test('with a zero share (one call a turn) pipelined calls on several connections are all answered, in order, before the end', async (t) => {
  const share = new TurnShare(0);
  const { path } = await exampleServer(t, { share });
  const peers = await Promise.all([RawPeer.connect(path), RawPeer.connect(path), RawPeer.connect(path)]);
  const texts = (p: number): string[] => Array.from({ length: 100 }, (_, i) => `${p}-${i}`);
  peers.forEach((peer, p) => {
    peer.send(
      texts(p)
        .map((text) => call('org.example.test.Echo', { text }))
        .join(''),
    );
    peer.socket.end();
  });
  const results = await Promise.all(peers.map((peer) => peer.untilClosed()));
  results.forEach((r, p) => {
    t.deepEqual(
      r.messages,
      texts(p).map((text) => JSON.stringify({ parameters: { text } })),
    );
  });
  t.true(share.deferrals >= 250, `${share.deferrals} calls waited for a later turn`);
});

test('a more call streams with continues on all but the last reply', async (t) => {
  const { path } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Count', { n: 3 }, ',"more":true'));
  t.is(await peer.next(), '{"parameters":{"i":0},"continues":true}');
  t.is(await peer.next(), '{"parameters":{"i":1},"continues":true}');
  t.is(await peer.next(), '{"parameters":{"i":2}}');
  peer.send(call('org.example.test.Count', { n: 0 }, ',"more":true'));
  t.is(await peer.next(), '{"error":"org.example.test.Empty","parameters":{}}');
  peer.close();
});

test('a long stream takes the turn share: with a zero share it sends about two replies a turn, and another client is answered in between', async (t) => {
  const share = new TurnShare(0);
  const { path } = await exampleServer(t, { share });
  const streaming = await RawPeer.connect(path);
  const n = 200;
  streaming.send(call('org.example.test.Count', { n }, ',"more":true'));
  // another client's call, sent once the stream has begun: answered before the stream ends
  const first = await streaming.next();
  t.is(first, '{"parameters":{"i":0},"continues":true}');
  const other = await RawPeer.connect(path);
  other.send(call('org.example.test.Echo', { text: 'between' }));
  const echoed = other.next();
  const rest: string[] = [];
  let echoedAfter: number | undefined;
  void echoed.then(() => (echoedAfter = rest.length));
  for (let i = 1; i < n; i++) rest.push(await streaming.next());
  t.is(await echoed, '{"parameters":{"text":"between"}}');
  t.true(
    echoedAfter !== undefined && echoedAfter < n - 10,
    `echo after ${String(echoedAfter)} of ${n} replies`,
  );
  t.deepEqual(
    rest,
    Array.from({ length: n - 1 }, (_, k) =>
      JSON.stringify(
        k + 1 < n - 1 ? { parameters: { i: k + 1 }, continues: true } : { parameters: { i: k + 1 } },
      ),
    ),
  );
  // a turn's first request is always allowed: the resumed stream's reply and one more
  t.true(share.deferrals >= n / 2 - 5, `${share.deferrals} replies waited for a later turn`);
  streaming.close();
  other.close();
});

test('continues is never sent to a call without more', async (t) => {
  const { path } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Count', { n: 3 }));
  t.is(await peer.next(), '{"error":"org.varlink.service.ExpectedMore","parameters":{}}');
  // A single-reply method called with more answers once, without continues (machined 252 too).
  peer.send(call('org.example.test.Echo', { text: 'x' }, ',"more":true'));
  t.is(await peer.next(), '{"parameters":{"text":"x"}}');
  peer.close();
});

test('an unknown method gets MethodNotFound naming it, with or without more', async (t) => {
  const { path } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Nope') + call('', {}, ',"more":true'));
  t.is(
    await peer.next(),
    '{"error":"org.varlink.service.MethodNotFound","parameters":{"method":"org.example.test.Nope"}}',
  );
  t.is(await peer.next(), '{"error":"org.varlink.service.MethodNotFound","parameters":{"method":""}}');
  peer.close();
});

test('a oneway call to an unknown method is dropped and the connection stays usable', async (t) => {
  const { path, logger } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(
    call('org.example.test.Nope', {}, ',"oneway":true') + call('org.example.test.Echo', { text: 'after' }),
  );
  t.is(await peer.next(), '{"parameters":{"text":"after"}}');
  t.true(logger.lines.some((l) => l.includes('oneway call to unknown method org.example.test.Nope ignored')));
  peer.close();
});

test('a oneway call to a method that replies closes the connection without a reply', async (t) => {
  const { path } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(
    call('org.example.test.Echo', { text: 'x' }, ',"oneway":true') +
      call('org.example.test.Echo', { text: 'y' }),
  );
  t.deepEqual(await peer.untilClosed(), { messages: [], partial: '' });
});

test('absent and null parameters are an empty object', async (t) => {
  const { path } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(
    '{"method":"org.varlink.service.GetInfo"}\0{"method":"org.varlink.service.GetInfo","parameters":null}\0',
  );
  t.regex(await peer.next(), /^\{"parameters":\{"vendor":/);
  t.regex(await peer.next(), /^\{"parameters":\{"vendor":/);
  peer.close();
});

test('bad parameters get InvalidParameter naming the first bad field in wire order by default', async (t) => {
  const { path } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Echo', { text: 1, zzz: 2 }));
  t.is(
    await peer.next(),
    '{"error":"org.varlink.service.InvalidParameter","parameters":{"parameter":"text"}}',
  );
  peer.send(call('org.example.test.Echo', { zzz: 2, text: 1 }));
  t.is(
    await peer.next(),
    '{"error":"org.varlink.service.InvalidParameter","parameters":{"parameter":"zzz"}}',
  );
  peer.send(call('org.example.test.Echo', {}));
  t.is(
    await peer.next(),
    '{"error":"org.varlink.service.InvalidParameter","parameters":{"parameter":"text"}}',
  );
  peer.send('{"method":"org.example.test.Echo","parameters":{"text":"a","text":"b"}}\0');
  t.is(
    await peer.next(),
    '{"error":"org.varlink.service.InvalidParameter","parameters":{"parameter":"text"}}',
  );
  peer.close();
});

test('GetInfo lists every served interface, sorted, with the configured identity', async (t) => {
  const example = exampleInterface();
  const { path } = await startServer(
    t,
    (s) => {
      s.addInterface(example.iface);
    },
    {
      info: { vendor: 'V', product: 'P', version: '1.2', url: 'https://example.org/' },
    },
  );
  const client = await VarlinkClient.connect(path);
  const [reply] = await client.call('org.varlink.service.GetInfo');
  t.deepEqual(reply?.parameters, {
    vendor: 'V',
    product: 'P',
    version: '1.2',
    url: 'https://example.org/',
    interfaces: ['org.example.test', 'org.varlink.service'],
  });
  client.close();
});

test('GetInterfaceDescription returns the IDL text of every interface, org.varlink.service included', async (t) => {
  const { path } = await exampleServer(t);
  const client = await VarlinkClient.connect(path);
  const describe = async (name: string) =>
    (await client.call('org.varlink.service.GetInterfaceDescription', { interface: name }))[0];
  t.deepEqual((await describe('org.example.test'))?.parameters, { description: EXAMPLE_IDL });
  t.deepEqual((await describe('org.varlink.service'))?.parameters, { description: ORG_VARLINK_SERVICE_IDL });
  const missing = await describe('org.example.nope');
  t.is(missing?.error, 'org.varlink.service.InterfaceNotFound');
  t.deepEqual(missing?.parameters, { interface: 'org.example.nope' });
  client.close();
});

test('a method table entry the description does not declare is refused at registration', (t) => {
  const server = new VarlinkServer({ logger: memoryLogger() });
  const handler = method(parameters({}), () => ({ parameters: {} }));
  t.throws(
    () => {
      server.addInterface({
        name: 'org.example.test',
        description: EXAMPLE_IDL,
        methods: { 'org.example.test.Undeclared': handler },
      });
    },
    { message: /not a method declared/ },
  );
  t.throws(
    () => {
      server.addInterface({ name: 'org.example.other', description: EXAMPLE_IDL, methods: {} });
    },
    { message: /declares interface 'org.example.test'/ },
  );
  t.throws(
    () => {
      server.addInterface({ name: 'org.varlink.service', description: ORG_VARLINK_SERVICE_IDL, methods: {} });
    },
    { message: /already served/ },
  );
});

test('a handler that throws drops only its own connection and is logged as an error', async (t) => {
  const { path, logger } = await exampleServer(t);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Throw'));
  t.deepEqual(await peer.untilClosed(), { messages: [], partial: '' });
  t.true(logger.lines.some((l) => l.startsWith('<3>') && l.includes('handler bug')));
  const client = await VarlinkClient.connect(path);
  t.is((await client.call('org.example.test.Echo', { text: 'ok' }))[0]?.parameters.text, 'ok');
  client.close();
});

test('the socket file gets the requested mode', async (t) => {
  const { path } = await exampleServer(t);
  t.is(statSync(path).mode & 0o777, 0o666);
  const other = new VarlinkServer({ logger: memoryLogger() });
  const path2 = join(tempDir(t), 'private');
  await other.listen(path2, { mode: 0o600 });
  t.teardown(() => other.close());
  t.is(statSync(path2).mode & 0o777, 0o600);
});

test('a stale socket file is replaced, a live one or a regular file is refused', async (t) => {
  const dir = tempDir(t);
  // A stale socket: bound by a process that exited without removing it (as after a crash).
  const stale = join(dir, 'stale');
  const bound = spawnSync('python3', [
    '-c',
    'import socket,sys; socket.socket(socket.AF_UNIX).bind(sys.argv[1])',
    stale,
  ]);
  t.is(bound.status, 0);
  t.true(statSync(stale).isSocket());
  const server = new VarlinkServer({ logger: memoryLogger() });
  t.teardown(() => server.close());
  await server.listen(stale);
  const client = await VarlinkClient.connect(stale);
  t.is((await client.call('org.varlink.service.GetInfo'))[0]?.error, undefined);
  client.close();

  const second = new VarlinkServer({ logger: memoryLogger() });
  const live = await t.throwsAsync(second.listen(stale), { instanceOf: ListenError });
  t.is(live.reason, 'in-use');
  const file = join(dir, 'file');
  writeFileSync(file, 'not a socket');
  const notSocket = await t.throwsAsync(second.listen(file), { instanceOf: ListenError });
  t.is(notSocket.reason, 'not-a-socket');
});

test('close() finishes the reply in flight, then ends the connection and removes the socket file', async (t) => {
  const example = exampleInterface();
  const logger = memoryLogger();
  const server = new VarlinkServer({ logger });
  server.addInterface(example.iface);
  const path = join(tempDir(t), 'sock');
  await server.listen(path);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Wait', { key: 'k' }));
  // Make sure the call reached the server before closing it.
  const probe = await VarlinkClient.connect(path);
  await probe.call('org.example.test.Echo', { text: '' });
  probe.close();
  const closed = server.close();
  // No new connections while closing.
  await t.throwsAsync(VarlinkClient.connect(path), { instanceOf: VarlinkClientError });
  example.release('k');
  await closed;
  t.deepEqual(await peer.untilClosed(), { messages: ['{"parameters":{"key":"k"}}'], partial: '' });
  t.false(existsSync(path));
  t.is(server.connectionCount, 0);
});

test('close() drops connections that cannot finish within the timeout', async (t) => {
  const example = exampleInterface();
  const server = new VarlinkServer({ logger: memoryLogger(), closeTimeoutMs: 50 });
  server.addInterface(example.iface);
  const path = join(tempDir(t), 'sock');
  await server.listen(path);
  const peer = await RawPeer.connect(path);
  peer.send(call('org.example.test.Wait', { key: 'never' }));
  const client = await VarlinkClient.connect(path);
  await client.call('org.example.test.Echo', { text: '' });
  client.close();
  await server.close();
  t.deepEqual(await peer.untilClosed(), { messages: [], partial: '' });
});

test('the client reports an absent socket, a closed peer and a timeout as named errors', async (t) => {
  const dir = tempDir(t);
  const absent = await t.throwsAsync(VarlinkClient.connect(join(dir, 'absent')), {
    instanceOf: VarlinkClientError,
  });
  t.is(absent.kind, 'connect');

  const { path } = await exampleServer(t);
  const client = await VarlinkClient.connect(path);
  const timedOut = await t.throwsAsync(
    client.call('org.example.test.Wait', { key: 'x' }, { timeoutMs: 20 }),
    {
      instanceOf: VarlinkClientError,
    },
  );
  t.is(timedOut.kind, 'timeout');
  const after = await t.throwsAsync(client.call('org.example.test.Echo', { text: '' }), {
    instanceOf: VarlinkClientError,
  });
  t.is(after.kind, 'closed');

  const second = await VarlinkClient.connect(path);
  const dropped = second.call('org.example.test.Echo', { text: 'x' }, { oneway: true });
  t.deepEqual(await dropped, []);
  const closed = await t.throwsAsync(second.call('org.example.test.Echo', { text: 'y' }), {
    instanceOf: VarlinkClientError,
  });
  t.is(closed.kind, 'closed');
});

test('the client refuses continues on a call made without more', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'rogue');
  const rogue = net.createServer((socket) => {
    socket.on('data', () => socket.write('{"parameters":{},"continues":true}\0'));
  });
  await new Promise<void>((resolve) => rogue.listen(path, resolve));
  t.teardown(
    () =>
      new Promise<void>((resolve) =>
        rogue.close(() => {
          resolve();
        }),
      ),
  );
  const client = await VarlinkClient.connect(path);
  const err = await t.throwsAsync(client.call('x.Y'), { instanceOf: VarlinkClientError });
  t.is(err.kind, 'protocol');
});

test('the client collects every reply of a more call', async (t) => {
  const { path } = await exampleServer(t);
  const client = await VarlinkClient.connect(path);
  const replies = await client.call('org.example.test.Count', { n: 3 }, { more: true });
  t.deepEqual(
    replies.map((r) => [r.parameters.i, r.continues]),
    [
      [0, true],
      [1, true],
      [2, false],
    ],
  );
  client.close();
});

test('listenFd serves a socket passed by systemd socket activation', async (t) => {
  const dir = tempDir(t);
  const path = join(dir, 'activated');
  const child = spawn(
    'systemd-socket-activate',
    ['-l', path, process.execPath, join(import.meta.dirname, 'support', 'fd-server.js')],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  t.teardown(() => {
    child.kill();
  });
  const exited = new Promise<number | null>((resolve) => child.once('exit', resolve));
  // systemd-socket-activate binds and listens first, and starts the server on the first connection.
  let stderr = '';
  await new Promise<void>((resolve, reject) => {
    child.stderr.on('data', (d: Buffer) => {
      stderr += d.toString();
      if (stderr.includes('Listening on')) resolve();
    });
    child.once('exit', () => {
      reject(new Error(`systemd-socket-activate exited: ${stderr}`));
    });
  });
  const client = await VarlinkClient.connect(path);
  const [info] = await client.call('org.varlink.service.GetInfo');
  t.deepEqual(info?.parameters.interfaces, ['org.varlink.service']);
  client.close();
  child.kill('SIGTERM');
  t.is(await exited, 0);
});
