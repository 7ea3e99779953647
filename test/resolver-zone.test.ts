/**
 * The zone compiler keeps each machine's prepared form per record and updates the zone's names in
 * place as machines come and go. Whatever the changes, the zone it gives must be the zone compiled
 * from scratch: same nodes (in any order; the order of machines under one name counts), same
 * collisions and skipped machines.
 */
import test from 'ava';
import * as fc from 'fast-check';
import { MachineTable } from '../src/registry-client/registry.js';
import type { MachineClass } from '../src/registry-client/view.js';
import { parseNet, type Net } from '../src/resolver/nets.js';
import { answer } from '../src/resolver/answer.js';
import {
  ANSWER_CACHE_MIN,
  compileZone,
  SCAN_ADDRESSES,
  ZoneCompiler,
  type ServedMachine,
  type Zone,
  type ZonePolicy,
} from '../src/resolver/zone.js';
import { query } from './support/dns.js';
import { machineRecord } from './support/records.js';

const hex = (b: Buffer): string => b.toString('hex');

function served(m: ServedMachine): unknown {
  return {
    name: m.name,
    labels: hex(m.labels),
    labelCount: m.labelCount,
    a: m.a.map((r) => hex(r.rdata)),
    aaaa: m.aaaa.map((r) => hex(r.rdata)),
    any: m.any.map((r) => `${r.type}:${hex(r.rdata)}`),
    ptr: hex(m.ptr.rdata),
  };
}

/** Everything a zone says, in a form deepEqual compares (node order included). */
function canonical(z: Zone): unknown {
  return {
    generation: z.generation,
    serial: z.serial,
    domainWire: hex(z.domainWire),
    domainLabels: z.domainLabels,
    nodes: [...z.nodes]
      .sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
      .map(([key, node]) => [
        hex(Buffer.from(key, 'latin1')),
        node.kind,
        node.kind === 'machine' ? node.inDomain : null,
        node.kind === 'machine' || node.kind === 'reverse' ? node.machines.map(served) : null,
      ]),
    collisions: z.collisions,
    skipped: z.skipped,
  };
}

const NAMES = ['web', 'Web', 'WEB', 'db', 'my.ct', 'a.b.c', 'ct', 'machine', 'ai', 'x'.repeat(64), 'e\u00e9'];
const ADDRESSES = [
  '192.0.2.1',
  '192.0.2.2',
  'fd00::1',
  'fe80::1',
  '169.254.1.1',
  '172.17.0.5',
  '2001:db8::5',
];
const CLASSES: readonly MachineClass[] = ['container', 'container', 'vm', 'host'];

type Op =
  | {
      readonly kind: 'upsert';
      readonly name: string;
      readonly cls: MachineClass;
      readonly addresses: string[];
    }
  | { readonly kind: 'remove'; readonly name: string }
  /** The same content in a new record object (what a refresh that changed nothing would not do). */
  | { readonly kind: 'touch'; readonly name: string }
  /** A resync that puts the same machines in another order: the compiler places all of them again. */
  | { readonly kind: 'reverse' };

const op: fc.Arbitrary<Op> = fc.oneof(
  fc.record({
    kind: fc.constant('upsert' as const),
    name: fc.constantFrom(...NAMES),
    cls: fc.constantFrom(...CLASSES),
    addresses: fc.subarray(ADDRESSES),
  }),
  fc.record({ kind: fc.constant('remove' as const), name: fc.constantFrom(...NAMES) }),
  fc.record({ kind: fc.constant('touch' as const), name: fc.constantFrom(...NAMES) }),
  fc.record({ kind: fc.constant('reverse' as const) }),
);

const BASE_POLICY: ZonePolicy = {
  domain: 'machine',
  ttl: 0,
  includeLinkLocal: false,
  excludeNets: [],
  forwarding: false,
};

function policies(): ZonePolicy[] {
  const docker = parseNet('172.17.0.0/16');
  const exclude: Net[] = docker ? [docker] : [];
  return [
    BASE_POLICY,
    { domain: 'vms.example', ttl: 30, includeLinkLocal: true, excludeNets: exclude, forwarding: true },
  ];
}

function apply(table: MachineTable, o: Op): void {
  switch (o.kind) {
    case 'upsert':
      table.upsert(machineRecord({ name: o.name, class: o.cls, addresses: o.addresses }));
      return;
    case 'remove':
      table.remove(o.name);
      return;
    case 'touch': {
      const m = table.byName(o.name);
      if (m) table.upsert({ ...m });
      return;
    }
    case 'reverse':
      table.replaceAll([...table.all()].reverse());
      return;
  }
}

/**
 * Names between the apex and a dotted machine name in the domain must exist (RFC 8020): as another
 * node, else as an empty one; and every empty node must be such a name. From the zone alone.
 */
function emptyNodesProblem(z: Zone): string | undefined {
  const apex = z.domainWire.toString('latin1');
  const between = new Set<string>();
  for (const [key, node] of z.nodes) {
    if (node.kind !== 'machine' || !node.inDomain) continue;
    let name = Buffer.from(key, 'latin1');
    for (;;) {
      name = name.subarray((name[0] ?? 0) + 1);
      const ancestor = name.toString('latin1');
      if (ancestor === apex || name.length <= 1) break;
      between.add(ancestor);
    }
  }
  for (const key of between) if (!z.nodes.has(key)) return `missing ${hex(Buffer.from(key, 'latin1'))}`;
  for (const [key, node] of z.nodes)
    if (node.kind === 'empty' && !between.has(key)) return `stale empty ${hex(Buffer.from(key, 'latin1'))}`;
  return undefined;
}

test('a compiler reused across view changes gives the zone compiled from scratch, after every change', (t) => {
  for (const policy of policies()) {
    fc.assert(
      fc.property(fc.array(op, { minLength: 1, maxLength: 40 }), (ops) => {
        const table = new MachineTable();
        const compiler = new ZoneCompiler(policy);
        for (const o of ops) {
          apply(table, o);
          const kept = compiler.compile(table);
          const keptForm = JSON.stringify(canonical(kept));
          if (emptyNodesProblem(kept) !== undefined) return false;
          const fresh = compileZone(table, policy);
          if (keptForm !== JSON.stringify(canonical(fresh))) return false;
        }
        return true;
      }),
      { seed: 20261122, numRuns: 300 },
    );
  }
  t.pass();
});

test('a record compiled once is prepared once: unchanged machines keep their served form across zones', (t) => {
  const table = new MachineTable();
  table.upsert(machineRecord({ name: 'web', addresses: ['192.0.2.1'] }));
  table.upsert(machineRecord({ name: 'db', addresses: ['192.0.2.2'] }));
  const compiler = new ZoneCompiler(BASE_POLICY);
  const machinesAt = (z: Zone, key: string): readonly ServedMachine[] => {
    const node = z.nodes.get(key);
    return node?.kind === 'machine' ? node.machines : [];
  };
  const webKey = '\x03web\x07machine\x00';
  const dbKey = '\x02db\x07machine\x00';
  // read before the next compile: it updates the names in place
  const before = compiler.compile(table);
  const [webBefore, dbBefore] = [machinesAt(before, webKey)[0], machinesAt(before, dbKey)[0]];
  table.upsert(machineRecord({ name: 'db', addresses: ['192.0.2.3'] }));
  const after = compiler.compile(table);
  t.is(machinesAt(after, webKey)[0], webBefore, 'web did not change: same object');
  t.not(machinesAt(after, dbKey)[0], dbBefore, 'db changed: prepared again');
  t.is(hex(machinesAt(after, dbKey)[0]?.a[0]?.rdata ?? Buffer.alloc(0)), 'c0000203');
});

test("an address repeated in a machine's list is served once, in short lists (a scan) and long ones (a set)", (t) => {
  const v4 = (i: number): string => `198.51.${100 + (i >> 8)}.${i & 255}`;
  const v6 = (i: number): string => `fd42::${i.toString(16)}`;
  // lists of 2 × count entries: up to SCAN_ADDRESSES a scan, beyond a set
  for (const count of [3, SCAN_ADDRESSES / 2, SCAN_ADDRESSES / 2 + 1, 300]) {
    // every address twice, the second time after all the others; IPv4 and IPv6 interleaved
    const once = Array.from({ length: count }, (_, i) => (i % 2 === 0 ? v4(i + 1) : v6(i + 1)));
    const table = new MachineTable();
    table.upsert(machineRecord({ name: 'web', addresses: [...once, ...once] }));
    const node = compileZone(table, BASE_POLICY).nodes.get('\x03web\x07machine\x00');
    const web = node?.kind === 'machine' ? node.machines[0] : undefined;
    t.deepEqual(
      web?.any.map((r) => hex(r.rdata)),
      once.map((a) =>
        hex(machineRecord({ name: 'x', addresses: [a] }).addresses[0]?.bytes ?? Buffer.alloc(0)),
      ),
      `${count} addresses, each twice`,
    );
    t.is((web?.a.length ?? 0) + (web?.aaaa.length ?? 0), count);
  }
});

test('the answer cache holds every name of a large zone twice over, never fewer than 8192 answers, and is cleared when full', (t) => {
  const big = new MachineTable();
  for (let i = 0; i < 5000; i++)
    big.upsert(machineRecord({ name: `m${i}`, addresses: [`10.0.${i >> 8}.${i & 255}`] }));
  const zone = compileZone(big, BASE_POLICY);
  t.is(
    zone.answerLimit,
    2 * zone.nodes.size,
    '5000 names in the domain, 5000 bare, 5000 reverse and the apex',
  );
  for (let i = 0; i < 5000; i++) {
    answer(query(`m${i}.machine`, 'A'), zone, 'udp');
    answer(query(`m${i}`, 'A'), zone, 'udp');
  }
  t.is(zone.answers.size, 10_000, 'all kept: no clearing below the limit');

  const small = compileZone(new MachineTable(), BASE_POLICY);
  t.is(small.answerLimit, ANSWER_CACHE_MIN);
  for (let i = 0; i < ANSWER_CACHE_MIN; i++) answer(query(`x${i}.machine`, 'A'), small, 'udp');
  t.is(small.answers.size, ANSWER_CACHE_MIN);
  answer(query('one-more.machine', 'A'), small, 'udp');
  t.is(small.answers.size, 1, 'full: cleared, then the new answer kept');
});
