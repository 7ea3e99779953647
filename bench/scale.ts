/**
 * bench:scale — 100, 1,000 and 10,000 machines registered in FakeMachined (the TEST DOUBLE of
 * machined) before the daemon starts: time to the first sync (`ready`), memory, DNS q/s and userdb
 * lookup latency at each size. Lookups must cost the same whatever the number of machines.
 *
 *   npm run bench:scale      (as root; knobs: BENCH_SIZES=100,1000,10000, BENCH_RUNS, BENCH_SECONDS,
 *                            BENCH_SYNC_RUNS=3 first syncs per size)
 *
 * The daemon here is the BENCH-ONLY entry bench/processes/scale-daemon.ts: the daemon's own parts
 * (Registry, userdb, DNS stub) wired as `serve` wires them, with a synthetic source of uid/gid maps
 * (bench/harness/synthetic-host.ts) because 10,000 real user namespaces are too heavy; the /proc
 * reads themselves still happen. One World per size; the daemon is pinned to CPU 0, dnsperf and the
 * userdb load generator to CPU 1.
 *
 * Anchors measured in the same run: for the first sync, a bare D-Bus client doing the same calls
 * as the registry (ListMachines, then GetAll and GetMachineAddresses per machine, as many at a time) and
 * nothing else; for memory and lookups, the smallest size.
 */
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { BusConnection } from '../src/registry-client/bus.js';
import { Machine1Client } from '../src/registry-client/machine1.js';
import { DEFAULTS, mapLimit } from '../src/registry-client/sync.js';
import { FakeMachinedHandle } from '../test/support/fake.js';
import { World } from '../test/support/world.js';
import { dnsperf, type DnsperfRun } from './harness/dnsperf.js';
import { fakeMachines, machineName, prng, queryLines } from './harness/fixture.js';
import { describeMachine, REPO, requirePrograms } from './harness/machine.js';
import { cpuSince, cpuTime, foreignCpu, memory, pin, type Memory } from './harness/processes.js';
import { quietRun, share, sleep, untilQuiet, type QuietResult } from './harness/quiet.js';
import { BenchReport } from './harness/report.js';
import { startDaemon, type DnsUnderTest } from './harness/servers.js';
import { formatSpread, latencySummary, num, spread, type Spread } from './harness/stats.js';
import { SYNTHETIC_LEADER_BASE, syntheticRange, writeMachineRoots } from './harness/synthetic-host.js';
import { userdbLoad } from './harness/userdb-load.js';
import { DAEMON_NODE_FLAGS } from '../src/daemon/heap.js';

const knobs = {
  sizes: (process.env.BENCH_SIZES ?? '100,1000,10000').split(',').map(Number),
  runs: Number(process.env.BENCH_RUNS ?? 3),
  /** First syncs per size, each after its bare fetch; the medians are reported. */
  syncRuns: Number(process.env.BENCH_SYNC_RUNS ?? 3),
  seconds: Number(process.env.BENCH_SECONDS ?? 5),
  lookups: 3000,
};
/**
 * The daemon's CPU with no queries is measured from this long after its spawn (the first refresh
 * round begins one refresh interval, 10 s, after the first sync), for IDLE_SECONDS.
 */
const IDLE_AFTER_MS = 12_000;
const IDLE_SECONDS = 10;
/** Pairs of userdb runs taking turns (largest and smallest size), at least. */
const USERDB_TURNS = 5;
const SERVER_CPU = 0;
const LOAD_CPU = 1;
/** Bundled as bin/mymachinesd's daemon is (scripts/bundle.mjs), so its start-up is the shipped one. */
const SCALE_DAEMON_JS = join(REPO, 'dist/bench/processes/scale-daemon.bundle.mjs');
const USERDB = '/run/mymachinesd-bench/io.mymachinesd.Machine';

interface SizeResult {
  readonly machines: number;
  readonly bareFetchMs: number;
  /** Medians over the size's first syncs (`readyRunsMs`, `bareRunsMs`: each run, in order). */
  readonly readyMs: number;
  readonly syncMs: number;
  readonly readyRunsMs: readonly number[];
  /** The same starts pinned to SERVER_CPU from spawn (informative), each run's. */
  readonly pinnedReadyRunsMs: readonly number[];
  readonly bareRunsMs: readonly number[];
  /** The registry's own figure for the containers' passwd and group, read after `ready`. */
  readonly accountsMs: number;
  readonly fakeCpuMs: number;
  /** The daemon's CPU per second with no queries (ms/s): the registry's polling, and its timers. */
  readonly idleCpuMsPerS: number;
  readonly memoryReady: Memory;
  readonly memoryAfter: Memory;
  readonly qps: number[];
  readonly cpuPerQueryUs: number[];
  readonly userdbP50Us: Record<'uid' | 'name', number[]>;
  readonly userdbP99Us: Record<'uid' | 'name', number[]>;
  /** CPU other processes on this shared VM took while the daemon started, share of one core. */
  readonly syncForeign: number;
  /** The most they took during any of the size's other kept runs. */
  readonly maxForeign: number;
  /** Largest size only: DNS q/s of the same daemon started with --no-polling (informative). */
  readonly noPollingQps: number[];
  /** Largest size only: userdb p50 by uid of that daemon (informative). */
  readonly noPollingUserdbP50Us: number[];
  /**
   * Largest size only: DNS q/s of this size's daemon and of the smallest size's daemon (kept running
   * for this), in runs taking turns, so drift of the shared VM over the minutes between sizes
   * cannot make a ratio (bench:dns's method).
   */
  readonly paired: Paired;
  /** Largest size only: userdb p50 µs of the two daemons taking turns, as `paired`. */
  readonly pairedUserdb: Record<'uid' | 'name', Paired>;
}

interface Paired {
  readonly largest: number[];
  readonly smallest: number[];
}

/** The smallest size's daemon, kept running until the largest size has been measured against it. */
interface KeptDaemon extends Side {
  stop(): Promise<void>;
}

/** What a first sync cannot avoid: the same D-Bus calls, as many at a time as the registry's first sync, and nothing else. */
async function bareFetch(busAddress: string): Promise<number> {
  const conn = await BusConnection.open(busAddress);
  try {
    const client = new Machine1Client(conn, { noAutoStart: true, timeoutMs: 30_000 });
    const t0 = performance.now();
    const listing = await client.listMachines();
    await mapLimit(listing, DEFAULTS.firstSyncConcurrency, async (l) => {
      await client.machineProperties(l.path);
      await client.getMachineAddresses(l.name);
    });
    return performance.now() - t0;
  } finally {
    conn.close();
  }
}

/** Sends `sig` to a process we started; one already gone is no error here (stopping it says so). */
function signal(pid: number, sig: NodeJS.Signals): void {
  try {
    process.kill(pid, sig);
  } catch (err) {
    if (!(err instanceof Error && 'code' in err && err.code === 'ESRCH')) throw err;
  }
}

function userdbCalls(machines: number, kind: 'uid' | 'name'): string[] {
  const random = prng(machines);
  return Array.from({ length: 64 }, () => {
    const i = 1 + Math.floor(random() * machines);
    const params =
      kind === 'uid'
        ? { uid: syntheticRange(SYNTHETIC_LEADER_BASE + i).outer + 1000 }
        : { userName: `vu-${machineName(i)}-1000` };
    return JSON.stringify({
      method: 'io.systemd.UserDatabase.GetUserRecord',
      parameters: { ...params, service: 'io.mymachinesd.Machine' },
    });
  });
}

/** One daemon of a size, with what measuring it needs. */
interface Side {
  readonly machines: number;
  readonly daemon: DnsUnderTest;
  readonly queryFile: string;
  readonly world: World;
}

/** GetUserRecord over one connection per lookup to the daemon of `side`'s World: p50 and p99 in µs. */
async function userdbLookups(
  side: Pick<Side, 'machines' | 'world'>,
  kind: 'uid' | 'name',
): Promise<{ p50: number; p99: number }> {
  const r = await userdbLoad(side.world, LOAD_CPU, {
    socket: USERDB,
    calls: userdbCalls(side.machines, kind),
    mode: 'connection',
    count: knobs.lookups,
    warmup: 500,
  });
  if (r.errors > 0 || !Object.values(r.replies).every((x) => x.includes('"record"')))
    throw new Error(
      `userdb at ${side.machines} by ${kind}: ${r.errors} errors, ${JSON.stringify(r.replies).slice(0, 500)}`,
    );
  const l = latencySummary(r.latenciesUs);
  return { p50: l.p50, p99: l.p99 };
}

type Started = Awaited<ReturnType<typeof startDaemon>>;

/** One daemon start up to `ready`, with what the start cost (a FirstSync without its bare fetch). */
interface FirstSync {
  readonly started: Started;
  readonly spawnedAt: number;
  readonly readyMs: number;
  /** The registry's own figure, from its `synced` line. */
  readonly syncMs: number;
  /** CPU other processes on this shared VM took meanwhile, share of one core. */
  readonly foreign: number;
  readonly fakeCpuMs: number;
  readonly bareFetchMs: number;
  readonly bareForeign: number;
}

/** `cpu`: the daemon pinned to it from its spawn, or (undefined) not pinned. */
async function firstSync(
  world: World,
  fake: FakeMachinedHandle,
  n: number,
  cpu: number | undefined,
): Promise<Omit<FirstSync, 'bareFetchMs' | 'bareForeign'>> {
  const others = foreignCpu();
  const fakePid = fake.pid ?? 0;
  const fakeBefore = cpuTime(fakePid);
  const spawnedAt = performance.now();
  const started = await startDaemon(world, 'mymachinesd (bench entry)', scaleDaemon(fake.busAddress), cpu);
  const readyMs = performance.now() - spawnedAt;
  const foreign = others() / readyMs;
  const fakeCpu = cpuSince(fakePid, fakeBefore);
  const synced = started.handle.lines.find((l) => /synced \d+ machine/.test(l)) ?? '';
  if (!synced.includes(`synced ${n} machine`)) {
    await started.stop();
    throw new Error(`daemon synced something else: ${synced}`);
  }
  const syncMs = Number(/in (\d+) ms/.exec(synced)?.[1] ?? NaN);
  return { started, spawnedAt, readyMs, syncMs, foreign, fakeCpuMs: fakeCpu.userMs + fakeCpu.systemMs };
}

async function measureSize(
  n: number,
  report: BenchReport,
  largest: boolean,
  /** Given for the smallest size: its daemon is handed over, running, instead of stopped. */
  keep: ((kept: KeptDaemon) => void) | undefined,
  anchor: KeptDaemon | undefined,
): Promise<SizeResult> {
  const fake = await FakeMachinedHandle.start();
  const world = await World.create();
  let daemon: DnsUnderTest | undefined;
  let kept = false;
  try {
    report.progress(`${n} machines: writing their root directories, seeding FakeMachined`);
    const roots = join(world.dir, 'roots');
    await writeMachineRoots(
      roots,
      Array.from({ length: n }, (_, k) => machineName(k + 1)),
    );
    const all = fakeMachines(
      n,
      (i) => SYNTHETIC_LEADER_BASE + i,
      (i) => join(roots, machineName(i)),
    );
    for (let i = 0; i < all.length; i += 1000) await fake.seed(all.slice(i, i + 1000));
    // The first sync, `syncRuns` times, each after the bare fetch it is compared with: one start-up
    // on this shared VM varied by a fifth to a third from run to run (BENCHMARKS.md, 2026-12-06).
    // The daemon starts unpinned, as it runs in production and as the bare fetch runs (in this
    // process); each run also starts it pinned to SERVER_CPU, as it is for the DNS and userdb
    // measurements, which is informative: the double and dbus-daemon, unpinned, can then run on the
    // daemon's core while it waits (pinned, the bare fetch itself took 2.8-3.0 s against 1.0-1.8 s;
    // BENCHMARKS.md, 2026-12-06). Every daemon but the last is stopped once `ready`; the last is
    // pinned to SERVER_CPU and measured further.
    const firsts: FirstSync[] = [];
    const pinnedReadyRunsMs: number[] = [];
    let started: Started | undefined;
    for (let run = 0; run < knobs.syncRuns; run++) {
      const bare = await quietRun(() => bareFetch(fake.busAddress));
      await untilQuiet();
      report.progress(`${n} machines: bare D-Bus fetch ${num(bare.result)} ms; starting the daemon`);
      const pinned = await firstSync(world, fake, n, SERVER_CPU);
      await pinned.started.stop();
      pinnedReadyRunsMs.push(pinned.readyMs);
      await untilQuiet();
      const first = await firstSync(world, fake, n, undefined);
      firsts.push({ ...first, bareFetchMs: bare.result, bareForeign: bare.foreignShare });
      started = first.started;
      daemon = started;
      if (run < knobs.syncRuns - 1) {
        await started.stop();
        daemon = undefined;
      }
    }
    if (!started) throw new Error('BENCH_SYNC_RUNS must be at least 1');
    pin(started.pid, SERVER_CPU);
    const t0 = firsts[firsts.length - 1]?.spawnedAt ?? performance.now();
    const median = (pick: (f: FirstSync) => number): number => spread(firsts.map(pick)).median;
    const bareFetchMs = median((f) => f.bareFetchMs);
    const readyMs = median((f) => f.readyMs);
    const syncMs = median((f) => f.syncMs);
    const syncForeign = Math.max(...firsts.map((f) => f.foreign));
    const fakeCpuMs = median((f) => f.fakeCpuMs);
    const memoryReady = memory(started.pid);
    // The accounts (enumeration only) are read after `ready`; the lookups below start once they are in.
    const accountsLine = await started.handle.waitFor(/read the accounts of \d+ container/, 60_000);
    const accountsMs = Number(/in (\d+) ms/.exec(accountsLine)?.[1] ?? NaN);
    const idle = await idleCpu(started.pid, t0);
    report.progress(`${n} machines: idle CPU ${num(idle.result)} ms/s`);

    const queryFile = join(world.dir, 'queries.txt');
    await writeFile(queryFile, `${queryLines(n, Math.max(10_000, 4 * n)).join('\n')}\n`);
    const dnsOptions = { server: started.address, port: started.port, queryFile, cpu: LOAD_CPU };
    await dnsperf(world, { ...dnsOptions, seconds: 2 });
    const qps: number[] = [];
    const foreign: number[] = [];
    const cpuPerQueryUs: number[] = [];
    for (let run = 0; run < knobs.runs; run++) {
      const kept = await quietRun(async () => {
        const before = cpuTime(started.pid);
        const run = await dnsperf(world, { ...dnsOptions, seconds: knobs.seconds });
        return { run, cpu: cpuSince(started.pid, before) };
      });
      const { run: r, cpu } = kept.result;
      foreign.push(kept.foreignShare);
      if (r.lost > 0 || (r.rcodes.get('SERVFAIL') ?? 0) > 0)
        throw new Error(`dnsperf at ${n}: ${r.lost} lost`);
      qps.push(r.qps);
      cpuPerQueryUs.push(((cpu.userMs + cpu.systemMs) * 1000) / Math.max(1, r.completed));
    }
    report.progress(`${n} machines: DNS ${qps.map((q) => num(q)).join(', ')} q/s`);
    const paired = { largest: [] as number[], smallest: [] as number[] };
    const pairedUserdb = {
      uid: { largest: [] as number[], smallest: [] as number[] },
      name: { largest: [] as number[], smallest: [] as number[] },
    };
    if (largest && anchor) {
      // This size's daemon and the smallest size's, taking turns run by run. The smallest size's
      // daemon is kept stopped (SIGSTOP, a process we started) except for its turns, and this one
      // is stopped during those, so neither takes CPU from the other.
      const a = anchor;
      const mineSide: Side = { machines: n, daemon: started, queryFile, world };
      const turn = async <T>(mine: boolean, work: (side: Side) => Promise<T>): Promise<QuietResult<T>> => {
        try {
          if (!mine) {
            process.kill(started.pid, 'SIGSTOP');
            process.kill(a.daemon.pid, 'SIGCONT');
          }
          return await quietRun(() => work(mine ? mineSide : a));
        } finally {
          // Whatever failed: this size's daemon runs on (it is stopped with SIGTERM later), the
          // smallest size's waits stopped for its next turn or its stop().
          if (!mine) signal(a.daemon.pid, 'SIGSTOP');
          signal(started.pid, 'SIGCONT');
        }
      };
      const dnsTurn = (side: Side, seconds: number): Promise<DnsperfRun> =>
        dnsperf(side.world, {
          ...dnsOptions,
          server: side.daemon.address,
          port: side.daemon.port,
          queryFile: side.queryFile,
          seconds,
        });
      await turn(false, (side) => dnsTurn(side, 2)); // warm-up after its pause
      for (let run = 0; run < knobs.runs; run++)
        for (const mine of [true, false]) {
          const kept = await turn(mine, (side) => dnsTurn(side, knobs.seconds));
          foreign.push(kept.foreignShare);
          (mine ? paired.largest : paired.smallest).push(kept.result.qps);
        }
      report.progress(
        `${n} vs ${anchor.machines} machines, taking turns: ${paired.largest.map((q) => num(q)).join(', ')} against ${paired.smallest.map((q) => num(q)).join(', ')} q/s`,
      );
      // userdb the same way: measured in phases minutes apart, its ratio moved with the VM's drift.
      // Single runs of the same daemon ranged ±20 % (2026-12-03), so at least five pairs.
      for (let run = 0; run < Math.max(USERDB_TURNS, knobs.runs); run++)
        for (const kind of ['uid', 'name'] as const)
          for (const mine of [true, false]) {
            const kept = await turn(mine, (side) => userdbLookups(side, kind));
            foreign.push(kept.foreignShare);
            (mine ? pairedUserdb[kind].largest : pairedUserdb[kind].smallest).push(kept.result.p50);
          }
      report.progress(
        `${n} vs ${anchor.machines} machines, taking turns: userdb p50 by uid ${pairedUserdb.uid.largest.map((v) => num(v)).join(', ')} against ${pairedUserdb.uid.smallest.map((v) => num(v)).join(', ')} µs`,
      );
    }

    const userdbP50Us = { uid: [] as number[], name: [] as number[] };
    const userdbP99Us = { uid: [] as number[], name: [] as number[] };
    for (let run = 0; run < knobs.runs; run++)
      for (const kind of ['uid', 'name'] as const) {
        const kept = await quietRun(() => userdbLookups({ machines: n, world }, kind));
        foreign.push(kept.foreignShare);
        userdbP50Us[kind].push(kept.result.p50);
        userdbP99Us[kind].push(kept.result.p99);
      }
    report.progress(`${n} machines: userdb p50 by uid ${userdbP50Us.uid.map((v) => num(v)).join(', ')} µs`);
    const memoryAfter = memory(started.pid);
    if (keep) {
      keep({
        machines: n,
        daemon: started,
        queryFile,
        world,
        stop: async () => {
          signal(started.pid, 'SIGCONT');
          await started.stop();
          await world.dispose();
          await fake.stop();
        },
      });
      kept = true;
      process.kill(started.pid, 'SIGSTOP'); // until the largest size takes turns with it
    }
    const noPollingQps: number[] = [];
    const noPollingUserdbP50Us: number[] = [];
    if (largest) {
      // The same daemon without periodic polling: what the address refresh and the leader check
      // cost the query path at this size.
      await started.stop();
      daemon = undefined;
      const quiet = await startDaemon(
        world,
        'mymachinesd (bench entry, --no-polling)',
        scaleDaemon(fake.busAddress, ['--no-polling']),
        SERVER_CPU,
      );
      daemon = quiet;
      const options = { server: quiet.address, port: quiet.port, queryFile, cpu: LOAD_CPU };
      await dnsperf(world, { ...options, seconds: 2 });
      for (let run = 0; run < knobs.runs; run++) {
        const kept = await quietRun(() => dnsperf(world, { ...options, seconds: knobs.seconds }));
        noPollingQps.push(kept.result.qps);
      }
      for (let run = 0; run < knobs.runs; run++) {
        const kept = await quietRun(() => userdbLookups({ machines: n, world }, 'uid'));
        noPollingUserdbP50Us.push(kept.result.p50);
      }
      report.progress(`${n} machines, no polling: DNS ${noPollingQps.map((q) => num(q)).join(', ')} q/s`);
    }
    return {
      machines: n,
      bareFetchMs,
      readyMs,
      syncMs,
      accountsMs,
      fakeCpuMs,
      readyRunsMs: firsts.map((f) => f.readyMs),
      pinnedReadyRunsMs,
      bareRunsMs: firsts.map((f) => f.bareFetchMs),
      idleCpuMsPerS: idle.result,
      memoryReady,
      memoryAfter,
      noPollingQps,
      noPollingUserdbP50Us,
      paired,
      pairedUserdb,
      qps,
      cpuPerQueryUs,
      userdbP50Us,
      userdbP99Us,
      syncForeign,
      maxForeign: Math.max(...firsts.map((f) => f.bareForeign), idle.foreignShare, ...foreign),
    };
  } finally {
    if (!kept) {
      await daemon?.stop();
      await world.dispose();
      await fake.stop();
    }
  }
}

/**
 * The daemon's CPU per second while nobody queries it, from IDLE_AFTER_MS after `spawnedAt`: what
 * polling (the address refresh and the leader check) costs a machine that serves nothing.
 */
async function idleCpu(pid: number, spawnedAt: number): Promise<QuietResult<number>> {
  const wait = spawnedAt + IDLE_AFTER_MS - performance.now();
  if (wait > 0) await sleep(wait);
  return quietRun(async () => {
    const before = cpuTime(pid);
    await sleep(IDLE_SECONDS * 1000);
    const cpu = cpuSince(pid, before);
    return (cpu.userMs + cpu.systemMs) / IDLE_SECONDS;
  });
}

async function main(): Promise<void> {
  requirePrograms(['dnsperf', 'taskset', 'dbus-daemon']);
  const report = new BenchReport('scale', describeMachine(['dnsperf', 'dbus-daemon']));
  const results: SizeResult[] = [];
  let anchor: KeptDaemon | undefined;
  try {
    for (const [i, n] of knobs.sizes.entries()) {
      const last = i === knobs.sizes.length - 1;
      const keep =
        i === 0 && !last
          ? (k: KeptDaemon): void => {
              anchor = k;
            }
          : undefined;
      results.push(await measureSize(n, report, last, keep, last ? anchor : undefined));
    }
  } finally {
    await anchor?.stop();
  }

  report.paragraph(
    `Setup: FakeMachined (TEST DOUBLE of machined, Node + dbus-next) on a private dbus-daemon, seeded with N ` +
      `containers (one IPv4 + one IPv6 address each) before the daemon starts. Ours: the BENCH-ONLY entry ` +
      `\`bench/processes/scale-daemon.ts\`, bundled as the shipped daemon is (Registry + userdb + DNS stub wired as \`serve\` does, defaults: ` +
      `refresh every 10 s but at most 100 machines a second, leader check every 2 s (start time every fifth), ${DEFAULTS.firstSyncConcurrency} D-Bus fetches at a time in the first sync and ${DEFAULTS.concurrency} after it) with a synthetic uid/gid map source whose /proc reads ` +
      `still happen; pinned to CPU ${SERVER_CPU} from \`ready\` on. "ready" is from spawn to the \`ready\` line (Node start-up ` +
      `included), median (min–max) of ${knobs.syncRuns} starts per size, each after its own bare fetch, the daemon not pinned during its start, as it runs in production and as the bare fetch runs (the targets are judged on the medians; the last daemon started is the one measured further, pinned once \`ready\`); "ready pinned" the same start with the daemon pinned to CPU ${SERVER_CPU} from spawn (informative: FakeMachined and dbus-daemon, not pinned, can run on its core too), "sync" the registry's own figure (median), "accounts" its figure for reading every container's passwd and group, which only enumeration needs, after \`ready\`. "idle CPU": the daemon's CPU per second over ${IDLE_SECONDS} s without queries, from ${IDLE_AFTER_MS / 1000} s after its spawn (polling only). DNS: dnsperf on CPU ${LOAD_CPU}, ${knobs.runs} × ` +
      `${knobs.seconds} s, query file of max(10,000, 4·N) lines over all N names (~10 % unknown). userdb: ` +
      `GetUserRecord, one connection per lookup, ${knobs.lookups} lookups per run over 64 random machines, ${knobs.runs} runs per size, and ${Math.max(USERDB_TURNS, knobs.runs)} pairs of runs taking turns for the flatness ratio.`,
  );
  report.table(
    [
      'machines',
      'bare D-Bus fetch ms',
      'ready ms',
      'ready ms pinned',
      'sync ms',
      'accounts ms (after ready)',
      'FakeMachined CPU ms',
      'idle CPU ms/s',
      'RSS MiB at ready',
      'RSS MiB after (peak)',
      'DNS q/s',
      'CPU µs/q',
      'userdb p50 µs uid / name',
      'userdb p99 µs uid / name',
      'others: sync / most in a run',
    ],
    results.map((r) => [
      String(r.machines),
      formatSpread(spread(r.bareRunsMs)),
      formatSpread(spread(r.readyRunsMs)),
      formatSpread(spread(r.pinnedReadyRunsMs)),
      num(r.syncMs),
      num(r.accountsMs),
      num(r.fakeCpuMs),
      num(r.idleCpuMsPerS),
      num(r.memoryReady.rssMiB),
      `${num(r.memoryAfter.rssMiB)} (${num(r.memoryAfter.peakMiB)})`,
      formatSpread(spread(r.qps)),
      formatSpread(spread(r.cpuPerQueryUs)),
      `${formatSpread(spread(r.userdbP50Us.uid))} / ${formatSpread(spread(r.userdbP50Us.name))}`,
      `${formatSpread(spread(r.userdbP99Us.uid))} / ${formatSpread(spread(r.userdbP99Us.name))}`,
      `${share(r.syncForeign)} / ${share(r.maxForeign)}`,
    ]),
  );

  const smallest = results[0];
  if (!smallest) throw new Error('no sizes');
  for (const r of results) {
    const big = r.machines >= 10_000;
    report.summary({
      measurement: `first sync, ${r.machines} machines (spawn → ready)`,
      ours: `${num(r.readyMs)} ms, median of ${r.readyRunsMs.length} (${r.readyRunsMs.map((x) => num(x)).join(', ')}; registry sync ${num(r.syncMs)} ms; accounts for enumeration ${num(r.accountsMs)} ms after)`,
      anchor: `bare D-Bus fetch ${num(r.bareFetchMs)} ms, median (${r.bareRunsMs.map((x) => num(x)).join(', ')})`,
      ratio: num(r.readyMs / r.bareFetchMs, 2),
      target: big ? '< 3 s at 10,000' : '—',
      met: big ? r.readyMs < 3000 : undefined,
    });
  }
  for (const r of results.filter((x) => x.machines >= 10_000)) {
    const pinned = spread(r.pinnedReadyRunsMs).median;
    report.summary({
      measurement: `first sync, ${r.machines} machines, the daemon pinned to CPU ${SERVER_CPU} from spawn (informative)`,
      ours: `${num(pinned)} ms, median of ${r.pinnedReadyRunsMs.length} (${r.pinnedReadyRunsMs.map((x) => num(x)).join(', ')})`,
      anchor: `bare D-Bus fetch ${num(r.bareFetchMs)} ms (not pinned)`,
      ratio: num(pinned / r.bareFetchMs, 2),
      target: '—',
      met: undefined,
    });
  }
  const largest = results[results.length - 1] ?? smallest;
  report.summary({
    measurement: `RSS after load, ${largest.machines} machines`,
    ours: `${num(largest.memoryAfter.rssMiB)} MiB (peak ${num(largest.memoryAfter.peakMiB)})`,
    anchor: `${smallest.machines} machines: ${num(smallest.memoryAfter.rssMiB)} MiB`,
    ratio: num(largest.memoryAfter.rssMiB / smallest.memoryAfter.rssMiB, 2),
    target: '< 200 MB',
    met: largest.memoryAfter.peakMiB * 1.048576 < 200,
  });
  /**
   * A flatness ratio, largest against smallest size: from the two daemons taking turns when they
   * did (the target's row), with the phase-by-phase ratio as an informative row; else phase by phase.
   */
  const flatness = (
    label: string,
    turns: Paired,
    phases: (r: SizeResult) => number[],
    unit: string,
    higherIsBetter: boolean,
  ): void => {
    const target = higherIsBetter ? 'flat: ≥ 0.85×' : 'flat: ≤ 1.15×';
    const meets = (ratio: number): boolean => (higherIsBetter ? ratio >= 0.85 : ratio <= 1.15);
    const row = (what: string, a: Spread, b: Spread, targeted: boolean): void => {
      const ratio = b.median / a.median;
      report.summary({
        measurement: `${label}, ${largest.machines} vs ${smallest.machines} machines${what}`,
        ours: formatSpread(b, unit),
        anchor: `${smallest.machines} machines: ${formatSpread(a, unit)}`,
        ratio: num(ratio, 2),
        target: targeted ? target : '—',
        met: targeted ? meets(ratio) : undefined,
      });
    };
    const paired = turns.largest.length > 0;
    if (paired)
      row(' (the two daemons taking turns, run by run)', spread(turns.smallest), spread(turns.largest), true);
    row(
      paired ? ', each measured in its own phase, minutes apart (informative: drift of the VM included)' : '',
      spread(phases(smallest)),
      spread(phases(largest)),
      !paired,
    );
  };
  flatness('DNS q/s', largest.paired, (r) => r.qps, ' q/s', true);
  if (largest.noPollingQps.length > 0) {
    const a = spread(smallest.qps);
    const b = spread(largest.noPollingQps);
    report.summary({
      measurement: `DNS q/s, ${largest.machines} machines with --no-polling (informative: the cost of the address refresh and leader check)`,
      ours: formatSpread(b, ' q/s'),
      anchor: `${smallest.machines} machines (with polling): ${formatSpread(a, ' q/s')}`,
      ratio: num(b.median / a.median, 2),
      target: '—',
      met: undefined,
    });
  }
  if (largest.noPollingUserdbP50Us.length > 0) {
    const a = spread(smallest.userdbP50Us.uid);
    const b = spread(largest.noPollingUserdbP50Us);
    report.summary({
      measurement: `userdb lookup by uid, p50, ${largest.machines} machines with --no-polling (informative)`,
      ours: formatSpread(b, ' µs'),
      anchor: `${smallest.machines} machines (with polling): ${formatSpread(a, ' µs')}`,
      ratio: num(b.median / a.median, 2),
      target: '—',
      met: undefined,
    });
  }
  for (const kind of ['uid', 'name'] as const)
    flatness(
      `userdb lookup by ${kind}, p50`,
      largest.pairedUserdb[kind],
      (r) => r.userdbP50Us[kind],
      ' µs',
      false,
    );
  await report.write();
}

main().catch((err: unknown) => {
  process.stderr.write(
    `bench:scale failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 1;
});

/** The bench entry of the daemon on the double's bus, DNS on a free loopback port, userdb at USERDB. */
function scaleDaemon(busAddress: string, extra: readonly string[] = []): string[] {
  return [
    process.execPath,
    ...DAEMON_NODE_FLAGS,
    SCALE_DAEMON_JS,
    '--bus',
    busAddress,
    '--dns',
    '127.0.0.1:0',
    '--userdb',
    USERDB,
    ...extra,
  ];
}
