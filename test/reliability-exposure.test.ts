/**
 * What the daemon exposes, and to whom, checked on the running PROCESS (`mymachinesd serve` in a
 * World): by default only loopback and two unix sockets; a stub on another address answers — and
 * forwards for — only the clients of `--allow-net` (default: loopback and the host's own
 * addresses), checked from a network namespace of our own on the other end of a veth pair; the
 * userdb socket is 0666; the control and userdb interfaces have only read-only methods and answer
 * anything else with MethodNotFound; and the daemon runs without root (socket activation binds its
 * sockets), with and without CAP_SYS_PTRACE, against the REAL machined 252. Machines of the first
 * tests come from FakeMachined, a TEST DOUBLE of machined.
 */
import test, { type ExecutionContext } from 'ava';
import { chmod, stat } from 'node:fs/promises';
import { fileURLToPath } from 'node:url';
import { z } from 'zod';
import { AgentHandle, type DnsResult } from './support/agent.js';
import { DaemonHandle } from './support/daemon.js';
import { query } from './support/dns.js';
import { FakeMachinedHandle } from './support/fake.js';
import { fakeMachine } from './support/fake-machined.js';
import { startUsernsLeader } from './support/leaders.js';
import { LAB_MACHINES, MachinedLab } from './support/machined-lab.js';
import { RawPeer } from './support/varlink.js';
import { World } from './support/world.js';

const USERDB = '/run/systemd/userdb/io.mymachinesd.Machine';
const CONTROL = '/run/mymachinesd/io.mymachinesd.Control';
const ACTIVATE_PY = fileURLToPath(new URL('../../test/support/activate.py', import.meta.url));
const NOBODY = 65534;

const dnsText = (r: DnsResult): string =>
  'error' in r ? `error ${r.error}` : `rcode ${r.rcode} ${r.answers.join(', ')}`;

/** A World with the double and `web` (192.0.2.10, a user namespace at 300000); `prepare` runs before the daemon starts. */
async function world(
  t: ExecutionContext,
  prepare: (w: World) => Promise<void> = () => Promise.resolve(),
): Promise<{ w: World; fake: FakeMachinedHandle }> {
  const w = await World.create();
  t.teardown(() => w.dispose());
  const fake = await FakeMachinedHandle.start();
  t.teardown(() => fake.stop());
  const leader = await startUsernsLeader(w, '0 300000 65536');
  await fake.seed([fakeMachine('web', leader.pid, { addresses: [[2, [192, 0, 2, 10]]] })]);
  await prepare(w);
  return { w, fake };
}

async function daemon(t: ExecutionContext, w: World, args: readonly string[]): Promise<DaemonHandle> {
  const d = await DaemonHandle.start(w, args);
  t.teardown(async () => {
    await d.stop();
  });
  return d;
}

/** `ss` lines of the daemon's listening sockets: `udp 127.0.0.153:53`, `unix /run/…`. */
async function listening(w: World, pid: number): Promise<string[]> {
  const out: string[] = [];
  for (const [flags, kind] of [
    ['-Hlnup', 'udp'],
    ['-Hlntp', 'tcp'],
    ['-Hlxp', 'unix'],
  ] as const) {
    const r = await w.run('ss', [flags]);
    for (const line of r.split('\n')) {
      if (!line.includes(`pid=${pid},`)) continue;
      const local = line.trim().split(/\s+/)[kind === 'unix' ? 4 : 3];
      out.push(`${kind} ${local ?? '?'}`);
    }
  }
  return out.sort();
}

test('[test double] by default the daemon listens on 127.0.0.153:53 over UDP and TCP and on its two unix sockets, nothing else; the userdb socket is 0666', async (t) => {
  const { w, fake } = await world(t);
  const d = await daemon(t, w, ['--bus', fake.busAddress]);
  t.deepEqual(await listening(w, d.pid), [
    `tcp 127.0.0.153:53`,
    `udp 127.0.0.153:53`,
    `unix ${CONTROL}`,
    `unix ${USERDB}`,
  ]);
  const mode = async (path: string): Promise<string> =>
    ((await stat(w.hostPath(path))).mode & 0o7777).toString(8);
  t.is(await mode(USERDB), '666', 'any local user may ask for users, as of machined (reference §2.1)');
  t.is(await mode(CONTROL), '666', 'read-only: what anyone can already ask machined on the bus');
  t.is(await mode('/run/mymachinesd'), '755');
});

// ---- allow-net, from another network namespace ------------------------------------------------------

/**
 * A veth pair between the World (10.99.0.1) and a namespace `client` made inside it (10.99.0.2 and
 * 10.99.0.3), and an upstream DNS server on 127.0.0.2:53 in the World. No address is assigned
 * outside namespaces we made.
 */
async function twoNamespaces(w: World): Promise<void> {
  const run = (args: string[]): Promise<string> => w.run('ip', args);
  await run(['netns', 'add', 'client']);
  await run(['link', 'add', 'v-stub', 'type', 'veth', 'peer', 'name', 'v-client']);
  await run(['link', 'set', 'v-client', 'netns', 'client']);
  await run(['addr', 'add', '10.99.0.1/24', 'dev', 'v-stub']);
  await run(['link', 'set', 'v-stub', 'up']);
  await run(['-n', 'client', 'link', 'set', 'lo', 'up']);
  await run(['-n', 'client', 'addr', 'add', '10.99.0.2/24', 'dev', 'v-client']);
  await run(['-n', 'client', 'addr', 'add', '10.99.0.3/24', 'dev', 'v-client']);
  await run(['-n', 'client', 'link', 'set', 'v-client', 'up']);
}

const STUB_OUT = { server: '10.99.0.1', port: 53 };
const STUB_LO = { server: '127.0.0.153', port: 53 };
const UPSTREAM = { server: '127.0.0.2', port: 53 };

async function netSetup(t: ExecutionContext, allow: readonly string[]) {
  const { w, fake } = await world(t, twoNamespaces);
  const upstream = await AgentHandle.start(w);
  t.teardown(() => upstream.stop());
  await upstream.upstream(UPSTREAM);
  const d = await daemon(t, w, [
    '--bus', fake.busAddress, '--dns', '10.99.0.1:53', '--dns', '127.0.0.153:53', '--forward', '127.0.0.2:53',
    ...allow.flatMap((n) => ['--allow-net', n]),
  ]); // prettier-ignore
  const inside = await AgentHandle.start(w);
  t.teardown(() => inside.stop());
  const outside = await AgentHandle.start(w, { netns: 'client' });
  t.teardown(() => outside.stop());
  return { d, upstream, inside, outside };
}

/** Asks for a machine and for a name that would be forwarded, over UDP and TCP, from `bind`. */
async function ask(agent: AgentHandle, target: { server: string; port: number }, bind: string, tag: string) {
  const opts = { bind, timeoutMs: 1_000 };
  return {
    udp: dnsText(await agent.dns(target, 'web.machine', 'A', opts)),
    tcp: dnsText(await agent.dns(target, 'web.machine', 'A', { ...opts, transport: 'tcp' })),
    forwardedUdp: dnsText(await agent.dns(target, `udp-${tag}.example.com`, 'A', opts)),
    forwardedTcp: dnsText(
      await agent.dns(target, `tcp-${tag}.example.com`, 'A', { ...opts, transport: 'tcp' }),
    ),
  };
}

const ANSWERED = (tag: string) => ({
  udp: 'rcode 0 web.machine 0 A 192.0.2.10',
  tcp: 'rcode 0 web.machine 0 A 192.0.2.10',
  forwardedUdp: `rcode 0 udp-${tag}.example.com 60 A 203.0.113.1`,
  forwardedTcp: `rcode 0 tcp-${tag}.example.com 60 A 203.0.113.1`,
});

/** Nothing at all: no UDP reply (not even REFUSED: no amplification), TCP closed at once. */
function assertIgnored(t: ExecutionContext, got: Awaited<ReturnType<typeof ask>>, who: string): void {
  t.is(got.udp, 'error timeout', `${who}: UDP`);
  t.is(got.forwardedUdp, 'error timeout', `${who}: UDP, a forwarded name`);
  t.regex(got.tcp, /^error (closed|ECONNRESET)/, `${who}: TCP`);
  t.regex(got.forwardedTcp, /^error (closed|ECONNRESET)/, `${who}: TCP, a forwarded name`);
}

test("[test double] a stub bound to another address serves and forwards for loopback and the host's own addresses only, by default", async (t) => {
  const { upstream, inside, outside } = await netSetup(t, []);
  t.deepEqual(await ask(inside, STUB_LO, '127.0.0.1', 'lo'), ANSWERED('lo'), 'loopback');
  t.deepEqual(await ask(inside, STUB_OUT, '10.99.0.1', 'own'), ANSWERED('own'), "the host's own address");
  assertIgnored(t, await ask(outside, STUB_OUT, '10.99.0.2', 'other'), 'a client in another namespace');
  // a big answer asked for by a stranger: not one byte comes back
  t.is(await outside.udp(STUB_OUT, Buffer.from(query('web.machine', 'ANY')), 1_000, '10.99.0.2'), null);
  const seen = await upstream.upstreamSeen();
  t.deepEqual(
    seen.sort(),
    ['tcp-lo.example.com', 'tcp-own.example.com', 'udp-lo.example.com', 'udp-own.example.com'],
    'never forwarded for the stranger',
  );
});

test('[test double] with --allow-net 10.99.0.2/32 the stub serves and forwards for that client only: not its neighbour 10.99.0.3, not loopback', async (t) => {
  const { upstream, inside, outside } = await netSetup(t, ['10.99.0.2/32']);
  t.deepEqual(await ask(outside, STUB_OUT, '10.99.0.2', 'allowed'), ANSWERED('allowed'));
  assertIgnored(t, await ask(outside, STUB_OUT, '10.99.0.3', 'neighbour'), '10.99.0.3');
  assertIgnored(t, await ask(inside, STUB_LO, '127.0.0.1', 'lo'), 'loopback (not in the list given)');
  t.deepEqual((await upstream.upstreamSeen()).sort(), ['tcp-allowed.example.com', 'udp-allowed.example.com']);
});

// ---- read-only interfaces ---------------------------------------------------------------------

const Reply = z.object({
  error: z.string().optional(),
  parameters: z.record(z.string(), z.unknown()).optional(),
});

/** One call on a fresh connection to a socket of the World; the parsed reply. */
async function call(
  w: World,
  path: string,
  method: string,
  parameters: Record<string, unknown> = {},
): Promise<z.infer<typeof Reply>> {
  const peer = await RawPeer.connect(w.hostPath(path));
  try {
    peer.send(`${JSON.stringify({ method, parameters })}\0`);
    return Reply.parse(JSON.parse(await peer.next()));
  } finally {
    peer.close();
  }
}

/** The methods an interface description declares. */
function methodsOf(description: unknown): string[] {
  return [...String(description).matchAll(/^method (\w+)\(/gm)].map((m) => m[1] ?? '').sort();
}

/** Every method each socket serves, reviewed as read-only: adding one must change this list. */
const READ_ONLY: Readonly<Record<string, Readonly<Record<string, readonly string[]>>>> = {
  [CONTROL]: {
    'io.mymachinesd.Control': ['List', 'Resolve'],
    'org.varlink.service': ['GetInfo', 'GetInterfaceDescription'],
  },
  [USERDB]: {
    // io.systemd declares only its System error (the errno replies of machined 252)
    'io.systemd': [],
    'io.systemd.UserDatabase': ['GetGroupRecord', 'GetMemberships', 'GetUserRecord'],
    'org.varlink.service': ['GetInfo', 'GetInterfaceDescription'],
  },
};

/** Names a mutating or unknown method might have. */
const NOT_SERVED = [
  'Register', 'Unregister', 'Terminate', 'Kill', 'Remove', 'Reload', 'Refresh', 'Stop', 'Shutdown', 'SetLogLevel', 'Add', 'Update',
]; // prettier-ignore

test('[test double] the control and userdb sockets serve only reviewed read-only methods; every other name, mutating ones included, gets MethodNotFound', async (t) => {
  const { w, fake } = await world(t);
  await daemon(t, w, ['--bus', fake.busAddress]);
  for (const [path, interfaces] of Object.entries(READ_ONLY)) {
    const info = await call(w, path, 'org.varlink.service.GetInfo');
    t.deepEqual(info.parameters?.interfaces, Object.keys(interfaces).sort(), path);
    for (const [iface, methods] of Object.entries(interfaces)) {
      const d = await call(w, path, 'org.varlink.service.GetInterfaceDescription', { interface: iface });
      t.deepEqual(methodsOf(d.parameters?.description), [...methods], `${path}: ${iface}`);
      for (const name of NOT_SERVED) {
        const r = await call(w, path, `${iface}.${name}`, { name: 'web' });
        t.is(r.error, 'org.varlink.service.MethodNotFound', `${iface}.${name}`);
        t.deepEqual(r.parameters, { method: `${iface}.${name}` });
      }
    }
    for (const method of [
      'io.systemd.Machine.Register',
      'io.systemd.Machine.Unregister',
      'org.freedesktop.machine1.Manager.TerminateMachine',
    ])
      t.is((await call(w, path, method)).error, 'org.varlink.service.MethodNotFound', method);
  }
  // and what List reports is the double's machine, untouched by all of the above
  const list = await call(w, CONTROL, 'io.mymachinesd.Control.List');
  t.regex(JSON.stringify(list.parameters?.machines), /"name":"web"/);
});

// ---- without root ----------------------------------------------------------------------------------

interface Privileges {
  readonly name: string;
  /** setpriv options after the uid/gid change. */
  readonly caps: readonly string[];
  /** What the capability bitmask must be (CapEff in /proc/PID/status). */
  readonly capEff: string;
}

const UNPRIVILEGED: readonly Privileges[] = [
  {
    name: 'no capability at all',
    caps: ['--inh-caps=-all', '--bounding-set=-all'],
    capEff: '0000000000000000',
  },
  {
    name: 'only CAP_SYS_PTRACE',
    caps: ['--inh-caps=+sys_ptrace', '--ambient-caps=+sys_ptrace', '--bounding-set=-all,+sys_ptrace'],
    capEff: '0000000000080000',
  },
];

/** The user names an enumeration lists for one machine. */
async function enumerated(w: World, machine: string): Promise<string[]> {
  const peer = await RawPeer.connect(w.hostPath(USERDB));
  try {
    peer.send(
      '{"method":"io.systemd.UserDatabase.GetUserRecord","parameters":{"service":"io.mymachinesd.Machine"},"more":true}\0',
    );
    const names: string[] = [];
    for (;;) {
      const reply = await peer.next();
      const name = /"userName":"([^"]+)"/.exec(reply)?.[1];
      if (name?.startsWith(`vu-${machine}-`)) names.push(name);
      if (!reply.includes('"continues":true')) return names;
    }
  } finally {
    peer.close();
  }
}

test.serial(
  'the daemon runs as nobody with its sockets passed by socket activation, with or without CAP_SYS_PTRACE: DNS, userdb and control work; without it, enumeration falls back to the root directory or inner 0 with a warning',
  async (t) => {
    const lab = await MachinedLab.start(
      LAB_MACHINES.filter((m) => m.name === 'alpha' || m.name === 'bravo-two'),
    );
    t.teardown(() => lab.dispose());
    // bravo-two's registered root directory is for root only: without /proc/PID/root nothing stands in
    const bravo = lab.machines.get('bravo-two');
    if (!bravo) throw new Error('no bravo-two');
    await chmod(bravo.rootDirectory, 0o700);
    const agent = await AgentHandle.start(lab.world);
    t.teardown(() => agent.stop());
    const spec = JSON.stringify({
      sockets: [
        { name: 'dns', kind: 'udp', host: '127.0.0.153', port: 53 },
        { name: 'dns', kind: 'tcp', host: '127.0.0.153', port: 53 },
        { name: 'userdb', kind: 'unix', path: USERDB, mode: 0o666 },
        { name: 'control', kind: 'unix', path: CONTROL, mode: 0o666 },
      ],
    });
    for (const p of UNPRIVILEGED) {
      const setpriv = ['setpriv', `--reuid=${NOBODY}`, `--regid=${NOBODY}`, '--clear-groups', ...p.caps];
      const d = await DaemonHandle.start(
        lab.world,
        ['--bus', lab.busAddress],
        {},
        {
          prefix: ['/usr/bin/python3', ACTIVATE_PY, spec, '--', ...setpriv],
        },
      );
      try {
        const status = await lab.world.run('cat', [`/proc/${d.pid}/status`]);
        t.regex(
          status,
          new RegExp(`^Uid:\\s+${NOBODY}\\s+${NOBODY}\\s+${NOBODY}\\s+${NOBODY}$`, 'm'),
          p.name,
        );
        t.regex(status, new RegExp(`^CapEff:\\s+${p.capEff}$`, 'm'), p.name);
        t.is(
          dnsText(await agent.dns(STUB_LO, 'alpha.machine', 'A')),
          'rcode 0 alpha.machine 0 A 198.51.100.11',
          p.name,
        );
        const getent = await lab.world.exec('getent', ['passwd', 'vu-bravo-two-1000']);
        t.is(
          getent.stdout.trim(),
          'vu-bravo-two-1000:x:201000:65534:UID 1000 of Container bravo-two:/:/usr/sbin/nologin',
          p.name,
        );
        t.deepEqual((await d.list(CONTROL)).map((m) => m.name).sort(), ['alpha', 'bravo-two'], p.name);
        const ptrace = p.capEff !== '0000000000000000';
        // the containers' account files are read right after `ready`, and applied in one change
        await d.waitFor(/read the accounts of 2 container/);
        // alpha's root directory is readable: with or without /proc/PID/root its accounts are found
        t.deepEqual(
          await enumerated(lab.world, 'alpha'),
          ['vu-alpha-0', 'vu-alpha-1', 'vu-alpha-1000', 'vu-alpha-65534'],
          p.name,
        );
        // bravo-two's is not: only /proc/PID/root (CAP_SYS_PTRACE) finds bob (1000)
        t.deepEqual(
          await enumerated(lab.world, 'bravo-two'),
          ptrace ? ['vu-bravo-two-0', 'vu-bravo-two-1000'] : ['vu-bravo-two-0'],
          p.name,
        );
        const warnings = d.lines.filter((l) => l.startsWith('<4>'));
        if (ptrace) t.deepEqual(warnings, [], p.name);
        else {
          t.true(
            warnings.some((l) =>
              /machine alpha: cannot read \/proc\/\d+\/root\/etc\/passwd \(EACCES: .*CAP_SYS_PTRACE\); using .*alpha\/etc\/passwd, the registered root directory/.test(
                l,
              ),
            ),
            warnings.join('\n'),
          );
          t.true(
            warnings.some((l) =>
              /machine bravo-two: cannot read the container's etc\/passwd \(.*EACCES.*\); enumerating only inner id 0/.test(
                l,
              ),
            ),
            warnings.join('\n'),
          );
        }
        t.deepEqual(
          d.lines.filter((l) => l.startsWith('<3>')),
          [],
          `${p.name}: nothing failed`,
        );
        t.log(
          `${p.name}: ${warnings.length} warning(s)${warnings.length ? `: ${warnings.map((l) => l.slice(3)).join(' | ')}` : ''}`,
        );
      } finally {
        t.is(await d.stop(), 0, `${p.name}: SIGTERM ends it cleanly`);
      }
    }
  },
);
