/**
 * DNS conformance, live: the REAL systemd-machined 252 with the lab's machines, the real
 * nss-mymachines module (called directly, test/support/nss-probe.py: machined's order, before glibc
 * sorts anything) as the reference, and mymachinesd's stub queried with the real dig and kdig over
 * UDP and TCP — and through glibc (getent, nss-dns) with a resolv.conf pointing at the stub.
 */
import test, { type ExecutionContext } from 'ava';
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { DaemonHandle } from './support/daemon.js';
import { parseDigOutput, type DigResult } from './support/dig.js';
import { LAB_MACHINES, MachinedLab } from './support/machined-lab.js';

const NSS_PROBE = fileURLToPath(new URL('../../test/support/nss-probe.py', import.meta.url));
const DEFAULT_STUB = '127.0.0.153';
const LINK_LOCAL_STUB = '127.0.0.154';
const CONTAINERS = LAB_MACHINES.filter((m) => m.class === 'container').map((m) => m.name);

interface NssTuple {
  family: 4 | 6;
  address: string;
  scopeid: number;
}
interface NssResult {
  status: number;
  errno: number;
  tuples: NssTuple[];
}

interface Ctx {
  lab: MachinedLab;
  daemons: DaemonHandle[];
}

const isLinkLocal = (a: string): boolean => /^fe[89ab]/i.test(a) || a.startsWith('169.254.');

test.before(async (t) => {
  // glibc in the World asks only DNS, and only our stub, with `search machine` for bare names
  const nsswitch = readFileSync('/etc/nsswitch.conf', 'utf8').replace(
    /^hosts:.*$/m,
    'hosts:          files dns',
  );
  const lab = await MachinedLab.start(LAB_MACHINES, {
    nsswitch,
    resolvConf: `nameserver ${DEFAULT_STUB}\nsearch machine\noptions timeout:2 attempts:1\n`,
  });
  const daemons: DaemonHandle[] = [];
  t.context = { lab, daemons } satisfies Ctx;
  // the "VM" talks: its host-side neighbour entries appear, as a running VM's would
  await lab.exec('ping', ['-c1', '-W2', '198.51.100.51']);
  await lab.exec('ping', ['-6', '-c1', '-W2', 'fd42::51']);
  const common = ['--bus', lab.busAddress, '--no-userdb', '--no-control'];
  daemons.push(await DaemonHandle.start(lab.world, [...common, '--dns', `${DEFAULT_STUB}:53`]));
  daemons.push(
    await DaemonHandle.start(lab.world, [
      ...common,
      '--dns',
      `${LINK_LOCAL_STUB}:53`,
      '--include-link-local',
    ]),
  );
});

test.after.always(async (t) => {
  const { lab, daemons } = t.context as Ctx;
  for (const d of daemons) await d.stop();
  await lab.dispose();
});

async function nss(lab: MachinedLab, name: string): Promise<NssResult> {
  const r = await lab.exec('/usr/bin/python3', [NSS_PROBE, name]);
  return JSON.parse(r.stdout) as NssResult;
}

async function tool(
  lab: MachinedLab,
  which: 'dig' | 'kdig',
  server: string,
  args: string[],
): Promise<DigResult> {
  const common = which === 'dig' ? ['+time=2', '+tries=1'] : ['+time=2', '+retry=0'];
  const r = await lab.exec(which, [`@${server}`, ...common, ...args]);
  return { ...parseDigOutput(r.stdout), text: r.stdout, exitCode: r.code ?? -1 };
}

/** The addresses of the A or AAAA records in an answer, in answer order. */
function addresses(r: DigResult, type: 'A' | 'AAAA'): string[] {
  return r.answers.flatMap((line) => {
    const [, , t, data] = line.split(' ');
    return t === type && data ? [data] : [];
  });
}

async function checkMachine(
  t: ExecutionContext,
  lab: MachinedLab,
  name: string,
  server: string,
  keep: (a: string) => boolean,
): Promise<void> {
  const ref = await nss(lab, name);
  const expected = ref.tuples.map((x) => x.address).filter(keep);
  for (const which of ['dig', 'kdig'] as const)
    for (const transport of ['+notcp', '+tcp'])
      for (const qname of [name, `${name}.machine`]) {
        const got: string[] = [];
        for (const type of ['A', 'AAAA'] as const) {
          const r = await tool(lab, which, server, [transport, qname, type]);
          t.is(r.status, 'NOERROR', `${which} ${transport} ${qname} ${type}: ${r.text}`);
          got.push(...addresses(r, type));
          // no addresses at all: NODATA, with the zone's SOA for names in the zone
          if (addresses(r, type).length === 0 && qname.endsWith('.machine'))
            t.true(
              r.authority.some((l) => l.includes(' SOA ')),
              `${qname} ${type} NODATA carries the SOA: ${r.text}`,
            );
        }
        // same set, same order within each family as nss-mymachines (machined's order)
        t.deepEqual(
          got,
          [...expected.filter((a) => !a.includes(':')), ...expected.filter((a) => a.includes(':'))],
          `${which} ${transport} ${qname}`,
        );
      }
}

for (const name of CONTAINERS) {
  test.serial(
    `${name}: dig and kdig get what nss-mymachines returns, minus link-local (UDP and TCP, bare and .machine)`,
    async (t) => {
      const { lab } = t.context as Ctx;
      await checkMachine(t, lab, name, DEFAULT_STUB, (a) => !isLinkLocal(a));
    },
  );
  test.serial(`${name}: with --include-link-local, exactly what nss-mymachines returns`, async (t) => {
    const { lab } = t.context as Ctx;
    await checkMachine(t, lab, name, LINK_LOCAL_STUB, () => true);
  });
}

test.serial(
  'the reference itself: nss-mymachines resolves alpha and bravo-two, not charlie, delta or the VM',
  async (t) => {
    const { lab } = t.context as Ctx;
    t.true((await nss(lab, 'alpha')).tuples.length >= 2);
    t.true((await nss(lab, 'bravo-two')).tuples.length >= 5);
    t.is((await nss(lab, 'charlie')).errno, 38, 'ENOSYS: no private networking');
    t.is((await nss(lab, 'delta')).tuples.length, 0);
    t.is((await nss(lab, 'echo')).errno, 25, 'ENOTTY: not a container');
  },
);

test.serial('beyond nss-mymachines: the VM answers with its neighbour addresses', async (t) => {
  const { lab } = t.context as Ctx;
  const a = await tool(lab, 'dig', DEFAULT_STUB, ['echo.machine', 'A']);
  const aaaa = await tool(lab, 'dig', DEFAULT_STUB, ['echo.machine', 'AAAA']);
  t.deepEqual(addresses(a, 'A'), ['198.51.100.51']);
  t.deepEqual(addresses(aaaa, 'AAAA'), ['fd42::51']);
});

test.serial('unknown names in the zone are NXDOMAIN with the SOA', async (t) => {
  const { lab } = t.context as Ctx;
  for (const which of ['dig', 'kdig'] as const) {
    const r = await tool(lab, which, DEFAULT_STUB, ['nosuch.machine', 'A']);
    t.is(r.status, 'NXDOMAIN');
    t.true(
      r.authority.some((l) => l.startsWith('machine. ') && l.includes(' SOA ')),
      r.text,
    );
  }
});

test.serial('every address of every machine has a PTR back to NAME.machine', async (t) => {
  const { lab } = t.context as Ctx;
  let checked = 0;
  for (const name of CONTAINERS) {
    for (const { address } of (await nss(lab, name)).tuples) {
      if (isLinkLocal(address)) continue;
      const r = await tool(lab, 'dig', DEFAULT_STUB, ['-x', address]);
      t.deepEqual(
        r.answers.map((l) => l.split(' ').slice(2).join(' ')),
        [`PTR ${name}.machine.`],
        `${address}: ${r.text}`,
      );
      checked++;
    }
  }
  t.is(checked, 7, 'alpha has 2 routable addresses, bravo-two 5');
});

test.serial(
  'glibc: getent ahosts alpha.machine and alpha (search machine) through nss-dns and the stub',
  async (t) => {
    const { lab } = t.context as Ctx;
    const expected = (await nss(lab, 'alpha')).tuples.map((x) => x.address).filter((a) => !isLinkLocal(a));
    for (const name of ['alpha.machine', 'alpha']) {
      const r = await lab.exec('getent', ['ahosts', name]);
      t.is(r.code, 0, r.stderr);
      const got = [
        ...new Set(
          r.stdout
            .split('\n')
            .filter(Boolean)
            .map((l) => l.split(/\s+/)[0] ?? ''),
        ),
      ];
      t.deepEqual(got.sort(), [...expected].sort(), r.stdout);
    }
    const unknown = await lab.exec('getent', ['ahosts', 'nosuch.machine']);
    t.is(unknown.code, 2, 'not found');
  },
);
