/**
 * bench:userdb — io.systemd.UserDatabase GetUserRecord by uid and by name, ours next to the real
 * systemd-machined 252 (the anchor), for the same machines in the same World.
 *
 *   npm run bench:userdb     (as root; knobs: BENCH_RUNS, BENCH_LOOKUPS)
 *
 * MachinedLab: machined 252 with the lab's real containers (alpha: uid_map 0 100000 65536,
 * bravo-two: 0 200000 65536, and three that own no ids); `mymachinesd serve` follows it with its
 * userdb socket at /run/mymachinesd-bench/io.systemd.Machine, so that both sockets have the same
 * service name and get byte-identical requests (and must give byte-identical replies: checked first).
 * Both servers are pinned to CPU 0 (machined with `taskset -a -p`, ours from its start), the load
 * generator (bench/processes/userdb-load.ts) to CPU 1.
 *
 * Ways of asking, per server and key kind, servers taking turns run by run:
 * - one connection per lookup, as nss-systemd does (reference §4.7), one at a time: latency;
 * - one connection per lookup, 4 at once: throughput;
 * - one persistent connection, one call at a time: latency;
 * - one persistent connection, 32 calls pipelined: throughput.
 */
import { DaemonHandle, BIN } from '../test/support/daemon.js';
import { LAB_MACHINES, MACHINED_USERDB, MachinedLab } from '../test/support/machined-lab.js';
import { describeMachine, requirePrograms } from './harness/machine.js';
import { cpuSince, cpuTime, pin } from './harness/processes.js';
import { BenchReport } from './harness/report.js';
import { formatSpread, latencySummary, num, spread, type LatencySummary } from './harness/stats.js';
import { quietRun, share, untilQuiet } from './harness/quiet.js';
import { throughput, userdbLoad, type LoadOptions, type LoadResult } from './harness/userdb-load.js';
import { DAEMON_NODE_FLAGS } from '../src/daemon/heap.js';

const knobs = {
  runs: Number(process.env.BENCH_RUNS ?? 5),
  lookups: Number(process.env.BENCH_LOOKUPS ?? 4000),
};
const SERVER_CPU = 0;
const LOAD_CPU = 1;
const OURS_USERDB = '/run/mymachinesd-bench/io.systemd.Machine';
const SERVICE = 'io.systemd.Machine';
const COLD_LOOKUPS = 500;

const call = (params: Record<string, unknown>): string =>
  JSON.stringify({
    method: 'io.systemd.UserDatabase.GetUserRecord',
    parameters: { ...params, service: SERVICE },
  });

/** Users of alpha (uid_map 0 100000 65536) and bravo-two (0 200000 65536): every call finds a record. */
const KEYS = {
  uid: [100000, 101000, 165534, 200000, 201000].map((uid) => call({ uid })),
  name: ['vu-alpha-0', 'vu-alpha-1000', 'vu-alpha-65534', 'vu-bravo-two-0', 'vu-bravo-two-1000'].map(
    (userName) => call({ userName }),
  ),
};
type KeyKind = keyof typeof KEYS;

interface Way {
  readonly label: string;
  readonly options: Omit<LoadOptions, 'socket' | 'calls' | 'count'>;
  /** Latency is what this way measures (else throughput). */
  readonly latency: boolean;
  readonly scale: number;
}

const WAYS: readonly Way[] = [
  {
    label: 'connection per lookup, 1 at a time',
    options: { mode: 'connection', concurrency: 1 },
    latency: true,
    scale: 1,
  },
  {
    label: 'connection per lookup, 4 at once',
    options: { mode: 'connection', concurrency: 4 },
    latency: false,
    scale: 2,
  },
  {
    label: 'one connection, 1 call at a time',
    options: { mode: 'pipelined', depth: 1 },
    latency: true,
    scale: 2,
  },
  {
    label: 'one connection, 32 pipelined',
    options: { mode: 'pipelined', depth: 32 },
    latency: false,
    scale: 5,
  },
];

interface Server {
  readonly label: 'mymachinesd' | 'machined 252';
  readonly socket: string;
  readonly pid: number;
}

interface Sample {
  readonly server: Server['label'];
  readonly kind: KeyKind;
  readonly way: Way;
  readonly run: number;
  readonly result: LoadResult;
  readonly cpuUsPerLookup: number;
  /** CPU other processes on this shared VM took during the run, share of one core. */
  readonly foreign: number;
}

async function main(): Promise<void> {
  requirePrograms(['dbus-daemon', '/lib/systemd/systemd-machined', 'taskset']);
  const report = new BenchReport('userdb', describeMachine(['systemd-container', 'dbus-daemon']));
  report.progress('starting machined 252 and the lab containers');
  const lab = await MachinedLab.start(LAB_MACHINES);
  let daemon: DaemonHandle | undefined;
  const samples: Sample[] = [];
  const cold = new Map<Server['label'], LatencySummary>();
  try {
    daemon = await DaemonHandle.startCommand(lab.world, [
      'taskset', '-c', String(SERVER_CPU),
      process.execPath, ...DAEMON_NODE_FLAGS, BIN, 'serve', '--bus', lab.busAddress, '--userdb', OURS_USERDB,
    ]); // prettier-ignore
    const machinedPid = lab.machinedPid;
    if (machinedPid === undefined || daemon.child.pid === undefined) throw new Error('no pids');
    pin(machinedPid, SERVER_CPU);
    const ours = daemon.child.pid;
    const servers: Server[] = [
      { label: 'mymachinesd', socket: OURS_USERDB, pid: ours },
      { label: 'machined 252', socket: MACHINED_USERDB, pid: machinedPid },
    ];

    // Sanity: the same bytes from both, for every call used.
    const rows: string[][] = [];
    for (const kind of ['uid', 'name'] as const) {
      const [a, b] = await Promise.all(
        servers.map((s) =>
          userdbLoad(lab.world, LOAD_CPU, {
            socket: s.socket,
            calls: KEYS[kind],
            mode: 'connection',
            count: KEYS[kind].length,
          }),
        ),
      );
      for (const c of KEYS[kind]) {
        const ours = a?.replies[c];
        if (ours === undefined || ours !== b?.replies[c] || !ours.includes('"record"'))
          throw new Error(
            `replies differ or carry no record for ${c}:\n  ours:     ${String(ours)}\n  machined: ${String(b?.replies[c])}`,
          );
        rows.push([c, ours.length.toString()]);
      }
    }
    report.paragraph(
      'Sanity check: for every call below both servers give the same reply, byte for byte, with a record.',
    );
    report.table(['call', 'reply bytes'], rows);

    // Cold: the first lookups after start, as the first `ls -l` after a boot would see them.
    await untilQuiet();
    for (const server of servers) {
      const r = await userdbLoad(lab.world, LOAD_CPU, {
        socket: server.socket,
        calls: KEYS.uid,
        mode: 'connection',
        count: COLD_LOOKUPS,
      });
      cold.set(server.label, latencySummary(r.latenciesUs));
    }
    // Warm-up, untimed: both servers, every way (our JIT; machined's and the kernel's caches).
    report.progress('warm-up');
    for (const way of WAYS)
      for (const kind of ['uid', 'name'] as const)
        for (const server of servers)
          await userdbLoad(lab.world, LOAD_CPU, {
            ...way.options,
            socket: server.socket,
            calls: KEYS[kind],
            count: 2000,
          });
    for (let run = 1; run <= knobs.runs; run++) {
      for (const way of WAYS) {
        for (const kind of ['uid', 'name'] as const) {
          for (const server of servers) {
            // Our daemon's refresh asks machined for addresses (machined forks for each): it is
            // stopped while machined is measured, so that it adds nothing to machined's figures.
            const pause = server.label === 'machined 252' ? ours : undefined;
            const kept = await quietRun(async () => {
              if (pause !== undefined) process.kill(pause, 'SIGSTOP');
              try {
                const before = cpuTime(server.pid);
                const result = await userdbLoad(lab.world, LOAD_CPU, {
                  ...way.options,
                  socket: server.socket,
                  calls: KEYS[kind],
                  count: knobs.lookups * way.scale,
                  warmup: 500,
                });
                const cpu = cpuSince(server.pid, before);
                return {
                  result,
                  cpuUsPerLookup: ((cpu.userMs + cpu.systemMs) * 1000) / Math.max(1, result.completed),
                };
              } finally {
                if (pause !== undefined) process.kill(pause, 'SIGCONT');
              }
            });
            const { result, cpuUsPerLookup } = kept.result;
            samples.push({
              server: server.label,
              kind,
              way,
              run,
              result,
              cpuUsPerLookup,
              foreign: kept.foreignShare,
            });
            const l = latencySummary(result.latenciesUs);
            report.progress(
              `run ${run} ${server.label} by ${kind}, ${way.label}: ${num(throughput(result))}/s, p50 ${num(l.p50)} µs, p99 ${num(l.p99)} µs, errors ${result.errors}`,
            );
          }
        }
      }
    }
  } finally {
    await daemon?.stop();
    await lab.dispose();
  }
  write(report, samples, cold);
  await report.write();
}

function write(
  report: BenchReport,
  samples: readonly Sample[],
  cold: ReadonlyMap<Server['label'], LatencySummary>,
): void {
  report.paragraph(
    `Setup: the real systemd-machined 252 with the lab's containers in one World; ours: \`mymachinesd serve ` +
      `--bus … --userdb ${OURS_USERDB}\`. Servers pinned to CPU ${SERVER_CPU} (ours stopped ` +
      `with SIGSTOP while machined is measured: its address refresh would make machined fork), the load generator ` +
      `(bench/processes/userdb-load.ts, Node) to CPU ${LOAD_CPU}. Calls: GetUserRecord without \`more\`, as ` +
      `nss-systemd sends them, rotating over 5 users of alpha and bravo-two (all found). ${knobs.runs} runs; ` +
      `${knobs.lookups} lookups per latency run (×2 on a persistent connection), ${knobs.lookups * 2}–${knobs.lookups * 5} per ` +
      `throughput run. Latency includes the Node client's own work (the same for both servers); ` +
      `"server CPU" is the server's user+system time per lookup from /proc.`,
  );
  report.table(
    [
      'server',
      'key',
      'way',
      'run',
      'lookups',
      'errors',
      'lookups/s',
      'p50 µs',
      'p99 µs',
      'server CPU µs/lookup',
      'others',
    ],
    samples.map((s) => {
      const l = latencySummary(s.result.latenciesUs);
      return [
        s.server,
        s.kind,
        s.way.label,
        String(s.run),
        String(s.result.completed),
        String(s.result.errors),
        num(throughput(s.result)),
        num(l.p50),
        num(l.p99),
        num(s.cpuUsPerLookup),
        share(s.foreign),
      ];
    }),
  );
  const pick = (server: Sample['server'], kind: KeyKind, way: Way): Sample[] =>
    samples.filter((s) => s.server === server && s.kind === kind && s.way === way);
  const medians: string[][] = [];
  for (const way of WAYS)
    for (const kind of ['uid', 'name'] as const) {
      const ours = pick('mymachinesd', kind, way);
      const theirs = pick('machined 252', kind, way);
      const p50 = (list: Sample[]): number[] => list.map((s) => latencySummary(s.result.latenciesUs).p50);
      const p99 = (list: Sample[]): number[] => list.map((s) => latencySummary(s.result.latenciesUs).p99);
      const rate = (list: Sample[]): number[] => list.map((s) => throughput(s.result));
      const cpu = (list: Sample[]): number[] => list.map((s) => s.cpuUsPerLookup);
      medians.push(
        ...[ours, theirs].map((list, i) => [
          i === 0 ? 'mymachinesd' : 'machined 252',
          kind,
          way.label,
          formatSpread(spread(rate(list))),
          formatSpread(spread(p50(list))),
          formatSpread(spread(p99(list))),
          formatSpread(spread(cpu(list))),
        ]),
      );
      if (way.latency) {
        const o = spread(p50(ours));
        const t = spread(p50(theirs));
        const per = p50(theirs).map((v, i) => v / (p50(ours)[i] ?? NaN));
        const s = spread(per);
        report.summary({
          measurement: `GetUserRecord by ${kind}, ${way.label}: median latency`,
          ours: formatSpread(o, ' µs'),
          anchor: `machined 252 ${formatSpread(t, ' µs')}`,
          ratio: `${num(t.median / o.median, 3)}× faster (${num(s.min, 3)}–${num(s.max, 3)} per run)`,
          target: 'at least as fast as machined',
          met: t.median / o.median >= 1,
        });
      } else {
        const o = spread(rate(ours));
        const t = spread(rate(theirs));
        report.summary({
          measurement: `GetUserRecord by ${kind}, ${way.label}: lookups/s`,
          ours: formatSpread(o, '/s'),
          anchor: `machined 252 ${formatSpread(t, '/s')}`,
          ratio: `${num(o.median / t.median, 3)}×`,
          target: 'at least as fast as machined',
          met: o.median / t.median >= 1,
        });
      }
    }
  const oursCold = cold.get('mymachinesd');
  const theirsCold = cold.get('machined 252');
  if (oursCold && theirsCold) {
    report.paragraph(
      `Cold (the first ${COLD_LOOKUPS} lookups by uid after both servers started, one connection per lookup, ` +
        `one at a time): mymachinesd p50 ${num(oursCold.p50)} µs, p99 ${num(oursCold.p99)} µs; machined 252 ` +
        `p50 ${num(theirsCold.p50)} µs, p99 ${num(theirsCold.p99)} µs.`,
    );
    report.summary({
      measurement: `GetUserRecord by uid, cold: first ${COLD_LOOKUPS} lookups after start, median latency`,
      ours: `${num(oursCold.p50)} µs`,
      anchor: `machined 252 ${num(theirsCold.p50)} µs`,
      ratio: `${num(theirsCold.p50 / oursCold.p50, 3)}× faster`,
      target: '— (one run)',
      met: undefined,
    });
  }
  report.paragraph('Medians over the runs (range):');
  report.table(['server', 'key', 'way', 'lookups/s', 'p50 µs', 'p99 µs', 'server CPU µs/lookup'], medians);
}

main().catch((err: unknown) => {
  process.stderr.write(
    `bench:userdb failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 1;
});
