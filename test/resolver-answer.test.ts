import test from 'ava';
import { answer, EXACT_QUERY_MAX, type Transport } from '../src/resolver/answer.js';
import { parseNet, type Net } from '../src/resolver/nets.js';
import { ReplyTable } from '../src/resolver/replies.js';
import { compileZone, type Zone, type ZonePolicy } from '../src/resolver/zone.js';
import { MachineTable } from '../src/registry-client/registry.js';
import { machineRecord, type RecordSpec } from './support/records.js';
import { query, RCODE, summarize, type QType, type QuerySpec, type Summary } from './support/dns.js';

// ---- the zone every case below asks ------------------------------------------------------------

const machines: RecordSpec[] = [
  // machined's order: IPv4 first; link-local addresses are in the view but not in DNS by default.
  {
    name: 'alpha',
    netif: [7],
    addresses: ['192.0.2.10', '198.51.100.7', 'fd42::10', 'fe80::10', '169.254.3.4'],
  },
  { name: 'Web', addresses: ['192.0.2.21'] },
  { name: 'web', addresses: ['192.0.2.22'] },
  { name: 'my.ct', addresses: ['192.0.2.30'] },
  { name: 'ai', addresses: ['192.0.2.40'] },
  { name: 'vm1', class: 'vm' },
  { name: 'noaddr', addresses: [] },
  { name: '.host', class: 'host', addresses: ['192.0.2.1'] },
  // class host with a name that DNS could carry: still never served
  { name: 'thehost', class: 'host', addresses: ['192.0.2.2'] },
  // a nested docker bridge inside the container: dropped by excludeNets
  { name: 'dock', addresses: ['172.17.0.1', '192.0.2.50'] },
  { name: 'shared1', addresses: ['192.0.2.60'] },
  { name: 'shared2', addresses: ['192.0.2.60'] },
  { name: 'llonly', addresses: ['fe80::5'] },
  { name: 'Upper', addresses: ['192.0.2.70'] },
];

function nets(...texts: string[]): Net[] {
  return texts.map((t) => {
    const net = parseNet(t);
    if (!net) throw new Error(`bad net ${t}`);
    return net;
  });
}

const basePolicy: ZonePolicy = {
  domain: 'machine',
  ttl: 0,
  includeLinkLocal: false,
  excludeNets: nets('172.17.0.0/16'),
  forwarding: false,
};

function makeZone(policy: Partial<ZonePolicy> = {}, specs: RecordSpec[] = machines): Zone {
  const table = new MachineTable();
  for (const spec of specs) table.upsert(machineRecord(spec));
  return compileZone(table, { ...basePolicy, ...policy });
}

const zone = makeZone();

function ask(
  z: Zone,
  name: string,
  type: QType,
  spec: QuerySpec = {},
  transport: Transport = 'udp',
): Summary {
  const reply = answer(query(name, type, spec), z, transport);
  if (typeof reply === 'string') throw new Error(`expected bytes, got ${reply}`);
  return summarize(reply);
}

interface Case {
  title: string;
  name: string;
  type: QType;
  spec?: QuerySpec;
  rcode: number;
  answers?: string[];
  authority?: string[];
  aa?: boolean;
}

const SOA = 'machine 0 SOA machine nobody.invalid 0';

const cases: Case[] = [
  // ---- names
  {
    title: 'NAME.machine has the A records in machined order',
    name: 'alpha.machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['alpha.machine 0 A 192.0.2.10', 'alpha.machine 0 A 198.51.100.7'],
    aa: true,
  },
  {
    title: 'the bare single label NAME has the same A records',
    name: 'alpha',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['alpha 0 A 192.0.2.10', 'alpha 0 A 198.51.100.7'],
  },
  {
    title: 'AAAA leaves link-local addresses out by default',
    name: 'alpha.machine',
    type: 'AAAA',
    rcode: RCODE.NOERROR,
    answers: ['alpha.machine 0 AAAA fd42::10'],
  },
  {
    title: 'ANY gives A and AAAA in the view order',
    name: 'alpha.machine',
    type: 'ANY',
    rcode: RCODE.NOERROR,
    answers: [
      'alpha.machine 0 A 192.0.2.10',
      'alpha.machine 0 A 198.51.100.7',
      'alpha.machine 0 AAAA fd42::10',
    ],
  },
  {
    title: 'matching is case-insensitive and the answer echoes the question case byte for byte',
    name: 'AlPhA.MaChInE',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['AlPhA.MaChInE 0 A 192.0.2.10', 'AlPhA.MaChInE 0 A 198.51.100.7'],
  },
  {
    title: 'a machine registered with upper case answers in any case',
    name: 'upper.machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['upper.machine 0 A 192.0.2.70'],
  },
  {
    title: 'a machine name with dots works under the domain',
    name: 'my.ct.machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['my.ct.machine 0 A 192.0.2.30'],
  },
  {
    title: 'a machine name with dots is not served as a bare name',
    name: 'my.ct',
    type: 'A',
    rcode: RCODE.REFUSED,
  },
  {
    title: 'the name between a dotted machine name and the apex exists without data',
    name: 'ct.machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: [],
    authority: [SOA],
  },
  {
    title: 'other types of an existing name are NODATA with the SOA',
    name: 'alpha.machine',
    type: 'MX',
    rcode: RCODE.NOERROR,
    answers: [],
    authority: [SOA],
    aa: true,
  },
  {
    title: 'an unknown name in the domain is NXDOMAIN with the SOA',
    name: 'nosuch.machine',
    type: 'A',
    rcode: RCODE.NXDOMAIN,
    answers: [],
    authority: [SOA],
    aa: true,
  },
  {
    title: 'nothing exists below a machine name inside the domain',
    name: 'www.alpha.machine',
    type: 'A',
    rcode: RCODE.NXDOMAIN,
    authority: [SOA],
  },
  {
    title: 'a machine named ai does not claim nic.ai',
    name: 'nic.ai',
    type: 'A',
    rcode: RCODE.REFUSED,
  },
  {
    title: 'a machine named ai does not claim the DS of the ai TLD',
    name: 'ai',
    type: 'DS',
    rcode: RCODE.REFUSED,
  },
  {
    title: 'the bare name of a machine named ai still answers A',
    name: 'ai',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['ai 0 A 192.0.2.40'],
  },
  {
    title: 'a name outside the zone is REFUSED without forwarding',
    name: 'example.com',
    type: 'A',
    rcode: RCODE.REFUSED,
    aa: false,
  },
  {
    title: 'a machine of class host is never served',
    name: 'thehost.machine',
    type: 'A',
    rcode: RCODE.NXDOMAIN,
  },
  // ---- apex
  {
    title: 'the apex has an SOA',
    name: 'machine',
    type: 'SOA',
    rcode: RCODE.NOERROR,
    answers: [SOA],
  },
  {
    title: 'the apex has an NS naming itself',
    name: 'machine',
    type: 'NS',
    rcode: RCODE.NOERROR,
    answers: ['machine 0 NS machine'],
  },
  {
    title: 'the apex has no address',
    name: 'machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: [],
    authority: [SOA],
  },
  {
    title: 'the apex SOA owner echoes the question case',
    name: 'MACHINE',
    type: 'SOA',
    rcode: RCODE.NOERROR,
    answers: ['MACHINE 0 SOA MACHINE nobody.invalid 0'],
  },
  // ---- machines without addresses
  {
    title: 'a container with no addresses is NODATA',
    name: 'noaddr.machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: [],
    authority: [SOA],
  },
  {
    title: 'a VM the registry has no addresses for is NODATA',
    name: 'vm1.machine',
    type: 'AAAA',
    rcode: RCODE.NOERROR,
    answers: [],
    authority: [SOA],
  },
  {
    title: 'a bare name without addresses is NODATA without an out-of-zone SOA',
    name: 'vm1',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: [],
    authority: [],
  },
  {
    title: 'a machine with only link-local addresses is NODATA by default',
    name: 'llonly.machine',
    type: 'AAAA',
    rcode: RCODE.NOERROR,
    answers: [],
  },
  // ---- address policy
  {
    title: 'an address inside excludeNets is left out',
    name: 'dock.machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['dock.machine 0 A 192.0.2.50'],
  },
  // ---- collisions
  {
    title: 'colliding names: the exact-case match wins (Web)',
    name: 'Web.machine',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['Web.machine 0 A 192.0.2.21'],
  },
  {
    title: 'colliding names: the exact-case match wins (web)',
    name: 'web.MACHINE',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['web.MACHINE 0 A 192.0.2.22'],
  },
  {
    title: 'colliding names: the exact-case match wins for the bare name too',
    name: 'Web',
    type: 'A',
    rcode: RCODE.NOERROR,
    answers: ['Web 0 A 192.0.2.21'],
  },
  {
    title: 'colliding names without an exact match are SERVFAIL',
    name: 'WEB.machine',
    type: 'A',
    rcode: RCODE.SERVFAIL,
    answers: [],
  },
  // ---- reverse
  {
    title: 'PTR of a machine IPv4 address names the machine under the domain',
    name: '10.2.0.192.in-addr.arpa',
    type: 'PTR',
    rcode: RCODE.NOERROR,
    answers: ['10.2.0.192.in-addr.arpa 0 PTR alpha.machine'],
  },
  {
    title: 'PTR of a machine IPv6 address',
    name: '0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.d.f.ip6.arpa',
    type: 'PTR',
    rcode: RCODE.NOERROR,
    answers: ['0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.2.4.d.f.ip6.arpa 0 PTR alpha.machine'],
  },
  {
    title: 'PTR keeps the machine name case and the question case',
    name: '70.2.0.192.IN-ADDR.ARPA',
    type: 'PTR',
    rcode: RCODE.NOERROR,
    answers: ['70.2.0.192.IN-ADDR.ARPA 0 PTR Upper.machine'],
  },
  {
    title: 'an address two machines claim has one PTR per machine',
    name: '60.2.0.192.in-addr.arpa',
    type: 'PTR',
    rcode: RCODE.NOERROR,
    answers: [
      '60.2.0.192.in-addr.arpa 0 PTR shared1.machine',
      '60.2.0.192.in-addr.arpa 0 PTR shared2.machine',
    ],
  },
  {
    title: 'a link-local address has no PTR by default',
    name: '0.1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.e.f.ip6.arpa',
    type: 'PTR',
    rcode: RCODE.REFUSED,
  },
  {
    title: 'an excluded address has no PTR',
    name: '1.0.17.172.in-addr.arpa',
    type: 'PTR',
    rcode: RCODE.REFUSED,
  },
  {
    title: 'the reverse name of another address is not ours',
    name: '99.2.0.192.in-addr.arpa',
    type: 'PTR',
    rcode: RCODE.REFUSED,
  },
  {
    title: 'PTR of a host-class machine address is not ours',
    name: '2.2.0.192.in-addr.arpa',
    type: 'PTR',
    rcode: RCODE.REFUSED,
  },
  // ---- classes and types
  {
    title: 'class CH in the zone is REFUSED',
    name: 'alpha.machine',
    type: 'A',
    spec: { qclass: 'CH' },
    rcode: RCODE.REFUSED,
  },
  {
    title: 'class ANY queries are answered from IN',
    name: 'alpha.machine',
    type: 'A',
    spec: { qclass: 'ANY' },
    rcode: RCODE.NOERROR,
    answers: ['alpha.machine 0 A 192.0.2.10', 'alpha.machine 0 A 198.51.100.7'],
  },
  {
    title: 'a zone transfer is REFUSED',
    name: 'machine',
    type: 'AXFR',
    rcode: RCODE.REFUSED,
  },
];

for (const c of cases) {
  test(c.title, (t) => {
    const r = ask(zone, c.name, c.type, c.spec);
    t.is(r.rcode, c.rcode, 'rcode');
    t.is(r.question, `${c.name} ${c.type}`, 'the question is echoed as asked');
    if (c.answers) t.deepEqual(r.answers, c.answers, 'answers');
    if (c.authority) t.deepEqual(r.authority, c.authority, 'authority');
    if (c.aa !== undefined) t.is(r.aa, c.aa, 'AA');
    t.false(r.tc);
  });
}

// ---- rules that need more than one question --------------------------------------------------------

test('colliding names without an exact match carry an extended DNS error naming the machines', (t) => {
  const r = ask(zone, 'WEB.machine', 'A', { edns: {} });
  t.is(r.rcode, RCODE.SERVFAIL);
  t.deepEqual(r.opt?.ede, { code: 0, text: 'machine names differ only in case: Web, web' });
});

test('the zone reports each collision once, under the domain', (t) => {
  t.deepEqual(zone.collisions, [{ key: 'web.machine', names: ['Web', 'web'] }]);
});

test('a collision answer is not kept: the next question in the other case gets the other machine', (t) => {
  const z = makeZone();
  t.deepEqual(ask(z, 'Web.machine', 'A').answers, ['Web.machine 0 A 192.0.2.21']);
  t.deepEqual(ask(z, 'web.machine', 'A').answers, ['web.machine 0 A 192.0.2.22']);
  t.is(ask(z, 'wEb.machine', 'A').rcode, RCODE.SERVFAIL);
});

test("a kept answer still echoes each asker's ID, case and RD bit", (t) => {
  const z = makeZone();
  const first = ask(z, 'alpha.machine', 'A', { id: 1 });
  // The entry is what answers: plant one whose last address differs (the last 4 bytes: no OPT).
  const [[key, bytes] = []] = [...z.answers];
  if (key === undefined || bytes === undefined) return t.fail('no kept answer');
  const planted = Buffer.from(bytes);
  planted.set([203, 0, 113, 99], planted.length - 4);
  z.answers.set(key, planted);
  const second = ask(z, 'ALPHA.machine', 'A', { id: 2, rd: false, cd: true });
  t.is(first.id, 1);
  t.is(second.id, 2);
  t.true(first.rd);
  t.false(first.cd);
  t.false(second.rd);
  t.true(second.cd);
  t.deepEqual(first.answers, ['alpha.machine 0 A 192.0.2.10', 'alpha.machine 0 A 198.51.100.7']);
  t.deepEqual(second.answers, ['ALPHA.machine 0 A 192.0.2.10', 'ALPHA.machine 0 A 203.0.113.99']);
});

test('a repeated UDP query is answered from its exact bytes, with its own ID', (t) => {
  const z = makeZone();
  const first = answer(query('alpha.machine', 'A', { id: 1 }), z, 'udp');
  const repeat = answer(query('alpha.machine', 'A', { id: 2 }), z, 'udp');
  if (typeof first === 'string' || typeof repeat === 'string') return t.fail('expected bytes');
  t.is(z.replies.size, 1, 'one entry for the two queries, which differ only in their ID');
  t.is(repeat.readUInt16BE(0), 2);
  t.deepEqual(repeat.subarray(2), first.subarray(2));
  // The entry is what answers: a planted response comes back with the asker's ID.
  t.deepEqual(
    [...z.replies.keys()],
    [query('alpha.machine', 'A', { id: 1 }).subarray(2)],
    'keyed after the ID',
  );
  z.replies.set(
    query('alpha.machine', 'A', { id: 9 }),
    Buffer.from([0, 0, 0x81, 0x83, 0, 0, 0, 0, 0, 0, 0, 0]),
  );
  t.is(z.replies.size, 1, 'the same key: replaced, not added');
  const planted = answer(query('alpha.machine', 'A', { id: 3 }), z, 'udp');
  t.deepEqual(planted, Buffer.from([0, 3, 0x81, 0x83, 0, 0, 0, 0, 0, 0, 0, 0]));
});

test('with reuse, a repeated UDP query gets the kept response itself carrying its ID; without, a copy', (t) => {
  const z = makeZone();
  const first = answer(query('alpha.machine', 'A', { id: 1 }), z, 'udp', true);
  if (typeof first === 'string') return t.fail('expected bytes');
  const firstBytes = Buffer.from(first);
  const second = answer(query('alpha.machine', 'A', { id: 2 }), z, 'udp', true);
  if (typeof second === 'string') return t.fail('expected bytes');
  t.is(second.readUInt16BE(0), 2);
  t.deepEqual(second.subarray(2), firstBytes.subarray(2), 'the same response after the ID');
  const third = answer(query('alpha.machine', 'A', { id: 3 }), z, 'udp', true);
  if (typeof third === 'string') return t.fail('expected bytes');
  t.is(third, second, 'the kept bytes themselves, no copy');
  t.is(second.readUInt16BE(0), 3, "now carrying the third asker's ID");
  const copied = answer(query('alpha.machine', 'A', { id: 4 }), z, 'udp');
  if (typeof copied === 'string') return t.fail('expected bytes');
  t.not(copied, third, 'without reuse: a buffer of its own');
  t.is(copied.readUInt16BE(0), 4);
  t.is(third.readUInt16BE(0), 3, 'the kept bytes were not written');
  const tcp = answer(query('alpha.machine', 'A', { id: 5 }), z, 'tcp', true);
  t.not(tcp, third, 'TCP never gets the kept UDP bytes');
});

test('exact-bytes entries keep case, flags and EDNS apart, and collision picks stay exact', (t) => {
  const z = makeZone();
  t.deepEqual(ask(z, 'alpha.machine', 'A').answers, [
    'alpha.machine 0 A 192.0.2.10',
    'alpha.machine 0 A 198.51.100.7',
  ]);
  t.deepEqual(ask(z, 'ALPHA.machine', 'A').answers, [
    'ALPHA.machine 0 A 192.0.2.10',
    'ALPHA.machine 0 A 198.51.100.7',
  ]);
  t.false(ask(z, 'alpha.machine', 'A', { rd: false }).rd);
  t.true(ask(z, 'alpha.machine', 'A').rd);
  t.not(ask(z, 'alpha.machine', 'A', { edns: {} }).opt, undefined);
  t.is(z.replies.size, 3, 'alpha three ways; ALPHA, with upper case, takes the parsed path');
  for (let i = 0; i < 2; i++) {
    t.deepEqual(ask(z, 'Web.machine', 'A').answers, ['Web.machine 0 A 192.0.2.21']);
    t.deepEqual(ask(z, 'web.machine', 'A').answers, ['web.machine 0 A 192.0.2.22']);
    t.is(ask(z, 'wEb.machine', 'A').rcode, RCODE.SERVFAIL);
  }
});

test('exact-bytes entries: UDP only, short queries only, bounded by the answer limit', (t) => {
  const z = makeZone();
  ask(z, 'alpha.machine', 'A', {}, 'tcp');
  t.is(z.replies.size, 0, 'TCP takes the parsed path');
  const long = `${'a'.repeat(60)}.${'b'.repeat(60)}.machine`;
  t.true(query(long, 'A').length > EXACT_QUERY_MAX);
  t.is(ask(z, long, 'A').rcode, RCODE.NXDOMAIN);
  t.is(z.replies.size, 0, `a query over ${EXACT_QUERY_MAX} bytes is not kept`);
  const small: Zone = { ...z, replies: new ReplyTable(2, z.kept), answerLimit: 2 };
  for (const name of ['alpha.machine', 'web.machine', 'nope.machine', 'alpha.machine']) ask(small, name, 'A');
  t.true(small.replies.size <= 2);
  t.deepEqual(ask(small, 'alpha.machine', 'A').answers, [
    'alpha.machine 0 A 192.0.2.10',
    'alpha.machine 0 A 198.51.100.7',
  ]);
});

test('names with upper case (0x20 resolvers) are not kept by their exact bytes and evict nothing', (t) => {
  const base = makeZone();
  const z: Zone = { ...base, replies: new ReplyTable(8, base.kept), answerLimit: 8 };
  ask(z, 'alpha.machine', 'A');
  const [kept] = [...z.replies.keys()];
  // Every spelling of alpha.machine with at least one upper-case letter, as a 0x20 resolver asks.
  const letters = 'alpha.machine';
  for (let mask = 1; mask < 64; mask++) {
    const name = letters.replace(/[a-z]/g, (c, i: number) => ((mask >> (i % 6)) & 1 ? c.toUpperCase() : c));
    t.deepEqual(ask(z, name, 'A').answers, [`${name} 0 A 192.0.2.10`, `${name} 0 A 198.51.100.7`]);
  }
  t.deepEqual([...z.replies.keys()], [kept], 'the lower-case entry is the only one, and still there');
  t.is(z.answers.size, 1, 'the question is kept once, case-folded');
});

test('queries with EDNS options (a client cookie) are not kept by their exact bytes, only by question', (t) => {
  const z = makeZone();
  for (const cookie of ['0102030405060708', '1112131415161718']) {
    const r = ask(z, 'alpha.machine', 'A', {
      edns: { options: [{ code: 10, data: Buffer.from(cookie, 'hex') }] },
    });
    t.deepEqual(r.answers, ['alpha.machine 0 A 192.0.2.10', 'alpha.machine 0 A 198.51.100.7']);
  }
  t.is(z.replies.size, 0, 'each cookie would have been an entry never asked again');
  t.is(z.answers.size, 1, 'the question itself is kept once');
  ask(z, 'alpha.machine', 'A', { edns: {} });
  t.is(z.replies.size, 1, 'an OPT without options is kept');
});

test("kept responses share memory only with each other, not with Node's buffer pool", (t) => {
  const z = makeZone();
  const pools = new Set<ArrayBufferLike>();
  for (const name of ['alpha.machine', 'web.machine', 'nope.machine', '10.2.0.192.in-addr.arpa'])
    for (const type of ['A', 'AAAA', 'PTR'] as const) {
      ask(z, name, type);
      ask(z, name, type, { edns: {} });
      // What a pooled Buffer made now shares: the pool the response was just built in, if any.
      pools.add(Buffer.allocUnsafe(1).buffer);
    }
  const kept = [...z.replies.values(), ...z.answers.values()];
  t.true(kept.length >= 20);
  t.true(
    kept.every((b) => !pools.has(b.buffer)),
    'a kept slice of a pool keeps its whole 8 KiB alive',
  );
  const held = [...new Set(kept.map((b) => b.buffer))].reduce((sum, ab) => sum + ab.byteLength, 0);
  const bytes = kept.reduce((sum, b) => sum + b.length, 0);
  t.true(held <= bytes + 32 * 1024, `${held} bytes held for ${bytes} kept`);
});

test('includeLinkLocal puts link-local addresses into answers and PTR', (t) => {
  const z = makeZone({ includeLinkLocal: true });
  t.deepEqual(ask(z, 'alpha.machine', 'AAAA').answers, [
    'alpha.machine 0 AAAA fd42::10',
    'alpha.machine 0 AAAA fe80::10',
  ]);
  t.deepEqual(ask(z, 'alpha.machine', 'A').answers, [
    'alpha.machine 0 A 192.0.2.10',
    'alpha.machine 0 A 198.51.100.7',
    'alpha.machine 0 A 169.254.3.4',
  ]);
  t.deepEqual(ask(z, '4.3.254.169.in-addr.arpa', 'PTR').answers, [
    '4.3.254.169.in-addr.arpa 0 PTR alpha.machine',
  ]);
});

test('without excludeNets every non-link-local address is served', (t) => {
  const z = makeZone({ excludeNets: [] });
  t.deepEqual(ask(z, 'dock.machine', 'A').answers, [
    'dock.machine 0 A 172.17.0.1',
    'dock.machine 0 A 192.0.2.50',
  ]);
});

test('ttl applies to records and is the SOA minimum', (t) => {
  const z = makeZone({ ttl: 30 });
  t.deepEqual(ask(z, 'ai.machine', 'A').answers, ['ai.machine 30 A 192.0.2.40']);
  t.deepEqual(ask(z, 'nosuch.machine', 'A').authority, ['machine 30 SOA machine nobody.invalid 30']);
});

test('another domain moves the zone, and the old one is no longer ours', (t) => {
  const z = makeZone({ domain: 'vms.example' });
  t.deepEqual(ask(z, 'alpha.vms.example', 'A').answers, [
    'alpha.vms.example 0 A 192.0.2.10',
    'alpha.vms.example 0 A 198.51.100.7',
  ]);
  t.is(ask(z, 'alpha.machine', 'A').rcode, RCODE.REFUSED);
  t.deepEqual(ask(z, 'nosuch.vms.example', 'A').authority, [
    'vms.example 0 SOA vms.example nobody.invalid 0',
  ]);
  t.deepEqual(ask(z, '30.2.0.192.in-addr.arpa', 'PTR').answers, [
    '30.2.0.192.in-addr.arpa 0 PTR my.ct.vms.example',
  ]);
});

test('a machine named like a single-label domain is served under the domain, the bare name stays the apex', (t) => {
  const z = makeZone({}, [{ name: 'machine', addresses: ['192.0.2.80'] }]);
  t.deepEqual(ask(z, 'machine.machine', 'A').answers, ['machine.machine 0 A 192.0.2.80']);
  t.deepEqual(ask(z, 'machine', 'A').answers, []);
  t.is(ask(z, 'machine', 'SOA').answers.length, 1);
});

test('a name below a machine name exists in the domain only if another machine has that name', (t) => {
  const z = makeZone({}, [
    { name: 'a', addresses: ['192.0.2.1'] },
    { name: 'x.a', addresses: ['192.0.2.2'] },
  ]);
  t.deepEqual(ask(z, 'x.a.machine', 'A').answers, ['x.a.machine 0 A 192.0.2.2']);
  t.is(ask(z, 'y.a.machine', 'A').rcode, RCODE.NXDOMAIN);
  t.is(ask(z, 'x.a', 'A').rcode, RCODE.REFUSED, 'outside the domain nothing below a bare name is ours');
});

test('forwarding turns names that are not ours into forward, and sets RA on our answers', (t) => {
  const z = makeZone({ forwarding: true });
  t.is(answer(query('example.com', 'A'), z, 'udp'), 'forward');
  t.is(answer(query('nic.ai', 'A'), z, 'udp'), 'forward');
  t.is(answer(query('99.2.0.192.in-addr.arpa', 'PTR'), z, 'udp'), 'forward');
  t.is(answer(query('example.com', 'TXT', { qclass: 'CH' }), z, 'udp'), 'forward');
  const r = ask(z, 'alpha.machine', 'A');
  t.true(r.ra);
  t.false(ask(zone, 'alpha.machine', 'A').ra, 'no RA when we recurse for nobody');
});

test('REFUSED for a name outside the zone says Not Authoritative to EDNS clients', (t) => {
  const r = ask(zone, 'example.com', 'A', { edns: {} });
  t.is(r.rcode, RCODE.REFUSED);
  t.is(r.opt?.ede?.code, 20);
});

// ---- EDNS --------------------------------------------------------------------------------------

test('an OPT is echoed only when the client sent one, advertising 1232', (t) => {
  t.is(ask(zone, 'alpha.machine', 'A').opt, undefined);
  t.is(ask(zone, 'alpha.machine', 'A').additionalCount, 0);
  const r = ask(zone, 'alpha.machine', 'A', { edns: { udpSize: 4096 } });
  t.deepEqual(r.opt, { udpSize: 1232, version: 0, do: false, ede: undefined });
});

test('the DO bit is copied into the response OPT', (t) => {
  t.true(ask(zone, 'alpha.machine', 'A', { edns: { do: true } }).opt?.do);
});

test('EDNS version 1 gets BADVERS with an OPT of version 0', (t) => {
  const r = ask(zone, 'alpha.machine', 'A', { edns: { version: 1 } });
  t.is(r.rcode, RCODE.BADVERS);
  t.is(r.opt?.version, 0);
  t.deepEqual(r.answers, []);
});

test('EDNS options such as a client cookie are ignored and do not defeat the kept answers', (t) => {
  const z = makeZone();
  const cookie = (n: number): QuerySpec => ({ edns: { options: [{ code: 10, data: Buffer.alloc(8, n) }] } });
  t.is(ask(z, 'alpha.machine', 'A', cookie(1)).rcode, RCODE.NOERROR);
  t.is(ask(z, 'alpha.machine', 'A', cookie(2)).rcode, RCODE.NOERROR);
  t.is(z.answers.size, 1);
});

// ---- truncation --------------------------------------------------------------------------------

const many = Array.from({ length: 40 }, (_, i) => `fd42::${(i + 1).toString(16)}`);
const bigZone = makeZone({}, [{ name: 'big', addresses: many }]);

test('an answer over 512 bytes without EDNS is truncated: TC, no records', (t) => {
  const r = ask(bigZone, 'big.machine', 'AAAA');
  t.true(r.tc);
  t.deepEqual(r.answers, []);
  t.is(r.rcode, RCODE.NOERROR);
  t.is(r.question, 'big.machine AAAA');
});

test('the client EDNS size is honoured up to 1232', (t) => {
  // 40 AAAA records at 28 bytes each + 29 bytes of header and question + 11 of OPT = 1160 bytes.
  const r = ask(bigZone, 'big.machine', 'AAAA', { edns: { udpSize: 1232 } });
  t.false(r.tc);
  t.is(r.answers.length, 40);
  const small = ask(bigZone, 'big.machine', 'AAAA', { edns: { udpSize: 1000 } });
  t.true(small.tc);
  t.truthy(small.opt, 'a truncated answer keeps the OPT');
});

test('an EDNS size below 512 is treated as 512', (t) => {
  const z = makeZone({}, [{ name: 'mid', addresses: many.slice(0, 16) }]);
  // 16 × 28 + 41 + 11 = 500 bytes: fits 512, so a client saying 100 still gets it.
  const r = ask(z, 'mid.machine', 'AAAA', { edns: { udpSize: 100 } });
  t.false(r.tc);
  t.is(r.answers.length, 16);
});

test('the same question over TCP is never truncated', (t) => {
  const r = ask(bigZone, 'big.machine', 'AAAA', {}, 'tcp');
  t.false(r.tc);
  t.is(r.answers.length, 40);
});

test('answers share the question name through compression, like dnsmasq', (t) => {
  const reply = answer(query('alpha.machine', 'A'), zone, 'udp');
  // 12 header + 15 name + 4 + two A records of 16 bytes with a 2-byte pointer as owner.
  t.is(reply instanceof Buffer ? reply.length : 0, 12 + 15 + 4 + 2 * 16);
});

// ---- the edge ladder ------------------------------------------------------------------------------

function raw(bytes: number[] | Buffer): Buffer {
  return Buffer.isBuffer(bytes) ? bytes : Buffer.from(bytes);
}

test('anything shorter than a header is dropped silently', (t) => {
  t.is(answer(raw([0x12, 0x34, 0x01, 0x00, 0, 1, 0, 0, 0, 0, 0]), zone, 'udp'), 'drop');
  t.is(answer(raw([]), zone, 'udp'), 'drop');
});

test('a response (QR=1) is dropped silently, so two stubs cannot ping-pong', (t) => {
  const q = query('alpha.machine', 'A');
  q[2] = (q[2] ?? 0) | 0x80;
  t.is(answer(q, zone, 'udp'), 'drop');
});

function rcodeOfReply(reply: ReturnType<typeof answer>): number {
  if (typeof reply === 'string') throw new Error(reply);
  return reply.readUInt16BE(2) & 0x0f;
}

test('an opcode other than QUERY is NOTIMP', (t) => {
  const q = query('alpha.machine', 'A');
  q[2] = ((q[2] ?? 0) & 0x87) | (4 << 3); // NOTIFY
  const reply = answer(q, zone, 'udp');
  t.is(rcodeOfReply(reply), RCODE.NOTIMP);
  t.is(reply instanceof Buffer ? (reply[2] ?? 0) & 0x78 : -1, 4 << 3, 'the opcode is echoed');
});

test('QDCOUNT other than 1 is FORMERR', (t) => {
  const none = raw([0x12, 0x34, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]);
  t.is(rcodeOfReply(answer(none, zone, 'udp')), RCODE.FORMERR);
  const two = query('alpha.machine', 'A');
  two.writeUInt16BE(2, 4);
  t.is(rcodeOfReply(answer(two, zone, 'udp')), RCODE.FORMERR);
});

test('a FORMERR reply keeps the ID and carries no sections', (t) => {
  const reply = answer(raw([0xab, 0xcd, 0x01, 0x00, 0, 0, 0, 0, 0, 0, 0, 0]), zone, 'udp');
  t.deepEqual(reply, raw([0xab, 0xcd, 0x81, 0x01, 0, 0, 0, 0, 0, 0, 0, 0]));
});

const hostile: [string, Buffer][] = [
  // the question name runs past the end of the packet
  ['a truncated question name', raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 5, 0x61, 0x62])],
  // the name is complete but QTYPE/QCLASS are missing
  ['a question without type and class', raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 0x61, 0, 0, 1])],
  // a compression pointer in the question can only point backwards into the header
  [
    'a compression pointer in the question',
    raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0xc0, 0x0c, 0, 1, 0, 1]),
  ],
  // label type 0x40 is reserved (RFC 6891 §5)
  ['a reserved label type', raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0x41, 0x61, 0, 0, 1, 0, 1])],
  // a name longer than 255 octets
  [
    'a name over 255 octets',
    Buffer.concat([raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 0]), Buffer.alloc(300, 1), raw([0, 0, 1, 0, 1])]),
  ],
  // ARCOUNT promises a record that is not there (dns-packet would allocate from the count)
  [
    'an additional count with no records',
    raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0xff, 0xff, 1, 0x61, 0, 0, 1, 0, 1]),
  ],
  // a query has nothing in the answer section
  ['a query with an answer count', raw([0, 1, 1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1, 0x61, 0, 0, 1, 0, 1])],
  // two OPT records (RFC 6891 §6.1.1)
  [
    'two OPT records',
    Buffer.concat([
      raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 2, 1, 0x61, 0, 0, 1, 0, 1]),
      raw([0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]),
      raw([0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 0]),
    ]),
  ],
  // an OPT whose owner is not the root
  [
    'an OPT not owned by the root',
    raw([
      0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0x61, 0, 0, 1, 0, 1, 1, 0x61, 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0,
      0,
    ]),
  ],
  // OPT RDATA whose option length runs past the record
  [
    'an EDNS option longer than its record',
    raw([
      0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0x61, 0, 0, 1, 0, 1, 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 4, 0, 10,
      0, 8,
    ]),
  ],
  // RDLENGTH past the end of the packet
  [
    'an additional record longer than the packet',
    raw([0, 1, 1, 0, 0, 1, 0, 0, 0, 0, 0, 1, 1, 0x61, 0, 0, 1, 0, 1, 0, 0, 41, 4, 0xd0, 0, 0, 0, 0, 0, 9]),
  ],
];

for (const [what, bytes] of hostile) {
  test(`FORMERR for ${what}`, (t) => {
    t.is(rcodeOfReply(answer(bytes, zone, 'udp')), RCODE.FORMERR);
  });
}

test('a TSIG in the additional section is skipped, not an error', (t) => {
  const q = query('alpha.machine', 'A');
  // owner 'k', type TSIG (250), class ANY, ttl 0, rdlength 0 — we do not verify TSIG.
  const tsig = raw([1, 0x6b, 0, 0, 250, 0, 255, 0, 0, 0, 0, 0, 0]);
  const bytes = Buffer.concat([q, tsig]);
  bytes.writeUInt16BE(1, 10);
  t.is(rcodeOfReply(answer(bytes, zone, 'udp')), RCODE.NOERROR);
});
