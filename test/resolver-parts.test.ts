import test from 'ava';
import { readFile } from 'node:fs/promises';
import { rcodeOf, type Outcome } from '../src/resolver/answer.js';
import { parseListenAddress, resolveConfig } from '../src/resolver/config.js';
import { DNS_ERRORS } from '../src/resolver/errors.js';
import { FrameReader, type Frame } from '../src/resolver/framing.js';
import { ClientFilter, netContains, parseNet, peerAddressBytes } from '../src/resolver/nets.js';
import { encodeName, nameKey, reverseKey } from '../src/resolver/wire.js';
import { prng } from './support/prng.js';
import { parseAddress } from '../src/registry-client/address.js';
import { MachineTable } from '../src/registry-client/registry.js';
import { silentLogger } from '../src/log.js';

// ---- TCP framing -------------------------------------------------------------------------------------

function framed(...bodies: Buffer[]): Buffer {
  return Buffer.concat(
    bodies.map((b) => {
      const head = Buffer.alloc(2);
      head.writeUInt16BE(b.length, 0);
      return Buffer.concat([head, b]);
    }),
  );
}

function drain(reader: FrameReader): Frame[] {
  const out: Frame[] = [];
  for (let f = reader.next(); f !== 'incomplete'; f = reader.next()) {
    out.push(f);
    if (f === 'oversized') break;
  }
  return out;
}

const bodies = [Buffer.from('first message!'), Buffer.alloc(0), Buffer.from('third')];
const stream = framed(...bodies);

test('every way of splitting a stream into two reads gives the same frames', (t) => {
  for (let cut = 0; cut <= stream.length; cut++) {
    const reader = new FrameReader(100);
    reader.push(stream.subarray(0, cut));
    const frames = drain(reader);
    reader.push(stream.subarray(cut));
    frames.push(...drain(reader));
    t.deepEqual(frames, bodies, `cut at ${cut}`);
    t.is(reader.buffered, 0);
  }
});

test('a stream fed one byte at a time gives the same frames', (t) => {
  const reader = new FrameReader(100);
  const frames: Frame[] = [];
  for (const byte of stream) {
    reader.push(Buffer.from([byte]));
    frames.push(...drain(reader));
  }
  t.deepEqual(frames, bodies);
});

test('a length prefix over the maximum is reported before any body byte arrives', (t) => {
  const reader = new FrameReader(100);
  reader.push(Buffer.from([0, 101]));
  t.is(reader.next(), 'oversized');
});

test('a frame of exactly the maximum is accepted', (t) => {
  const reader = new FrameReader(100);
  reader.push(framed(Buffer.alloc(100, 7)));
  t.deepEqual(reader.next(), Buffer.alloc(100, 7));
});

test('a half-read frame shows as buffered bytes', (t) => {
  const reader = new FrameReader(100);
  reader.push(Buffer.from([0, 5, 1, 2]));
  t.is(reader.next(), 'incomplete');
  t.is(reader.buffered, 2);
});

// ---- nets ----------------------------------------------------------------------------------------------

test('a net is parsed with its host bits cleared', (t) => {
  t.is(parseNet('172.17.3.4/16')?.text, '172.17.0.0/16');
  t.is(parseNet('fd42::1/64')?.text, 'fd42::/64');
  t.is(parseNet('10.0.0.1')?.text, '10.0.0.1/32');
  t.is(parseNet('::1')?.text, '::1/128');
  t.is(parseNet('10.0.0.0/33'), undefined);
  t.is(parseNet('10.0.0.0/x'), undefined);
  t.is(parseNet('example.com/8'), undefined);
});

test('net membership follows the prefix bit by bit', (t) => {
  const net = parseNet('192.0.2.128/25');
  if (!net) throw new Error('bad net');
  const has = (a: string): boolean => netContains(net, parseAddress(a) ?? Buffer.alloc(0));
  t.true(has('192.0.2.128'));
  t.true(has('192.0.2.255'));
  t.false(has('192.0.2.127'));
  t.false(has('fd42::1'), 'another family never matches');
});

test('peer addresses lose their zone and IPv4-mapped ones become IPv4', (t) => {
  t.deepEqual(peerAddressBytes('::ffff:127.0.0.1'), Buffer.from([127, 0, 0, 1]));
  t.deepEqual(peerAddressBytes('fe80::1%eth0'), parseAddress('fe80::1'));
  t.is(peerAddressBytes('garbage'), undefined);
});

test('the client filter allows exactly its nets, also through a dual-stack socket', (t) => {
  const filter = new ClientFilter(
    [parseNet('127.0.0.0/8'), parseNet('::1')].flatMap((n) => (n ? [n] : [])),
    2,
  );
  t.true(filter.allows('127.0.0.5'));
  t.true(filter.allows('::ffff:127.0.0.1'));
  t.true(filter.allows('::1'));
  t.false(filter.allows('192.0.2.1'));
  t.false(filter.allows('192.0.2.1'), 'the bounded memo forgets, the answer stays');
});

// ---- wire helpers --------------------------------------------------------------------------------------

test('names that DNS cannot carry are not encoded', (t) => {
  t.deepEqual(encodeName('a.b'), Buffer.from([1, 0x61, 1, 0x62, 0]));
  t.deepEqual(encodeName('a.b.'), Buffer.from([1, 0x61, 1, 0x62, 0]));
  t.is(encodeName('.host'), undefined);
  t.is(encodeName('a..b'), undefined);
  t.is(encodeName('x'.repeat(64)), undefined);
  t.is(encodeName(Array.from({ length: 5 }, () => 'x'.repeat(63)).join('.')), undefined);
  t.is(encodeName('sp ace'), undefined);
  t.is(encodeName('ünï'), undefined);
});

/** The oracle of reverseKey: `d.c.b.a.in-addr.arpa` (RFC 1035 §3.5) or the 32-nibble `ip6.arpa` name (RFC 3596 §2.5). */
function reverseName(bytes: Uint8Array): string {
  const parts: string[] = [];
  if (bytes.length === 4) {
    for (let i = 3; i >= 0; i--) parts.push(String(bytes[i] ?? 0));
    return `${parts.join('.')}.in-addr.arpa`;
  }
  for (let i = bytes.length - 1; i >= 0; i--) {
    const b = bytes[i] ?? 0;
    parts.push((b & 0x0f).toString(16), (b >> 4).toString(16));
  }
  return `${parts.join('.')}.ip6.arpa`;
}

test('reverse names are built per RFC 1035 §3.5 and RFC 3596 §2.5', (t) => {
  t.is(reverseName(Buffer.from([192, 0, 2, 10])), '10.2.0.192.in-addr.arpa');
  t.is(
    reverseName(parseAddress('2001:db8::567:89ab') ?? Buffer.alloc(0)),
    'b.a.9.8.7.6.5.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2.ip6.arpa',
  );
});

test('reverseKey writes the key of the reverse name straight from the bytes, the same as through the dotted name', (t) => {
  const detour = (bytes: Uint8Array): string => nameKey(encodeName(reverseName(bytes)) ?? Buffer.alloc(0));
  t.is(reverseKey(Buffer.from([192, 0, 2, 10])), '\x0210\x012\x010\x03192\x07in-addr\x04arpa\x00');
  // every octet value, in each position (one, two and three digits)
  for (let b = 0; b < 256; b++) {
    const bytes = Buffer.from([b, 255 - b, b % 10, (b * 7) % 256]);
    t.is(reverseKey(bytes), detour(bytes), [...bytes].join('.'));
  }
  const random = prng(20261206);
  for (let n = 0; n < 2000; n++) {
    const bytes = Buffer.from(Array.from({ length: 16 }, () => Math.floor(random() * 256)));
    const key = reverseKey(bytes);
    if (key !== detour(bytes)) return t.fail(`${bytes.toString('hex')}: ${String(key)}`);
  }
  const v6 = parseAddress('2001:DB8::567:89AB') ?? Buffer.alloc(0);
  t.is(reverseKey(v6), detour(v6));
  t.is(reverseKey(Buffer.alloc(16, 0xff)), detour(Buffer.alloc(16, 0xff)));
  for (const length of [0, 3, 5, 15, 17])
    t.is(reverseKey(Buffer.alloc(length)), undefined, `${length} bytes`);
});

test('every outcome maps to its RCODE', (t) => {
  const table: [Outcome, number][] = [
    [{ kind: 'records', records: [], caseSensitive: false }, 0],
    [{ kind: 'nodata', soa: true }, 0],
    [{ kind: 'nxdomain' }, 3],
    [{ kind: 'conflict', names: [] }, 2],
    [{ kind: 'unreachable' }, 2],
    [{ kind: 'refused', ede: { code: 20, text: Buffer.alloc(0) } }, 5],
    [{ kind: 'badvers' }, 16],
    [{ kind: 'formerr' }, 1],
    [{ kind: 'notimp' }, 4],
  ];
  for (const [outcome, rcode] of table) {
    const got: number = rcodeOf(outcome);
    t.is(got, rcode, outcome.kind);
  }
});

// ---- options -------------------------------------------------------------------------------------------

test('listen addresses are literal HOST:PORT or [V6]:PORT', (t) => {
  t.deepEqual(parseListenAddress('127.0.0.153:53'), { host: '127.0.0.153', port: 53, family: 4 });
  t.deepEqual(parseListenAddress('[::1]:0'), { host: '::1', port: 0, family: 6 });
  t.is(parseListenAddress('localhost:53'), undefined);
  t.is(parseListenAddress('127.0.0.1'), undefined);
  t.is(parseListenAddress('::1:53'), undefined);
});

const base = { view: new MachineTable(), logger: silentLogger };

test('defaults: 127.0.0.153:53, domain machine, ttl 0, loopback and host addresses allowed', (t) => {
  const config = resolveConfig({ ...base, hostAddresses: ['192.0.2.2', 'fe80::fc:ff:fe00:1'] });
  t.deepEqual(config.listen, [{ host: '127.0.0.153', port: 53, family: 4 }]);
  t.is(config.domain, 'machine');
  t.is(config.ttl, 0);
  t.false(config.includeLinkLocal);
  t.deepEqual(
    config.allowNets.map((n) => n.text),
    ['127.0.0.0/8', '::1/128', '192.0.2.2/32', 'fe80::fc:ff:fe00:1/128'],
  );
  t.deepEqual(config.forwardSpecs, []);
});

test('with inherited sockets and no listen option nothing else is bound', (t) => {
  const config = resolveConfig({ ...base, inherited: [{ fd: 3, kind: 'udp', family: 4 }] });
  t.deepEqual(config.listen, []);
});

test('the domain is lower-cased and loses a trailing dot', (t) => {
  t.is(resolveConfig({ ...base, domain: 'VMs.Example.' }).domain, 'vms.example');
});

const badOptions: [string, Parameters<typeof resolveConfig>[0], string][] = [
  ['an empty domain', { ...base, domain: '' }, 'DNS_BAD_DOMAIN'],
  ['a domain with an empty label', { ...base, domain: 'a..b' }, 'DNS_BAD_DOMAIN'],
  ['a negative ttl', { ...base, ttl: -1 }, 'DNS_BAD_TTL'],
  ['a fractional ttl', { ...base, ttl: 1.5 }, 'DNS_BAD_TTL'],
  ['a listen name', { ...base, listen: ['localhost:53'] }, 'DNS_BAD_LISTEN'],
  ['a bad exclude net', { ...base, excludeNets: ['172.17.0.0/99'] }, 'DNS_BAD_NET'],
  ['a bad allow net', { ...base, allowNets: ['everyone'] }, 'DNS_BAD_NET'],
  ['a bad upstream', { ...base, forward: ['8.8.8.8:dns'] }, 'DNS_BAD_UPSTREAM'],
  ['a zero timeout', { ...base, forwardTimeoutMs: 0 }, 'DNS_BAD_OPTION'],
  ['a negative fd', { ...base, inherited: [{ fd: -1, kind: 'tcp', family: 4 }] }, 'DNS_BAD_OPTION'],
];
for (const [what, options, code] of badOptions) {
  test(`${what} is refused with ${code}, exit status 2`, (t) => {
    t.like(
      t.throws(() => resolveConfig(options)),
      { code, exitStatus: 2 },
    );
  });
}

test('every error code is documented in docs/dns.md with its exit status, and no other', async (t) => {
  const doc = await readFile(new URL('../../docs/dns.md', import.meta.url), 'utf8');
  const documented = new Map(
    [...doc.matchAll(/^\| `(DNS_[A-Z_]+)` \| (\d) \|/gm)].map((m) => [m[1], Number(m[2])]),
  );
  for (const [code, { exitStatus }] of Object.entries(DNS_ERRORS)) {
    t.is(documented.get(code), exitStatus, code);
  }
  t.deepEqual([...documented.keys()].sort(), Object.keys(DNS_ERRORS).sort());
});
