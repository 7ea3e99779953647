/**
 * Hostile input against the daemon PROCESS (`mymachinesd serve` in a World; its machines come from
 * FakeMachined, a TEST DOUBLE of machined): malformed DNS (compression loops, pointers past the
 * end), abusive DNS-over-TCP (huge length prefixes, slow drips, connection floods), abusive Varlink
 * on both the userdb and the control socket (16 MiB + 1, deep nesting, invalid UTF-8, slow drips,
 * floods, memory pressure) and hostile containers (an /etc/passwd that is a FIFO or a symlink to a
 * host file). The unit-level cases live in resolver-fuzz, resolver-transport and userdb-hostile;
 * here each attack runs while well-behaved clients keep asking (DNS over UDP and TCP, userdb,
 * control), and each of their replies must be right and prompt. The daemon must survive all of it
 * with its descriptors back where they started.
 */
import test, { type ExecutionContext } from 'ava';
import { mkdir, symlink, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AgentHandle, type DnsResult, type TcpResult } from './support/agent.js';
import { DaemonHandle } from './support/daemon.js';
import { query, summarize } from './support/dns.js';
import { FakeMachinedHandle } from './support/fake.js';
import { fakeMachine } from './support/fake-machined.js';
import { startUsernsLeader } from './support/leaders.js';
import { describeStats, Sampler, type Probe, type ProbeStats } from './support/sampler.js';
import { RawPeer } from './support/varlink.js';
import { World } from './support/world.js';

/**
 * Every bystander reply must come within this, as during the faults: well below any client's first
 * retry (glibc and dig: 5 s; nss-systemd waits 45 s), with room for the real work some attacks
 * cause (parsing a 16 MiB message holds the daemon's one thread for about 0.1 s).
 */
const DEADLINE_MS = 500;
const STUB = { server: '127.0.0.153', port: 53 };
const USERDB = '/run/systemd/userdb/io.mymachinesd.Machine';
const CONTROL = '/run/mymachinesd/io.mymachinesd.Control';
const MiB = 1024 * 1024;

const SOCKETS = [
  {
    name: 'userdb',
    path: USERDB,
    call: '{"method":"io.systemd.UserDatabase.GetUserRecord","parameters":{"service":"io.mymachinesd.Machine","userName":"vu-web-1000"}}',
    expect: '"uid":301000',
  },
  {
    name: 'control',
    path: CONTROL,
    call: '{"method":"io.mymachinesd.Control.Resolve","parameters":{"name":"web"}}',
    expect: '"name":"web"',
  },
] as const;

interface Ctx {
  world: World;
  fake: FakeMachinedHandle;
  daemon: DaemonHandle;
  /** The attacker. */
  agent: AgentHandle;
  /** The well-behaved clients, in a process of their own so the attack does not slow their clock. */
  watcher: AgentHandle;
  fdsAtStart: number;
}
const ctx = (t: ExecutionContext): Ctx => t.context as Ctx;

const machine = fakeMachine;

test.before(async (t) => {
  const world = await World.create();
  const fake = await FakeMachinedHandle.start();
  try {
    const leader = await startUsernsLeader(world, '0 300000 65536');
    await fake.seed([
      machine('web', leader.pid, {
        addresses: [
          [2, [192, 0, 2, 10]],
          [10, [0xfd, 0, ...Array<number>(13).fill(0), 0x10]],
        ],
      }),
    ]);
    const daemon = await DaemonHandle.start(world, [
      '--bus', fake.busAddress, '--dns', `${STUB.server}:${STUB.port}`, '--refresh', '1', '--log-level', 'debug',
    ]); // prettier-ignore
    const agent = await AgentHandle.start(world);
    const watcher = await AgentHandle.start(world);
    t.context = { world, fake, daemon, agent, watcher, fdsAtStart: await daemon.fdCount() } satisfies Ctx;
  } catch (err) {
    await fake.stop();
    await world.dispose();
    throw err;
  }
});

test.after.always(async (t) => {
  const c = t.context as Partial<Ctx>;
  await c.agent?.stop();
  await c.watcher?.stop();
  await c.daemon?.stop();
  await c.fake?.stop();
  await c.world?.dispose();
});

// ---- the well-behaved clients -------------------------------------------------------------------

const dnsText = (r: DnsResult): string =>
  'error' in r ? `error ${r.error}` : `rcode ${r.rcode} ${r.answers.join(', ')}`;

function bystanders(c: Ctx): Probe[] {
  const dns = (name: string, qtype: string, transport: 'udp' | 'tcp', expected: string): Probe => ({
    name: `dns ${transport} ${name} ${qtype}`,
    async run() {
      const r = await c.watcher.dns(STUB, name, qtype, { transport });
      const got = dnsText(r);
      return { ms: r.ms, ok: got === expected, detail: got };
    },
  });
  return [
    dns('web.machine', 'A', 'udp', 'rcode 0 web.machine 0 A 192.0.2.10'),
    dns('web', 'AAAA', 'tcp', 'rcode 0 web 0 AAAA fd00::10'),
    ...SOCKETS.map((s): Probe => ({
      name: `${s.name} socket`,
      async run() {
        const r = await c.watcher.varlink(s.path, JSON.parse(s.call) as Record<string, unknown>);
        const text = 'error' in r ? r.error : JSON.stringify(r.replies);
        return { ms: r.ms, ok: text.includes(s.expect), detail: text.slice(0, 300) };
      },
    })),
  ];
}

/** Runs `attack` while the bystanders keep asking; every bystander reply must be right and prompt. */
async function duringAttack(t: ExecutionContext, attack: () => Promise<void>): Promise<void> {
  const sampler = Sampler.start(bystanders(ctx(t)));
  let stats: ProbeStats[];
  try {
    await sampler.more(3);
    await attack();
    await sampler.more(3);
  } finally {
    stats = await sampler.stop();
  }
  t.log(describeStats(stats));
  for (const s of stats) {
    t.deepEqual(s.failures, [], `${s.name}: wrong replies during the attack`);
    t.true(s.maxMs < DEADLINE_MS, `${s.name}: slowest reply ${s.maxMs.toFixed(1)} ms`);
  }
}

// ---- DNS: malformed names -----------------------------------------------------------------------

/** A query for web.machine A whose bytes a test then breaks. */
const valid = (id: number): Buffer => query('web.machine', 'A', { id });

/** A header with one question, then `rest` (the question and anything after it). */
function withQuestion(id: number, rest: number[]): Buffer {
  const header = Buffer.from([id >> 8, id & 0xff, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
  return Buffer.concat([header, Buffer.from(rest)]);
}

/** A valid question plus one additional record whose owner is `owner` (a name, maybe a pointer). */
function withAdditional(id: number, owner: (offset: number) => number[]): Buffer {
  const q = valid(id);
  q.writeUInt16BE(1, 10); // ARCOUNT
  const rr = [...owner(q.length), 0, 1, 0, 1, 0, 0, 0, 0, 0, 0]; // type A, class IN, TTL 0, RDLENGTH 0
  return Buffer.concat([q, Buffer.from(rr)]);
}

const MALFORMED: readonly { rule: string; packet: Buffer }[] = [
  // RFC 1035 §4.1.4: a pointer refers to a prior occurrence; one to itself is a loop
  {
    rule: 'a question name that is a pointer to itself (a loop)',
    packet: withQuestion(0x0101, [0xc0, 12, 0, 1, 0, 1]),
  },
  {
    rule: 'a question name that is a pointer past the end',
    packet: withQuestion(0x0102, [0xff, 0xff, 0, 1, 0, 1]),
  },
  { rule: 'a question label running past the end', packet: withQuestion(0x0103, [63, 0x61, 0x62, 0x63]) },
  {
    rule: 'an additional record owned by a pointer to itself',
    packet: withAdditional(0x0104, (at) => [0xc0 | (at >> 8), at & 0xff]),
  },
  {
    rule: 'an additional record owned by a pointer past the end',
    packet: withAdditional(0x0105, () => [0xff, 0xff]),
  },
  {
    rule: 'an additional record owned by a pointer into its own name (a loop)',
    packet: withAdditional(0x0106, (at) => [1, 0x61, 0xc0 | (at >> 8), at & 0xff]),
  },
  { rule: 'a label of reserved type 0x40', packet: withQuestion(0x0107, [0x41, 0x61, 0, 0, 1, 0, 1]) },
];

for (const { rule, packet } of MALFORMED) {
  test.serial(
    `[test double] DNS: ${rule} gets FORMERR over UDP and TCP, and the TCP connection keeps working`,
    async (t) => {
      const c = ctx(t);
      await duringAttack(t, async () => {
        const udp = await c.agent.udp(STUB, packet);
        t.truthy(udp, 'a reply over UDP');
        const u = summarize(udp ?? Buffer.alloc(12));
        t.is(u.id, packet.readUInt16BE(0));
        t.is(u.rcode, 1, 'FORMERR');
        const tcp = await c.agent.tcp(
          STUB,
          [{ bytes: Buffer.concat([frame(packet), frame(valid(0x0200))]) }],
          2_000,
        );
        t.is(tcp.replies.length, 2, JSON.stringify(tcp));
        t.is(summarize(Buffer.from(tcp.replies[0] ?? '', 'hex')).rcode, 1);
        t.deepEqual(summarize(Buffer.from(tcp.replies[1] ?? '', 'hex')).answers, [
          'web.machine 0 A 192.0.2.10',
        ]);
      });
    },
  );
}

// ---- DNS over TCP ---------------------------------------------------------------------------------

function frame(packet: Buffer): Buffer {
  const out = Buffer.alloc(packet.length + 2);
  out.writeUInt16BE(packet.length, 0);
  packet.copy(out, 2);
  return out;
}

function closedWithoutReply(t: ExecutionContext, r: TcpResult, what: string): void {
  t.true(r.closedByServer, `${what}: closed by the server`);
  t.deepEqual(r.replies, [], `${what}: no reply`);
}

test.serial(
  '[test double] DNS over TCP: length prefixes over the 4096-byte limit close the connection at once, without a reply',
  async (t) => {
    const c = ctx(t);
    await duringAttack(t, async () => {
      for (const length of [65535, 4097]) {
        const prefix = Buffer.from([length >> 8, length & 0xff]);
        const r = await c.agent.tcp(STUB, [{ bytes: Buffer.concat([prefix, Buffer.alloc(100)]) }], 5_000);
        closedWithoutReply(t, r, `prefix ${length}`);
        t.true(r.ms < 1_000, `closed after ${r.ms.toFixed(0)} ms`);
      }
    });
  },
);

test.serial(
  '[test double] DNS over TCP: empty frames are ignored and the query after them is answered',
  async (t) => {
    const c = ctx(t);
    const r = await c.agent.tcp(
      STUB,
      [{ bytes: Buffer.concat([Buffer.alloc(6), frame(valid(0x0300))]) }],
      2_000,
    );
    t.is(r.replies.length, 1);
    t.is(summarize(Buffer.from(r.replies[0] ?? '', 'hex')).id, 0x0300);
  },
);

test.serial(
  '[test double] DNS over TCP: 50 clients dripping a query one byte every 500 ms are closed by the idle rule without holding anyone up',
  async (t) => {
    const c = ctx(t);
    const query1 = frame(valid(0x0400));
    const drip = [...query1].map((byte) => ({ bytes: Buffer.from([byte]), delayMs: 500 }));
    let results: TcpResult[] = [];
    await duringAttack(t, async () => {
      results = await Promise.all(Array.from({ length: 50 }, () => c.agent.tcp(STUB, drip, 20_000)));
    });
    for (const r of results) closedWithoutReply(t, r, 'slow drip');
    const times = results.map((r) => r.ms).sort((a, b) => a - b);
    t.log(
      `slow-drip connections closed after ${(times[0] ?? 0).toFixed(0)}–${(times.at(-1) ?? 0).toFixed(0)} ms`,
    );
    // the idle rule: 10 s without a complete query (the drip would take 16 s to complete one)
    t.true((times[0] ?? 0) > 9_000 && (times.at(-1) ?? 0) < 12_000);
  },
);

test.serial(
  '[test double] DNS over TCP: 1,100 idle connections (over the cap of 1,024) do not lock out new clients',
  async (t) => {
    const c = ctx(t);
    const mark = c.daemon.lines.length;
    let held = { hold: 0, opened: 0, failed: 0 };
    await duringAttack(t, async () => {
      held = await c.agent.hold(STUB, 1_100);
      t.is(held.opened, 1_100);
      const late = await c.agent.dns(STUB, 'web.machine', 'A', { transport: 'tcp' });
      t.is(dnsText(late), 'rcode 0 web.machine 0 A 192.0.2.10');
    });
    const released = await c.agent.release(held.hold);
    t.log(`of 1,100 idle connections the stub closed ${released.closedByServer} to make room`);
    t.true(released.closedByServer >= 1_100 - 1_024);
    t.truthy(c.daemon.linesSince(mark, /dns: 1024 tcp connections open, the limit/).length);
  },
);

// ---- Varlink, on both sockets -------------------------------------------------------------------

const hostPath = (c: Ctx, path: string): string => c.world.hostPath(path);

for (const socket of SOCKETS) {
  test.serial(
    `[test double] ${socket.name} socket: a call padded to exactly 16 MiB is answered, one byte more closes the connection without a reply`,
    async (t) => {
      const c = ctx(t);
      await duringAttack(t, async () => {
        const exact = await RawPeer.connect(hostPath(c, socket.path));
        exact.send(
          Buffer.concat([Buffer.alloc(16 * MiB - socket.call.length, 0x20), Buffer.from(socket.call + '\0')]),
        );
        t.true((await exact.next()).includes(socket.expect));
        exact.close();
        const over = await RawPeer.connect(hostPath(c, socket.path));
        over.send(
          Buffer.concat([
            Buffer.alloc(16 * MiB + 1 - socket.call.length, 0x20),
            Buffer.from(socket.call + '\0'),
          ]),
        );
        t.deepEqual((await over.untilClosed()).messages, []);
      });
    },
  );

  test.serial(
    `[test double] ${socket.name} socket: JSON nested 100,000 deep and invalid UTF-8 close the connection without a reply`,
    async (t) => {
      const c = ctx(t);
      await duringAttack(t, async () => {
        const deep = await RawPeer.connect(hostPath(c, socket.path));
        deep.send(`{"method":"x.Y","parameters":{"a":${'['.repeat(100_000)}${']'.repeat(100_000)}}}\0`);
        t.deepEqual((await deep.untilClosed()).messages, []);
        const invalid = await RawPeer.connect(hostPath(c, socket.path));
        const [head, tail] = [socket.call.slice(0, -3), socket.call.slice(-3)];
        invalid.send(
          Buffer.concat([Buffer.from(head), Buffer.from([0xc0, 0x80, 0xff]), Buffer.from(tail + '\0')]),
        );
        t.deepEqual((await invalid.untilClosed()).messages, []);
      });
    },
  );

  test.serial(
    `[test double] ${socket.name} socket: a call dripped one byte every 5 ms is answered once complete`,
    async (t) => {
      const c = ctx(t);
      await duringAttack(t, async () => {
        const peer = await RawPeer.connect(hostPath(c, socket.path));
        for (const byte of Buffer.from(socket.call + '\0')) {
          peer.socket.write(Buffer.from([byte]));
          await new Promise((resolve) => setTimeout(resolve, 5));
        }
        t.true((await peer.next()).includes(socket.expect));
        peer.close();
      });
    },
  );

  test.serial(
    `[test double] ${socket.name} socket: 4,200 idle connections (over the limit of 4,096) do not lock out new clients`,
    async (t) => {
      const c = ctx(t);
      const mark = c.daemon.lines.length;
      let held = { hold: 0, opened: 0, failed: 0 };
      await duringAttack(t, async () => {
        held = await c.agent.hold({ path: socket.path }, 4_200);
        t.is(held.opened + held.failed, 4_200);
        const late = await RawPeer.connect(hostPath(c, socket.path));
        late.send(socket.call + '\0');
        t.true((await late.next()).includes(socket.expect));
        late.close();
      });
      const released = await c.agent.release(held.hold);
      t.log(`of 4,200 idle connections the server closed ${released.closedByServer} to make room`);
      t.true(released.closedByServer >= 4_200 - 4_096);
      t.truthy(c.daemon.linesSince(mark, /varlink: 4096 connections open, the limit/).length);
    },
  );
}

test.serial(
  '[test double] userdb socket: six clients each sending 15 MiB without a NUL are held to the 64 MiB input budget over all connections',
  async (t) => {
    const c = ctx(t);
    const mark = c.daemon.lines.length;
    const rssBefore = await c.daemon.rssKiB();
    let peak = rssBefore;
    await duringAttack(t, async () => {
      const peers = await Promise.all(Array.from({ length: 6 }, () => RawPeer.connect(hostPath(c, USERDB))));
      for (const p of peers) p.send(Buffer.alloc(15 * MiB, 0x20));
      // 4 × 15 MiB fit in the 64 MiB budget; the fifth and sixth push the total over it
      let closed = 0;
      await new Promise<void>((resolve) => {
        for (const p of peers) void p.closed.then(() => ++closed === 2 && resolve());
      });
      peak = Math.max(peak, await c.daemon.rssKiB());
      for (const p of peers) p.close();
    });
    const dropped = c.daemon.linesSince(mark, /dropped: holds \d+ of \d+ bytes of input/).length;
    t.log(
      `input budget: ${dropped} of 6 connections dropped; RSS ${Math.round(rssBefore / 1024)} MiB before, ${Math.round(peak / 1024)} MiB at the peak`,
    );
    t.true(dropped >= 2, 'six times 15 MiB is over 64 MiB: at least two are dropped');
    t.true(peak - rssBefore < 128 * 1024, 'at most the 64 MiB budget is held, plus overhead');
  },
);

// ---- hostile containers ---------------------------------------------------------------------------

/** A container root whose etc/passwd (and etc/group) are what `make` puts there; its leader is chrooted into it. */
async function hostileContainer(
  c: Ctx,
  name: string,
  outer: number,
  make: (etc: string) => Promise<void>,
): Promise<void> {
  const root = join(c.world.dir, 'roots', name);
  await mkdir(join(root, 'etc'), { recursive: true });
  await make(join(root, 'etc'));
  const leader = await startUsernsLeader(c.world, `0 ${outer} 65536`, { root });
  const mark = c.daemon.lines.length;
  await c.fake.seed([machine(name, leader.pid, { rootDirectory: root })]);
  await c.daemon.waitForAfter(mark, new RegExp(`machine ${name} \\(container\\) registered`), 15_000);
}

/** The user names an enumeration lists for one machine. */
async function enumerated(c: Ctx, machineName: string): Promise<string[]> {
  const r = await c.agent.varlink(USERDB, {
    method: 'io.systemd.UserDatabase.GetUserRecord',
    parameters: { service: 'io.mymachinesd.Machine' },
    more: true,
  });
  if ('error' in r) throw new Error(r.error);
  return (
    JSON.stringify(r.replies)
      .match(/"userName":"vu-[^"]+"/g)
      ?.map((m) => m.slice(12, -1))
      .filter((n) => n.startsWith(`vu-${machineName}-`)) ?? []
  );
}

test.serial(
  '[test double] a container whose /etc/passwd is a FIFO cannot stall the registry: it is registered with inner 0 only, and a resync completes',
  async (t) => {
    const c = ctx(t);
    await hostileContainer(c, 'fifo', 400_000, async (etc) => {
      await c.world.run('mkfifo', [join(etc, 'passwd'), join(etc, 'group')], { mountOnly: true });
    });
    t.deepEqual(await enumerated(c, 'fifo'), ['vu-fifo-0']);
    t.truthy(
      c.daemon.lines.some((l) =>
        /machine fifo: cannot read the container's etc\/passwd \(.*etc\/passwd is not a regular file/.test(l),
      ),
    );
    const mark = c.daemon.lines.length;
    await c.fake.killMachined();
    await c.fake.startMachined();
    await c.daemon.waitForAfter(mark, /synced \d+ machine\(s\)/, 20_000);
    t.pass();
  },
);

test.serial(
  '[test double] a container whose /etc/passwd is a symlink to a host file does not make the daemon read that file',
  async (t) => {
    const c = ctx(t);
    const hostFile = join(c.world.dir, 'host-only-passwd');
    await writeFile(hostFile, 'leak:x:4242:4242::/:/bin/sh\n');
    await hostileContainer(c, 'link', 500_000, async (etc) => {
      await symlink(hostFile, join(etc, 'passwd'));
      await writeFile(join(etc, 'group'), 'root:x:0:\n');
    });
    t.deepEqual(await enumerated(c, 'link'), ['vu-link-0'], 'nothing from the host file (vu-link-4242)');
    t.truthy(
      c.daemon.lines.some((l) => /machine link: cannot read the container's etc\/passwd \(.*ELOOP/.test(l)),
    );
  },
);

// ---- afterwards -----------------------------------------------------------------------------------

test.serial(
  '[test double] after every attack the daemon still runs, answers, and holds no more descriptors than at the start',
  async (t) => {
    const c = ctx(t);
    t.is(c.daemon.child.exitCode, null);
    t.is(dnsText(await c.agent.dns(STUB, 'web.machine', 'A')), 'rcode 0 web.machine 0 A 192.0.2.10');
    // Closed connections leave the daemon's fd table as the kernel reports them gone: bounded polling,
    // no event tells us the last one was reaped.
    const deadline = Date.now() + 10_000;
    let fds = await c.daemon.fdCount();
    while (fds > c.fdsAtStart && Date.now() < deadline) {
      await new Promise((resolve) => setTimeout(resolve, 100));
      fds = await c.daemon.fdCount();
    }
    t.log(
      `descriptors: ${c.fdsAtStart} at the start, ${fds} after all attacks; RSS ${Math.round((await c.daemon.rssKiB()) / 1024)} MiB`,
    );
    t.true(fds <= c.fdsAtStart);
    t.deepEqual(
      c.daemon.lines.filter((l) => l.startsWith('<3>')),
      [],
      'no error was logged',
    );
  },
);
