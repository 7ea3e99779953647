/**
 * Host resolver integration with systemd-resolved: `mymachinesd serve --register-resolved` routes
 * the `machine` domain (routing and search domain) to its stub on a link of its own, through the
 * REAL systemd-resolved 252 on the same bus as the REAL systemd-machined 252, all inside a World
 * (resolved.conf without servers, no LLMNR/mDNS: nothing leaves the machine). Clients are the real
 * ones: resolvectl (D-Bus), getent with `hosts: resolve` (nss-resolve, Varlink) and dig against
 * resolved's own stub 127.0.0.53. Then resolved loses its state, and the daemon stops.
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { DaemonHandle } from './support/daemon.js';
import { getentAddresses } from './support/getent.js';
import { parseDigOutput } from './support/dig.js';
import { LAB_MACHINES, MachinedLab } from './support/machined-lab.js';
import { RESOLVED_WORLD, ResolvedInstance } from './support/resolved-lab.js';

const LINK = 'mymachines0';
const ALPHA_V4 = '198.51.100.11';
const ALPHA_V6 = 'fd42::11';
const REGISTERED =
  /^<6>registered with systemd-resolved: ~machine and search machine → 127\.0\.0\.153:53 on mymachines0 \(ifindex \d+\)$/;

interface Ctx {
  lab: MachinedLab;
  resolved: ResolvedInstance;
  /** Every daemon started, the running one last (ava gives each test a shallow copy of the context). */
  daemons: DaemonHandle[];
}

/** The daemon the tests are at. */
function current(t: { context: unknown }): DaemonHandle {
  const daemon = (t.context as Ctx).daemons.at(-1);
  if (!daemon) throw new Error('no daemon');
  return daemon;
}

/** Starts a daemon registering with resolved (waits for `ready`); it becomes current(). */
async function startDaemon(t: { context: unknown }): Promise<DaemonHandle> {
  const { lab, daemons } = t.context as Ctx;
  const daemon = await DaemonHandle.start(lab.world, ['--bus', lab.busAddress, '--register-resolved']);
  daemons.push(daemon);
  return daemon;
}

test.before(async (t) => {
  const nsswitch = readFileSync('/etc/nsswitch.conf', 'utf8').replace(/^hosts:.*$/m, 'hosts: resolve');
  const lab = await MachinedLab.start(
    LAB_MACHINES.filter((m) => m.name === 'alpha'),
    {
      ...RESOLVED_WORLD,
      nsswitch,
      resolvConf: 'nameserver 127.0.0.53\noptions timeout:2 attempts:1\n',
      hosts: '127.0.0.1 localhost\n::1 localhost\n',
    },
  );
  try {
    const resolved = new ResolvedInstance(lab.world, lab.busAddress);
    await resolved.start();
    t.context = { lab, resolved, daemons: [] } satisfies Ctx;
    await startDaemon(t);
  } catch (err) {
    await lab.dispose();
    throw err;
  }
});

test.after.always(async (t) => {
  const { lab, resolved, daemons } = t.context as Ctx;
  for (const daemon of daemons) await daemon.stop();
  await resolved.stop();
  await lab.dispose();
});

const exec = (t: { context: unknown }, cmd: string, ...args: string[]): ReturnType<MachinedLab['exec']> =>
  (t.context as Ctx).lab.exec(cmd, args);
const resolvectl = (t: { context: unknown }, ...args: string[]): ReturnType<MachinedLab['exec']> =>
  exec(t, 'resolvectl', '--no-pager', ...args);

/** Every lookup path a host program uses, for alpha.machine and for the bare alpha. */
async function assertResolves(t: ExecutionContext): Promise<void> {
  const full = await resolvectl(t, 'query', 'alpha.machine');
  t.is(full.code, 0, full.stderr);
  // resolved asks A and AAAA in parallel: either may be printed first
  t.regex(full.stdout, /^alpha\.machine: (198\.51\.100\.11|fd42::11)$/m);
  t.deepEqual(
    [...full.stdout.matchAll(/(198\.51\.100\.11|fd42::11)$/gm)].map((m) => m[1]).sort(),
    [ALPHA_V4, ALPHA_V6].sort(),
    full.stdout,
  );
  const bare = await resolvectl(t, 'query', 'alpha');
  t.is(bare.code, 0, bare.stderr);
  t.regex(bare.stdout, /\(alpha\.machine\)/, 'the single label went through the search domain');
  for (const name of ['alpha.machine', 'alpha']) {
    const getent = await exec(t, 'getent', 'ahosts', name);
    t.is(getent.code, 0, `${name}: ${getent.stderr}`);
    t.deepEqual(getentAddresses(getent.stdout).sort(), [ALPHA_V4, ALPHA_V6].sort(), name);
  }
  const dig = parseDigOutput((await exec(t, 'dig', '@127.0.0.53', '+time=3', '+tries=1', 'alpha.machine', 'A')).stdout); // prettier-ignore
  t.is(dig.status, 'NOERROR');
  t.deepEqual(
    dig.answers.map((a) =>
      a
        .split(' ')
        .filter((_, i) => i !== 1)
        .join(' '),
    ),
    [`alpha.machine. A ${ALPHA_V4}`],
    'through resolved stub (TTL left out: resolved counts it down)',
  );
}

test.serial('the registration is in place before the ready line (and READY=1)', (t) => {
  const daemon = current(t);
  const registered = daemon.lines.findIndex((l) => REGISTERED.test(l));
  const ready = daemon.lines.indexOf('<6>ready');
  t.true(registered >= 0 && registered < ready, daemon.lines.join('\n'));
});

test.serial('resolved shows the stub as DNS server and machine as domain on a link of its own', async (t) => {
  const status = await resolvectl(t, 'status', LINK);
  t.is(status.code, 0, status.stderr);
  t.regex(status.stdout, /Current Scopes: DNS/);
  t.regex(status.stdout, /-DefaultRoute/);
  t.regex(status.stdout, /DNS Servers: 127\.0\.0\.153\b/);
  t.regex(status.stdout, /DNS Domain: machine\b/);
});

test.serial(
  'resolvectl, getent with hosts: resolve, and dig @127.0.0.53 resolve alpha.machine and alpha',
  async (t) => {
    await assertResolves(t);
  },
);

test.serial(
  'other names are not routed to the stub (DefaultRoute off, domains set before the server)',
  async (t) => {
    const r = await resolvectl(t, 'query', 'www.example.org');
    t.not(r.code, 0);
    t.regex(r.stderr, /No appropriate name servers or networks for name found/);
  },
);

test.serial('after resolved restarts with its state wiped, the daemon registers again', async (t) => {
  const { resolved } = t.context as Ctx;
  const daemon = current(t);
  const mark = daemon.lines.length;
  await resolved.restart({ wipe: true });
  await daemon.waitFor(/^<6>systemd-resolved \(re\)appeared; re-applying the registration$/, 15_000, mark);
  await daemon.waitFor(REGISTERED, 15_000, mark);
  await assertResolves(t);
});

test.serial('after its link is deleted, the daemon creates it again and registers again', async (t) => {
  const { lab } = t.context as Ctx;
  const daemon = current(t);
  const mark = daemon.lines.length;
  // resolved forgets a deleted link's settings; a new link has a new ifindex and none
  await lab.world.run('ip', ['link', 'del', LINK]);
  await daemon.waitFor(/^<6>link mymachines0 was deleted; creating it again$/, 15_000, mark);
  await daemon.waitFor(REGISTERED, 15_000, mark);
  const status = await resolvectl(t, 'status', LINK);
  t.regex(status.stdout, /DNS Servers: 127\.0\.0\.153\b/);
  await assertResolves(t);
});

test.serial('on SIGTERM the daemon reverts the link: no servers, and lookups fail', async (t) => {
  const daemon = current(t);
  t.is(await daemon.stop(), 0);
  t.true(daemon.lines.includes('<6>removed the registration from systemd-resolved'), daemon.lines.join('\n'));
  const status = await resolvectl(t, 'status', LINK);
  t.notRegex(status.stdout, /DNS Servers:/);
  t.notRegex(status.stdout, /DNS Domain:/);
  const r = await resolvectl(t, 'query', 'alpha.machine');
  t.not(r.code, 0);
  t.regex(r.stderr, /No appropriate name servers or networks for name found/);
});

test.serial('a daemon started while resolved is down registers once resolved appears', async (t) => {
  const { resolved } = t.context as Ctx;
  await current(t).stop();
  await resolved.stop({ wipe: true });
  const daemon = await startDaemon(t);
  await daemon.waitFor(/^<6>systemd-resolved is not running; will register when it appears$/);
  await resolved.start();
  await daemon.waitFor(REGISTERED);
  await assertResolves(t);
});

test.serial(
  'a stuck resolved delays ready by 5 s at most; the registration completes once it answers',
  async (t) => {
    const { resolved } = t.context as Ctx;
    t.is(await current(t).stop(), 0);
    const pid = resolved.pid;
    if (pid === undefined) throw new Error('resolved is not running');
    process.kill(pid, 'SIGSTOP');
    t.teardown(() => {
      process.kill(pid, 'SIGCONT');
    });
    const daemon = await startDaemon(t);
    const ready = daemon.lines.indexOf('<6>ready');
    const slow = daemon.lines.indexOf('<4>systemd-resolved registration is slow; ready without it for now');
    t.true(slow >= 0 && slow < ready, daemon.lines.join('\n'));
    t.false(daemon.lines.some((l) => REGISTERED.test(l)));
    process.kill(pid, 'SIGCONT');
    await daemon.waitFor(REGISTERED);
    await assertResolves(t);
  },
);

/** PIDs of the `ip -o monitor link` children of a process. */
async function linkMonitors(lab: MachinedLab, parent: number): Promise<number[]> {
  const out = await lab.world.run('ps', ['-o', 'pid=,args=', '--ppid', String(parent)]).catch(() => '');
  return out.split('\n').flatMap((l) => {
    const m = /^\s*(\d+)\s+ip -o monitor link$/.exec(l);
    return m?.[1] ? [Number(m[1])] : [];
  });
}

test.serial('a daemon killed outright leaves no link watcher behind', async (t) => {
  const { lab } = t.context as Ctx;
  const daemon = current(t);
  const pid = daemon.child.pid ?? 0; // nsenter execs the daemon: one PID
  const [monitor] = await linkMonitors(lab, pid);
  t.truthy(monitor, 'the daemon watches its link');
  await daemon.stop('SIGKILL');
  // pidfd: wakes when the watcher exits (it was never our child, so no waitpid)
  const gone = await lab.exec('/usr/bin/python3', [
    '-c',
    'import os, select, sys; fd = os.pidfd_open(int(sys.argv[1])); sys.exit(0 if select.select([fd], [], [], 5)[0] else 1)',
    String(monitor),
  ]);
  t.is(gone.code, 0, `ip -o monitor link (${monitor ?? '?'}) is still running: ${gone.stderr}`);
});
