/**
 * Registry sync logic against FakeMachined, a TEST DOUBLE of machined that can be stalled, hung and
 * killed at will (the real machined cannot). Behaviour against the real machined 252 is pinned in
 * registry-machined.test.ts.
 */
import test, { type ExecutionContext } from 'ava';
import { execFileSync, spawn } from 'node:child_process';
import { createHash } from 'node:crypto';
import { readFileSync, readlinkSync } from 'node:fs';
import { once } from 'node:events';
import { memoryLogger } from '../src/log.js';
import { BusConnection, isBusError } from '../src/registry-client/bus.js';
import { procHost, type AccountsRead, type HostReader, type MapRead } from '../src/registry-client/host.js';
import { DEFAULTS, Registry, type RegistryOptions } from '../src/registry-client/sync.js';
import type { RegistryView } from '../src/registry-client/view.js';
import { PrivateBus } from './support/dbus.js';
import { EventCount } from './support/event-count.js';
import { fakeMachine, type FakeMachine } from './support/fake-machined.js';
import { FakeMachinedHandle } from './support/fake.js';

/** Resolves when `pred(view)` holds (checked now and after every change). */
function until(view: RegistryView, pred: (v: RegistryView) => boolean, timeoutMs = 10_000): Promise<void> {
  if (pred(view)) return Promise.resolve();
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => {
      off();
      reject(
        new Error(
          `view condition not met: ${JSON.stringify(view.all().map((m) => [m.name, m.addresses.map((a) => a.address)]))}`,
        ),
      );
    }, timeoutMs);
    const off = view.onChange(() => {
      if (!pred(view)) return;
      clearTimeout(timer);
      off();
      resolve();
    });
  });
}

const names = (v: RegistryView): string[] =>
  v
    .all()
    .map((m) => m.name)
    .sort();
const addressesOf = (v: RegistryView, name: string): string[] | undefined =>
  v.byName(name)?.addresses.map((a) => a.address);

async function poll(pred: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!pred()) {
    if (Date.now() > deadline) throw new Error(`condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
}

/** Time from the first to the last of these performance.now() stamps, in ms. */
const spanOf = (times: readonly number[]): number => (times.at(-1) ?? 0) - (times[0] ?? 0);

/** The most stamps that fall within `windowMs` of one of them: how bursty the events were. */
const mostWithin = (times: readonly number[], windowMs: number): number =>
  Math.max(...times.map((at) => times.filter((b) => b >= at && b < at + windowMs).length));

function registry(busAddress: string, extra: Partial<RegistryOptions> = {}): Registry {
  return new Registry({ busAddress, logger: memoryLogger(), refreshIntervalMs: 60_000, ...extra });
}

test('[test double] machines registered before start are all in the view after start()', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('a');
  await fake.register('b');
  await fake.setAddresses('a', ['192.0.2.10', 'fd00::10']);
  const r = registry(fake.busAddress);
  t.teardown(() => r.stop());
  await r.start();
  t.deepEqual(names(r.view), ['a', 'b']);
  t.deepEqual(addressesOf(r.view, 'a'), ['192.0.2.10', 'fd00::10']);
  t.truthy(r.status().machinedOwner);
});

test('[test double] a registration while ListMachines is on its way is not lost', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('early');
  // ListMachines' answer (without "late") is computed at once and delivered 400 ms later
  await fake.stall('ListMachines', 400);
  const r = registry(fake.busAddress);
  t.teardown(() => r.stop());
  const listing = await fake.received('ListMachines');
  const started = r.start();
  await listing.arrived; // machined has answered ListMachines (without "late"); the answer is on its way
  await fake.register('late');
  await started;
  await until(r.view, (v) => names(v).includes('late'));
  t.deepEqual(names(r.view), ['early', 'late']);
});

test('[test double] a machine removed while its fetch is in flight never shows up', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const r = registry(fake.busAddress);
  t.teardown(() => r.stop());
  await r.start();
  await fake.stall('GetAll', 300); // property fetches are slow
  const seen: string[] = [];
  r.view.onChange((c) => c.kind !== 'reset' && seen.push(`${c.kind}:${c.machine.name}`));
  await fake.register('ghost');
  await fake.unregister('ghost');
  await fake.register('witness'); // its fetch also takes 300 ms and completes after ghost's
  await until(r.view, (v) => names(v).includes('witness'));
  t.false(seen.includes('added:ghost'), seen.join(' '));
  t.deepEqual(names(r.view), ['witness']);
});

test('[test double] addresses that appear after registration are picked up within the settle window', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const r = registry(fake.busAddress, { settleDelaysMs: [50, 100, 200, 400] });
  t.teardown(() => r.stop());
  await r.start();
  await fake.register('slow');
  await until(r.view, (v) => v.byName('slow') !== undefined);
  t.deepEqual(addressesOf(r.view, 'slow'), []);
  await fake.setAddresses('slow', ['192.0.2.20']); // the network came up after registration
  await until(r.view, (v) => addressesOf(v, 'slow')?.length === 1, 2_000);
  t.deepEqual(addressesOf(r.view, 'slow'), ['192.0.2.20']);
});

test('[test double] a routable address that comes after the link-local one is found by the settle re-reads, not left to the refresh', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  // the refresh is a minute away: only the settle schedule can find the second address in time
  const r = registry(fake.busAddress, { settleDelaysMs: [50, 100, 200, 400, 800] });
  t.teardown(() => r.stop());
  await r.start();
  await fake.register('staged');
  await fake.setAddresses('staged', ['fe80::1']); // the link is up: only its link-local address
  await until(r.view, (v) => addressesOf(v, 'staged')?.length === 1, 2_000);
  await fake.setAddresses('staged', ['192.0.2.60', 'fe80::1']); // then DHCP answers
  await until(r.view, (v) => addressesOf(v, 'staged')?.[0] === '192.0.2.60', 3_000);
  t.deepEqual(addressesOf(r.view, 'staged'), ['192.0.2.60', 'fe80::1']);
});

test('[test double] a machine registered while running is fetched through the object path of its signal, without GetMachine', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const r = registry(fake.busAddress);
  t.teardown(() => r.stop());
  await r.start();
  await fake.stall('GetMachine', 20_000); // a GetMachine round trip would outlast the wait below
  await fake.register('signalled');
  await until(r.view, (v) => v.byName('signalled') !== undefined, 4_000);
  t.pass();
});

// The double's addresses change without any change in a network namespace: every round asks.
test('[test double] address changes after the settle window show up within the refresh interval', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('m');
  await fake.setAddresses('m', ['192.0.2.30']);
  const r = registry(fake.busAddress, { refreshIntervalMs: 200, settleDelaysMs: [], fullRefreshRounds: 1 });
  t.teardown(() => r.stop());
  await r.start();
  await fake.setAddresses('m', ['192.0.2.31', 'fd00::31']);
  const changedAt = Date.now();
  await until(r.view, (v) => addressesOf(v, 'm')?.[0] === '192.0.2.31', 2_000);
  t.true(Date.now() - changedAt < 1_000, 'within one refresh interval plus one round');
  t.deepEqual(addressesOf(r.view, 'm'), ['192.0.2.31', 'fd00::31']);
});

// serial: it sets the clock of this whole worker back, which no test running beside it may see
test.serial(
  '[test double] the refresh and the leader check go on when the system clock is set back an hour',
  async (t) => {
    const fake = await FakeMachinedHandle.start();
    t.teardown(() => fake.stop());
    const leader = spawn('sleep', ['60'], { stdio: 'ignore' });
    t.teardown(() => leader.kill('SIGKILL'));
    await fake.register('m', { leader: leader.pid ?? 0 });
    await fake.setAddresses('m', ['192.0.2.30']);
    const r = registry(fake.busAddress, {
      refreshIntervalMs: 100,
      leaderCheckIntervalMs: 100,
      settleDelaysMs: [],
      fullRefreshRounds: 1,
    });
    t.teardown(() => r.stop());
    await r.start();
    // a few rounds of each, so that both schedules hold times taken before the clock is set back
    await new Promise((resolve) => setTimeout(resolve, 400));
    const realNow = Date.now;
    Date.now = () => realNow() - 3_600_000;
    t.teardown(() => {
      Date.now = realNow;
    });
    await fake.setAddresses('m', ['192.0.2.31']);
    await until(r.view, (v) => addressesOf(v, 'm')?.[0] === '192.0.2.31', 3_000);
    const exited = once(leader, 'exit');
    leader.kill('SIGKILL');
    await exited;
    await until(r.view, (v) => v.byName('m')?.leaderAlive === false, 3_000);
    t.pass();
  },
);

test('[test double] a refresh round reaches every machine within one interval, spread over it', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const names = ['r1', 'r2', 'r3', 'r4', 'r5'];
  for (const n of names) await fake.register(n);
  const r = registry(fake.busAddress, { refreshIntervalMs: 400, settleDelaysMs: [], fullRefreshRounds: 1 });
  t.teardown(() => r.stop());
  await r.start();
  for (const [i, n] of names.entries()) await fake.setAddresses(n, [`192.0.2.${70 + i}`]);
  await until(r.view, (v) => names.every((n) => addressesOf(v, n)?.length === 1), 2_000);
  t.deepEqual(
    names.map((n) => addressesOf(r.view, n)?.[0]),
    ['192.0.2.70', '192.0.2.71', '192.0.2.72', '192.0.2.73', '192.0.2.74'],
  );
});

test('[test double] machined is asked for a container whose network namespace changed, and for every container at least once in N rounds', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  // Two leaders that need not exist: the digest stands in for their namespaces (the double's
  // addresses come from no namespace).
  const quiet = 2 ** 22 + 11;
  const busy = 2 ** 22 + 12;
  await fake.register('quiet', { leader: quiet });
  await fake.register('busy', { leader: busy });
  await fake.setAddresses('quiet', ['192.0.2.40']);
  await fake.setAddresses('busy', ['192.0.2.50']);
  const digests = new Map([
    [quiet, 'A'],
    [busy, 'B'],
  ]);
  const host: HostReader = {
    ...procHost,
    exists: () => true,
    startTime: () => Promise.resolve(1),
    readIdMap: () => Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 0, count: 2 ** 32 - 1 }] }),
    networkState: (pid) => digests.get(pid),
  };
  const r = registry(fake.busAddress, {
    host,
    refreshIntervalMs: 150,
    settleDelaysMs: [],
    // quiet's turn comes in round 24, 3.6 s in: well after the rounds checked below, also on a
    // loaded machine (with 12 it came during them once in the full suite)
    fullRefreshRounds: 24,
  });
  t.teardown(() => r.stop());
  await r.start();
  t.deepEqual(addressesOf(r.view, 'busy'), ['192.0.2.50']);
  const calls = r.status().addressCalls;
  t.is(calls, 2, 'the first sync asks for both');
  await fake.setAddresses('quiet', ['192.0.2.41']);
  await fake.setAddresses('busy', ['192.0.2.51']);
  digests.set(busy, 'B2'); // only busy's namespace changed
  await until(r.view, (v) => addressesOf(v, 'busy')?.[0] === '192.0.2.51', 1_000);
  // two more rounds: quiet keeps what machined said before, as its namespace did not change
  const kept = r.status().addressesKept;
  await poll(() => r.status().addressesKept >= kept + 4, 1_500);
  t.deepEqual(addressesOf(r.view, 'quiet'), ['192.0.2.40']);
  t.is(r.status().addressCalls, calls + 1, 'one call: busy, once, for its changed namespace');
  // within 24 rounds every container is asked, changed or not
  await until(r.view, (v) => addressesOf(v, 'quiet')?.[0] === '192.0.2.41', 8_000);
  t.true(r.status().addressCalls >= calls + 2, 'the full round asked for quiet');
});

test('[test double] the asks of unchanged containers are staggered: each round asks for 1/N of them, and each is asked once in N rounds', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const names = ['s0', 's1', 's2', 's3', 's4', 's5'];
  await fake.seed(names.map((n) => fakeMachine(n, process.pid)));
  const host: HostReader = { ...procHost, networkState: () => 'unchanged' };
  const r = registry(fake.busAddress, {
    host,
    refreshIntervalMs: 300,
    settleDelaysMs: [],
    fullRefreshRounds: 3,
    // one refresh per wake (a batch of 4 would mix asks and keeps within one sample below)
    pollStepMs: 50,
  });
  t.teardown(() => r.stop());
  await r.start();
  const { addressCalls: calls0, addressesKept: kept0 } = r.status();
  // refreshes come 50 ms apart: sampled every 2 ms, each is seen on its own
  const sequence: string[] = [];
  let seen = { calls: calls0, kept: kept0 };
  while (sequence.length < 18) {
    await new Promise((resolve) => setTimeout(resolve, 2));
    const s = r.status();
    for (let k = seen.calls; k < s.addressCalls; k++) sequence.push('ask');
    for (let k = seen.kept; k < s.addressesKept; k++) sequence.push('kept');
    seen = { calls: s.addressCalls, kept: s.addressesKept };
  }
  const rounds = [0, 1, 2].map((k) => sequence.slice(k * 6, k * 6 + 6).filter((x) => x === 'ask').length);
  t.deepEqual(rounds, [2, 2, 2], sequence.join(' '));
});

test('[test double] a container is asked once in N rounds even while machines before it come and go', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  // x registered last, after ten others: from the first sync, so without a MachineNew rank
  const others = Array.from({ length: 10 }, (_, i) => `a${i}`);
  const x = fake.pid;
  if (x === undefined) return t.fail('FakeMachined has no pid');
  await fake.seed([
    ...others.map((n, i) => fakeMachine(n, process.pid, { timestamp: String(i + 1) })),
    fakeMachine('x', x, { timestamp: '100' }),
  ]);
  await fake.setAddresses('x', ['192.0.2.70']);
  // After each refresh of x, the last one in its round, one machine before it goes away: x moves
  // up one place in the next round's list as the round number goes up by one.
  let refreshesOfX = 0;
  let ended = false;
  const removals: Promise<void>[] = [];
  const gone = [...others];
  const host: HostReader = {
    ...procHost,
    networkState: (pid) => {
      if (pid === x) {
        refreshesOfX++;
        const name = gone.shift();
        // (a round may still run while the test ends: no call then)
        if (name !== undefined && !ended) {
          const removal = fake.unregister(name);
          removal.catch(() => undefined); // judged below; unhandled if the test fails before that
          removals.push(removal);
        }
      }
      return 'unchanged';
    },
  };
  const r = registry(fake.busAddress, {
    host,
    refreshIntervalMs: 200,
    settleDelaysMs: [],
    fullRefreshRounds: 3,
  });
  t.teardown(() => r.stop());
  await r.start();
  t.deepEqual(addressesOf(r.view, 'x'), ['192.0.2.70']);
  const synced = refreshesOfX; // the first sync reads the digest too
  // a change the digest cannot see: only x's turn to be asked finds it
  await fake.setAddresses('x', ['192.0.2.71']);
  const rounds = (): number => refreshesOfX - synced;
  await poll(() => addressesOf(r.view, 'x')?.[0] === '192.0.2.71' || rounds() >= 8, 10_000);
  t.deepEqual(addressesOf(r.view, 'x'), ['192.0.2.71'], `not asked in ${rounds()} rounds`);
  t.true(rounds() <= 3, `asked within three rounds (in round ${rounds()})`);
  ended = true;
  await r.stop();
  // every removal done before FakeMachined stops (teardown), and none failed
  const failed = (await Promise.allSettled(removals)).filter((p) => p.status === 'rejected');
  t.deepEqual(failed, []);
});

test('[test double] only full rounds reconcile with ListMachines, and they repair a lost MachineNew', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('m');
  const listings: number[] = [];
  const watch = await BusConnection.open(fake.busAddress);
  t.teardown(() => watch.close());
  await watch.addMatch(`type='signal',interface='org.mymachinesd.Test.FakeMachined',member='Received'`);
  watch.onSignal((s) => {
    if (s.member === 'Received' && s.body[0] === 'ListMachines') listings.push(performance.now());
  });
  await fake.watch('ListMachines');
  const r = registry(fake.busAddress, { refreshIntervalMs: 100, settleDelaysMs: [], fullRefreshRounds: 4 });
  t.teardown(() => r.stop());
  await r.start();
  const began = performance.now();
  const first = listings.length; // the first sync's
  await fake.seedQuietly([fakeMachine('lost', process.pid)]); // registered without MachineNew
  await until(r.view, (v) => v.byName('lost') !== undefined, 3_000);
  await new Promise((resolve) => setTimeout(resolve, 1_200 - (performance.now() - began)));
  const rounds = (performance.now() - began) / 100;
  const reconciled = listings.length - first;
  // one in four rounds (the old code listed in every round: about 12 here)
  t.true(
    reconciled >= 1 && reconciled <= Math.ceil(rounds / 4) + 1,
    `${reconciled} ListMachines in ${rounds.toFixed(1)} rounds`,
  );
});

test('[test double] without a readable network namespace every round asks machined', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('m');
  await fake.setAddresses('m', ['192.0.2.60']);
  const host: HostReader = { ...procHost, networkState: () => undefined };
  const r = registry(fake.busAddress, {
    host,
    refreshIntervalMs: 150,
    settleDelaysMs: [],
    fullRefreshRounds: 1_000,
  });
  t.teardown(() => r.stop());
  await r.start();
  await fake.setAddresses('m', ['192.0.2.61']);
  await until(r.view, (v) => addressesOf(v, 'm')?.[0] === '192.0.2.61', 1_000);
  t.is(r.status().addressesKept, 0);
});

test('procHost: the network namespace digest is stable while nothing changes, and changes with every address and link change', async (t) => {
  // a network namespace of this test's own: addresses are never put on the host's links
  const child = spawn('unshare', ['-n', 'sleep', '60'], { stdio: 'ignore' });
  t.teardown(() => child.kill('SIGKILL'));
  const pid = child.pid ?? 0;
  const ours = readlinkSync('/proc/self/ns/net');
  const deadline = Date.now() + 5_000;
  while (readlinkSync(`/proc/${pid}/ns/net`) === ours) {
    if (Date.now() > deadline) throw new Error('unshare -n did not take effect');
    await new Promise((resolve) => setTimeout(resolve, 10));
  }
  const digest = (): string | undefined => procHost.networkState?.(pid);
  const inside = (...args: string[]): void => {
    execFileSync('nsenter', ['-t', String(pid), '-n', 'ip', ...args]);
  };
  const seen = [digest()];
  t.truthy(seen[0]);
  // What it hashes, byte for byte: the namespace, then each file after its name (read as bytes).
  const file = (name: string): Buffer => readFileSync(`/proc/${pid}/net/${name}`);
  const expected = createHash('sha256')
    .update(readlinkSync(`/proc/${pid}/ns/net`))
    .update('\0if_inet6\0')
    .update(file('if_inet6'))
    .update('\0fib_trie\0')
    .update(file('fib_trie'))
    .digest('base64');
  t.is(seen[0], expected, 'the namespace, if_inet6 and fib_trie');
  t.not(seen[0], procHost.networkState?.(process.pid), 'another namespace, another digest');
  t.is(digest(), seen[0], 'stable');
  inside('link', 'add', 't0', 'type', 'ifb');
  t.is(digest(), seen[0], 'a link without addresses changes nothing machined would answer');
  for (const change of [
    ['addr', 'add', '198.51.100.9/24', 'dev', 't0'], // IPv4 on a link that is down
    ['link', 'set', 't0', 'up'],
    ['-6', 'addr', 'add', 'fd42::9/64', 'dev', 't0', 'nodad'],
    ['addr', 'add', '198.51.100.10/24', 'dev', 't0'], // a second IPv4 address on the same subnet
    ['addr', 'del', '198.51.100.9/24', 'dev', 't0'],
  ]) {
    inside(...change);
    const now = digest();
    t.false(seen.includes(now), `ip ${change.join(' ')} changes the digest`);
    t.is(digest(), now, 'and it is stable again');
    seen.push(now);
  }
  t.is(procHost.networkState?.(2 ** 22 + 1), undefined, 'no such process');
});

test('[test double] no private networking is recorded, not an error', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('shared');
  await fake.setNoPrivateNetworking('shared');
  const r = registry(fake.busAddress);
  t.teardown(() => r.stop());
  await r.start();
  t.is(r.view.byName('shared')?.addressError, 'NoPrivateNetworking');
  t.deepEqual(addressesOf(r.view, 'shared'), []);
});

test('[test double] a machined that never appears leaves an empty view, and is picked up when it does', async (t) => {
  const fake = await FakeMachinedHandle.start({ running: false });
  t.teardown(() => fake.stop());
  const r = registry(fake.busAddress);
  t.teardown(() => r.stop());
  await r.start();
  t.deepEqual(names(r.view), []);
  t.is(r.status().machinedOwner, undefined);
  t.true(r.status().busConnected);
  await fake.startMachined();
  await fake.register('later');
  await until(r.view, (v) => names(v).includes('later'));
  t.pass();
});

test('no bus at all: start() resolves with an empty view, and the registry connects when the bus comes', async (t) => {
  const bus = await PrivateBus.start();
  await bus.kill();
  const r = registry(bus.address, { reconnectMinMs: 50, reconnectMaxMs: 200 });
  t.teardown(() => r.stop());
  t.teardown(() => bus.stop());
  await r.start();
  t.deepEqual(names(r.view), []);
  t.false(r.status().busConnected);
  t.regex(r.status().lastError ?? '', /bus/);
  await bus.restart();
  const synced = new Promise<void>((resolve) => r.onSynced(resolve));
  await synced;
  t.true(r.status().busConnected);
});

test('[test double] a stalled machined times out calls; the last known view stays', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('known');
  await fake.setAddresses('known', ['192.0.2.40']);
  const logger = memoryLogger();
  const r = new Registry({ busAddress: fake.busAddress, logger, callTimeoutMs: 300, refreshIntervalMs: 100 });
  t.teardown(() => r.stop());
  await r.start();
  await fake.hang(true);
  const m1 = await fake.machine1();
  const err = await t.throwsAsync(m1.listMachines({ timeoutMs: 200 }));
  t.true(isBusError(err, 'Timeout'));
  // a refresh round against the machined that never answers runs into its deadline …
  await logger.waitFor(/refresh of known failed: .*no reply within 300 ms/);
  // … and what was known is still served
  t.deepEqual(addressesOf(r.view, 'known'), ['192.0.2.40']);
  await fake.hang(false);
  await fake.setAddresses('known', ['192.0.2.41']);
  await until(r.view, (v) => addressesOf(v, 'known')?.[0] === '192.0.2.41');
  t.pass();
});

test('[test double] when a leader dies the machine stays registered without addresses or maps', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const leader = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => leader.kill('SIGKILL'));
  await fake.register('mortal', { leader: leader.pid ?? 0 });
  await fake.setAddresses('mortal', ['192.0.2.50']);
  const r = registry(fake.busAddress, { leaderCheckIntervalMs: 50 });
  t.teardown(() => r.stop());
  await r.start();
  t.true(r.view.byName('mortal')?.leaderAlive);
  const exited = once(leader, 'exit');
  leader.kill('SIGKILL');
  await exited;
  await until(r.view, (v) => v.byName('mortal')?.leaderAlive === false);
  t.deepEqual(addressesOf(r.view, 'mortal'), []);
  t.is(r.view.byName('mortal')?.addressError, 'leader gone');
});

test('[test double] registration order is the order of MachineNew, even when the first machine is fetched last', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const other = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => other.kill('SIGKILL'));
  const slowLeader = process.pid;
  const range = [{ inner: 0, outer: 655360, count: 65536 }];
  const host: HostReader = {
    ...procHost,
    // the first machine's map takes longer to read than the second's: its record arrives last
    readIdMap: async (pid) => {
      if (pid === slowLeader) await new Promise((resolve) => setTimeout(resolve, 300));
      return { kind: 'ok', ranges: range };
    },
    readAccounts: () =>
      Promise.resolve({ kind: 'ok', accounts: [], source: 'leader-root', leaderRootProblem: undefined }),
  };
  const r = registry(fake.busAddress, { host, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  await fake.register('testct', { leader: slowLeader });
  await fake.register('twin', { leader: other.pid ?? 0 });
  await until(r.view, (v) => names(v).length === 2, 3_000);
  t.deepEqual(
    r.view.all().map((m) => m.name),
    ['testct', 'twin'],
  );
  t.is(r.view.ownerOfUid(656360)?.machine.name, 'testct');
});

test('[test double] a first sync orders machines by registration time, not by ListMachines order', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const machine = (name: string, timestamp: string): FakeMachine =>
    fakeMachine(name, process.pid, { timestamp });
  // listed (like machined's hashmap) in another order than they registered
  await fake.seed([machine('twin', '2000000'), machine('none', '0'), machine('testct', '1000000')]);
  const r = registry(fake.busAddress, { settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  t.deepEqual(
    r.view.all().map((m) => m.name),
    ['testct', 'twin', 'none'],
  );
});

test('[test double] the leader check reaches every machine, also those after the first few hundred', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const leader = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => leader.kill('SIGKILL'));
  const machine = (name: string, pid: number): FakeMachine => fakeMachine(name, pid, { timestamp: '0' });
  const many = Array.from({ length: 600 }, (_, i) => machine(`m${i}`, process.pid));
  await fake.seed([...many, machine('last', leader.pid ?? 0)]);
  const r = registry(fake.busAddress, { leaderCheckIntervalMs: 50, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  t.true(r.view.byName('last')?.leaderAlive);
  const exited = once(leader, 'exit');
  leader.kill('SIGKILL');
  await exited;
  await until(r.view, (v) => v.byName('last')?.leaderAlive === false);
  t.true(r.view.byName('m599')?.leaderAlive, 'the others are untouched');
});

test('[test double] the leader check checks at most leaderCheckRate leaders a second, a batch at a time, and says when that stretches its round', async (t) => {
  const fake = await startWithMachines(t, 40);
  const checks: number[] = [];
  const checked = new EventCount();
  const note = (): void => {
    checks.push(performance.now());
    checked.bump();
  };
  const host: HostReader = {
    ...procHost,
    exists: (pid) => {
      note();
      return procHost.exists?.(pid);
    },
    startTime: (pid) => {
      note();
      return procHost.startTime(pid);
    },
  };
  const logger = memoryLogger();
  // 40 leaders every 20 ms would be 2,000 checks a second in bursts of 40; the rate allows 100,
  // so a round takes 0.4 s: a batch of 5 every 50 ms (a step shorter than the default 200 ms, so
  // that a round has 8 batches)
  const r = new Registry({
    busAddress: fake.busAddress,
    logger,
    host,
    refreshIntervalMs: 60_000,
    leaderCheckIntervalMs: 20,
    leaderCheckRate: 100,
    pollStepMs: 50,
    settleDelaysMs: [],
  });
  t.teardown(() => r.stop());
  await r.start();
  const synced = checks.length;
  // 80 checks (two rounds) take 0.8 s at this rate; a loaded machine may take longer, so wait.
  await checked.reach(synced + 80);
  const seen = checks.slice(synced);
  t.true(seen.length >= 80, `the check runs (${seen.length} checks)`);
  const spanMs = spanOf(seen);
  t.true(
    seen.length <= (spanMs / 1000) * 100 + 10,
    `at most 100 a second (${seen.length} in ${spanMs.toFixed(0)} ms)`,
  );
  const burst = mostWithin(seen, 10);
  t.true(burst <= 10, `spread in batches of 5, not all 40 at once (${burst} within 10 ms)`);
  // The daemon starved for 300 ms in the middle of a round: its overdue batches do not come at once.
  await checked.reach(checks.length + 20);
  const starved = performance.now() + 300;
  while (performance.now() < starved); // a busy wait on purpose: nothing else may run
  const stalled = checks.length;
  await checked.reach(stalled + 20);
  const after = checks.slice(stalled, stalled + 20);
  const catchUp = mostWithin(after, 10);
  t.true(catchUp <= 10, `after a stall, batches of 5 at most twice as often (${catchUp} within 10 ms)`);
  await logger.waitFor(
    /leader check: 40 leaders at most 100 per second: a dead leader is noticed within 0\.4 s, not 0\.02 s/,
  );
  t.true(r.view.all().every((m) => m.leaderAlive));
});

test('[test double] a leader check that throws for one machine goes on with the others and in later rounds', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const leader = spawn('sleep', ['60'], { stdio: 'ignore' });
  t.teardown(() => leader.kill('SIGKILL'));
  await fake.seed([
    fakeMachine('odd', process.pid, { timestamp: '1' }),
    fakeMachine('mortal', leader.pid ?? 0, { timestamp: '2' }),
  ]);
  let throwing = false;
  const host: HostReader = {
    ...procHost,
    // a HostReader that throws (procHost answers undefined instead): every full check of 'odd'
    startTime: (pid) =>
      throwing && pid === process.pid ? Promise.reject(new Error('EIO')) : procHost.startTime(pid),
  };
  const r = registry(fake.busAddress, { host, leaderCheckIntervalMs: 20, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  throwing = true;
  const exited = once(leader, 'exit');
  leader.kill('SIGKILL');
  await exited;
  await until(r.view, (v) => v.byName('mortal')?.leaderAlive === false, 5_000);
  t.true(r.view.byName('odd')?.leaderAlive, 'a failed check is no verdict');
});

test('[test double] grouped: 40 containers whose /proc/PID/root is unreadable give three warnings in full per file and a count, not 80 lines', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed(
    Array.from({ length: 40 }, (_, i) => fakeMachine(`m${i}`, process.pid, { timestamp: String(i + 1) })),
  );
  const host: HostReader = {
    ...procHost,
    readIdMap: () => Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 655360, count: 65536 }] }),
    readAccounts: () =>
      Promise.resolve({
        kind: 'ok',
        accounts: [{ name: 'bob', id: 1000 }],
        source: 'root-directory',
        leaderRootProblem: "EACCES: reading another process's root needs CAP_SYS_PTRACE",
      }),
  };
  const logger = memoryLogger('debug');
  const r = registry(fake.busAddress, {
    host,
    logger,
    settleDelaysMs: [],
    groupedWarnings: { windowMs: 100 },
  });
  t.teardown(() => r.stop());
  await r.start();
  await logger.waitFor(
    /37 more machine\(s\) with the same problem: cannot read \/proc\/PID\/root\/etc\/passwd/,
    5_000,
  );
  await logger.waitFor(
    /37 more machine\(s\) with the same problem: cannot read \/proc\/PID\/root\/etc\/group/,
    5_000,
  );
  const warnings = logger.lines.filter((l) => l.startsWith('<4>') && /root/.test(l));
  t.is(warnings.length, 3 + 1 + 3 + 1, warnings.join('\n'));
  t.is(
    warnings.filter((l) => /machine m\d+: cannot read \/proc\/\d+\/root\/etc\/passwd \(EACCES/.test(l))
      .length,
    3,
  );
  await until(r.view, (v) => v.byName('m39')?.innerUsers !== undefined);
  t.deepEqual(
    r.view.byName('m39')?.innerUsers?.map((a) => a.name),
    ['bob'],
    'the accounts are used all the same',
  );
});

test('[test double] an unreadable uid_map means no owner, and is re-read later', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  let readable = false;
  const host: HostReader = {
    ...procHost,
    readIdMap: () =>
      Promise.resolve(
        readable
          ? { kind: 'ok', ranges: [{ inner: 0, outer: 300000, count: 65536 }] }
          : { kind: 'unreadable', reason: 'EACCES' },
      ),
    readAccounts: () => Promise.resolve({ kind: 'unreadable', reason: 'ENOENT' }),
  };
  await fake.register('locked');
  const r = registry(fake.busAddress, { host, settleDelaysMs: [50, 100, 200, 400] });
  t.teardown(() => r.stop());
  await r.start();
  t.is(r.view.byName('locked')?.uidMap, undefined);
  t.is(r.view.ownerOfUid(300001), undefined);
  readable = true;
  await until(r.view, (v) => v.ownerOfUid(300001)?.machine.name === 'locked', 3_000);
  t.is(r.view.ownerOfUid(300001)?.inner, 1);
});

test('[test double] killing machined and starting it again converges; removals while it was away apply', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('stays');
  await fake.register('goes');
  const r = registry(fake.busAddress);
  t.teardown(() => r.stop());
  await r.start();
  t.deepEqual(names(r.view), ['goes', 'stays']);
  await fake.killMachined();
  t.deepEqual(names(r.view), ['goes', 'stays'], 'last known state served while machined is away');
  await fake.startMachined();
  await fake.unregister('goes');
  await until(r.view, (v) => names(v).join() === 'stays');
  t.pass();
});

/** GetAll is answered this late in the width tests, so calls within WIDTH_WINDOW_MS of the first are in flight at once. */
const WIDTH_STALL_MS = 800;
const WIDTH_WINDOW_MS = 600;

/**
 * FakeMachined with `count` machines whose GetAll calls are answered WIDTH_STALL_MS late, and when
 * each arrived (its test-only `Received` signal): `atOnce()` counts those within WIDTH_WINDOW_MS of
 * the first, the calls the registry had in flight at once.
 */
async function stalledGetAll(
  t: ExecutionContext,
  count: number,
): Promise<{ fake: FakeMachinedHandle; calls: number[]; firstCall: Promise<void>; atOnce: () => number }> {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed(Array.from({ length: count }, (_, i) => fakeMachine(`m${i}`, process.pid)));
  const listener = await BusConnection.open(fake.busAddress);
  t.teardown(() => listener.close());
  await listener.addMatch("type='signal',interface='org.mymachinesd.Test.FakeMachined',member='Received'");
  const calls: number[] = [];
  let first: () => void = () => undefined;
  const firstCall = new Promise<void>((resolve) => (first = resolve));
  listener.onSignal((s) => {
    if (s.member !== 'Received' || s.body[0] !== 'GetAll') return;
    calls.push(performance.now());
    first();
  });
  await fake.stall('GetAll', WIDTH_STALL_MS);
  await fake.watch('GetAll');
  const atOnce = (): number => calls.filter((at) => at < (calls[0] ?? 0) + WIDTH_WINDOW_MS).length;
  return { fake, calls, firstCall, atOnce };
}

test('[test double] the first sync fetches firstSyncConcurrency machines at a time; a resync after machined restarts only concurrency', async (t) => {
  const { fake, calls, atOnce } = await stalledGetAll(t, 80);
  const r = registry(fake.busAddress, { concurrency: 16, firstSyncConcurrency: 64, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  t.is(r.view.all().length, 80);
  t.is(atOnce(), 64, 'the first sync: 64 in flight');
  t.is(calls.length, 80, 'each machine fetched once');

  calls.length = 0;
  await fake.killMachined();
  const synced = new Promise<void>((resolve) => {
    const off = r.onSynced(() => {
      off();
      resolve();
    });
  });
  // stalled and watched from its first call: the registry resyncs as soon as the name is back
  await fake.startMachined({ stall: { GetAll: WIDTH_STALL_MS }, watch: ['GetAll'] });
  await synced;
  t.true(calls.length >= 80, `the resync fetched every machine (${calls.length} calls)`);
  t.is(atOnce(), 16, 'a resync, while serving: 16 in flight');
});

test("[test double] the default widths stay within dbus-daemon's 128 pending replies per connection: a first sync with registrations arriving meanwhile fetches every machine", async (t) => {
  // dbus-daemon (system bus) refuses a call beyond 128 pending replies of one connection: with a
  // first-sync width of 256 only 6,202 of 10,000 machines synced. The first sync's fetches and the
  // fetches of signals that arrive during it share the lean connection.
  t.true(DEFAULTS.firstSyncConcurrency + DEFAULTS.concurrency <= 128);
  const { fake, firstCall, atOnce } = await stalledGetAll(t, 200);
  const logger = memoryLogger();
  const r = new Registry({
    busAddress: fake.busAddress,
    logger,
    refreshIntervalMs: 60_000,
    settleDelaysMs: [],
  });
  t.teardown(() => r.stop());
  const started = r.start();
  await firstCall;
  // registered while the first sync's fetches are stalled: their MachineNew signals arrive meanwhile
  await Promise.all(Array.from({ length: 40 }, (_, i) => fake.register(`late${i}`)));
  await started;
  await until(r.view, (v) => v.all().length === 240, 20_000);
  // dbus-daemon never passes more than 128 on: a wider default shows as fewer here, and as calls
  // refused with LimitsExceeded, which the registry logs as warnings
  t.true(atOnce() >= DEFAULTS.firstSyncConcurrency, `${atOnce()} GetAll in flight at once`);
  t.deepEqual(
    logger.lines.filter((l) => /^<[0-4]>/.test(l)),
    [],
  );
});

test('Registry refuses a fetch width that is not a whole number ≥ 1 (0 would sync nothing)', (t) => {
  for (const bad of [0, -1, 2.5, Number.NaN]) {
    t.throws(() => registry('unix:path=/nonexistent', { firstSyncConcurrency: bad }), {
      instanceOf: RangeError,
    });
    t.throws(() => registry('unix:path=/nonexistent', { concurrency: bad }), { instanceOf: RangeError });
  }
});

test('[test double] the first registered container owns a shared id, whatever order ListMachines gives', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  // both leaders map the same host range; the double lists machines in insertion order, so
  // register "zulu" first and "alpha" second: any name- or listing-based order would pick wrong
  const host: HostReader = {
    ...procHost,
    startTime: () => Promise.resolve(1),
    readIdMap: () => Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 500000, count: 65536 }] }),
    readAccounts: () => Promise.resolve({ kind: 'unreadable', reason: 'ENOENT' }),
  };
  await fake.register('zulu', { leader: 7001 });
  await fake.register('alpha', { leader: 7002 });
  const r = registry(fake.busAddress, { host });
  t.teardown(() => r.stop());
  await r.start();
  t.is(r.view.ownerOfUid(501000)?.machine.name, 'zulu');
  t.deepEqual(
    r.view.all().map((m) => m.name),
    ['zulu', 'alpha'],
  );
});

test('[test double] when the bus comes back before machined, the last known machines stay until it returns', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.register('kept');
  await fake.setAddresses('kept', ['192.0.2.60']);
  const r = registry(fake.busAddress, { reconnectMinMs: 20, reconnectMaxMs: 50 });
  t.teardown(() => r.stop());
  await r.start();
  await fake.killMachined();
  await fake.bus.kill();
  const reconnected = new Promise<void>((resolve) => r.onSynced(resolve));
  await fake.bus.restart(); // machined is not back yet
  await reconnected;
  t.true(r.status().busConnected);
  t.is(r.status().machinedOwner, undefined);
  t.deepEqual(addressesOf(r.view, 'kept'), ['192.0.2.60'], 'served as last seen');
  await fake.startMachined(); // reloads its machines, as machined does from /run/systemd/machines
  await fake.unregister('kept');
  await until(r.view, (v) => v.byName('kept') === undefined);
  t.pass();
});

test('[test double] --refresh-rate: a batch of k refreshes comes no sooner than k/rate s after the one before, and a round stretches to N / rate', async (t) => {
  const fake = await startWithMachines(t, 10);
  const reads: number[] = [];
  const refreshStarts = new EventCount();
  const host: HostReader = {
    ...procHost,
    // The first thing a refresh reads, so its time is the refresh's start (a later read also
    // measured the refresh's own delays under load: 36 ms "gaps" in a loaded full suite).
    networkState: () => {
      reads.push(performance.now());
      refreshStarts.bump();
      return undefined; // and every refresh asks machined
    },
    readIdMap: () => Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 300000, count: 65536 }] }),
    readAccounts: () =>
      Promise.resolve({ kind: 'ok', accounts: [], source: 'leader-root', leaderRootProblem: undefined }),
  };
  const logger = memoryLogger();
  // 10 machines every 200 ms would be 50 refreshes a second; the rate allows 20: one every 50 ms,
  // so the round wakes every 200 ms (pollStepMs) for a batch of 4
  const r = new Registry({
    busAddress: fake.busAddress,
    logger,
    host,
    refreshIntervalMs: 200,
    refreshRate: 20,
    settleDelaysMs: [],
  });
  t.teardown(() => r.stop());
  await r.start();
  const synced = reads.length;
  // 30 refreshes take 1.5 s at this rate; a loaded machine may take longer, so wait for them.
  await refreshStarts.reach(synced + 30);
  const refreshes = reads.slice(synced);
  t.true(refreshes.length >= 30, `refreshes happen (${refreshes.length})`);
  const spanMs = spanOf(refreshes);
  t.true(
    refreshes.length <= (spanMs / 1000) * 20 + 4,
    `at most 20 a second (${refreshes.length} in ${spanMs.toFixed(0)} ms)`,
  );
  // Batches of 4, 4 and 2 begin 200, 200 and 100 ms apart (k / rate after the one before): within
  // 0.5 s the rate's 10, and at most two more of batches that began before and are still running.
  const burst = mostWithin(refreshes, 500);
  t.true(burst <= 18, `at most 10 + 2 × 4 within 0.5 s, not a round every 0.2 s (${burst})`);
  t.is(r.status().refreshRoundMs, 500);
  await logger.waitFor(
    /10 machines at most 20 per second \(--refresh-rate\).*every 0\.5 s, not every 0\.2 s/,
  );
});

// Serial: other tests of this file would take turns of the event loop in the middle of a batch.
test.serial(
  '[test double] a refresh round wakes once per pollStepMs for the machines whose turns fall in it, and lets other work in between them',
  async (t) => {
    const fake = await startWithMachines(t, 100);
    // Turns of the event loop (a setImmediate ticker), and the turn each refresh began in.
    let ticks = 0;
    let ticking = true;
    const tick = (): void => {
      ticks++;
      if (ticking) setImmediate(tick);
    };
    const reads: number[] = [];
    const turns: number[] = [];
    const refreshStarts = new EventCount();
    const host: HostReader = {
      ...procHost,
      // The same namespace all along: no refresh asks machined. Each takes 1 ms of the event loop,
      // longer than a slice (0.25 ms), so a batch lets a turn go by after every refresh.
      networkState: () => {
        reads.push(performance.now());
        turns.push(ticks);
        refreshStarts.bump();
        const busy = performance.now() + 1;
        while (performance.now() < busy); // a busy wait on purpose: a slow /proc read
        return 'unchanged';
      },
      readIdMap: () => Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 0, count: 2 ** 32 - 1 }] }),
    };
    // 100 machines every second: a turn every 10 ms, so a wake every 200 ms (the default step) for 20
    const r = registry(fake.busAddress, {
      host,
      refreshIntervalMs: 1_000,
      refreshRate: 1_000,
      fullRefreshRounds: 1_000,
      settleDelaysMs: [],
    });
    t.teardown(() => r.stop());
    await r.start();
    const synced = reads.length;
    setImmediate(tick);
    await refreshStarts.reach(synced + 120);
    ticking = false;
    const seen = reads.slice(synced);
    t.true(seen.length >= 120, `refreshes happen (${seen.length})`);
    const batch = mostWithin(seen, 100);
    t.true(batch >= 15, `a batch of about 20 at a time, not one every 10 ms (${batch} within 100 ms)`);
    const gaps = seen.slice(1).map((at, i) => at - (seen[i] ?? 0));
    const wakes = gaps.filter((g) => g > 50);
    t.true(
      wakes.length <= seen.length / 10,
      `about one wake per 20 refreshes (${wakes.length} gaps over 50 ms in ${seen.length})`,
    );
    const began = turns.slice(synced);
    const held = began.slice(1).filter((turn, i) => turn === began[i]).length;
    t.is(held, 0, `a turn of the event loop between any two refreshes (${held} without)`);
  },
);

/** FakeMachined with containers m0 … m(n-1), all led by this process. */
async function startWithMachines(t: ExecutionContext, n: number): Promise<FakeMachinedHandle> {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed(Array.from({ length: n }, (_, i) => fakeMachine(`m${i}`, process.pid, { timestamp: '0' })));
  return fake;
}

/** FakeMachined with one container, `testct`, whose leader is this process. */
async function startWithTestct(t: ExecutionContext): Promise<FakeMachinedHandle> {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed([fakeMachine('testct', process.pid, { timestamp: '0' })]);
  return fake;
}

/** A uid or gid map of 65,536 ids from inner 0 at `outer`. */
const mapAt = (outer: number): Promise<MapRead> =>
  Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer, count: 65536 }] });

const noAccounts = (): Promise<AccountsRead> =>
  Promise.resolve({ kind: 'ok', accounts: [], source: 'leader-root', leaderRootProblem: undefined });

test('[test double] a refresh does not re-read uid_map and gid_map while the user namespace stays, and does when it changes', async (t) => {
  const fake = await startWithTestct(t);
  let namespace = 'user:[4026532001]';
  let outer = 300000;
  const reads: string[] = [];
  const host: HostReader = {
    ...procHost,
    userNamespace: () => namespace,
    readIdMap: (_pid, which) => {
      reads.push(which);
      return mapAt(outer);
    },
    readAccounts: noAccounts,
  };
  const r = registry(fake.busAddress, { host, refreshIntervalMs: 50, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  t.deepEqual(reads.sort(), ['gid', 'uid']);
  const refreshed = await fake.received('GetMachineAddresses');
  await refreshed.arrived; // refreshes run (every 50 ms)…
  await new Promise((resolve) => setTimeout(resolve, 300));
  t.deepEqual(reads.sort(), ['gid', 'uid'], '…without reading the maps again');
  // a new user namespace (the leader re-created it): its maps are read, and served
  namespace = 'user:[4026532999]';
  outer = 400000;
  await until(r.view, (v) => v.ownerOfUid(401000)?.machine.name === 'testct', 3_000);
  t.is(r.view.ownerOfUid(301000), undefined);
  t.true(reads.length >= 4);
});

/** Rounds every 50 ms, and no turn to ask machined within a test: only the refresh's own checks count. */
const BETWEEN_TURNS = { refreshIntervalMs: 50, settleDelaysMs: [], fullRefreshRounds: 1_000 };
const digests = (events: readonly string[]): number => events.filter((e) => e === 'digest').length;

/**
 * Refreshes between a container's turns (fullRefreshRounds) and between account rounds keep what
 * was read before unless something it was read from changed. These check that such a refresh does
 * not keep too much: the events are ordered by the digest each refresh takes, so a refresh that
 * missed the change would leave it to the sixth round (the next account round), not the next one.
 */
test('[test double] between turns, the refresh after a user namespace changed reads the new maps', async (t) => {
  const fake = await startWithTestct(t);
  let namespace = 'user:[4026532001]';
  let outer = 300000;
  const events: string[] = [];
  const host: HostReader = {
    ...procHost,
    networkState: () => {
      events.push('digest');
      // the second digest is round 1's: the namespace changes after that refresh looked at it
      if (digests(events) === 2) {
        namespace = 'user:[4026532999]';
        outer = 400000;
      }
      return 'unchanged';
    },
    userNamespace: () => namespace,
    readIdMap: (_pid, which) => {
      if (which === 'uid') events.push('maps');
      return mapAt(outer);
    },
    readAccounts: noAccounts,
  };
  const r = registry(fake.busAddress, { host, ...BETWEEN_TURNS });
  t.teardown(() => r.stop());
  await r.start();
  await until(r.view, (v) => v.ownerOfUid(401000)?.machine.name === 'testct', 3_000);
  t.is(r.view.ownerOfUid(301000), undefined);
  // changed during round 1 (the second digest): read in round 1 or 2, not left to round 6
  const reread = events.indexOf('maps', 2);
  t.true(reread > 0, events.join(' '));
  t.true(digests(events.slice(0, reread)) <= 3, events.join(' '));
});

test('[test double] between account rounds, a refresh reads the passwd and group that could not be read before', async (t) => {
  const fake = await startWithTestct(t);
  const events: string[] = [];
  const host: HostReader = {
    ...procHost,
    networkState: () => {
      events.push('digest');
      return 'unchanged';
    },
    userNamespace: () => 'user:[4026532001]',
    readIdMap: () => mapAt(300000),
    readAccounts: (_pid, _root, which) => {
      if (which === 'passwd') events.push('accounts');
      // unreadable for the first sync's read (after the first digest), readable from then on
      return Promise.resolve(
        digests(events) <= 1
          ? { kind: 'unreadable', reason: 'EIO' }
          : {
              kind: 'ok',
              accounts: [{ name: which === 'passwd' ? 'alice' : 'staff', id: 1000 }],
              source: 'leader-root',
              leaderRootProblem: undefined,
            },
      );
    },
  };
  const r = registry(fake.busAddress, { host, ...BETWEEN_TURNS });
  t.teardown(() => r.stop());
  await r.start();
  await until(r.view, (v) => v.byName('testct')?.innerUsers?.[0]?.name === 'alice', 3_000);
  // the first sync's read failed; round 1 (the second digest) reads again, not round 6
  t.deepEqual(events.slice(0, 4), ['digest', 'accounts', 'digest', 'accounts'], events.join(' '));
});

test("[test double] the first sync does not wait for containers' passwd and group: they follow in one change", async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed([fakeMachine('testct', process.pid, { timestamp: '0' })]);
  let release: () => void = () => undefined;
  const held = new Promise<void>((resolve) => (release = resolve));
  const asked: string[] = [];
  const host: HostReader = {
    ...procHost,
    readIdMap: () => Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 300000, count: 65536 }] }),
    // the container's files are on a slow filesystem: nothing comes until the test releases them
    readAccounts: async (_pid, _root, which) => {
      asked.push(which);
      await held;
      return {
        kind: 'ok',
        accounts: [{ name: which === 'passwd' ? 'alice' : 'staff', id: 1000 }],
        source: 'leader-root',
        leaderRootProblem: undefined,
      };
    },
  };
  const logger = memoryLogger();
  const r = new Registry({
    busAddress: fake.busAddress,
    logger,
    host,
    refreshIntervalMs: 60_000,
    settleDelaysMs: [],
  });
  t.teardown(() => r.stop());
  await r.start(); // would never resolve if the sync waited for the files
  t.is(r.view.ownerOfUid(301000)?.machine.name, 'testct', 'lookups by id work at once');
  t.is(r.view.byName('testct')?.innerUsers, undefined);
  t.deepEqual(asked.sort(), ['group', 'passwd'], 'the reads are under way');
  const generation = r.view.generation;
  release();
  await r.whenAccountsRead();
  t.deepEqual(r.view.byName('testct')?.innerUsers, [{ name: 'alice', id: 1000 }]);
  t.deepEqual(r.view.byName('testct')?.innerGroups, [{ name: 'staff', id: 1000 }]);
  t.is(r.view.generation, generation + 1, 'applied in one change');
  t.regex(await logger.waitFor(/read the accounts/), /read the accounts of 1 container\(s\) in \d+ ms/);
});

test('[test double] the leader check asks only whether the pid exists between full checks, and still catches a reused pid', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed([fakeMachine('testct', process.pid, { timestamp: '0' })]);
  await fake.setAddresses('testct', ['192.0.2.60']);
  let start = 1000;
  let startReads = 0;
  let existsAsked = 0;
  const checks = new EventCount();
  const host: HostReader = {
    ...procHost,
    startTime: () => {
      startReads++;
      checks.bump();
      return Promise.resolve(start);
    },
    exists: () => {
      existsAsked++;
      checks.bump();
      return true;
    },
  };
  const r = registry(fake.busAddress, { host, leaderCheckIntervalMs: 20, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  const before = { startReads, existsAsked };
  const roundsSince = (): number => existsAsked - before.existsAsked + (startReads - before.startReads);
  // 20 rounds take 0.4 s at this interval; a loaded machine may take longer, so wait for them.
  await checks.reach(before.startReads + before.existsAsked + 20); // it counts both
  const rounds = roundsSince();
  t.true(rounds >= 20, `the check runs (${rounds} rounds)`);
  t.true(
    startReads - before.startReads <= rounds / 5 + 1,
    `one full check in five (${startReads - before.startReads} of ${rounds})`,
  );
  t.true(r.view.byName('testct')?.leaderAlive);
  // the leader died and its pid now belongs to another process: the pid exists, the start time differs
  start = 2000;
  await until(r.view, (v) => v.byName('testct')?.leaderAlive === false, 2_000);
  t.deepEqual(addressesOf(r.view, 'testct'), []);
});

test("[test double] refreshes check a container's passwd and group every sixth round only, and at once while it has none", async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed([fakeMachine('testct', process.pid, { timestamp: '0' })]);
  let refreshes = 0;
  const refreshCount = new EventCount();
  let passwdReads = 0;
  let readable = false;
  const host: HostReader = {
    ...procHost,
    userNamespace: () => undefined, // maps read on every refresh: one uid_map read = one refresh
    readIdMap: (_pid, which) => {
      if (which === 'uid') {
        refreshes++;
        refreshCount.bump();
      }
      return Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 300000, count: 65536 }] });
    },
    readAccounts: (_pid, _root, which) => {
      if (which === 'passwd') passwdReads++;
      return Promise.resolve(
        readable
          ? {
              kind: 'ok',
              accounts: [{ name: which, id: 7 }],
              source: 'leader-root',
              leaderRootProblem: undefined,
            }
          : { kind: 'unreadable', reason: 'EIO' },
      );
    },
  };
  const r = registry(fake.busAddress, { host, refreshIntervalMs: 40, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  await r.whenAccountsRead();
  t.is(r.view.byName('testct')?.innerUsers, undefined);
  // none known: every refresh tries again, and the first that can read them applies them
  const from = { refreshes, passwdReads };
  readable = true;
  await until(r.view, (v) => v.byName('testct')?.innerUsers !== undefined, 2_000);
  t.true(refreshes - from.refreshes <= 2, 'picked up by the next refresh');
  // known: checked one round in six
  const known = { refreshes, passwdReads };
  // 12 rounds take 0.5 s at this interval; a loaded machine may take longer, so wait for them.
  await refreshCount.reach(known.refreshes + 12); // it counts what `refreshes` does
  const rounds = refreshes - known.refreshes;
  const checks = passwdReads - known.passwdReads;
  t.true(rounds >= 12, `refreshes run (${rounds})`);
  t.true(checks >= 1 && checks <= rounds / 6 + 1, `${checks} checks in ${rounds} refreshes`);
});

test('[test double] a resync after machined restarts keeps the records of machines that did not change: no change without a difference, one reset for a machine that changed', async (t) => {
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  await fake.seed(
    ['one', 'two', 'three'].map((name, i) =>
      fakeMachine(name, process.pid, { timestamp: String(i + 1), addresses: [[2, [192, 0, 2, i + 1]]] }),
    ),
  );
  const host: HostReader = {
    ...procHost,
    readIdMap: () => Promise.resolve({ kind: 'ok', ranges: [{ inner: 0, outer: 300000, count: 65536 }] }),
    readAccounts: (_pid, _root, which) =>
      Promise.resolve({
        kind: 'ok',
        accounts: [{ name: which === 'passwd' ? 'alice' : 'staff', id: 1000 }],
        source: 'leader-root',
        leaderRootProblem: undefined,
      }),
  };
  const r = registry(fake.busAddress, { host, settleDelaysMs: [] });
  t.teardown(() => r.stop());
  await r.start();
  await r.whenAccountsRead();
  const before = new Map(r.view.all().map((m) => [m.name, m]));
  t.deepEqual(r.view.byName('two')?.innerUsers, [{ name: 'alice', id: 1000 }], 'accounts were read');
  const seen: string[] = [];
  r.view.onChange((c) => seen.push(c.kind === 'reset' ? 'reset' : `${c.kind} ${c.machine.name}`));
  const restart = async (): Promise<void> => {
    await fake.killMachined();
    const synced = new Promise<void>((resolve) => {
      const off = r.onSynced(() => {
        off();
        resolve();
      });
    });
    await fake.startMachined(); // reloads its machines and announces each again
    await synced;
    await r.whenAccountsRead();
    await fake.register('marker'); // announced after the re-announcements: they are handled by now
    await until(r.view, (v) => v.byName('marker') !== undefined);
    t.is(seen.pop(), 'added marker');
    await fake.unregister('marker');
    await until(r.view, (v) => v.byName('marker') === undefined);
    t.is(seen.pop(), 'removed marker');
  };

  await restart();
  t.deepEqual(seen, [], 'nothing changed: no change announced');
  for (const [name, record] of before) t.is(r.view.byName(name), record, `${name} keeps its record`);

  await fake.setAddresses('two', ['192.0.2.22']); // machined sends no signal for this
  await restart();
  t.deepEqual(seen, ['reset'], 'one change for the resync; the accounts read after it changed nothing');
  t.deepEqual(addressesOf(r.view, 'two'), ['192.0.2.22']);
  t.deepEqual(r.view.byName('two')?.innerUsers, [{ name: 'alice', id: 1000 }], 'accounts kept');
  t.is(r.view.byName('one'), before.get('one'), 'one keeps its record');
  t.is(r.view.byName('three'), before.get('three'), 'three keeps its record');
  t.deepEqual(
    r.view.all().map((m) => m.name),
    ['one', 'two', 'three'],
  );
});
