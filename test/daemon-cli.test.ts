/**
 * The CLI contract (DESIGN.md §3) from the outside: `mymachinesd` as a process in a World with the
 * real systemd-machined 252 and real namespaced containers. Exit statuses and their one-line
 * reasons, SIGTERM while answers are in flight, and the `list` / `resolve` clients.
 */
import test from 'ava';
import { z } from 'zod';
import { DaemonHandle } from './support/daemon.js';
import { parseDigOutput } from './support/dig.js';
import { LAB_MACHINES, MachinedLab, pathExists, waitForPathGone } from './support/machined-lab.js';
import { UPSTREAM_ANSWER, WorldUpstream } from './support/world-upstream.js';

const STUB = '127.0.0.153';
const CONTROL = '/run/mymachinesd/io.mymachinesd.Control';
const MACHINES = LAB_MACHINES.filter((m) => m.name === 'alpha' || m.name === 'bravo-two');

interface Ctx {
  lab: MachinedLab;
  daemon: DaemonHandle;
}

test.before(async (t) => {
  const lab = await MachinedLab.start(MACHINES);
  try {
    const daemon = await DaemonHandle.start(lab.world, ['--bus', lab.busAddress, '--dns', `${STUB}:53`]);
    t.context = { lab, daemon } satisfies Ctx;
  } catch (err) {
    await lab.dispose();
    throw err;
  }
});

test.after.always(async (t) => {
  const { lab, daemon } = t.context as Ctx;
  await daemon.stop();
  await lab.dispose();
});

const cli = (t: { context: unknown }, ...args: string[]): ReturnType<typeof DaemonHandle.run> =>
  DaemonHandle.run((t.context as Ctx).lab.world, args);

const BAD_FLAGS: readonly (readonly string[])[] = [
  [],
  ['frobnicate'],
  ['serve', '--bogus'],
  ['serve', 'extra'],
  ['serve', '--dns', 'localhost'],
  ['serve', '--ttl', '-1'],
  ['serve', '--log-level', 'loud'],
  ['serve', '--userdb', 'relative/path'],
  ['serve', '--no-dns', '--forward', '127.0.0.1'],
  ['serve', '--register-resolved=no/slashes'],
  ['resolve'],
  ['list', 'extra'],
  ['user'],
];

test('bad flags exit 2 with one line on stderr and nothing on stdout', async (t) => {
  for (const args of BAD_FLAGS) {
    const r = await cli(t, ...args);
    t.is(r.code, 2, `${args.join(' ')}: ${r.lines.join('\n')}`);
    t.is(r.lines.length, 1, `${args.join(' ')}: ${r.lines.join('\n')}`);
    t.regex(r.lines[0] ?? '', /^mymachinesd: \S/);
    t.is(r.stdout, '');
  }
});

test('a DNS address already in use exits 1 naming it, and removes the sockets it had bound', async (t) => {
  const { lab } = t.context as Ctx;
  const r = await cli(t, 'serve', '--bus', lab.busAddress, '--dns', `${STUB}:53`, '--userdb', '/run/busy/userdb', '--control', '/run/busy/control'); // prettier-ignore
  t.is(r.code, 1, r.lines.join('\n'));
  const errors = r.lines.filter((l) => l.startsWith('<3>'));
  t.is(errors.length, 1, r.lines.join('\n'));
  t.regex(errors[0] ?? '', /127\.0\.0\.153:53/);
  t.false(await pathExists(lab.world.hostPath('/run/busy/userdb')));
  t.false(await pathExists(lab.world.hostPath('/run/busy/control')));
});

test('a socket path that cannot be created exits 1 naming the listener and the path', async (t) => {
  const { lab } = t.context as Ctx;
  await lab.world.run('mkdir', ['-p', '/run/ro'], { mountOnly: true });
  await lab.world.run('mount', ['-t', 'tmpfs', '-o', 'ro,size=64k', 'tmpfs', '/run/ro'], { mountOnly: true });
  for (const which of ['userdb', 'control'] as const) {
    const path = `/run/ro/${which}`;
    const other = which === 'userdb' ? ['--no-control'] : ['--no-userdb'];
    const r = await cli(t, 'serve', '--bus', lab.busAddress, '--no-dns', `--${which}`, path, ...other);
    t.is(r.code, 1, r.lines.join('\n'));
    const errors = r.lines.filter((l) => l.startsWith('<3>'));
    t.is(errors.length, 1, r.lines.join('\n'));
    t.true(errors[0]?.startsWith(`<3>${which}: cannot listen on ${path}: `), errors[0]);
  }
});

test('SIGTERM while a UDP and a TCP answer wait for the upstream: both are finished, sockets removed, exit 0', async (t) => {
  const { lab } = t.context as Ctx;
  const upstream = await WorldUpstream.start(lab.world, 'held', '127.0.0.2');
  t.teardown(() => upstream.stop());
  const control = '/run/slow/control';
  const userdb = '/run/slow/userdb';
  const daemon = await DaemonHandle.start(lab.world, [
    '--bus', lab.busAddress, '--dns', '127.0.0.154:53', '--forward', '127.0.0.2',
    '--userdb', userdb, '--control', control,
  ]); // prettier-ignore
  t.teardown(() => daemon.stop('SIGKILL'));
  const ask = (transport: '+notcp' | '+tcp', name: string): ReturnType<MachinedLab['exec']> =>
    lab.exec('dig', ['@127.0.0.154', '+time=5', '+tries=1', transport, name, 'A']);
  const udp = ask('+notcp', 'slow-udp.example');
  const tcp = ask('+tcp', 'slow-tcp.example');
  await upstream.waitForQuery('slow-udp.example');
  await upstream.waitForQuery('slow-tcp.example');

  t.true(daemon.child.kill('SIGTERM'));
  await daemon.waitFor(/^<6>SIGTERM: stopping$/);
  // it has stopped accepting (the control socket is gone) but not exited: answers are owed
  await waitForPathGone(lab.world.hostPath(control));
  t.is(daemon.child.exitCode, null);
  const late = await lab.exec('dig', ['@127.0.0.154', '+time=1', '+tries=1', '+tcp', 'alpha.machine']);
  t.notRegex(late.stdout, /status: NOERROR/, 'no new TCP connections once stopping');

  upstream.release();
  for (const [name, reply] of [
    ['slow-udp.example', await udp],
    ['slow-tcp.example', await tcp],
  ] as const) {
    const answer = parseDigOutput(reply.stdout);
    t.is(answer.status, 'NOERROR', reply.stdout);
    t.deepEqual(answer.answers, [`${name}. 60 A ${UPSTREAM_ANSWER}`]);
  }
  t.is(await daemon.exited, 0);
  t.true(daemon.lines.includes('<6>stopped'));
  t.false(await pathExists(lab.world.hostPath(userdb)));
  t.false(await pathExists(lab.world.hostPath(control)));
});

test('resolve prints every address as a socket would use it, the link-local one with %ve-alpha', async (t) => {
  for (const name of ['alpha', 'alpha.machine', 'ALPHA']) {
    const r = await cli(t, 'resolve', name);
    t.is(r.code, 0, r.lines.join('\n'));
    t.deepEqual(r.stdout.split('\n').filter(Boolean), [
      '198.51.100.11',
      'fd42::11',
      'fe80::ff:fe00:a01%ve-alpha',
    ]);
  }
  const json = await cli(t, 'resolve', '--json', 'alpha');
  const machine = z
    .object({
      name: z.string(),
      addresses: z.array(z.object({ socketAddress: z.string(), scope: z.number() })),
    })
    .parse(JSON.parse(json.stdout));
  t.is(machine.name, 'alpha');
  const linkLocal = machine.addresses.find((a) => a.socketAddress.startsWith('fe80::'));
  t.is(linkLocal?.socketAddress, 'fe80::ff:fe00:a01%ve-alpha');
  t.true((linkLocal?.scope ?? 0) > 0, 'the ifindex of ve-alpha');
});

test('resolve of an unknown machine exits 1 with one line', async (t) => {
  const r = await cli(t, 'resolve', 'nosuch');
  t.is(r.code, 1);
  t.deepEqual(r.lines, ['mymachinesd: no machine named "nosuch"']);
  t.is(r.stdout, '');
});

test('serve brings its heap back to its live data and limits its growth after the first sync and the DNS stub, before ready', (t) => {
  const { lines } = (t.context as Ctx).daemon;
  const at = (re: RegExp): number => lines.findIndex((l) => re.test(l));
  const synced = at(/synced \d+ machine\(s\)/);
  const dns = at(/dns: listening on udp/);
  const heap = at(/heap: [\d.]+ MB in use after a full collection \(\d+ ms\), growth limited from now on$/);
  const ready = at(/>ready$/);
  t.true(synced >= 0 && dns > synced && heap > dns && ready > heap, lines.join('\n'));
});

test('list shows every machine with its id ranges and addresses; --json gives the same machines', async (t) => {
  const r = await cli(t, 'list');
  t.is(r.code, 0, r.lines.join('\n'));
  const rows = r.stdout.split('\n');
  t.regex(rows[0] ?? '', /^MACHINE\s+CLASS\s+STATE\s+UIDS\s+GIDS\s+ADDRESSES$/);
  t.truthy(rows.find((l) => /^alpha\s+container\s+running\s+100000-165535\s+100000-165535\s+198\.51\.100\.11 fd42::11 fe80::ff:fe00:a01%ve-alpha$/.test(l)), r.stdout); // prettier-ignore
  t.truthy(rows.find((l) => /^bravo-two\s+container\s+running\s+200000-265535\s+200000-265535\s+198\.51\.100\.21 /.test(l)), r.stdout); // prettier-ignore
  t.regex(r.stdout, /^2 machine\(s\)\.$/m);
  const json = await cli(t, 'list', '--json');
  t.is(json.code, 0);
  const parsed = z
    .object({
      machines: z.array(z.object({ name: z.string(), class: z.string() })),
      status: z.object({
        machines: z.number(),
        refreshRoundMs: z.number(),
        addressCalls: z.number(),
        addressesKept: z.number(),
      }),
    })
    .parse(JSON.parse(json.stdout));
  t.deepEqual(parsed.machines.map((m) => m.name).sort(), ['alpha', 'bravo-two']);
  // a few machines: every machine's addresses re-read every --refresh seconds (10 s by default)
  t.is(parsed.status.refreshRoundMs, 10_000);
  // the first sync asked machined for both containers' addresses
  t.true(parsed.status.addressCalls >= 2, JSON.stringify(parsed.status));
});

test('the clients say clearly that the daemon is not running, and exit 1', async (t) => {
  for (const args of [
    ['list', '--control', '/run/nothing/control'],
    ['resolve', 'alpha', '--control', '/run/nothing/control'],
    ['user', 'vu-alpha-0', '--userdb', '/run/nothing/userdb'],
  ]) {
    const r = await cli(t, ...args);
    t.is(r.code, 1, args.join(' '));
    t.is(r.lines.length, 1, r.lines.join('\n'));
    t.regex(
      r.lines[0] ?? '',
      /^mymachinesd: cannot reach the (control|userdb) socket at \/run\/nothing\/\w+ — is mymachinesd running\?/,
    );
  }
  t.true(
    await pathExists((t.context as Ctx).lab.world.hostPath(CONTROL)),
    'the real daemon is running meanwhile',
  );
});
