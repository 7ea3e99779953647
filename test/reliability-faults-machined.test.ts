/**
 * Faults with the REAL systemd-machined 252: `mymachinesd serve` runs as a process in a World next
 * to machined, its bus and the lab's namespaced machines, while the test kills and restarts
 * machined and the bus, stops them dead (SIGSTOP: a D-Bus call that never returns), kills a leader,
 * and hides a leader's uid/gid maps. Throughout each fault, DNS (UDP, from inside the World) and
 * userdb (raw Varlink, and getent through nss-systemd) are asked again and again and every reply's
 * latency is kept; afterwards what `mymachinesd list --json` reports must equal what machined (busctl)
 * and /proc say: no machine lost, none stale.
 */
import test, { type ExecutionContext } from 'ava';
import { readFile, rm, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { parseIdMap } from '../src/registry-client/idmap.js';
import { AgentHandle, type DnsResult } from './support/agent.js';
import { machinedTruth } from './support/busctl.js';
import { DaemonHandle } from './support/daemon.js';
import { LAB_MACHINES, MachinedLab, type LabMachineSpec } from './support/machined-lab.js';
import { describeStats, Sampler, type Probe, type ProbeStats } from './support/sampler.js';

/**
 * Every reply during a fault must come within this: well below any client's first retry (glibc and
 * dig: 5 s; nss-systemd waits 45 s), and with room for a CI machine that also runs the load test.
 */
const DEADLINE_MS = 500;
/** getent is a new process each time (nsenter, glibc, nss-systemd): its start-up dominates. */
const GETENT_DEADLINE_MS = 1_000;
const STUB = { server: '127.0.0.153', port: 53 };
const USERDB = '/run/systemd/userdb/io.mymachinesd.Machine';
const CONTROL = '/run/mymachinesd/io.mymachinesd.Control';
const ALICE = 'vu-alpha-1000:x:101000:65534:UID 1000 of Container alpha:/:/usr/sbin/nologin';

/** A machine created in the leader test only: its leader is killed while it is registered. */
const FOXTROT: LabMachineSpec = {
  name: 'foxtrot',
  class: 'container',
  idMap: '0 300000 65536',
  privateNetwork: true,
  interfaces: [
    {
      hostIf: 've-foxtrot',
      inner: 'host0',
      innerMac: '02:00:00:00:0f:01',
      addresses: ['198.51.100.61/24'],
    },
  ],
  users: [{ name: 'root', id: 0 }],
};

interface Ctx {
  lab: MachinedLab;
  daemon: DaemonHandle;
  agent: AgentHandle;
}
const ctx = (t: ExecutionContext): Ctx => t.context as Ctx;

test.before(async (t) => {
  const lab = await MachinedLab.start(LAB_MACHINES);
  try {
    const daemon = await DaemonHandle.start(lab.world, [
      '--bus', lab.busAddress, '--dns', `${STUB.server}:${STUB.port}`, '--refresh', '1', '--log-level', 'debug',
    ]); // prettier-ignore
    const agent = await AgentHandle.start(lab.world);
    t.context = { lab, daemon, agent } satisfies Ctx;
  } catch (err) {
    await lab.dispose();
    throw err;
  }
});

test.after.always(async (t) => {
  const c = t.context as Partial<Ctx>;
  await c.agent?.stop();
  await c.daemon?.stop();
  await c.lab?.dispose();
});

// ---- probes -------------------------------------------------------------------------------------

const dnsText = (r: DnsResult): string =>
  'error' in r ? `error ${r.error}` : `rcode ${r.rcode} ${r.answers.join(', ')}`;

/** A DNS probe whose every reply must equal `expected` (taken before the fault). */
function dnsProbe(agent: AgentHandle, name: string, qtype: string, expected: string): Probe {
  return {
    name: `dns ${name} ${qtype}`,
    async run() {
      const r = await agent.dns(STUB, name, qtype, { timeoutMs: 2_000 });
      const got = dnsText(r);
      return { ms: r.ms, ok: got === expected, detail: got };
    },
  };
}

/** A raw Varlink userdb lookup (from inside the World) whose reply must contain `expect`. */
function userdbProbe(agent: AgentHandle, parameters: Record<string, unknown>, expect: string): Probe {
  return {
    name: `userdb ${JSON.stringify(parameters)}`,
    async run() {
      const r = await agent.varlink(USERDB, {
        method: 'io.systemd.UserDatabase.GetUserRecord',
        parameters: { service: 'io.mymachinesd.Machine', ...parameters },
      });
      const text = 'error' in r ? `error ${r.error}` : JSON.stringify(r.replies);
      return { ms: r.ms, ok: text.includes(expect), detail: text };
    },
  };
}

/** getent through glibc and nss-systemd, which asks every socket in /run/systemd/userdb at once. */
function getentProbe(lab: MachinedLab, key: string, expected: string): Probe {
  return {
    name: `getent passwd ${key}`,
    async run() {
      const started = performance.now();
      const r = await lab.world.exec('getent', ['passwd', key], { timeoutMs: 60_000 });
      const ms = performance.now() - started;
      return {
        ms,
        ok: r.code === 0 && r.stdout.trim() === expected,
        detail: `${r.code}: ${r.stdout}${r.stderr}`,
      };
    },
  };
}

async function standardProbes(c: Ctx): Promise<Probe[]> {
  const baseline = async (name: string, qtype: string): Promise<string> =>
    dnsText(await c.agent.dns(STUB, name, qtype));
  return [
    dnsProbe(c.agent, 'alpha.machine', 'A', await baseline('alpha.machine', 'A')),
    dnsProbe(c.agent, 'bravo-two', 'AAAA', await baseline('bravo-two', 'AAAA')),
    dnsProbe(
      c.agent,
      '21.100.51.198.in-addr.arpa',
      'PTR',
      await baseline('21.100.51.198.in-addr.arpa', 'PTR'),
    ),
    userdbProbe(c.agent, { userName: 'vu-alpha-1000' }, '"uid":101000'),
    userdbProbe(c.agent, { uid: 201000 }, '"userName":"vu-bravo-two-1000"'),
  ];
}

function assertWithinDeadline(t: ExecutionContext, stats: readonly ProbeStats[]): void {
  t.log(describeStats(stats));
  for (const s of stats) {
    const deadlineMs = s.name.startsWith('getent') ? GETENT_DEADLINE_MS : DEADLINE_MS;
    t.true(s.count > 0, `${s.name}: never ran`);
    t.deepEqual(s.failures, [], `${s.name}: wrong replies`);
    t.true(
      s.maxMs < deadlineMs,
      `${s.name}: slowest reply ${s.maxMs.toFixed(1)} ms (deadline ${deadlineMs} ms)`,
    );
  }
}

/** What the daemon serves (list --json) equals machined (busctl) and /proc: names, classes, leaders, addresses, maps. */
async function assertConverged(t: ExecutionContext, c: Ctx): Promise<void> {
  const truth = (await machinedTruth(c.lab)).filter((m) => m.class !== 'host');
  const served = await c.daemon.list(CONTROL);
  t.deepEqual(
    served.map((m) => m.name).sort(),
    truth.map((m) => m.name),
    'the same machines as machined: none lost, none stale',
  );
  for (const m of truth) {
    const ours = served.find((s) => s.name === m.name);
    t.is(ours?.class, m.class, m.name);
    t.is(ours?.leader, m.leader, m.name);
    if (m.class === 'container')
      t.deepEqual(
        ours?.addresses.map((a) => a.address),
        Array.isArray(m.addresses) ? m.addresses : [],
        `addresses of ${m.name}`,
      );
    if (m.class === 'container' && ours?.leaderAlive) {
      const map = parseIdMap(await readFile(`/proc/${m.leader}/uid_map`, 'utf8'));
      t.deepEqual(ours.uidRanges, map.ok ? map.ranges : null, `uid map of ${m.name}`);
    }
  }
}

/**
 * Waits until a refresh after log line index `from` has run into the D-Bus deadline. Within about
 * 12 s by the refresh's rules (a container's turn to ask machined comes once in 6 rounds of 1 s; a
 * call waits 5 s; a reconcile first at most 5 s), so 30 s missing it means the refresh stopped
 * asking: the error then carries the registry's status (`addressCalls`, owner, bus), read over
 * the control socket, which answers from memory.
 */
async function refreshTimedOut(c: Ctx, from: number): Promise<void> {
  try {
    await c.daemon.waitForAfter(from, /refresh of \S+ failed: .*no reply within/, 30_000);
  } catch (err) {
    const status = await c.daemon.status(CONTROL).catch((e: unknown) => `unavailable: ${String(e)}`);
    throw new Error(
      `${err instanceof Error ? err.message : String(err)}\nregistry status: ${JSON.stringify(status)}`,
    );
  }
}

/** Waits until the daemon has resynced with machined after log line index `from`. */
function resynced(c: Ctx, from: number): Promise<string> {
  return c.daemon.waitForAfter(from, /synced \d+ machine\(s\)/, 30_000);
}

// ---- the faults ---------------------------------------------------------------------------------

test.serial(
  'machined killed and restarted: answers from memory within the deadline, then the view equals machined again (a machine dropped meanwhile is not left stale)',
  async (t) => {
    const c = ctx(t);
    const sampler = Sampler.start(await standardProbes(c));
    const mark = c.daemon.lines.length;
    await c.lab.stopMachined('SIGKILL');
    await c.daemon.waitForAfter(mark, /machined left the bus/);
    // While machined is away, charlie's state file goes: the new machined will not know it, and no
    // MachineRemoved is ever sent for it.
    await rm(c.lab.world.hostPath('/run/systemd/machines/charlie'));
    await sampler.more(30);
    const restart = c.daemon.lines.length;
    await c.lab.startMachined();
    await resynced(c, restart);
    await sampler.more(10);
    assertWithinDeadline(t, await sampler.stop());
    await assertConverged(t, c);
    t.false(
      (await c.daemon.list(CONTROL)).some((m) => m.name === 'charlie'),
      'charlie is gone',
    );
    // and registering it again is seen at once
    const again = c.daemon.lines.length;
    await c.lab.register('charlie');
    await c.daemon.waitForAfter(again, /machine charlie \(container\) registered/);
    await assertConverged(t, c);
  },
);

test.serial(
  'the bus killed and restarted: answers from memory within the deadline, then the view equals machined again',
  async (t) => {
    const c = ctx(t);
    const sampler = Sampler.start(await standardProbes(c));
    const mark = c.daemon.lines.length;
    await c.lab.bus.kill('SIGKILL');
    await c.daemon.waitForAfter(mark, /lost the bus/);
    await c.lab.stopMachined(); // machined 252 exits with its bus; make sure of it
    await sampler.more(30);
    const restart = c.daemon.lines.length;
    await c.lab.bus.restart();
    await c.lab.startMachined();
    await c.daemon.waitForAfter(restart, /connected to /, 30_000);
    await resynced(c, restart);
    await sampler.more(10);
    assertWithinDeadline(t, await sampler.stop());
    await assertConverged(t, c);
  },
);

test.serial(
  'machined stopped dead (SIGSTOP): getent passwd through nss-systemd and raw Varlink still answer at once while our D-Bus calls hang',
  async (t) => {
    const c = ctx(t);
    const machined = c.lab.machinedPid;
    if (machined === undefined) throw new Error('machined is not running');
    const sampler = Sampler.start([
      ...(await standardProbes(c)),
      getentProbe(c.lab, 'vu-alpha-1000', ALICE),
      getentProbe(c.lab, '101000', ALICE),
    ]);
    const mark = c.daemon.lines.length;
    process.kill(machined, 'SIGSTOP');
    try {
      // a refresh round runs into the D-Bus deadline: the daemon really is waiting on machined
      await refreshTimedOut(c, mark);
      await sampler.more(30);
    } finally {
      process.kill(machined, 'SIGCONT');
    }
    const stats = await sampler.stop();
    assertWithinDeadline(t, stats);
    await assertConverged(t, c);
  },
);

test.serial(
  'dbus-daemon stopped dead (SIGSTOP, systemd #40562): userdb and DNS answer at once while every D-Bus call hangs; afterwards the view converges',
  async (t) => {
    const c = ctx(t);
    const bus = c.lab.bus.pid;
    if (bus === undefined) throw new Error('the bus is not running');
    const sampler = Sampler.start([...(await standardProbes(c)), getentProbe(c.lab, 'vu-alpha-1000', ALICE)]);
    const mark = c.daemon.lines.length;
    process.kill(bus, 'SIGSTOP');
    try {
      await refreshTimedOut(c, mark);
      await sampler.more(30);
    } finally {
      process.kill(bus, 'SIGCONT');
    }
    assertWithinDeadline(t, await sampler.stop());
    // a registration right after the stall is picked up
    const created = await c.lab.createMachine({
      ...FOXTROT,
      name: 'golf',
      idMap: '0 400000 65536',
      interfaces: [],
    });
    const registered = c.daemon.lines.length;
    await c.lab.register('golf');
    await c.daemon.waitForAfter(registered, /machine golf \(container\) registered/);
    t.is(created.spec.name, 'golf');
    await assertConverged(t, c);
  },
);

test.serial(
  "a machine's leader dying while registered: its addresses and users go, the others keep answering, and unregistering it leaves nothing stale",
  async (t) => {
    const c = ctx(t);
    await c.lab.createMachine(FOXTROT);
    const registered = c.daemon.lines.length;
    await c.lab.register('foxtrot');
    await c.daemon.waitForAfter(registered, /machine foxtrot \(container\) registered/);
    const present = await c.agent.dns(STUB, 'foxtrot.machine', 'A');
    t.is(dnsText(present), 'rcode 0 foxtrot.machine 0 A 198.51.100.61');
    t.regex(JSON.stringify(await c.agent.varlink(USERDB, userdbCall({ uid: 300000 }))), /vu-foxtrot-0/);

    const sampler = Sampler.start(await standardProbes(c));
    const mark = c.daemon.lines.length;
    await c.lab.killLeader('foxtrot');
    await c.daemon.waitForAfter(mark, /machine foxtrot: leader \d+ is gone/, 15_000);
    await sampler.more(10);
    assertWithinDeadline(t, await sampler.stop());

    // still registered in machined, so still served as a name, but without addresses or users
    t.is(dnsText(await c.agent.dns(STUB, 'foxtrot.machine', 'A')), 'rcode 0 ');
    t.regex(JSON.stringify(await c.agent.varlink(USERDB, userdbCall({ uid: 300000 }))), /NoRecordFound/);
    const listed = (await c.daemon.list(CONTROL)).find((m) => m.name === 'foxtrot');
    t.is(listed?.leaderAlive, false);
    t.deepEqual(listed?.addresses, []);
    await assertConverged(t, c);

    const removed = c.daemon.lines.length;
    await c.lab.unregister('foxtrot');
    await c.daemon.waitForAfter(removed, /machine foxtrot removed/);
    t.regex(dnsText(await c.agent.dns(STUB, 'foxtrot.machine', 'A')), /^rcode 3 /, 'NXDOMAIN: nothing stale');
    await assertConverged(t, c);
  },
);

test.serial(
  "a leader's uid_map and gid_map unreadable: the maps already known keep answering (not re-read while the user namespace stays), a machine registered meanwhile gets users once they are readable",
  async (t) => {
    const c = ctx(t);
    const alpha = c.lab.machines.get('alpha');
    if (!alpha) throw new Error('no alpha');
    // Inside the World's mount namespace (where the daemon runs) the map files are covered by a file
    // that is not a map: reading them fails as for a malformed or inaccessible map.
    const garbage = join(c.lab.world.dir, 'not-a-map');
    await writeFile(garbage, 'this is not an id map\n');
    const covered: string[] = [];
    const cover = async (pid: number): Promise<void> => {
      for (const which of ['uid_map', 'gid_map']) {
        await c.lab.world.run('mount', ['--bind', garbage, `/proc/${pid}/${which}`], { mountOnly: true });
        covered.push(`/proc/${pid}/${which}`);
      }
    };
    const sampler = Sampler.start(await standardProbes(c));
    let readableFrom = 0;
    try {
      const mark = c.daemon.lines.length;
      await cover(alpha.leaderPid);
      // a new machine whose maps are unreadable from the start
      const hotel = await c.lab.createMachine({
        ...FOXTROT,
        name: 'hotel',
        idMap: '0 500000 65536',
        interfaces: [],
      });
      await cover(hotel.leaderPid);
      const registered = c.daemon.lines.length;
      await c.lab.register('hotel');
      await c.daemon.waitForAfter(registered, /machine hotel \(container\) registered/);
      await c.daemon.waitForAfter(registered, /machine hotel: uid_map unreadable/, 15_000);
      await sampler.more(30);
      t.regex(JSON.stringify(await c.agent.varlink(USERDB, userdbCall({ uid: 500000 }))), /NoRecordFound/);
      // alpha's maps were read in the same user namespace before: a namespace's maps are written
      // once, so the daemon does not read them again (several refresh rounds have passed, --refresh 1)
      t.deepEqual(c.daemon.linesSince(mark, /machine alpha: [ug]id_map/), []);
    } finally {
      readableFrom = c.daemon.lines.length;
      for (const path of covered.reverse()) await c.lab.world.run('umount', [path], { mountOnly: true });
    }
    assertWithinDeadline(t, await sampler.stop());
    // readable again: hotel's users appear with the next refresh (--refresh 1)
    await c.daemon.waitForAfter(readableFrom, /machine hotel: uid_map readable again/, 15_000);
    // the record is applied once the rest of that refresh (gid_map, the container's files) is read
    let reply = '';
    for (const deadline = Date.now() + 5_000; Date.now() < deadline;) {
      reply = JSON.stringify(await c.agent.varlink(USERDB, userdbCall({ uid: 500000 })));
      if (reply.includes('"userName":"vu-hotel-0"')) break;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
    t.regex(reply, /"userName":"vu-hotel-0"/);
    await assertConverged(t, c);
  },
);

function userdbCall(parameters: Record<string, unknown>): Record<string, unknown> {
  return {
    method: 'io.systemd.UserDatabase.GetUserRecord',
    parameters: { service: 'io.mymachinesd.Machine', ...parameters },
  };
}
