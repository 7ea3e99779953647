/**
 * The registry against the REAL systemd-machined 252 (Debian's systemd-container) with the lab's
 * five machines, in a private mount+network namespace. Ground truth comes from busctl and /proc.
 */
import test from 'ava';
import { performance } from 'node:perf_hooks';
import { readFile } from 'node:fs/promises';
import { parseIdMap } from '../src/registry-client/idmap.js';
import { MACHINE_PROPERTY_SIGNATURES, machineObjectPath } from '../src/registry-client/machine1.js';
import { machinedTruth, type TruthMachine } from './support/busctl.js';
import { LAB_MACHINES, MachinedLab } from './support/machined-lab.js';
import { ProbeHandle } from './support/probe.js';
import type { ProbeMachine } from './support/view-probe.js';

test.serial.before(async (t) => {
  const lab = await MachinedLab.start();
  const probe = await ProbeHandle.start(lab.world, lab.busAddress, {
    refreshIntervalMs: 300,
    leaderCheckIntervalMs: 200,
  });
  t.context = { lab, probe };
});
test.after.always(async (t) => {
  const { lab, probe } = t.context as Ctx;
  await probe.stop();
  await lab.dispose();
});
interface Ctx {
  lab: MachinedLab;
  probe: ProbeHandle;
}
const ctx = (t: { context: unknown }): Ctx => t.context as Ctx;

/** The view in the shape busctl gives (addresses of VMs come from neighbours: compared elsewhere). */
function asTruth(view: ProbeMachine[]): Omit<TruthMachine, 'addresses'>[] {
  return view
    .map((m) => ({
      name: m.name,
      class: m.class,
      service: m.service,
      path: m.objectPath,
      id: m.id,
      unit: m.unit,
      leader: m.leader,
      rootDirectory: m.rootDirectory,
      networkInterfaces: m.networkInterfaces.map((n) => n.ifindex),
      state: m.state,
      timestamp: m.timestamp,
    }))
    .sort((a, b) => a.name.localeCompare(b.name));
}

async function assertViewEqualsMachined(
  t: import('ava').ExecutionContext,
  lab: MachinedLab,
  view: ProbeMachine[],
): Promise<void> {
  const truth = await machinedTruth(lab);
  t.deepEqual(
    asTruth(view),
    truth.map(({ addresses: _a, ...rest }) => rest),
  );
  for (const m of truth) {
    const ours = view.find((v) => v.name === m.name);
    if (m.class === 'container') {
      // machined's order, machined's set; errors (no private networking) mean no addresses
      t.deepEqual(
        ours?.addresses.map((a) => a.address),
        Array.isArray(m.addresses) ? m.addresses : [],
        `addresses of ${m.name}`,
      );
    }
    if (m.class === 'container' && ours?.leaderAlive) {
      for (const which of ['uid', 'gid'] as const) {
        const parsed = parseIdMap(await readFile(`/proc/${m.leader}/${which}_map`, 'utf8'));
        t.true(parsed.ok);
        t.deepEqual(
          which === 'uid' ? ours.uidMap : ours.gidMap,
          parsed.ok ? parsed.ranges : null,
          `${which}_map of ${m.name}`,
        );
      }
    }
  }
}

test.serial('the view equals what busctl reports for the five lab machines, maps equal /proc', async (t) => {
  const { lab, probe } = ctx(t);
  const line = await probe.waitFor((l) => l.event === 'ready', { includePast: true });
  t.deepEqual(line.view.map((m) => m.name).sort(), ['.host', ...LAB_MACHINES.map((m) => m.name)].sort());
  await assertViewEqualsMachined(t, lab, line.view);
  const alpha = probe.machine('alpha');
  // nss-mymachines' scope rule: one NETIF → every address scoped to it
  t.deepEqual(
    new Set(alpha?.addresses.map((a) => a.scope)),
    new Set([lab.machines.get('alpha')?.ifindexes[0]]),
  );
  t.true(probe.machine('bravo-two')?.addresses.every((a) => a.scope === 0));
  t.is(probe.machine('charlie')?.addressError, 'NoPrivateNetworking');
  t.deepEqual(probe.machine('delta')?.addresses, []);
  t.deepEqual(
    alpha?.networkInterfaces.map((n) => n.name),
    ['ve-alpha'],
  );
  // the container's own accounts, read through /proc/<leader>/root right after the first sync
  await probe.waitFor((l) => l.event === 'accounts', { includePast: true });
  t.deepEqual(
    alpha?.innerUsers?.map((u) => u.id),
    [0, 1, 1000, 65534],
  );
  t.deepEqual(
    probe.machine('bravo-two')?.innerGroups?.map((g) => g.name),
    ['root'],
  );
  t.is(probe.machine('charlie')?.innerUsers, null, 'no user namespace: no accounts of its own');
});

test.serial(
  'machined 252 gives every Machine property the signature the registry reads it by without its schema',
  async (t) => {
    const { lab } = ctx(t);
    const names = Object.keys(MACHINE_PROPERTY_SIGNATURES);
    for (const machine of ['alpha', 'echo']) {
      const r = await lab.exec('busctl', [
        '--no-pager', '--json=short', 'get-property', 'org.freedesktop.machine1',
        machineObjectPath(machine), 'org.freedesktop.machine1.Machine', ...names,
      ]); // prettier-ignore
      t.is(r.code, 0, r.stderr);
      const types = r.stdout
        .trim()
        .split('\n')
        .map((l) => (JSON.parse(l) as { type: string }).type);
      t.deepEqual(
        Object.fromEntries(names.map((n, i) => [n, types[i]])),
        MACHINE_PROPERTY_SIGNATURES,
        machine,
      );
    }
  },
);

test.serial('a VM gets the addresses of the neighbour entries on its interface', async (t) => {
  const { lab, probe } = ctx(t);
  // traffic creates neighbour entries, as a running VM's would
  await lab.exec('ping', ['-c1', '-W2', '198.51.100.51']);
  await lab.exec('ping', ['-6', '-c1', '-W2', 'fd42::51']);
  await lab.exec('ping', ['-6', '-c1', '-W2', 'ff02::1%ve-echo']);
  const neigh = JSON.parse((await lab.exec('ip', ['-j', 'neigh', 'show', 'dev', 've-echo'])).stdout) as {
    dst: string;
    state?: string[];
  }[];
  const expected = neigh.filter((n) => !(n.state ?? []).includes('FAILED')).map((n) => n.dst);
  t.true(expected.includes('198.51.100.51') && expected.includes('fd42::51'), JSON.stringify(neigh));
  const line = await probe.waitForView((v) => {
    const echo = v.find((m) => m.name === 'echo');
    return (echo?.addresses.length ?? 0) >= expected.length;
  });
  const echo = line.view.find((m) => m.name === 'echo');
  const ifindex = lab.machines.get('echo')?.ifindexes[0];
  t.is(echo?.addressSource, 'neighbours');
  t.deepEqual(echo?.addresses.map((a) => a.address).sort(), expected.sort());
  // machined's order: IPv4 first, then global before link-local
  t.is(echo?.addresses[0]?.address, '198.51.100.51');
  t.true(echo?.addresses.every((a) => a.scope === ifindex));
});

test.serial(
  'a machine registered after start appears, and disappears when unregistered, driven by signals',
  async (t) => {
    const { lab, probe } = ctx(t);
    const spec = {
      name: 'foxtrot',
      class: 'container' as const,
      idMap: '0 400000 65536',
      privateNetwork: true,
      interfaces: [{ hostIf: 've-foxtrot', inner: 'host0', addresses: ['198.51.100.61/24'] }],
    };
    await lab.createMachine(spec);
    const appeared = probe.waitFor((l) => l.event === 'change' && l.name === 'foxtrot');
    await lab.register('foxtrot');
    const returned = performance.timeOrigin + performance.now();
    const line = await appeared;
    t.log(
      `MachineNew → view: ${(line.t - returned).toFixed(1)} ms after RegisterMachineWithNetwork returned`,
    );
    const withAddresses = await probe.waitForView(
      (v) => (v.find((m) => m.name === 'foxtrot')?.addresses.length ?? 0) > 1,
    );
    const truth = (await machinedTruth(lab)).find((m) => m.name === 'foxtrot');
    t.deepEqual(
      withAddresses.view.find((m) => m.name === 'foxtrot')?.addresses.map((a) => a.address),
      truth?.addresses,
    );
    const removed = probe.waitFor(
      (l) => l.event === 'change' && l.kind === 'removed' && l.name === 'foxtrot',
    );
    await lab.unregister('foxtrot');
    const unregistered = performance.timeOrigin + performance.now();
    const gone = await removed;
    t.false(gone.view.some((m) => m.name === 'foxtrot'));
    t.log(`MachineRemoved → view: ${(gone.t - unregistered).toFixed(1)} ms after UnregisterMachine returned`);
  },
);

test.serial(
  "between full rounds, a change in a container's network namespace is seen from /proc and asked of machined: the view follows machined",
  async (t) => {
    const { lab, probe: main } = ctx(t);
    const spec = {
      name: 'hotel',
      class: 'container' as const,
      privateNetwork: true,
      interfaces: [{ hostIf: 've-hotel', inner: 'host0', addresses: ['198.51.100.71/24'] }],
    };
    const machine = await lab.createMachine(spec);
    await lab.register('hotel');
    let registered = true;
    t.teardown(async () => {
      if (registered) await lab.unregister('hotel');
    });
    // no full round for as long as the test runs: only the namespace digest makes it ask machined
    const probe = await ProbeHandle.start(lab.world, lab.busAddress, {
      refreshIntervalMs: 300,
      fullRefreshRounds: 1_000_000,
    });
    t.teardown(() => probe.stop());
    const addressesOf = (view: ProbeMachine[]): string[] | undefined =>
      view.find((m) => m.name === 'hotel')?.addresses.map((a) => a.address);
    await probe.waitForView((v) => addressesOf(v)?.includes('198.51.100.71') === true);
    const inside = (...args: string[]): Promise<string> =>
      lab.world.run('nsenter', ['-t', String(machine.leaderPid), '-n', '--', 'ip', ...args]);
    for (const [change, expect] of [
      [['addr', 'add', '198.51.100.72/24', 'dev', 'host0'], (a: string[]) => a.includes('198.51.100.72')],
      [
        ['-6', 'addr', 'add', 'fd42::72/64', 'dev', 'host0', 'nodad'],
        (a: string[]) => a.includes('fd42::72'),
      ],
      [['addr', 'del', '198.51.100.71/24', 'dev', 'host0'], (a: string[]) => !a.includes('198.51.100.71')],
    ] as const) {
      await inside(...change);
      const changedAt = Date.now();
      const line = await probe.waitForView((v) => expect(addressesOf(v) ?? []), 5_000);
      t.log(`ip ${change.join(' ')}: in the view after ${Date.now() - changedAt} ms`);
      const truth = (await machinedTruth(lab)).find((m) => m.name === 'hotel');
      t.deepEqual(addressesOf(line.view), truth?.addresses, 'what machined answers now');
    }
    // gone from the shared probe's view too before the next test compares views
    const removed = main.waitFor((l) => l.event === 'change' && l.kind === 'removed' && l.name === 'hotel');
    await lab.unregister('hotel');
    registered = false;
    await removed;
  },
);

test.serial(
  'killing machined and starting it again ends with the view equal to machined, no machine lost',
  async (t) => {
    const { lab, probe } = ctx(t);
    const before = probe.view.map((m) => m.name).sort();
    const resynced = probe.waitFor((l) => l.event === 'synced' && typeof l.owner === 'string');
    await lab.stopMachined('SIGKILL');
    t.deepEqual(probe.view.map((m) => m.name).sort(), before, 'served from memory while machined is away');
    await lab.startMachined(); // reloads /run/systemd/machines and re-announces every machine
    const line = await resynced;
    t.deepEqual(line.view.map((m) => m.name).sort(), before);
    await assertViewEqualsMachined(t, lab, line.view);
  },
);

test.serial('restarting the bus ends with the view equal to machined, no machine lost', async (t) => {
  const { lab, probe } = ctx(t);
  const before = probe.view.map((m) => m.name).sort();
  await lab.stopMachined(); // machined would exit with its bus anyway
  await lab.bus.kill();
  t.deepEqual(probe.view.map((m) => m.name).sort(), before, 'served from memory while the bus is down');
  // The bus comes back first: the registry syncs without machined and keeps the last known records.
  const withoutMachined = probe.waitFor((l) => l.event === 'synced' && l.owner === null, {
    timeoutMs: 20_000,
  });
  await lab.bus.restart();
  t.deepEqual((await withoutMachined).view.map((m) => m.name).sort(), before, 'kept until machined is back');
  // Compared with machined only after a sync against it: the kept .host record may differ from the
  // new machined's by 1 µs (its Timestamp is the boot time, recomputed at each start).
  const resynced = probe.waitFor((l) => l.event === 'synced' && typeof l.owner === 'string', {
    timeoutMs: 20_000,
  });
  await lab.startMachined();
  const line = await resynced;
  t.deepEqual(line.view.map((m) => m.name).sort(), before);
  await assertViewEqualsMachined(t, lab, line.view);
});
