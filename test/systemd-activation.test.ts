/**
 * The daemon under systemd's protocols, without systemd as PID 1: socket activation through the real
 * `systemd-socket-activate` 252, driven by the shipped unit files (their addresses, fd names,
 * Environment= and ExecStart= at its install location), and the sd_notify(3) messages READY=1 and
 * STOPPING=1 received on a NOTIFY_SOCKET (test/support/notify-socket.py), and the unit's capability
 * bounding set and NoNewPrivileges= applied with setpriv(1) (the rest of its sandbox needs systemd as
 * PID 1). Everything runs in a World with the real systemd-machined 252 and a real namespaced
 * container; the last tests add the real systemd-resolved 252.
 */
import test from 'ava';
import { fileURLToPath } from 'node:url';
import { BIN, DaemonHandle } from './support/daemon.js';
import { parseDigOutput } from './support/dig.js';
import { LAB_MACHINES, MachinedLab, pathExists, type LabMachineSpec } from './support/machined-lab.js';
import { RESOLVED_WORLD, ResolvedInstance } from './support/resolved-lab.js';
import { socketActivation, unitCapabilities } from './support/unit-file.js';
import type { WorldOptions } from './support/world.js';

const NOTIFY_SOCKET_PY = fileURLToPath(new URL('../../test/support/notify-socket.py', import.meta.url));
const INSTALLED = '/usr/local/bin/mymachinesd';
const USERDB = '/run/systemd/userdb/io.mymachinesd.Machine';
const CONTROL = '/run/mymachinesd/io.mymachinesd.Control';

const ALPHA = LAB_MACHINES.find((m) => m.name === 'alpha');
if (!ALPHA) throw new Error('the lab has alpha');
const MACHINES: readonly LabMachineSpec[] = [ALPHA];

/** A lab whose World has the command at its install location (a tmpfs over /usr/local/bin). */
async function installedLab(options: WorldOptions = {}): Promise<MachinedLab> {
  const lab = await MachinedLab.start(MACHINES, {
    ...options,
    emptyDirs: ['/usr/local/bin', ...(options.emptyDirs ?? [])],
  });
  await lab.world.run('ln', ['-s', BIN, INSTALLED], { mountOnly: true });
  return lab;
}

async function dig(lab: MachinedLab, ...args: string[]): Promise<ReturnType<typeof parseDigOutput>> {
  const r = await lab.exec('dig', ['@127.0.0.153', '+time=10', '+tries=1', ...args]);
  return parseDigOutput(r.stdout);
}

test('started by systemd-socket-activate from the unit files, it serves DNS, userdb and control on the passed sockets', async (t) => {
  const lab = await installedLab();
  t.teardown(() => lab.dispose());
  const { command, args } = socketActivation({ env: { DBUS_SYSTEM_BUS_ADDRESS: lab.busAddress } });
  const daemon = await DaemonHandle.launch(lab.world, command, args);
  t.teardown(() => daemon.stop('SIGKILL'));
  // the outer activator holds the UDP socket and waits for a packet; the inner one then binds the
  // stream sockets and execs the daemon at once (the datagram is still waiting on fd 3)
  await daemon.waitFor(/^Listening on 127\.0\.0\.153:53 as 3\.$/);
  const first = await dig(lab, 'alpha.machine', 'A');
  t.is(first.status, 'NOERROR');
  t.deepEqual(first.answers, ['alpha.machine. 0 A 198.51.100.11'], 'the query that started it is answered');
  await daemon.ready();

  // one line per listener, with the real address, all of them passed in
  const listening = daemon.lines.filter((l) => /listening on/.test(l));
  t.deepEqual(listening, [
    `<6>userdb: varlink: listening on ${USERDB} (inherited fd 5)`,
    `<6>control: varlink: listening on ${CONTROL} (inherited fd 6)`,
    '<6>dns: listening on udp 127.0.0.153:53 (inherited)',
    '<6>dns: listening on tcp 127.0.0.153:53 (inherited)',
  ]);
  t.false(
    daemon.lines.some((l) => /ignoring fd/.test(l)),
    'every passed fd has a name the daemon knows',
  );

  const tcp = await dig(lab, '+tcp', 'alpha.machine', 'AAAA');
  t.deepEqual(tcp.answers, ['alpha.machine. 0 AAAA fd42::11']);
  const user = await lab.exec('userdbctl', [
    '-N',
    '-s',
    'io.mymachinesd.Machine',
    '--output=classic',
    'user',
    'vu-alpha-0',
  ]);
  t.is(user.code, 0, user.stderr);
  t.regex(user.stdout, /^vu-alpha-0:x:100000:65534:UID 0 of Container alpha:\/:\/usr\/sbin\/nologin$/m);
  const list = await lab.exec(process.execPath, [BIN, 'list']);
  t.is(list.code, 0, list.stderr);
  t.regex(list.stdout, /^alpha\s+container\s+running\s+100000-165535/m);

  // the unit's Environment= reached the daemon, and LISTEN_PID named it
  const pid = daemon.child.pid ?? 0; // nsenter and both activators exec: one PID throughout
  const environ = (await lab.world.run('cat', [`/proc/${pid}/environ`])).split('\0');
  t.true(environ.includes('SYSTEMD_BYPASS_USERDB=io.mymachinesd.Machine'));
  t.true(environ.includes(`LISTEN_PID=${pid}`));
  t.true(environ.includes('LISTEN_FDNAMES=dns:dns:userdb:control'));

  t.is(await daemon.stop(), 0);
  // the socket files belong to whoever bound them (systemd): a later start must find them in place
  t.true(await pathExists(lab.world.hostPath(USERDB)));
  t.true(await pathExists(lab.world.hostPath(CONTROL)));
});

test('a passed userdb socket at another path answers as the service that path names', async (t) => {
  const lab = await installedLab();
  t.teardown(() => lab.dispose());
  const other = '/run/systemd/userdb/io.example.Machines';
  const daemon = await DaemonHandle.launch(lab.world, 'systemd-socket-activate', [
    '--listen', other, '--fdname=userdb', INSTALLED, 'serve', '--bus', lab.busAddress, '--no-dns', '--no-control',
  ]); // prettier-ignore
  t.teardown(() => daemon.stop('SIGKILL'));
  await daemon.waitFor(/^Listening on \/run\/systemd\/userdb\/io\.example\.Machines as 3\.$/);
  const lookup = (): ReturnType<MachinedLab['exec']> =>
    lab.exec('userdbctl', ['-N', '-s', 'io.example.Machines', '--output=classic', 'user', 'vu-alpha-0']);
  // The lookup that starts the daemon is answered at once, from what it knows before its first sync
  // with machined (nothing), even while dbus-daemon is stuck: dbus-daemon's own user lookups reach
  // this socket, so waiting for D-Bus here could deadlock both (src/daemon/serve.ts). Under systemd
  // the service also starts at boot (WantedBy=multi-user.target), long before such a lookup.
  const busPid = lab.bus.pid;
  if (busPid === undefined) throw new Error('the lab bus has no pid');
  process.kill(busPid, 'SIGSTOP');
  t.teardown(() => {
    process.kill(busPid, 'SIGCONT');
  });
  const first = await lookup();
  process.kill(busPid, 'SIGCONT');
  t.is(first.code, 1, first.stdout);
  t.regex(first.stderr, /User vu-alpha-0 does not exist/);
  t.false(daemon.lines.includes('<6>ready'), 'answered before the first sync');
  await daemon.ready();
  const user = await lookup();
  t.is(user.code, 0, `${user.stderr}\n${daemon.lines.join('\n')}`);
  t.regex(user.stdout, /^vu-alpha-0:x:100000:65534:/m);
  t.true(
    daemon.lines.includes(
      `<6>userdb: the passed socket is ${other}, not ${USERDB}: answering as service io.example.Machines`,
    ),
  );
  t.is(await daemon.stop(), 0);
});

test('READY=1 arrives after the ready line, once every listener is up; STOPPING=1 on SIGTERM, then exit 0', async (t) => {
  const lab = await installedLab();
  t.teardown(() => lab.dispose());
  // notify-socket.py writes each notification to the stderr it shares with the daemon: the lines
  // below are in the order things happened
  const daemon = await DaemonHandle.launch(lab.world, '/usr/bin/python3', [
    NOTIFY_SOCKET_PY, '/run/notify.sock', '--',
    process.execPath, BIN, 'serve', '--bus', lab.busAddress, '--dns', '127.0.0.153:53',
  ]); // prettier-ignore
  t.teardown(() => daemon.stop('SIGKILL'));
  await daemon.waitFor(/^NOTIFY pid=\d+ .*READY=1/, 30_000);
  const at = (re: RegExp): number => daemon.lines.findIndex((l) => re.test(l));
  const ready = at(/^<6>ready$/);
  const readyNotified = at(/^NOTIFY pid=\d+ .*READY=1/);
  t.true(ready >= 0 && ready < readyNotified, daemon.lines.join('\n'));
  for (const listener of [
    /userdb: varlink: listening/,
    /control: varlink: listening/,
    /dns: listening on udp/,
  ])
    t.true(at(listener) >= 0 && at(listener) < readyNotified, String(listener));
  t.is(daemon.lines.filter((l) => /READY=1/.test(l)).length, 1, 'READY=1 once');
  // and at that moment the machines are known: the first sync came before ready
  t.deepEqual((await dig(lab, 'alpha.machine', 'A')).answers, ['alpha.machine. 0 A 198.51.100.11']);

  t.is(await daemon.stop('SIGTERM'), 0);
  const stopping = at(/^<6>SIGTERM: stopping$/);
  const stoppingNotified = at(/^NOTIFY pid=\d+ .*STOPPING=1/);
  const stopped = at(/^<6>stopped$/);
  t.true(stopping >= 0 && stopping < stoppingNotified && stoppingNotified < stopped, daemon.lines.join('\n'));
});

test("with only the unit's capabilities, activated and notifying, it registers with the real resolved", async (t) => {
  const lab = await installedLab(RESOLVED_WORLD);
  t.teardown(() => lab.dispose());
  const resolved = new ResolvedInstance(lab.world, lab.busAddress);
  await resolved.start();
  t.teardown(() => resolved.stop());
  // as systemd would run it: sockets bound by the activators, then the unit's bounding set and
  // NoNewPrivileges= (setpriv), then ExecStart= with --register-resolved, NOTIFY_SOCKET set
  // (systemd-socket-activate passes on only the environment it is told to: NOTIFY_SOCKET too)
  const { command, args } = socketActivation({
    env: { DBUS_SYSTEM_BUS_ADDRESS: lab.busAddress, NOTIFY_SOCKET: '/run/notify.sock' },
    options: ['--register-resolved'],
    wrapper: unitCapabilities(),
  });
  const daemon = await DaemonHandle.launch(lab.world, '/usr/bin/python3', [
    NOTIFY_SOCKET_PY, '/run/notify.sock', '--', command, ...args,
  ]); // prettier-ignore
  t.teardown(() => daemon.stop('SIGKILL'));
  await daemon.waitFor(/^Listening on 127\.0\.0\.153:53 as 3\.$/);
  t.deepEqual((await dig(lab, 'alpha.machine', 'A')).answers, ['alpha.machine. 0 A 198.51.100.11']);
  const notified = await daemon.waitFor(/^NOTIFY pid=\d+ .*READY=1/, 30_000);

  // systemd-notify could not claim the daemon's PID without CAP_SYS_ADMIN: the message comes from
  // its own, which is why the unit says NotifyAccess=all
  const [, sender, main] = /^NOTIFY pid=(\d+) MAINPID=(\d+) READY=1$/.exec(notified) ?? [];
  t.truthy(main, notified);
  t.not(sender, main);
  const status = await lab.world.run('cat', [`/proc/${main ?? ''}/status`]);
  // CAP_NET_ADMIN (12) and CAP_SYS_PTRACE (19), nothing else
  t.regex(status, /^CapEff:\s+0000000000081000$/m);
  t.regex(status, /^NoNewPrivs:\s+1$/m);

  // CAP_NET_ADMIN was enough for the link, and resolved took the root sender's settings
  t.true(daemon.lines.some((l) => /^<6>registered with systemd-resolved: .* on mymachines0 /.test(l)));
  const query = await lab.exec('resolvectl', ['--no-pager', 'query', 'alpha.machine']);
  t.is(query.code, 0, query.stderr);
  t.regex(query.stdout, /198\.51\.100\.11/);

  t.is(await daemon.stop('SIGTERM'), 0);
  t.true(daemon.lines.some((l) => /^NOTIFY pid=\d+ (MAINPID=\d+ )?STOPPING=1$/.test(l)));
  t.true(daemon.lines.includes('<6>removed the registration from systemd-resolved'), daemon.lines.join('\n'));
});

test("without socket activation the unit's capabilities cannot bind port 53: exit 1 naming it", async (t) => {
  const lab = await installedLab();
  t.teardown(() => lab.dispose());
  const daemon = await DaemonHandle.launch(lab.world, unitCapabilities()[0] ?? 'setpriv', [
    ...unitCapabilities().slice(1), INSTALLED, 'serve', '--bus', lab.busAddress, '--dns', '127.0.0.153:53',
  ]); // prettier-ignore
  t.is(await daemon.exited, 1);
  const errors = daemon.lines.filter((l) => l.startsWith('<3>'));
  t.is(errors.length, 1, daemon.lines.join('\n'));
  t.regex(errors[0] ?? '', /127\.0\.0\.153:53/);
  t.regex(errors[0] ?? '', /EACCES|permission denied/i);
});
