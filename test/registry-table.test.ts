import test from 'ava';
import { formatAddress, isLinkLocal, parseAddress } from '../src/registry-client/address.js';
import { isValidUnixId, ownsId, parseIdMap, translateId } from '../src/registry-client/idmap.js';
import { MachineTable } from '../src/registry-client/registry.js';
import type { ViewChange } from '../src/registry-client/view.js';
import { prng } from './support/prng.js';
import { machineRecord } from './support/records.js';

// ---- addresses -------------------------------------------------------------------------------

const addressCases: [string, string][] = [
  ['198.51.100.11', '198.51.100.11'],
  ['fd42::11', 'fd42::11'],
  ['fd42:0:0:1::23', 'fd42:0:0:1::23'],
  ['fe80::ff:fe00:a01', 'fe80::ff:fe00:a01'],
  ['::', '::'],
  ['::1', '::1'],
  ['1:0:0:2:0:0:0:3', '1:0:0:2::3'], // RFC 5952 §4.2.3: the longest run is compressed
  ['1:0:0:2:0:0:3:4', '1::2:0:0:3:4'], // a tie compresses the first run
  ['1:2:3:4:5:6:0:8', '1:2:3:4:5:6:0:8'], // a single zero word is not compressed
  ['::ffff:198.51.100.7', '::ffff:198.51.100.7'], // inet_ntop's mixed notation
  ['::ffff:c633:6407', '::ffff:198.51.100.7'],
  ['::1.2.3.4', '::1.2.3.4'],
];
for (const [input, canonical] of addressCases) {
  test(`address ${input} round-trips to its canonical text ${canonical}`, (t) => {
    const bytes = parseAddress(input);
    t.truthy(bytes);
    t.is(formatAddress(bytes ?? Buffer.alloc(0)), canonical);
  });
}

test('zone-suffixed and garbage strings are not addresses', (t) => {
  t.is(parseAddress('fe80::1%ve-web1'), undefined);
  t.is(parseAddress('web1'), undefined);
  t.is(parseAddress('1.2.3'), undefined);
});

test('link-local is fe80::/10 and 169.254/16 only', (t) => {
  const ll = (a: string): boolean => isLinkLocal(parseAddress(a) ?? Buffer.alloc(0));
  t.true(ll('fe80::1'));
  t.true(ll('febf::1'));
  t.false(ll('fec0::1'));
  t.true(ll('169.254.3.4'));
  t.false(ll('169.253.3.4'));
  t.false(ll('fd42::11'));
});

// ---- id maps (reference §2.3) ----------------------------------------------------------------

test('65535 and 4294967295 are invalid ids, 65534 and 0 are valid', (t) => {
  t.false(isValidUnixId(65535));
  t.false(isValidUnixId(4294967295));
  t.true(isValidUnixId(65534));
  t.true(isValidUnixId(0));
  t.false(isValidUnixId(-1));
  t.false(isValidUnixId(1.5));
});

test('a uid_map is parsed line by line, any number of ranges', (t) => {
  t.deepEqual(parseIdMap('         0     100000      65536\n'), {
    ok: true,
    ranges: [{ inner: 0, outer: 100000, count: 65536 }],
  });
  t.deepEqual(parseIdMap('0 917504 1000\n1000 983040 1000\n'), {
    ok: true,
    ranges: [
      { inner: 0, outer: 917504, count: 1000 },
      { inner: 1000, outer: 983040, count: 1000 },
    ],
  });
  t.deepEqual(parseIdMap(''), { ok: true, ranges: [] });
  t.deepEqual(parseIdMap('0 1\n'), { ok: false, line: 1 });
});

test('host→inner skips lines with outer start 0 (no private user namespace)', (t) => {
  t.deepEqual(ownsId([{ inner: 0, outer: 0, count: 4294967295 }], 1000), { kind: 'not-owned' });
  t.deepEqual(ownsId([{ inner: 0, outer: 100000, count: 65536 }], 101000), { kind: 'owned', inner: 1000 });
  t.deepEqual(ownsId([{ inner: 0, outer: 100000, count: 65536 }], 165535), {
    kind: 'invalid-inner',
    inner: 65535,
  });
  t.deepEqual(ownsId([{ inner: 0, outer: 100000, count: 65536 }], 165536), { kind: 'not-owned' });
});

test('inner→host has no outer-start-0 skip: an identity map translates 1000 to 1000', (t) => {
  t.deepEqual(translateId([{ inner: 0, outer: 0, count: 4294967295 }], 1000), { kind: 'mapped', host: 1000 });
  t.deepEqual(translateId([{ inner: 0, outer: 0, count: 1 }], 1), { kind: 'unmapped' });
  t.deepEqual(translateId([{ inner: 0, outer: 100000, count: 65536 }], 0), { kind: 'mapped', host: 100000 });
});

// ---- the table and its indexes ----------------------------------------------------------------

test('byName is exact and case-sensitive, all() keeps registration order', (t) => {
  const table = new MachineTable();
  table.upsert(machineRecord({ name: 'web1' }));
  table.upsert(machineRecord({ name: 'Web1' }));
  table.upsert(machineRecord({ name: 'db' }));
  t.is(table.byName('web1')?.name, 'web1');
  t.is(table.byName('WEB1'), undefined);
  t.deepEqual(
    table.all().map((m) => m.name),
    ['web1', 'Web1', 'db'],
  );
  // an update keeps the position
  table.upsert(machineRecord({ name: 'web1', service: 'changed' }));
  t.deepEqual(
    table.all().map((m) => m.name),
    ['web1', 'Web1', 'db'],
  );
});

test('removing a machine drops it from every index', (t) => {
  const table = new MachineTable();
  table.upsert(
    machineRecord({
      name: 'alpha',
      addresses: ['198.51.100.11', 'fd42::11'],
      uidMap: [{ inner: 0, outer: 100000, count: 65536 }],
      gidMap: [{ inner: 0, outer: 100000, count: 65536 }],
    }),
  );
  t.is(table.byAddress('fd42::11')[0]?.name, 'alpha');
  t.is(table.ownerOfUid(101000)?.inner, 1000);
  t.is(table.ownerOfGid(100005)?.inner, 5);
  table.remove('alpha');
  t.deepEqual(table.byAddress('fd42::11'), []);
  t.is(table.ownerOfUid(101000), undefined);
  t.is(table.ownerOfGid(100005), undefined);
  t.is(table.byName('alpha'), undefined);
});

test('the first registered container owns an overlapping host uid', (t) => {
  const table = new MachineTable();
  table.upsert(machineRecord({ name: 'first', uidMap: [{ inner: 0, outer: 100000, count: 65536 }] }));
  table.upsert(machineRecord({ name: 'second', uidMap: [{ inner: 0, outer: 90000, count: 65536 }] }));
  t.is(table.ownerOfUid(100000)?.machine.name, 'first');
  t.is(table.ownerOfUid(95000)?.machine.name, 'second');
  t.is(table.ownerOfUid(90000 + 65536)?.machine.name, 'first');
});

test('an id lookup gives the machine’s current record after an update that kept its maps (and the index)', (t) => {
  const table = new MachineTable();
  const uidMap = [{ inner: 0, outer: 100000, count: 65536 }];
  const gidMap = [{ inner: 0, outer: 100000, count: 65536 }];
  const before = machineRecord({ name: 'web', uidMap, gidMap });
  table.upsert(before);
  t.is(table.ownerOfUid(100033)?.machine, before); // builds the index
  t.is(table.ownerOfGid(100033)?.machine, before);
  const after = { ...before, addresses: [], state: 'closing' as const };
  table.upsert(after);
  t.is(table.ownerOfUid(100033)?.machine, after);
  t.is(table.ownerOfUid(100033)?.inner, 33);
  t.is(table.ownerOfGid(100033)?.machine, after);
  table.remove('web');
  t.is(table.ownerOfUid(100033), undefined);
});

test('only live containers own uids; outer start 0 never does', (t) => {
  const table = new MachineTable();
  table.upsert(
    machineRecord({ name: 'vm', class: 'vm', uidMap: [{ inner: 0, outer: 300000, count: 65536 }] }),
  );
  table.upsert(machineRecord({ name: 'ident', uidMap: [{ inner: 0, outer: 0, count: 4294967295 }] }));
  table.upsert(
    machineRecord({ name: 'dead', leaderAlive: false, uidMap: [{ inner: 0, outer: 400000, count: 65536 }] }),
  );
  t.is(table.ownerOfUid(300001), undefined);
  t.is(table.ownerOfUid(70000), undefined);
  t.is(table.ownerOfUid(400001), undefined);
});

test('an owned host uid that maps to inner 65535 is reported as such', (t) => {
  const table = new MachineTable();
  table.upsert(machineRecord({ name: 'a', uidMap: [{ inner: 0, outer: 655360, count: 65536 }] }));
  t.deepEqual(table.ownerOfUid(655360 + 65535)?.inner, 65535);
});

test('id lookups stay one step among many non-overlapping machines', (t) => {
  const table = new MachineTable();
  const n = 5000;
  for (let i = 0; i < n; i++)
    table.upsert(
      machineRecord({ name: `m${i}`, uidMap: [{ inner: 0, outer: 65536 * (i + 1), count: 65536 }] }),
    );
  for (const i of [0, 1, 2500, n - 1]) {
    t.is(table.ownerOfUid(65536 * (i + 1) + 1000)?.machine.name, `m${i}`);
  }
  t.is(table.ownerOfUid(65536 * (n + 1) + 1), undefined);
});

test('a range over nearly the whole id space and narrow ones: the first registered owns an id they share, and every range ends where its count does', (t) => {
  const table = new MachineTable();
  const wide = { inner: 0, outer: 65536, count: 0xfffe0000 };
  table.upsert(machineRecord({ name: 'narrow', uidMap: [{ inner: 0, outer: 655360, count: 65536 }] }));
  table.upsert(machineRecord({ name: 'wide', uidMap: [wide] }));
  table.upsert(machineRecord({ name: 'late', uidMap: [{ inner: 0, outer: 720896, count: 65536 }] }));
  t.is(table.ownerOfUid(655360 + 5)?.machine.name, 'narrow');
  t.deepEqual(table.ownerOfUid(720896 + 5), { machine: table.byName('wide'), inner: 720896 + 5 - 65536 });
  t.is(table.ownerOfUid(0xfffe0000 + 65535)?.machine.name, 'wide');
  t.is(table.ownerOfUid(0xfffe0000 + 65536), undefined);
  // ranges of 16 and 17 times 64 Ki: their last ids are theirs, the next ones nobody's
  const at = 0x10000000;
  const table2 = new MachineTable();
  table2.upsert(machineRecord({ name: 'sixteen', gidMap: [{ inner: 0, outer: at, count: 16 * 65536 }] }));
  table2.upsert(
    machineRecord({ name: 'seventeen', gidMap: [{ inner: 0, outer: at + 0x1000000, count: 17 * 65536 }] }),
  );
  t.is(table2.ownerOfGid(at + 16 * 65536 - 1)?.machine.name, 'sixteen');
  t.is(table2.ownerOfGid(at + 0x1000000 + 17 * 65536 - 1)?.machine.name, 'seventeen');
  t.is(table2.ownerOfGid(at + 16 * 65536), undefined);
});

test("id owners agree with machined's walk (first machine, first line) over random overlapping maps", (t) => {
  const random = prng(20261204);
  const int = (n: number): number => Math.floor(random() * n);
  for (let round = 0; round < 20; round++) {
    const table = new MachineTable();
    const machines = Array.from({ length: 1 + int(40) }, (_, i) =>
      machineRecord({
        name: `m${i}`,
        leaderAlive: random() > 0.1,
        class: random() > 0.1 ? 'container' : 'vm',
        uidMap: Array.from({ length: 1 + int(3) }, () => {
          const shape = int(4);
          // aligned 64 Ki, unaligned, tiny, or wide; some with outer 0 or count 0
          const outer = shape === 3 ? int(4) * 65536 : int(64) * 65536 + (shape === 1 ? int(65536) : 0);
          const count = [65536, 65536 + int(200000), int(3), 65536 * (17 + int(40))][shape] ?? 1;
          return { inner: int(70000), outer, count };
        }),
      }),
    );
    for (const m of machines) table.upsert(m);
    for (let probe = 0; probe < 300; probe++) {
      const id = int(80 * 65536);
      let expected: { name: string; inner: number } | undefined;
      for (const m of machines) {
        if (m.class !== 'container' || !m.leaderAlive) continue;
        const owns = ownsId(m.uidMap ?? [], id);
        if (owns.kind === 'not-owned') continue;
        expected = { name: m.name, inner: owns.inner };
        break;
      }
      const found = table.ownerOfUid(id);
      const got = found && { name: found.machine.name, inner: found.inner };
      if (JSON.stringify(got) !== JSON.stringify(expected)) {
        t.fail(`round ${round}, uid ${id}: ${JSON.stringify(got)}, machined ${JSON.stringify(expected)}`);
        return;
      }
    }
  }
  t.pass();
});

test('machines take their place by registration rank, whatever the order their records arrive in', (t) => {
  const table = new MachineTable();
  const range = [{ inner: 0, outer: 655360, count: 65536 }];
  table.upsert(machineRecord({ name: 'known' })); // no rank: there before any ranked arrival
  table.upsert(machineRecord({ name: 'twin', uidMap: range }), 3);
  table.upsert(machineRecord({ name: 'late' }), 4);
  table.upsert(machineRecord({ name: 'testct', uidMap: range }), 2); // registered before twin, fetched after
  t.deepEqual(
    table.all().map((m) => m.name),
    ['known', 'testct', 'twin', 'late'],
  );
  t.is(table.ownerOfUid(656360)?.machine.name, 'testct', 'the first registered owner wins (reference §2.3)');
  table.upsert(machineRecord({ name: 'testct', uidMap: range, service: 'changed' }), 99); // an update keeps its place
  table.upsert(machineRecord({ name: 'unranked' }));
  t.deepEqual(
    table.all().map((m) => m.name),
    ['known', 'testct', 'twin', 'late', 'unranked'],
  );
  table.remove('twin');
  t.deepEqual(
    table.all().map((m) => m.name),
    ['known', 'testct', 'late', 'unranked'],
  );
});

test('every change bumps the generation and is announced in order', (t) => {
  const table = new MachineTable();
  const seen: ViewChange['kind'][] = [];
  const off = table.onChange((c) => seen.push(c.kind));
  const g0 = table.generation;
  table.upsert(machineRecord({ name: 'a' }));
  table.upsert(machineRecord({ name: 'a', service: 'x' }));
  table.remove('a');
  table.remove('a'); // unknown: no change
  table.replaceAll([machineRecord({ name: 'b' })]);
  off();
  table.remove('b');
  t.deepEqual(seen, ['added', 'updated', 'removed', 'reset']);
  t.is(table.generation, g0 + 5);
});

test('replaceAll with the same records in the same order is no change; another record or order is a reset', (t) => {
  const table = new MachineTable();
  const a = machineRecord({ name: 'a' });
  const b = machineRecord({ name: 'b' });
  table.replaceAll([a, b]);
  const seen: ViewChange['kind'][] = [];
  table.onChange((c) => seen.push(c.kind));
  const g0 = table.generation;
  table.replaceAll([a, b]);
  t.deepEqual(seen, [], 'the same records: nothing announced');
  t.is(table.generation, g0, 'the same records: the generation stays');
  table.replaceAll([b, a]);
  table.replaceAll([b, machineRecord({ name: 'a' })]); // equal content, another record
  table.replaceAll([b]);
  t.deepEqual(seen, ['reset', 'reset', 'reset']);
  t.is(table.generation, g0 + 3);
  t.deepEqual(
    table.all().map((m) => m.name),
    ['b'],
  );
});
