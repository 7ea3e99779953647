/**
 * Host resolver integration without systemd-resolved (Debian 12's default): /etc/resolv.conf names
 * the stub first and the real upstream after it, with `search machine`; nsswitch.conf says
 * `hosts: files dns`; the daemon runs with `--forward resolv.conf`. All of it inside a World (its own
 * /etc files, network and /run) with the real systemd-machined 252 and a real namespaced container
 * whose veth has a World-side address, so the World can route to it. The "real upstream" is a test
 * server on a loopback address of the World: no query leaves the machine.
 */
import test from 'ava';
import { readFileSync } from 'node:fs';
import type { ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { DaemonHandle } from './support/daemon.js';
import { getentAddresses } from './support/getent.js';
import { parseDigOutput } from './support/dig.js';
import { LAB_MACHINES, MachinedLab, type LabMachineSpec } from './support/machined-lab.js';
import { UPSTREAM_ANSWER, WorldUpstream } from './support/world-upstream.js';

const UPSTREAM = '127.0.0.2';
const ALPHA_V4 = '198.51.100.11';
const ALPHA_V6 = 'fd42::11';

const alpha = LAB_MACHINES.find((m) => m.name === 'alpha');
const alphaLink = alpha?.interfaces?.[0];
if (!alpha || !alphaLink) throw new Error('the lab has alpha with one interface');
/** alpha, with addresses in its subnets on the World side of ve-alpha: the World routes to it. */
const ROUTED_ALPHA: LabMachineSpec = {
  ...alpha,
  interfaces: [{ ...alphaLink, hostAddresses: ['198.51.100.1/24', 'fd42::1/64'] }],
};

const RESOLV_CONF = `# the stub first; the upstream it forwards other names to (and glibc's fallback) after it
nameserver 127.0.0.153
nameserver ${UPSTREAM}
search machine
options timeout:2 attempts:1
`;

interface Ctx {
  lab: MachinedLab;
  daemon: DaemonHandle;
  upstream: WorldUpstream;
}

test.before(async (t) => {
  const nsswitch = readFileSync('/etc/nsswitch.conf', 'utf8').replace(/^hosts:.*$/m, 'hosts: files dns');
  const lab = await MachinedLab.start([ROUTED_ALPHA], {
    nsswitch,
    resolvConf: RESOLV_CONF,
    hosts: '127.0.0.1 localhost\n::1 localhost\n',
  });
  try {
    const upstream = await WorldUpstream.start(lab.world, 'answer', UPSTREAM);
    const daemon = await DaemonHandle.start(lab.world, ['--bus', lab.busAddress, '--forward', 'resolv.conf']);
    t.context = { lab, daemon, upstream } satisfies Ctx;
  } catch (err) {
    await lab.dispose();
    throw err;
  }
});

test.after.always(async (t) => {
  const { lab, daemon, upstream } = t.context as Ctx;
  await daemon.stop();
  await upstream.stop();
  await lab.dispose();
});

const exec = (t: { context: unknown }, cmd: string, ...args: string[]): ReturnType<MachinedLab['exec']> =>
  (t.context as Ctx).lab.exec(cmd, args);

test.serial('the stub skips itself in resolv.conf and forwards to the nameserver after it', (t) => {
  const { daemon } = t.context as Ctx;
  t.true(
    daemon.lines.includes('<4>dns: not forwarding to 127.0.0.153 from /etc/resolv.conf: it is this stub'),
    daemon.lines.join('\n'),
  );
});

test.serial(
  'getent hosts alpha and getent ahosts alpha.machine resolve through nss-dns and the stub',
  async (t) => {
    const hosts = await exec(t, 'getent', 'hosts', 'alpha');
    t.is(hosts.code, 0, hosts.stderr);
    // the bare name became alpha.machine through `search machine`
    t.regex(
      hosts.stdout,
      new RegExp(`^(${ALPHA_V6}|${ALPHA_V4.replace(/\./g, '\\.')})\\s+alpha\\.machine$`, 'm'),
    );
    const ahosts = await exec(t, 'getent', 'ahosts', 'alpha.machine');
    t.is(ahosts.code, 0, ahosts.stderr);
    t.deepEqual(getentAddresses(ahosts.stdout).sort(), [ALPHA_V4, ALPHA_V6].sort());
    const v4 = await exec(t, 'getent', 'ahostsv4', 'alpha');
    t.deepEqual(getentAddresses(v4.stdout), [ALPHA_V4]);
  },
);

test.serial('ping -c1 alpha reaches the container, over IPv4 and IPv6', async (t) => {
  const ping = await exec(t, 'ping', '-c1', '-W3', 'alpha');
  t.is(ping.code, 0, `${ping.stdout}${ping.stderr}`);
  // iputils names the search-expanded name and the address glibc sorted first
  t.regex(ping.stdout, /^PING alpha(\(| )alpha\.machine \((198\.51\.100\.11|fd42::11)\)/m);
  t.regex(ping.stdout, /1 packets transmitted, 1 received/);
  // the reply's source is named by a PTR lookup: the stub answers those too
  const v4 = await exec(t, 'ping', '-4', '-c1', '-W3', 'alpha');
  t.regex(v4.stdout, /from alpha\.machine \(198\.51\.100\.11\): icmp_seq=1/, v4.stdout);
  const v6 = await exec(t, 'ping', '-6', '-c1', '-W3', 'alpha');
  t.regex(v6.stdout, /from alpha\.machine \(fd42::11\): icmp_seq=1/, v6.stdout);
});

test.serial('a name outside the zone is forwarded to the upstream; a missing machine is not', async (t) => {
  const { upstream } = t.context as Ctx;
  const direct = parseDigOutput((await exec(t, 'dig', '@127.0.0.153', '+time=3', '+tries=1', 'www.example.org', 'A')).stdout); // prettier-ignore
  t.is(direct.status, 'NOERROR');
  t.deepEqual(
    direct.answers,
    [`www.example.org. 60 A ${UPSTREAM_ANSWER}`],
    'the upstream answered through the stub',
  );
  await upstream.waitForQuery('www.example.org');
  const getent = await exec(t, 'getent', 'ahostsv4', 'mail.example.org');
  t.is(getent.code, 0, getent.stderr);
  t.deepEqual(getentAddresses(getent.stdout), [UPSTREAM_ANSWER]);
  // The upstream answers every name, so only the stub can make this fail: its NXDOMAIN for a
  // machine that does not exist is final for glibc (no fallback to the next nameserver).
  const missing = await exec(t, 'getent', 'hosts', 'nosuch.machine');
  t.is(missing.code, 2, missing.stdout);
  t.false(
    upstream.queries.some((q) => q.name.endsWith('.machine')),
    'the zone is never forwarded',
  );
});

/** A TCP listener on port 22 inside the container's network namespace that speaks the SSH banner. */
const BANNER_SERVER = String.raw`
import socket, sys
s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("::", 22))
s.listen(1)
print("listening", flush=True)
c, peer = s.accept()
c.sendall(b"SSH-2.0-mymachinesd-test\r\n")
line = c.makefile("rb").readline().decode().strip()
print("client " + peer[0] + " " + line, flush=True)
c.close()
`;

/** Reads a child's stdout line by line: the next line, or '' once it has ended or after `ms`. */
function lineReader(child: ChildProcess): (ms: number) => Promise<string> {
  if (!child.stdout) throw new Error('no stdout');
  const lines = createInterface({ input: child.stdout })[Symbol.asyncIterator]();
  return async (ms) => {
    let timer: NodeJS.Timeout | undefined;
    const late = new Promise<string>((resolve) => (timer = setTimeout(() => resolve(''), ms)));
    try {
      return await Promise.race([lines.next().then((n) => (n.done === true ? '' : n.value)), late]);
    } finally {
      clearTimeout(timer);
    }
  };
}

test.serial('ssh alpha resolves the name and connects to a listener inside the container', async (t) => {
  const { lab } = t.context as Ctx;
  const leader = lab.machines.get('alpha')?.leaderPid;
  if (leader === undefined) throw new Error('alpha has a leader');
  const server = await lab.world.spawn('nsenter', ['-t', String(leader), '-n', '--', '/usr/bin/python3', '-c', BANNER_SERVER]); // prettier-ignore
  t.teardown(() => lab.world.stop(server, 'SIGKILL'));
  const nextLine = lineReader(server);
  t.is(await nextLine(10_000), 'listening');
  // No host keys, no user: what this proves is name → address → TCP into the container's netns, and
  // that ssh speaks to what listens there (its banner). Authentication is not part of the set-up.
  const ssh = await exec(t, 'ssh', '-v', '-F', '/dev/null', '-o', 'BatchMode=yes', '-o', 'ConnectTimeout=5', '-o', 'StrictHostKeyChecking=no', '-o', 'UserKnownHostsFile=/dev/null', 'alpha', 'true'); // prettier-ignore
  t.regex(ssh.stderr, /debug1: Connecting to alpha \[(198\.51\.100\.11|fd42::11)\] port 22\./);
  t.regex(ssh.stderr, /debug1: Connection established\./);
  t.regex(ssh.stderr, /Remote protocol version 2\.0, remote software version mymachinesd-test/);
  t.regex(await nextLine(5_000), /^client \S+ SSH-2\.0-OpenSSH/, ssh.stderr);
});
