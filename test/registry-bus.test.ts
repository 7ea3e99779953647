/**
 * BusConnection's two paths over a real dbus-daemon, against FakeMachined (the TEST DOUBLE of
 * machined): calls with string and integer arguments take the lean connection (our codec,
 * src/registry-client/dbus-wire.ts) and give exactly what dbus-next gives; its errors, deadlines and
 * end behave as dbus-next's path does. The real machined 252 is followed over the same path by
 * test/registry-machined.test.ts and the *-machined-live tests.
 */
import test, { type ExecutionContext } from 'ava';
import { BusConnection, isBusError } from '../src/registry-client/bus.js';
import { CallChannel } from '../src/registry-client/dbus-channel.js';
import { MACHINE1_SIGNAL_RULES, Machine1Client } from '../src/registry-client/machine1.js';
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
  for (const conn of [direct, generic]) {
    const m1 = new Machine1Client(conn, { noAutoStart: true });
    const which = conn === direct ? 'lean' : 'dbus-next';
    const noSuch = await t.throwsAsync(m1.getMachineAddresses('nope'));
    t.true(isBusError(noSuch, 'NoSuchMachine'), `${which}: ${String(noSuch)}`);
    const noNet = await t.throwsAsync(m1.getMachineAddresses('bravo-two'));
    t.true(isBusError(noNet, 'NoPrivateNetworking'), `${which}: ${String(noNet)}`);
    t.is(
      noNet?.message,
      (await t.throwsAsync(new Machine1Client(generic).getMachineAddresses('bravo-two')))?.message,
    );
  }
  await fake.killMachined('SIGTERM');
  for (const conn of [direct, generic]) {
    const gone = await t.throwsAsync(new Machine1Client(conn, { noAutoStart: true }).listMachines());
    t.true(isBusError(gone, 'ServiceUnknown'), String(gone));
  }
});

test('[test double] a call past its deadline fails with Timeout, and its late reply is dropped', async (t) => {
  const { fake, direct } = await setup(t);
  await fake.hang(true);
  const m1 = new Machine1Client(direct, { noAutoStart: true, timeoutMs: 300 });
  const started = Date.now();
  const err = await t.throwsAsync(m1.getMachineAddresses('alpha'));
  t.true(isBusError(err, 'Timeout'), String(err));
  t.true(Date.now() - started < 2_000);
  t.is(channelOf(direct).waiting, 0, 'the abandoned call is no longer waited for');
  await fake.hang(false);
  t.is((await m1.getMachineAddresses('alpha')).length, 2, 'the connection still works');
});

test('[test double] the lean connection ending ends the BusConnection: pending calls fail at once, onClose fires', async (t) => {
  const { fake, direct } = await setup(t);
  await fake.hang(true);
  const closed = new Promise<string>((resolve) => direct.onClose(resolve));
  const pending = new Machine1Client(direct, { noAutoStart: true, timeoutMs: 30_000 }).getMachineAddresses(
    'alpha',
  );
  const socket: unknown = Reflect.get(channelOf(direct), 'socket');
  (socket as { destroy(): void }).destroy();
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
