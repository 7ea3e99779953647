/**
 * bench:getaddrinfo — the lookup latency a user feels: glibc getaddrinfo() of a machine name through
 * nss-mymachines (the anchor: the real systemd-machined 252, which forks into the container's network
 * namespace on every call) and through our stub (glibc nss-dns, resolv.conf pointing at the stub).
 *
 *   npm run bench:getaddrinfo    (as root; knobs: BENCH_LOOKUPS, BENCH_RUNS)
 *
 * One World (MachinedLab): a private bus, machined 252 and the lab's real namespaced containers,
 * plus `mymachinesd serve --dns 127.0.0.153:53` following that machined. The same program
 * (bench/getaddrinfo-loop.py: python3's socket.getaddrinfo, i.e. glibc) resolves the same bare name
 * `alpha` with the World's nsswitch.conf saying either `hosts: files mymachines` or
 * `hosts: files dns` (the World's resolv.conf names only the stub). The two paths take turns, run by
 * run; nothing is pinned: this is the latency a client sees, machined's fork and the bus included.
 */
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { DaemonHandle } from '../test/support/daemon.js';
import { LAB_MACHINES, MachinedLab } from '../test/support/machined-lab.js';
import { describeMachine, REPO, requirePrograms } from './harness/machine.js';
import { quietRun, share } from './harness/quiet.js';
import { BenchReport } from './harness/report.js';
import { formatSpread, latencySummary, num, spread, type LatencySummary } from './harness/stats.js';

const knobs = {
  lookups: Number(process.env.BENCH_LOOKUPS ?? 2000),
  runs: Number(process.env.BENCH_RUNS ?? 5),
  warmup: 50,
};
const LOOP = join(REPO, 'bench/getaddrinfo-loop.py');
const STUB = '127.0.0.153';
const NAMES = ['alpha', 'bravo-two'] as const;

interface LoopOutput {
  addresses: string[];
  errors: number;
  latencies_us: number[];
}

type Path = 'nss-mymachines' | 'mymachinesd';

function nsswitchWith(hosts: string): string {
  return readFileSync('/etc/nsswitch.conf', 'utf8').replace(/^hosts:.*$/m, `hosts:          ${hosts}`);
}

async function loop(lab: MachinedLab, path: Path, name: string, count: number): Promise<LoopOutput> {
  // the World's own nsswitch.conf says `files dns`; the nss-mymachines path swaps it in a nested
  // private mount namespace for this one process
  const nssFile = join(lab.world.dir, 'nsswitch-mymachines.conf');
  const cmd = ['/usr/bin/python3', LOOP, name, String(count), String(knobs.warmup)];
  const r =
    path === 'mymachinesd'
      ? await lab.world.exec(cmd[0] ?? '', cmd.slice(1), { timeoutMs: 600_000 })
      : await lab.world.exec(
          'unshare',
          [
            '--mount',
            '--propagation',
            'private',
            'sh',
            '-c',
            'mount --bind "$0" /etc/nsswitch.conf && exec "$@"',
            nssFile,
            ...cmd,
          ],
          { timeoutMs: 600_000 },
        );
  if (r.code !== 0) throw new Error(`${path} ${name}: ${r.stderr}`);
  return JSON.parse(r.stdout) as LoopOutput;
}

async function main(): Promise<void> {
  requirePrograms(['dbus-daemon', '/lib/systemd/systemd-machined', '/usr/bin/python3']);
  const machine = describeMachine(['systemd-container', 'libnss-mymachines', 'libc6', 'dbus-daemon']);
  const report = new BenchReport('getaddrinfo', machine);

  report.progress('starting machined 252 and the lab containers');
  const lab = await MachinedLab.start(LAB_MACHINES, {
    nsswitch: nsswitchWith('files dns'),
    resolvConf: `nameserver ${STUB}\noptions timeout:2 attempts:2\n`,
    hosts: '127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n',
  });
  let daemon: DaemonHandle | undefined;
  const results = new Map<string, LatencySummary[]>();
  const firstAnswers = new Map<string, string>();
  const foreign = new Map<string, number>();
  let errors = 0;
  try {
    await writeFile(join(lab.world.dir, 'nsswitch-mymachines.conf'), nsswitchWith('files mymachines'));
    daemon = await DaemonHandle.start(lab.world, ['--bus', lab.busAddress, '--dns', `${STUB}:53`]);
    for (const name of NAMES) {
      // sanity: both paths resolve the name, to the same routable addresses
      const viaNss = await loop(lab, 'nss-mymachines', name, 1);
      const viaStub = await loop(lab, 'mymachinesd', name, 1);
      // nss-mymachines gives every address the scope of the single NETIF (reference §1.2 step 9)
      const routable = (list: string[]): string =>
        list
          .map((a) => a.replace(/%.*$/, ''))
          .filter((a) => !/^fe[89ab]/i.test(a))
          .sort()
          .join(' ');
      if (routable(viaNss.addresses) !== routable(viaStub.addresses))
        throw new Error(
          `${name}: nss-mymachines ${viaNss.addresses.join(' ')} vs stub ${viaStub.addresses.join(' ')}`,
        );
      firstAnswers.set(`nss-mymachines ${name}`, viaNss.addresses.join(' '));
      firstAnswers.set(`mymachinesd ${name}`, viaStub.addresses.join(' '));
    }
    for (let run = 1; run <= knobs.runs; run++) {
      for (const name of NAMES) {
        for (const path of ['nss-mymachines', 'mymachinesd'] as const) {
          const kept = await quietRun(() => loop(lab, path, name, knobs.lookups));
          const out = kept.result;
          foreign.set(`${path} ${name} ${run}`, kept.foreignShare);
          errors += out.errors;
          const l = latencySummary(out.latencies_us.map((us) => us / 1000));
          const key = `${path} ${name}`;
          results.set(key, [...(results.get(key) ?? []), l]);
          report.progress(
            `run ${run} ${key}: p50 ${num(l.p50)} ms, p99 ${num(l.p99)} ms, errors ${out.errors}`,
          );
        }
      }
    }
  } finally {
    await daemon?.stop();
    await lab.dispose();
  }

  report.paragraph(
    `Setup: the real systemd-machined 252 with the lab's containers (MachinedLab: real user and network ` +
      `namespaces, veth links) in one World; \`mymachinesd serve --bus … --dns ${STUB}:53\` following it. ` +
      `\`bench/getaddrinfo-loop.py NAME ${knobs.lookups} ${knobs.warmup}\` (python3 → glibc getaddrinfo, AF_UNSPEC, ` +
      `SOCK_STREAM) with \`hosts: files mymachines\` (anchor) or \`hosts: files dns\` and resolv.conf ` +
      `\`nameserver ${STUB}\` (ours). ${knobs.runs} runs × ${knobs.lookups} lookups per path and name ` +
      `(after ${knobs.warmup} untimed), paths taking turns; unpinned. Failed lookups: ${errors}.`,
  );
  report.table(
    ['path', 'first answer (glibc order)'],
    [...firstAnswers].map(([k, v]) => [k, v]),
  );
  report.table(
    ['path', 'run', 'lookups', 'p50 ms', 'p90 ms', 'p99 ms', 'p99.9 ms', 'max ms', 'others'],
    [...results].flatMap(([key, runs]) =>
      runs.map((l, i) => [
        key,
        String(i + 1),
        String(l.count),
        num(l.p50),
        num(l.p90),
        num(l.p99),
        num(l.p999),
        num(l.max),
        share(foreign.get(`${key} ${i + 1}`) ?? NaN),
      ]),
    ),
  );
  for (const name of NAMES) {
    const nss = results.get(`nss-mymachines ${name}`) ?? [];
    const ours = results.get(`mymachinesd ${name}`) ?? [];
    const speedups = ours.map((o, i) => (nss[i]?.p50 ?? NaN) / o.p50);
    const p50 = spread(ours.map((l) => l.p50));
    const nssP50 = spread(nss.map((l) => l.p50));
    const speedup = nssP50.median / p50.median;
    const s = spread(speedups);
    report.summary({
      measurement: `getaddrinfo("${name}") median latency`,
      ours: formatSpread(p50, ' ms'),
      anchor: `nss-mymachines ${formatSpread(nssP50, ' ms')}`,
      ratio: `${num(speedup, 3)}× faster (${num(s.min, 3)}–${num(s.max, 3)} per run)`,
      target: name === 'alpha' ? '≥ 10× faster' : '—',
      met: name === 'alpha' ? speedup >= 10 : undefined,
    });
    const p99 = spread(ours.map((l) => l.p99));
    const nssP99 = spread(nss.map((l) => l.p99));
    report.summary({
      measurement: `getaddrinfo("${name}") p99 latency`,
      ours: formatSpread(p99, ' ms'),
      anchor: `nss-mymachines ${formatSpread(nssP99, ' ms')}`,
      ratio: `${num(nssP99.median / p99.median, 3)}× faster`,
      target: '—',
      met: undefined,
    });
  }
  await report.write();
}

main().catch((err: unknown) => {
  process.stderr.write(
    `bench:getaddrinfo failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 1;
});
