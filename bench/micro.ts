/**
 * bench:micro — the stub's hot functions without I/O, next to their alternatives in the same run
 * (undici's habit: race the shipped function against what it replaced).
 *
 *   npm run bench:micro      (knobs: BENCH_REPEATS)
 *
 * 1. Zone compile after one registration, at 100, 1,000 and 10,000 machines: a ZoneCompiler kept
 *    across changes (what the DNS server does) against compiling from scratch (the anchor).
 * 2. answer() over the bench:dns query mix: a zone whose answer cache holds the whole mix against
 *    one whose cache was capped at 8192 entries (the former fixed limit, the anchor), at 10,000
 *    machines; and the hit path at 1,000 machines.
 * 3. userdb lookupUser by uid and by name over random machines, at 100 and 10,000 machines: the
 *    lookup itself must cost the same at both sizes.
 *
 * The process pins itself to CPU 0 (taskset -p); medians of BENCH_REPEATS repeats, with their range.
 */
import * as dnsPacket from 'dns-packet';
import { MachineTable } from '../src/registry-client/registry.js';
import { answer, type Transport } from '../src/resolver/answer.js';
import { ReplyTable } from '../src/resolver/replies.js';
import { lookupUser } from '../src/userdb/records.js';
import { compileZone, ZoneCompiler, type Zone, type ZonePolicy } from '../src/resolver/zone.js';
import { machineRecord } from '../test/support/records.js';
import { machineIPv4, machineIPv6, machineName, prng, queryLines } from './harness/fixture.js';
import { describeMachine } from './harness/machine.js';
import { pin } from './harness/processes.js';
import { quietRun, share } from './harness/quiet.js';
import { BenchReport } from './harness/report.js';
import { formatSpread, num, spread } from './harness/stats.js';

const knobs = { repeats: Number(process.env.BENCH_REPEATS ?? 15) };
const POLICY: ZonePolicy = {
  domain: 'machine',
  ttl: 0,
  includeLinkLocal: false,
  excludeNets: [],
  forwarding: false,
};
const FORMER_CACHE_LIMIT = 8192;

function table(n: number): MachineTable {
  const t = new MachineTable();
  t.replaceAll(
    Array.from({ length: n }, (_, k) =>
      machineRecord({ name: machineName(k + 1), addresses: [machineIPv4(k + 1), machineIPv6(k + 1)] }),
    ),
  );
  return t;
}

/** One figure per repeat: µs per call of `fn`, each repeat timing `inner` calls. */
function time(inner: number, fn: () => void): number[] {
  const out: number[] = [];
  for (let r = 0; r < knobs.repeats; r++) {
    const t0 = performance.now();
    for (let i = 0; i < inner; i++) fn();
    out.push(((performance.now() - t0) * 1000) / inner);
  }
  return out;
}

/** The bench:dns mix as queries; `spell` rewrites each name (a 0x20 resolver's random case). */
function queries(n: number, spell: (name: string) => string = (name) => name): Buffer[] {
  return queryLines(n, Math.max(10_000, 4 * n)).map((line, i) => {
    const [name = '', type = 'A'] = line.split(' ');
    return dnsPacket.encode({
      type: 'query',
      id: i & 0xffff,
      flags: dnsPacket.RECURSION_DESIRED,
      questions: [{ name: spell(name), type: type === 'AAAA' ? 'AAAA' : 'A' }],
    });
  });
}

/** Each letter upper-cased with probability ½, as a resolver with 0x20 (use-caps-for-id) asks. */
function randomCase(seed: number): (name: string) => string {
  const random = prng(seed);
  return (name) => name.replace(/[a-z]/g, (c) => (random() < 0.5 ? c.toUpperCase() : c));
}

/**
 * µs per answer over the mix; `cap` replaces the zone's cache limit (the former fixed 8192). Over
 * `tcp` every query takes the parsed path (lower-cased question key), which every UDP query took
 * before the exact-bytes entries (`zone.replies`).
 */
function answers(zone: Zone, mix: readonly Buffer[], cap?: number, transport: Transport = 'udp'): number[] {
  const z: Zone =
    cap === undefined
      ? zone
      : { ...zone, answers: new Map(), replies: new ReplyTable(cap, zone.kept), answerLimit: cap };
  for (let w = 0; w < 5; w++) for (const q of mix) answer(q, z, transport);
  return time(1, () => {
    for (const q of mix) answer(q, z, transport);
  }).map((us) => us / mix.length);
}

async function main(): Promise<void> {
  const report = new BenchReport('micro', describeMachine([]));
  pin(process.pid, 0);
  report.paragraph(
    `Setup: one Node process pinned to CPU 0, no I/O; the machines of bench:dns (A + AAAA each), ` +
      `${knobs.repeats} repeats per figure, medians with ranges. Each figure is taken when other processes ` +
      `on this shared VM are quiet (harness/quiet.ts).`,
  );
  const rows: string[][] = [];
  for (const n of [100, 1000, 10_000]) {
    const t = table(n);
    const kept = new ZoneCompiler(POLICY);
    kept.compile(t);
    let added = 0;
    const register = (): void => {
      added++;
      t.upsert(
        machineRecord({
          name: `new${added}`,
          addresses: [`10.${added >> 16}.${(added >> 8) & 255}.${added & 255}`],
        }),
      );
    };
    const inner = n >= 10_000 ? 3 : 20;
    const scratch = await quietRun(() =>
      Promise.resolve(time(inner, () => (register(), compileZone(t, POLICY)))),
    );
    const incremental = await quietRun(() =>
      Promise.resolve(time(inner, () => (register(), kept.compile(t)))),
    );
    const a = spread(incremental.result.map((us) => us / 1000));
    const b = spread(scratch.result.map((us) => us / 1000));
    rows.push([
      String(n),
      formatSpread(a, ' ms'),
      formatSpread(b, ' ms'),
      num(b.median / a.median, 2),
      share(Math.max(scratch.foreignShare, incremental.foreignShare)),
    ]);
    if (n === 10_000)
      report.summary({
        measurement: 'zone rebuild after one registration, 10,000 machines',
        ours: `${formatSpread(a, ' ms')} (kept compiler)`,
        anchor: `from scratch ${formatSpread(b, ' ms')}`,
        ratio: `${num(b.median / a.median, 2)}× faster`,
        target: '—',
        met: undefined,
      });
  }
  report.paragraph('Zone rebuild after one registration (the event loop is blocked meanwhile):');
  report.table(['machines', 'kept ZoneCompiler', 'compileZone from scratch', 'ratio', 'others'], rows);

  const big = compileZone(table(10_000), POLICY);
  const mix = queries(10_000);
  const sized = await quietRun(() => Promise.resolve(answers(big, mix)));
  const capped = await quietRun(() => Promise.resolve(answers(big, mix, FORMER_CACHE_LIMIT)));
  const small = compileZone(table(1000), POLICY);
  const smallMix = queries(1000);
  const hits = await quietRun(() => Promise.resolve(answers(small, smallMix)));
  const parsed = await quietRun(() => Promise.resolve(answers(small, smallMix, undefined, 'tcp')));
  // Five different random spellings of the mix, one after the other: every query a new spelling.
  const capsMix = Array.from({ length: 5 }, (_, k) => queries(1000, randomCase(k + 1))).flat();
  const caps = await quietRun(() => Promise.resolve(answers(small, capsMix)));
  const s = spread(sized.result);
  const c = spread(capped.result);
  const h = spread(hits.result);
  const p = spread(parsed.result);
  const r = spread(caps.result);
  report.table(
    ['answer() over the bench:dns mix', 'µs per answer', 'others'],
    [
      [
        `10,000 machines, cache sized to the zone (limit ${big.answerLimit})`,
        formatSpread(s),
        share(sized.foreignShare),
      ],
      [
        `10,000 machines, cache capped at ${FORMER_CACHE_LIMIT} (former)`,
        formatSpread(c),
        share(capped.foreignShare),
      ],
      ['1,000 machines, all hits (exact query bytes)', formatSpread(h), share(hits.foreignShare)],
      [
        '1,000 machines, all hits, parsed path (TCP; every UDP query before the exact-bytes entries)',
        formatSpread(p),
        share(parsed.foreignShare),
      ],
      [
        '1,000 machines, a 0x20 client: every name in a new random case (parsed path, not kept by exact bytes)',
        formatSpread(r),
        share(caps.foreignShare),
      ],
    ],
  );
  report.summary({
    measurement: 'answer() per query, 10,000 machines, bench:dns mix (40,000 lines)',
    ours: `${formatSpread(s, ' µs')} (cache sized to the zone)`,
    anchor: `cache capped at 8192: ${formatSpread(c, ' µs')}`,
    ratio: `${num(c.median / s.median, 2)}× faster`,
    target: '—',
    met: undefined,
  });
  report.summary({
    measurement: 'answer() hit path, 1,000 machines',
    ours: `${formatSpread(h, ' µs')} (exact query bytes)`,
    anchor: `parsed path: ${formatSpread(p, ' µs')}`,
    ratio: `${num(p.median / h.median, 2)}× faster`,
    target: '—',
    met: undefined,
  });
  report.summary({
    measurement: 'answer() for a 0x20 client (random case in every query), 1,000 machines',
    ours: formatSpread(r, ' µs'),
    anchor: `the same questions in lower case: ${formatSpread(h, ' µs')}`,
    ratio: num(r.median / h.median, 2),
    target: '—',
    met: undefined,
  });
  const lookupRows: string[][] = [];
  const lookupMedians = new Map<string, number>();
  for (const n of [100, 10_000]) {
    const t = new MachineTable();
    t.replaceAll(
      Array.from({ length: n }, (_, k) =>
        machineRecord({
          name: machineName(k + 1),
          uidMap: [{ inner: 0, outer: (k + 2) * 65536, count: 65536 }],
        }),
      ),
    );
    const ids = Array.from({ length: 1024 }, (_, j) => ((j * 7919) % n) + 1);
    for (const kind of ['uid', 'name'] as const) {
      let j = 0;
      const lookup =
        kind === 'uid'
          ? (): unknown => lookupUser(t, { id: ((ids[j++ & 1023] ?? 1) + 1) * 65536 + 1000 }, 'bench')
          : (): unknown => lookupUser(t, { name: `vu-${machineName(ids[j++ & 1023] ?? 1)}-1000` }, 'bench');
      lookup(); // builds the id index once
      const kept = await quietRun(() => Promise.resolve(time(100_000, lookup)));
      const s = spread(kept.result);
      lookupMedians.set(`${kind} ${n}`, s.median);
      lookupRows.push([`by ${kind}`, String(n), formatSpread(s, ' µs'), share(kept.foreignShare)]);
    }
  }
  report.paragraph('userdb lookupUser (the function a GetUserRecord call runs), µs per lookup:');
  report.table(['lookup', 'machines', 'µs per lookup', 'others'], lookupRows);
  for (const kind of ['uid', 'name'] as const) {
    const a = lookupMedians.get(`${kind} 100`) ?? NaN;
    const b = lookupMedians.get(`${kind} 10000`) ?? NaN;
    report.summary({
      measurement: `userdb lookupUser by ${kind}, 10,000 vs 100 machines`,
      ours: `${num(b)} µs`,
      anchor: `100 machines: ${num(a)} µs`,
      ratio: num(b / a, 2),
      target: 'flat: ≤ 1.15×',
      met: b / a <= 1.15,
    });
  }
  await report.write();
}

main().catch((err: unknown) => {
  process.stderr.write(
    `bench:micro failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
  );
  process.exitCode = 1;
});
