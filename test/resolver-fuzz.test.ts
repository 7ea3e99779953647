/**
 * Hostile input, reproducibly: 200,000 random and mutated packets in all (seeded PRNG and
 * fast-check with a fixed seed) at the answer function and at the real UDP socket. Nothing may throw
 * or reject, every reply must be a well-formed response to the packet's ID, and the well-formed
 * queries mixed in must still get exactly the right answer — which also proves that no garbage ever
 * poisoned the kept answers.
 */
import test from 'ava';
import dgram from 'node:dgram';
import * as fc from 'fast-check';
import * as dnsPacket from 'dns-packet';
import { answer, type Reply } from '../src/resolver/answer.js';
import { compileZone, type Zone } from '../src/resolver/zone.js';
import { MachineTable } from '../src/registry-client/registry.js';
import { machineRecord, type RecordSpec } from './support/records.js';
import { prng } from './support/prng.js';
import { query, RCODE, summarize, type QType } from './support/dns.js';
import { startStub } from './support/stub.js';

const SEED = 0x5eed1234;

const machines: RecordSpec[] = [
  { name: 'alpha', addresses: ['192.0.2.10', 'fd42::10', 'fe80::10'] },
  { name: 'my.ct', addresses: ['192.0.2.30'] },
  { name: 'Web', addresses: ['192.0.2.21'] },
  { name: 'web', addresses: ['192.0.2.22'] },
  { name: 'empty' },
];

function makeZone(): Zone {
  const table = new MachineTable();
  for (const m of machines) table.upsert(machineRecord(m));
  return compileZone(table, {
    domain: 'machine',
    ttl: 0,
    includeLinkLocal: false,
    excludeNets: [],
    forwarding: false,
  });
}

/** The oracle: what each well-formed question must get, written out by hand. */
interface Expected {
  name: string;
  type: QType;
  /** Whether random case is allowed (not for colliding names, where case decides). */
  anyCase: boolean;
  rcode: number;
  data: string[];
}

const oracle: Expected[] = [
  { name: 'alpha.machine', type: 'A', anyCase: true, rcode: RCODE.NOERROR, data: ['A 192.0.2.10'] },
  { name: 'alpha.machine', type: 'AAAA', anyCase: true, rcode: RCODE.NOERROR, data: ['AAAA fd42::10'] },
  {
    name: 'alpha.machine',
    type: 'ANY',
    anyCase: true,
    rcode: RCODE.NOERROR,
    data: ['A 192.0.2.10', 'AAAA fd42::10'],
  },
  { name: 'alpha.machine', type: 'MX', anyCase: true, rcode: RCODE.NOERROR, data: [] },
  { name: 'alpha', type: 'A', anyCase: true, rcode: RCODE.NOERROR, data: ['A 192.0.2.10'] },
  { name: 'my.ct.machine', type: 'A', anyCase: true, rcode: RCODE.NOERROR, data: ['A 192.0.2.30'] },
  { name: 'ct.machine', type: 'A', anyCase: true, rcode: RCODE.NOERROR, data: [] },
  { name: 'Web.machine', type: 'A', anyCase: false, rcode: RCODE.NOERROR, data: ['A 192.0.2.21'] },
  { name: 'web.machine', type: 'A', anyCase: false, rcode: RCODE.NOERROR, data: ['A 192.0.2.22'] },
  { name: 'WEB.machine', type: 'A', anyCase: false, rcode: RCODE.SERVFAIL, data: [] },
  { name: 'empty.machine', type: 'AAAA', anyCase: true, rcode: RCODE.NOERROR, data: [] },
  { name: 'nosuch.machine', type: 'A', anyCase: true, rcode: RCODE.NXDOMAIN, data: [] },
  { name: 'machine', type: 'SOA', anyCase: true, rcode: RCODE.NOERROR, data: ['SOA'] },
  {
    name: '10.2.0.192.in-addr.arpa',
    type: 'PTR',
    anyCase: true,
    rcode: RCODE.NOERROR,
    data: ['PTR alpha.machine'],
  },
  { name: 'example.com', type: 'A', anyCase: true, rcode: RCODE.REFUSED, data: [] },
];

function randomCase(name: string, random: () => number): string {
  return name.replace(/[a-z]/gi, (c) => (random() < 0.5 ? c.toUpperCase() : c.toLowerCase()));
}

interface Probe {
  bytes: Buffer;
  expected: Expected;
  asked: string;
}

function wellFormed(random: () => number, id: number): Probe {
  const expected = oracle[Math.floor(random() * oracle.length)] ?? oracle[0];
  if (!expected) throw new Error('empty oracle');
  const asked = expected.anyCase ? randomCase(expected.name, random) : expected.name;
  const edns =
    random() < 0.5 ? { udpSize: 512 + Math.floor(random() * 4000), do: random() < 0.3 } : undefined;
  const bytes = query(asked, expected.type, { id, rd: random() < 0.5, ...(edns ? { edns } : {}) });
  return { bytes, expected, asked };
}

function check(reply: Reply, probe: Probe): string | undefined {
  if (typeof reply === 'string') return `no answer (${reply}) for ${probe.asked} ${probe.expected.type}`;
  const r = summarize(reply);
  const wanted = probe.expected;
  if (r.id !== probe.bytes.readUInt16BE(0)) return `wrong id for ${probe.asked}`;
  if (r.rcode !== wanted.rcode)
    return `rcode ${r.rcode} for ${probe.asked} ${wanted.type}, wanted ${wanted.rcode}`;
  if (r.question !== `${probe.asked} ${wanted.type}`)
    return `question ${r.question ?? ''} for ${probe.asked}`;
  const data = r.answers.map((line) => {
    const [owner = '', , type = '', value] = line.split(' ');
    if (owner !== probe.asked) return `owner ${owner}`;
    return type === 'SOA' ? 'SOA' : `${type} ${value ?? ''}`;
  });
  if (JSON.stringify(data) !== JSON.stringify(wanted.data))
    return `answers ${JSON.stringify(data)} for ${probe.asked} ${wanted.type}`;
  return undefined;
}

/** Whatever came back for garbage: silence, or a response to that packet's ID that parses. */
function checkGarbage(input: Buffer, reply: Reply): string | undefined {
  if (reply === 'forward') return 'forward without forwarding';
  if (reply === 'drop') return undefined;
  if (reply.length < 12) return 'reply shorter than a header';
  if (input.length < 12) return 'reply to a packet shorter than a header';
  if (((reply[2] ?? 0) & 0x80) === 0) return 'reply without QR';
  if (reply.readUInt16BE(0) !== input.readUInt16BE(0)) return 'reply with another ID';
  if (reply.length > 1232) return `UDP reply of ${reply.length} bytes`;
  try {
    dnsPacket.decode(reply);
  } catch (error) {
    return `our reply does not decode: ${String(error)}`;
  }
  return undefined;
}

type Mutation = (b: Buffer, random: () => number) => Buffer;

/** Mutations that keep most of a query's structure, so the parser is pushed past the header. */
const mutations: Mutation[] = [
  (b, r) => {
    const i = Math.floor(r() * b.length);
    b[i] = (b[i] ?? 0) ^ (1 << Math.floor(r() * 8));
    return b;
  },
  (b, r) => {
    b[Math.floor(r() * b.length)] = Math.floor(r() * 256);
    return b;
  },
  (b, r) => b.subarray(0, Math.floor(r() * b.length)),
  (b, r) => {
    const at = Math.floor(r() * b.length);
    const extra = Buffer.from(Array.from({ length: 1 + Math.floor(r() * 8) }, () => Math.floor(r() * 256)));
    return Buffer.concat([b.subarray(0, at), extra, b.subarray(at)]);
  },
  (b, r) => {
    // a random section count: dns-packet would size arrays from it
    if (b.length >= 12) b.writeUInt16BE(Math.floor(r() * 65536), 4 + 2 * Math.floor(r() * 4));
    return b;
  },
  (b, r) => {
    // a compression pointer somewhere in the name or the additional section
    const at = 12 + Math.floor(r() * Math.max(1, b.length - 13));
    if (at + 1 < b.length) b.writeUInt16BE(0xc000 | Math.floor(r() * b.length), at);
    return b;
  },
  (b) => Buffer.concat([b, b.subarray(12)]),
];

function mutate(bytes: Buffer, random: () => number): Buffer {
  let out: Buffer = Buffer.from(bytes);
  const rounds = 1 + Math.floor(random() * 3);
  for (let i = 0; i < rounds && out.length > 0; i++) {
    const m = mutations[Math.floor(random() * mutations.length)];
    if (m) out = m(out, random);
  }
  return out;
}

test('170,000 mutated and well-formed packets at the answer function: no throw, right answers', (t) => {
  const random = prng(SEED);
  const zone = makeZone();
  const failures: string[] = [];
  let wellFormedCount = 0;
  for (let i = 0; i < 170_000 && failures.length < 5; i++) {
    const probe = wellFormed(random, i & 0xffff);
    if (i % 8 === 0) {
      wellFormedCount++;
      // with or without reuse: each reply is checked before the next call, as the server sends it
      const transport = random() < 0.5 ? 'udp' : 'tcp';
      const failure = check(answer(probe.bytes, zone, transport, random() < 0.5), probe);
      if (failure) failures.push(`#${i}: ${failure}`);
      continue;
    }
    const input = mutate(probe.bytes, random);
    const failure = checkGarbage(input, answer(input, zone, 'udp', random() < 0.5));
    if (failure) failures.push(`#${i}: ${failure} (input ${input.toString('hex')})`);
  }
  t.deepEqual(failures, []);
  t.true(wellFormedCount > 20_000);
});

test('10,000 arbitrary byte strings (fast-check, fixed seed) never make the answer function throw', (t) => {
  const zone = makeZone();
  t.notThrows(() => {
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 600 }), (bytes) => {
        const input = Buffer.from(bytes);
        return checkGarbage(input, answer(input, zone, 'udp')) === undefined;
      }),
      { seed: SEED, numRuns: 10_000 },
    );
  });
});

test('any spelling of a machine name gets that machine, echoed byte for byte (fast-check)', (t) => {
  const zone = makeZone();
  const caseOf = fc.array(fc.boolean(), { minLength: 13, maxLength: 13 });
  t.notThrows(() => {
    fc.assert(
      fc.property(caseOf, fc.integer({ min: 0, max: 0xffff }), (upper, id) => {
        let i = 0;
        const asked = 'alpha.machine'.replace(/./g, (c) => (upper[i++] ? c.toUpperCase() : c));
        const reply = answer(query(asked, 'A', { id }), zone, 'udp');
        if (typeof reply === 'string') return false;
        const r = summarize(reply);
        return r.id === id && JSON.stringify(r.answers) === JSON.stringify([`${asked} 0 A 192.0.2.10`]);
      }),
      { seed: SEED, numRuns: 1000 },
    );
  });
});

test('20,000 mutated and well-formed packets at the real UDP socket: it keeps answering correctly', async (t) => {
  const random = prng(SEED + 1);
  const { port } = await startStub(t, machines);
  const socket = dgram.createSocket('udp4');
  t.teardown(() => socket.close());
  const waiting = new Map<number, { probe: Probe; resolve: (failure: string | undefined) => void }>();
  socket.on('message', (reply: Buffer) => {
    const w = waiting.get(reply.readUInt16BE(0));
    if (!w) return; // a reply to garbage: checked at the answer function above
    waiting.delete(reply.readUInt16BE(0));
    w.resolve(check(reply, w.probe));
  });
  const failures: string[] = [];
  // Bursts of 49 mutated packets and one well-formed query whose answer we wait for: bounded bursts,
  // so the kernel's socket buffer never overflows and no answer is lost for reasons of our own.
  for (let burst = 0; burst < 400; burst++) {
    const id = 0x8000 | burst;
    for (let i = 0; i < 49; i++) {
      const input = mutate(wellFormed(random, burst & 0x7fff).bytes, random);
      if (input.length >= 2) input.writeUInt16BE(burst & 0x7fff, 0); // never collide with the probe ID
      socket.send(input, port, '127.0.0.1');
    }
    const probe = wellFormed(random, id);
    const result = new Promise<string | undefined>((resolve) => waiting.set(id, { probe, resolve }));
    socket.send(probe.bytes, port, '127.0.0.1');
    const failure = await result;
    if (failure) failures.push(`burst ${burst}: ${failure}`);
  }
  t.deepEqual(failures, []);
});
