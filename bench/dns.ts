/**
 * bench:dns — DNS throughput and latency of the stub, next to dnsmasq and the Node ceiling.
 *
 *   npm run bench:dns          (as root; knobs: BENCH_MACHINES, BENCH_RUNS, BENCH_SECONDS,
 *                               BENCH_LATENCY_RUNS, BENCH_RATE)
 *
 * Ours is the real daemon, `mymachinesd serve`, following FakeMachined (the TEST DOUBLE of machined)
 * on a private bus with 1,000 registered containers, each with one IPv4 and one IPv6 address; the
 * anchors are dnsmasq serving the same names from a hosts file and the Node ceiling (a dgram server
 * doing no DNS work). All three run in one World (loopback of a private network namespace), each
 * pinned to CPU 0 from its start; dnsperf runs pinned to CPU 1 (perf-anchors.md method).
 *
 * 1. Throughput: a closed loop, `-c 4 -T 1 -q 100`, RUNS × SECONDS s per server, the servers taking
 *    turns run by run so that drift of the VM hits all of them alike; server CPU per query from
 *    /proc. 2. Latency: an open loop at RATE q/s (`-Q RATE -v`), percentiles from the per-query lines.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { FakeMachinedHandle } from '../test/support/fake.js';
import { parseDigOutput } from '../test/support/dig.js';
import { World } from '../test/support/world.js';
import { dnsperf, rcodeShares, type DnsperfRun } from './harness/dnsperf.js';
import {
  fakeMachines,
  hostsFile,
  machineIPv4,
  machineIPv6,
  machineName,
  queryLines,
} from './harness/fixture.js';
import { describeMachine, requirePrograms } from './harness/machine.js';
import {
  cpuSince,
  cpuTime,
  memory,
  threadActivitySince,
  threadMark,
  type ThreadActivity,
} from './harness/processes.js';
import { quietRun, share, type QuietResult } from './harness/quiet.js';
import { BenchReport } from './harness/report.js';
import { startDnsmasq, startMymachinesd, startNodeCeiling, type DnsUnderTest } from './harness/servers.js';
import { formatSpread, latencySummary, num, spread, type LatencySummary } from './harness/stats.js';

const knobs = {
  machines: Number(process.env.BENCH_MACHINES ?? 1000),
  runs: Number(process.env.BENCH_RUNS ?? 5),
  seconds: Number(process.env.BENCH_SECONDS ?? 10),
  latencyRuns: Number(process.env.BENCH_LATENCY_RUNS ?? 3),
  rate: Number(process.env.BENCH_RATE ?? 10_000),
  warmupSeconds: 2,
};
const SERVER_CPU = 0;
const LOAD_CPU = 1;
const QUERY_LINES = 10_000;
const NO_REFRESH = 'mymachinesd --refresh 3600';
const FULL_REFRESH = 'mymachinesd --refresh-full 1';

interface Measured {
  readonly server: DnsUnderTest;
  readonly throughput: DnsperfRun[];
  readonly cpuPerQueryUs: number[];
  /** CPU other processes on the machine took during each throughput run, share of one core. */
  readonly throughputForeign: number[];
  readonly latency: LatencySummary[];
  readonly latencyLost: number[];
  readonly latencyForeign: number[];
  /** The server's threads during each latency run. */
  readonly latencyThreads: ThreadActivity[];
}

/** The servers must agree before they are compared: same addresses, NXDOMAIN for unknown names. */
async function sanity(world: World, servers: readonly DnsUnderTest[], report: BenchReport): Promise<void> {
  const n = knobs.machines;
  const checks: [string, string, string][] = [
    [`${machineName(1)}.machine`, 'A', machineIPv4(1)],
    [machineName(n), 'AAAA', machineIPv6(n)],
    [`${machineName(42).toUpperCase()}.Machine`, 'A', machineIPv4(42)],
    ['x00001.machine', 'A', 'NXDOMAIN'],
  ];
  const rows: string[][] = [];
  for (const [name, type, expected] of checks) {
    const row = [`${name} ${type}`, expected];
    for (const s of servers) {
      if (s.label === 'Node ceiling') continue;
      const out = await world.run('dig', [
        `@${s.address}`,
        '-p',
        String(s.port),
        '+time=2',
        '+tries=1',
        name,
        type,
      ]);
      const r = parseDigOutput(out);
      const got = r.status === 'NOERROR' ? r.answers.map((l) => l.split(' ')[3]).join(' ') : r.status;
      if (got !== expected) throw new Error(`${s.label}: ${name} ${type} gave ${got}, expected ${expected}`);
      row.push(got);
    }
    rows.push(row);
  }
  report.paragraph('Sanity check before loading (dig in the World): both servers give the same answers.');
  report.table(
    ['question', 'expected', ...servers.filter((s) => s.label !== 'Node ceiling').map((s) => s.label)],
    rows,
  );
}

async function main(): Promise<void> {
  requirePrograms(['dnsperf', 'dnsmasq', 'taskset', 'dig', 'dbus-daemon']);
  const machine = describeMachine(['dnsperf', 'dnsmasq-base', 'dbus-daemon']);
  const report = new BenchReport('dns', machine);

  const world = await World.create();
  const fake = await FakeMachinedHandle.start();
  const servers: DnsUnderTest[] = [];
  try {
    report.progress(`registering ${knobs.machines} machines with FakeMachined`);
    const all = fakeMachines(knobs.machines, () => process.pid);
    for (let i = 0; i < all.length; i += 1000) await fake.seed(all.slice(i, i + 1000));
    const queryFile = join(world.dir, 'queries.txt');
    await writeFile(queryFile, `${queryLines(knobs.machines, QUERY_LINES).join('\n')}\n`);
    const hosts = join(world.dir, 'hosts');
    await writeFile(hosts, hostsFile(knobs.machines));

    servers.push(await startMymachinesd(world, fake.busAddress, SERVER_CPU));
    servers.push(await startDnsmasq(world, hosts, SERVER_CPU));
    servers.push(await startNodeCeiling(world, SERVER_CPU));
    // Informative: the same daemon without the periodic address refresh, to show what the refresh
    // costs the tail (machined sends no signal for address changes, so the default polls every 10 s).
    const quiet = await startMymachinesd(world, fake.busAddress, SERVER_CPU, [
      '--refresh',
      '3600',
      '--userdb',
      '/run/mymachinesd-no-refresh/io.mymachinesd.Machine',
      '--control',
      '/run/mymachinesd-no-refresh/control',
    ]);
    servers.push({ ...quiet, label: NO_REFRESH });
    // Informative: the same daemon asking machined for every container in every round, as it did
    // before the network namespace digest (2026-12-04): what the digest saves.
    const asking = await startMymachinesd(world, fake.busAddress, SERVER_CPU, [
      '--refresh-full',
      '1',
      '--userdb',
      '/run/mymachinesd-full-refresh/io.mymachinesd.Machine',
      '--control',
      '/run/mymachinesd-full-refresh/control',
    ]);
    servers.push({ ...asking, label: FULL_REFRESH });
    await sanity(world, servers, report);

    const measured: Measured[] = servers.map((server) => ({
      server,
      throughput: [],
      cpuPerQueryUs: [],
      throughputForeign: [],
      latency: [],
      latencyLost: [],
      latencyForeign: [],
      latencyThreads: [],
    }));
    const common = { queryFile, cpu: LOAD_CPU };
    // Only the measured server runs: the others are stopped (SIGSTOP, then SIGCONT), so that our
    // daemon's periodic work (address refresh, leader checks) never takes CPU 0 from an anchor.
    const alone = async <T>(m: Measured, work: () => Promise<T>): Promise<T> => {
      const others = measured.filter((o) => o !== m);
      for (const o of others) process.kill(o.server.pid, 'SIGSTOP');
      try {
        return await work();
      } finally {
        for (const o of others) process.kill(o.server.pid, 'SIGCONT');
      }
    };
    // A run is kept only if other processes on this (shared) VM stayed below a quarter of a core.
    const load = (
      m: Measured,
      seconds: number,
      rate?: number,
    ): Promise<QuietResult<{ run: DnsperfRun; cpuUsPerQuery: number; threads: ThreadActivity }>> =>
      quietRun(() =>
        alone(m, async () => {
          const before = cpuTime(m.server.pid);
          const threadsBefore = threadMark(m.server.pid);
          const run = await dnsperf(world, {
            ...common,
            server: m.server.address,
            port: m.server.port,
            seconds,
            ...(rate === undefined ? {} : { rate }),
          });
          const cpu = cpuSince(m.server.pid, before);
          return {
            run,
            cpuUsPerQuery: ((cpu.userMs + cpu.systemMs) * 1000) / Math.max(1, run.completed),
            threads: threadActivitySince(m.server.pid, threadsBefore),
          };
        }),
      );
    for (const m of measured) {
      report.progress(`warm-up ${m.server.label}`);
      await load(m, knobs.warmupSeconds);
    }
    for (let run = 1; run <= knobs.runs; run++) {
      for (const m of measured) {
        const kept = await load(m, knobs.seconds);
        const r = kept.result.run;
        m.throughput.push(r);
        m.cpuPerQueryUs.push(kept.result.cpuUsPerQuery);
        m.throughputForeign.push(kept.foreignShare);
        report.progress(
          `run ${run} ${m.server.label}: ${num(r.qps)} q/s, lost ${r.lost}, ${rcodeShares(r)}, others ${share(kept.foreignShare)} (attempt ${kept.attempts})`,
        );
      }
    }
    for (let run = 1; run <= knobs.latencyRuns; run++) {
      for (const m of measured) {
        const kept = await load(m, knobs.seconds, knobs.rate);
        const r = kept.result.run;
        const l = latencySummary(r.latenciesMs);
        m.latency.push(l);
        m.latencyLost.push(r.lost);
        m.latencyForeign.push(kept.foreignShare);
        m.latencyThreads.push(kept.result.threads);
        report.progress(
          `latency run ${run} ${m.server.label}: p50 ${num(l.p50)} p99 ${num(l.p99)} p99.9 ${num(l.p999)} ms (${l.count} answers, lost ${r.lost}; main thread preempted ${kept.result.threads.mainPreempted}×)`,
        );
      }
    }
    write(report, measured);
  } finally {
    for (const s of servers) await s.stop().catch(() => undefined);
    await fake.stop().catch(() => undefined);
    await world.dispose();
  }
  await report.write();
}

function write(report: BenchReport, measured: readonly Measured[]): void {
  const [ours, dnsmasq, ceiling, noRefresh, fullRefresh] = measured;
  if (!ours || !dnsmasq || !ceiling || !noRefresh || !fullRefresh) throw new Error('five servers expected');
  const q = (m: Measured): number[] => m.throughput.map((r) => r.qps);
  report.paragraph(
    `Setup: ${knobs.machines} machines (A + AAAA each); query file of ${QUERY_LINES} lines, ` +
      `~${100 - 10} % existing names (A/AAAA, bare/.machine evenly) and ~10 % unknown \`xNNNNN.machine\`. ` +
      `Ours: \`mymachinesd serve --bus … --dns 127.0.0.1:0\` (real CLI, defaults otherwise: userdb and control ` +
      `sockets on, addresses checked every 10 s: machined asked for a container whose network namespace digest ` +
      `changed, and for each container anyway once in six rounds, a sixth of them per round) following FakeMachined (TEST DOUBLE of machined; ` +
      `every container's leader is the bench process, whose namespace does not change). ` +
      `Servers pinned to CPU ${SERVER_CPU} (\`taskset -c ${SERVER_CPU}\` from start), dnsperf to CPU ${LOAD_CPU}; ` +
      `while one server is measured the others are stopped (SIGSTOP), so none takes CPU ${SERVER_CPU} from another. ` +
      `Throughput: ${knobs.runs} × ${knobs.seconds} s per server (after ${knobs.warmupSeconds} s warm-up), servers ` +
      `taking turns; latency: ${knobs.latencyRuns} × ${knobs.seconds} s open loop at ${knobs.rate} q/s. ` +
      `For information, a fourth server is the same daemon with \`--refresh 3600\` (no periodic address polling), ` +
      `and a fifth with \`--refresh-full 1\` (machined asked for every container in every round: the default ` +
      `before 2026-12-04).`,
  );
  report.paragraph(`dnsperf command (throughput): \`${ours.throughput[0]?.command ?? ''}\``);
  const runRows = measured.flatMap((m) =>
    m.throughput.map((r, i) => [
      m.server.label,
      String(i + 1),
      num(r.qps),
      String(r.lost),
      rcodeShares(r),
      num(r.avgLatencyMs),
      num(m.cpuPerQueryUs[i] ?? NaN),
      share(m.throughputForeign[i] ?? NaN),
    ]),
  );
  report.paragraph(
    'Throughput runs (closed loop, 100 outstanding); "others": CPU other processes on this shared VM took during the run, share of one core:',
  );
  report.table(
    ['server', 'run', 'q/s', 'lost', 'rcodes', 'avg latency ms', 'server CPU µs/q', 'others'],
    runRows,
  );
  const latRows = measured.flatMap((m) =>
    m.latency.map((l, i) => [
      m.server.label,
      String(i + 1),
      String(l.count),
      String(m.latencyLost[i] ?? 0),
      num(l.p50),
      num(l.p90),
      num(l.p99),
      num(l.p999),
      num(l.max),
      String(m.latencyThreads[i]?.mainPreempted ?? NaN),
      num(m.latencyThreads[i]?.otherThreadsCpuMs ?? NaN),
      share(m.latencyForeign[i] ?? NaN),
    ]),
  );
  report.paragraph(
    `Latency runs (open loop at ${knobs.rate} q/s), ms. "preempted": how often the server's main thread lost ` +
      `CPU ${SERVER_CPU} while it could run (nonvoluntary context switches: to its own other threads, or to ` +
      `another process such as FakeMachined or dbus-daemon answering the address refresh); "threads ms": the ` +
      `CPU its other threads (V8's, libuv's) took in the run:`,
  );
  report.table(
    [
      'server',
      'run',
      'answers',
      'lost',
      'p50',
      'p90',
      'p99',
      'p99.9',
      'max',
      'preempted',
      'threads ms',
      'others',
    ],
    latRows,
  );
  report.table(
    ['server', 'q/s', 'CPU µs/q', 'p50 ms', 'p99 ms', 'p99.9 ms', 'RSS MiB (peak)'],
    measured.map((m) => {
      const mem = memory(m.server.pid);
      return [
        m.server.label,
        formatSpread(spread(q(m))),
        formatSpread(spread(m.cpuPerQueryUs)),
        formatSpread(spread(m.latency.map((l) => l.p50))),
        formatSpread(spread(m.latency.map((l) => l.p99))),
        formatSpread(spread(m.latency.map((l) => l.p999))),
        `${num(mem.rssMiB)} (${num(mem.peakMiB)})`,
      ];
    }),
  );

  const ratio = (a: Measured, b: Measured): { text: string; median: number } => {
    const per = q(a).map((v, i) => v / (q(b)[i] ?? NaN));
    const median = spread(q(a)).median / spread(q(b)).median;
    const s = spread(per);
    return { text: `${num(median, 2)} (${num(s.min, 2)}–${num(s.max, 2)} per run)`, median };
  };
  const vsDnsmasq = ratio(ours, dnsmasq);
  const vsCeiling = ratio(ours, ceiling);
  const oursQps = formatSpread(spread(q(ours)), ' q/s');
  report.summary({
    measurement: `UDP q/s, ${knobs.machines} machines, server on 1 core (dnsperf -c4 -q100)`,
    ours: oursQps,
    anchor: `dnsmasq ${formatSpread(spread(q(dnsmasq)), ' q/s')}`,
    ratio: vsDnsmasq.text,
    target: '≥ 0.55 × dnsmasq',
    met: vsDnsmasq.median >= 0.55,
  });
  report.summary({
    measurement: 'UDP q/s vs the Node ceiling (dgram, no DNS work)',
    ours: oursQps,
    anchor: `Node ceiling ${formatSpread(spread(q(ceiling)), ' q/s')}`,
    ratio: vsCeiling.text,
    target: '≥ 0.9 × Node ceiling',
    met: vsCeiling.median >= 0.9,
  });
  const p99 = spread(ours.latency.map((l) => l.p99));
  const dp99 = spread(dnsmasq.latency.map((l) => l.p99));
  report.summary({
    measurement: `p99 latency at a fixed ${knobs.rate} q/s (open loop)`,
    ours: formatSpread(p99, ' ms'),
    anchor: `dnsmasq ${formatSpread(dp99, ' ms')}`,
    ratio: num(p99.median / dp99.median, 2),
    target: 'p99 < 1 ms',
    met: p99.median < 1,
  });
  const quietP99 = spread(noRefresh.latency.map((l) => l.p99));
  report.summary({
    measurement: `p99 at ${knobs.rate} q/s without the periodic address refresh (--refresh 3600; informative)`,
    ours: formatSpread(quietP99, ' ms'),
    anchor: `dnsmasq ${formatSpread(dp99, ' ms')}`,
    ratio: num(quietP99.median / dp99.median, 2),
    target: '—',
    met: undefined,
  });
  const fullP99 = spread(fullRefresh.latency.map((l) => l.p99));
  report.summary({
    measurement: `p99 at ${knobs.rate} q/s asking machined every round (--refresh-full 1, the default before; informative)`,
    ours: formatSpread(fullP99, ' ms'),
    anchor: `dnsmasq ${formatSpread(dp99, ' ms')}`,
    ratio: num(fullP99.median / dp99.median, 2),
    target: '—',
    met: undefined,
  });
  const fullQps = ratio(fullRefresh, ceiling);
  report.summary({
    measurement: 'UDP q/s vs the Node ceiling asking machined every round (--refresh-full 1; informative)',
    ours: formatSpread(spread(q(fullRefresh)), ' q/s'),
    anchor: `Node ceiling ${formatSpread(spread(q(ceiling)), ' q/s')}`,
    ratio: fullQps.text,
    target: '—',
    met: undefined,
  });
  const p50 = spread(ours.latency.map((l) => l.p50));
  const dp50 = spread(dnsmasq.latency.map((l) => l.p50));
  report.summary({
    measurement: `p50 latency at a fixed ${knobs.rate} q/s`,
    ours: formatSpread(p50, ' ms'),
    anchor: `dnsmasq ${formatSpread(dp50, ' ms')}`,
    ratio: num(p50.median / dp50.median, 2),
    target: '—',
    met: undefined,
  });
}

main().catch((err: unknown) => {
  process.stderr.write(
    `bench:dns failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 1;
});
