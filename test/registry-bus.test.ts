/**
 * BusConnection's two paths over a real dbus-daemon, against FakeMachined (the TEST DOUBLE of
 * machined): calls with string, object-path, 32-bit integer and boolean arguments take the lean
 * connection (our codec, src/registry-client/dbus-wire.ts) and give exactly what dbus-next gives; its
 * errors, deadlines and end behave as dbus-next's path does. The real machined 252 is followed over
 * the same path by test/registry-machined.test.ts and the *-machined-live tests.
 */
import { Variant } from '@particle/dbus-next';
import test, { type ExecutionContext } from 'ava';
import { once } from 'node:events';
import { mkdtemp, rm } from 'node:fs/promises';
import { createServer, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { BusConnection, DBUS_NAME, isBusError, nameOwnerRule } from '../src/registry-client/bus.js';
import { CallChannel } from '../src/registry-client/dbus-channel.js';
import { MACHINE1_NAME, MACHINE1_SIGNAL_RULES, Machine1Client } from '../src/registry-client/machine1.js';
import { FakeMachinedHandle } from './support/fake.js';
import { fakeMachine } from './support/fake-machined.js';

/** The double with two machines, a connection of each kind; all closed when the test ends. */
async function setup(
  t: ExecutionContext,
): Promise<{ fake: FakeMachinedHandle; direct: BusConnection; generic: BusConnection }> {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed([
    fakeMachine('alpha', process.pid, {
      addresses: [
        [2, [192, 0, 2, 10]],
        [10, [0xfd, 0x42, ...Array<number>(13).fill(0), 0x10]],
      ],
      netif: [3, 7],
      id: '0123456789abcdef0123456789abcdef',
      timestamp: '1700000000000000',
    }),
    fakeMachine('bravo-two', process.pid, { addresses: 'NoPrivateNetworking' }),
  ]);
  const direct = await BusConnection.open(fake.busAddress);
  t.teardown(() => direct.close());
  const generic = await BusConnection.open(fake.busAddress, { directCalls: false });
  t.teardown(() => generic.close());
  return { fake, direct, generic };
}

function channelOf(conn: BusConnection): CallChannel {
  const channel: unknown = Reflect.get(conn, 'channel');
  if (!(channel instanceof CallChannel)) throw new Error('no lean connection');
  return channel;
}

function socketOf(channel: CallChannel): Socket {
  return Reflect.get(channel, 'socket') as Socket;
}

/**
 * A unix socket that accepts connections and answers the first bytes of each with `reply`, or
 * never answers at all; closed when the test ends.
 */
async function rogueBus(t: ExecutionContext, reply?: string): Promise<string> {
  const dir = await mkdtemp(join(tmpdir(), 'mmd-rogue-bus-'));
  const path = join(dir, 'socket');
  const sockets = new Set<Socket>();
  const server = createServer((socket) => {
    sockets.add(socket);
    socket.on('close', () => sockets.delete(socket));
    socket.on('error', () => socket.destroy()); // the client giving up resets the connection
    if (reply !== undefined) socket.once('data', () => socket.write(reply));
  });
  server.listen(path);
  await once(server, 'listening');
  t.teardown(async () => {
    for (const socket of sockets) socket.destroy();
    server.close();
    await rm(dir, { recursive: true, force: true });
  });
  return path;
}

/**
 * An address whose two connections go to different servers: dbus-next reads `socket=` before
 * `path=`, our call connection only `path=` (and `abstract=`).
 */
function splitAddress(leanPath: string, dbusNextPath: string): string {
  return `unix:path=${leanPath},socket=${dbusNextPath}`;
}

test('[test double] the registry calls take the lean connection and return what dbus-next returns', async (t) => {
  const { direct, generic } = await setup(t);
  t.true(direct.directCalls);
  t.false(generic.directCalls);
  t.is(generic.directCallsError, 'turned off');
  const a = new Machine1Client(direct, { noAutoStart: true });
  const b = new Machine1Client(generic, { noAutoStart: true });
  const before = { ...direct.callCounts };
  const listing = await a.listMachines();
  t.deepEqual(listing, await b.listMachines());
  t.is(listing.length, 2);
  for (const l of listing) {
    t.deepEqual(await a.machineProperties(l.path), await b.machineProperties(l.path), `${l.name} properties`);
    t.is(await a.getMachine(l.name), await b.getMachine(l.name));
  }
  t.deepEqual(await a.getMachineAddresses('alpha'), await b.getMachineAddresses('alpha'));
  t.deepEqual(
    (await a.getMachineAddresses('alpha')).map((x) => x.family),
    [2, 10],
  );
  const props = await a.machineProperties(listing.find((l) => l.name === 'alpha')?.path ?? '');
  t.deepEqual(props.NetworkInterfaces, [3, 7]);
  t.is(typeof props.Timestamp, 'bigint');
  t.true(Buffer.isBuffer(props.Id));
  t.is(direct.callCounts.generic, before.generic, 'nothing went through dbus-next');
  t.is(direct.callCounts.direct - before.direct, 2 + 2 * 2 + 2);
  t.is(generic.callCounts.direct, 0);
});

test('[test double] errors over the lean connection are the BusErrors dbus-next gives', async (t) => {
  const { fake, direct, generic } = await setup(t);
  const failure = (conn: BusConnection, name: string): Promise<Error | undefined> =>
    t.throwsAsync(new Machine1Client(conn, { noAutoStart: true }).getMachineAddresses(name));
  for (const [name, code] of [
    ['nope', 'NoSuchMachine'],
    ['bravo-two', 'NoPrivateNetworking'],
  ] as const) {
    const lean = await failure(direct, name);
    const dbusNext = await failure(generic, name);
    t.true(isBusError(lean, code), `lean: ${String(lean)}`);
    t.true(isBusError(dbusNext, code), `dbus-next: ${String(dbusNext)}`);
    t.is(lean?.message, dbusNext?.message, name);
  }
  await fake.killMachined('SIGTERM');
  for (const conn of [direct, generic]) {
    const gone = await t.throwsAsync(new Machine1Client(conn, { noAutoStart: true }).listMachines());
    t.true(isBusError(gone, 'ServiceUnknown'), String(gone));
  }
});

test('[test double] a call past its deadline fails with Timeout, and its late reply is dropped', async (t) => {
  const { fake, direct, generic } = await setup(t);
  const expected = await new Machine1Client(generic).getMachineAddresses('alpha');
  await fake.stall('GetMachineAddresses', 1_000);
  const m1 = new Machine1Client(direct, { noAutoStart: true, timeoutMs: 300 });
  const channel = channelOf(direct);
  // Nothing else comes on the lean connection meanwhile: its next bytes are the late reply.
  const lateReply = once(socketOf(channel), 'data');
  const started = Date.now();
  const err = await t.throwsAsync(m1.getMachineAddresses('alpha'));
  t.true(isBusError(err, 'Timeout'), String(err));
  t.true(Date.now() - started < 1_000, 'the deadline fired, not the stall');
  t.is(channel.waiting, 0, 'the abandoned call is no longer waited for');
  await lateReply;
  t.is(channel.waiting, 0);
  t.false(direct.closed, 'a reply nobody waits for does not end the connection');
  await fake.stall('GetMachineAddresses', 0);
  t.deepEqual(await m1.getMachineAddresses('alpha'), expected, 'the next call gets its own answer');
});

test('[test double] the lean connection ending ends the BusConnection: pending calls fail at once, onClose fires', async (t) => {
  const { fake, direct } = await setup(t);
  await fake.hang(true);
  const closed = new Promise<string>((resolve) => direct.onClose(resolve));
  const pending = new Machine1Client(direct, { noAutoStart: true, timeoutMs: 30_000 }).getMachineAddresses(
    'alpha',
  );
  socketOf(channelOf(direct)).destroy();
  const err = await t.throwsAsync(pending);
  t.true(isBusError(err, 'Disconnected'), String(err));
  t.regex(await closed, /call connection/);
  t.true(direct.closed);
  await fake.hang(false);
});

test('[test double] match rules go over the connection that receives signals', async (t) => {
  const { fake, direct } = await setup(t);
  const seen = new Promise<string>((resolve) => {
    direct.onSignal((s) => {
      if (s.member === 'MachineNew') resolve(String(s.body[0]));
    });
  });
  const generic0 = direct.callCounts.generic;
  for (const rule of MACHINE1_SIGNAL_RULES) await direct.addMatch(rule);
  t.true(direct.callCounts.generic > generic0, 'AddMatch went through dbus-next');
  await fake.register('charlie');
  t.is(await seen, 'charlie');
});

test('[test double] GetNameOwner goes over the connection that receives NameOwnerChanged, so its answer is never older than a signal', async (t) => {
  const fake = await FakeMachinedHandle.start({ running: false });
  t.teardown(() => fake.stop());
  const conn = await BusConnection.open(fake.busAddress);
  t.teardown(() => conn.close());
  t.true(conn.directCalls);
  await conn.addMatch(nameOwnerRule(MACHINE1_NAME));
  const events: string[] = [];
  const appeared = new Promise<string>((resolve) => {
    conn.onSignal((s) => {
      const owner = s.body[2];
      if (s.member !== 'NameOwnerChanged' || typeof owner !== 'string' || owner === '') return;
      events.push(`signal ${owner}`);
      resolve(owner);
    });
  });
  const before = { ...conn.callCounts };
  // The lean connection's replies held back, as a busy event loop may read one socket before the other.
  const lean = socketOf(channelOf(conn));
  lean.pause();
  const answered = conn.getNameOwner(MACHINE1_NAME).then((owner) => {
    events.push(`answer ${owner ?? 'none'}`);
  });
  await fake.startMachined();
  const owner = await appeared;
  lean.resume();
  await answered;
  t.true(
    events.at(-1) === `signal ${owner}` || events.at(-1) === `answer ${owner}`,
    `the last word is the current owner ${owner}: ${events.join(', ')}`,
  );
  t.deepEqual(conn.callCounts, { direct: before.direct, generic: before.generic + 1 }, 'through dbus-next');
});

test("[test double] an int32 argument right at the end of the writer's first buffer is sent (KillMachine, Machine.Kill)", async (t) => {
  const { direct } = await setup(t);
  const m1 = new Machine1Client(direct, { noAutoStart: true });
  const before = direct.callCounts.direct;
  for (let length = 1; length <= 80; length++) {
    const name = 'n'.repeat(length);
    const kill = await t.throwsAsync(m1.killMachine(name, 'all', 9));
    t.true(isBusError(kill), `KillMachine ${length}: ${String(kill)}`);
    const machineKill = await t.throwsAsync(
      m1.machineKill(`/org/freedesktop/machine1/machine/${name}`, 'leader', 15),
    );
    t.true(isBusError(machineKill), `Machine.Kill ${length}: ${String(machineKill)}`);
  }
  t.is(direct.callCounts.direct - before, 160, 'all over the lean connection');
  t.false(direct.closed);
});

test('[test double] a call the codec cannot write is a rejected call, not a throw, and the connection goes on', async (t) => {
  const { direct } = await setup(t);
  const channel = channelOf(direct);
  const call = {
    destination: MACHINE1_NAME,
    path: '/org/freedesktop/machine1',
    interface: 'org.freedesktop.machine1.Manager',
    member: 'GetMachine',
    noAutoStart: true,
  };
  let sent: ReturnType<CallChannel['send']> | undefined;
  t.notThrows(() => {
    sent = channel.send({ ...call, signature: 't', body: [1n] });
  });
  await t.throwsAsync(sent?.reply ?? Promise.resolve(), { message: /cannot write/ });
  t.is(channel.waiting, 0);
  const reply = await channel.call({ ...call, signature: 's', body: ['alpha'] });
  t.is(reply.errorName, '');
});

test('[test double] a NUL in a string or a malformed object path is refused here, not sent for the bus to drop us', async (t) => {
  const { direct, generic } = await setup(t);
  for (const conn of [direct, generic]) {
    const which = conn === direct ? 'lean' : 'dbus-next';
    const m1 = new Machine1Client(conn, { noAutoStart: true });
    t.true(isBusError(await t.throwsAsync(m1.getMachine('al\0pha'))), `${which}: NUL`);
    t.true(isBusError(await t.throwsAsync(m1.machineProperties('not a path'))), `${which}: header path`);
    const argument = await t.throwsAsync(
      conn.call({
        destination: DBUS_NAME,
        path: '/org/freedesktop/DBus',
        interface: DBUS_NAME,
        member: 'GetConnectionUnixUser',
        signature: 'o',
        body: ['/not/a/path/'],
      }),
    );
    t.true(isBusError(argument, 'InvalidArgs'), `${which}: object path argument: ${String(argument)}`);
    // nested: only dbus-next takes containers and variants
    for (const [signature, body] of [
      ['ao', [['/fine', '/not/a/path/']]],
      ['a{sv}', [{ Path: new Variant('o', '/not/a/path/') }]],
    ] as const) {
      const nested = await t.throwsAsync(
        conn.call({
          destination: DBUS_NAME,
          path: '/org/freedesktop/DBus',
          interface: DBUS_NAME,
          member: 'GetConnectionUnixUser',
          signature,
          body: [...body],
        }),
      );
      t.true(
        isBusError(nested, 'InvalidArgs'),
        `${which}: nested object path (${signature}): ${String(nested)}`,
      );
    }
    t.false(conn.closed, `${which}: still connected`);
    t.is(await m1.getMachine('alpha'), '/org/freedesktop/machine1/machine/alpha', which);
  }
  t.is(direct.callCounts.direct, 1, 'only the last call went over the lean connection');
});

test('opening gives both connections one deadline: a bus that never answers fails the open in about that time', async (t) => {
  const silent = await rogueBus(t);
  const started = Date.now();
  const err = await t.throwsAsync(BusConnection.open(`unix:path=${silent}`, { timeoutMs: 1_000 }));
  const elapsed = Date.now() - started;
  t.true(isBusError(err, 'Disconnected'), String(err));
  t.true(elapsed >= 950 && elapsed < 1_700, `${elapsed} ms for a deadline of 1,000 ms`);
});

test('[test double] a call connection that times out fails the open; it does not fall back to dbus-next', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const silent = await rogueBus(t);
  const started = Date.now();
  const err = await t.throwsAsync(
    BusConnection.open(splitAddress(silent, fake.bus.socketPath), { timeoutMs: 1_000 }),
  );
  t.true(isBusError(err, 'Disconnected'), String(err));
  t.true(Date.now() - started < 1_700);
});

test('[test double] a bus the lean path cannot use (authentication refused, no unix socket) is still a bus: every call through dbus-next', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed([fakeMachine('alpha', process.pid)]);
  const refusing = await rogueBus(t, 'REJECTED EXTERNAL\r\n');
  for (const [address, why] of [
    [splitAddress(refusing, fake.bus.socketPath), /authentication refused/],
    [`unix:socket=${fake.bus.socketPath}`, /no unix socket/],
  ] as const) {
    const conn = await BusConnection.open(address, { timeoutMs: 5_000 });
    t.teardown(() => conn.close());
    t.false(conn.directCalls, address);
    t.regex(conn.directCallsError ?? '', why);
    t.is(await new Machine1Client(conn).getMachine('alpha'), '/org/freedesktop/machine1/machine/alpha');
    t.deepEqual(conn.callCounts, { direct: 0, generic: 1 });
  }
});

test('[test double] the lean connection answers calls addressed to it: Peer.Ping, GetMachineId, Introspect, UnknownMethod at once', async (t) => {
  const { direct, generic } = await setup(t);
  const lean = channelOf(direct).uniqueName;
  t.regex(lean, /^:\d+\.\d+$/);
  t.not(lean, direct.uniqueName, 'the lean connection has a name of its own');
  const call = (iface: string, member: string): Promise<unknown[]> =>
    generic.call({ destination: lean, path: '/', interface: iface, member, timeoutMs: 2_000 });
  t.deepEqual(await call('org.freedesktop.DBus.Peer', 'Ping'), []);
  const [id] = await call('org.freedesktop.DBus.Peer', 'GetMachineId');
  t.regex(String(id), /^[0-9a-f]{32}$/);
  const [xml] = await call('org.freedesktop.DBus.Introspectable', 'Introspect');
  t.regex(String(xml), /<interface name="org.freedesktop.DBus.Peer">/);
  const started = Date.now();
  const err = await t.throwsAsync(call('org.freedesktop.machine1.Manager', 'ListMachines'));
  t.true(isBusError(err, 'UnknownMethod'), String(err));
  t.true(Date.now() - started < 1_000, 'answered, not timed out');
  // the connection still makes its own calls afterwards
  t.is((await new Machine1Client(direct, { noAutoStart: true }).listMachines()).length, 2);
});
