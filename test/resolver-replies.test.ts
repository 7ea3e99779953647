import test from 'ava';
import { KeptBytes } from '../src/resolver/kept.js';
import { hashKey, ReplyTable } from '../src/resolver/replies.js';

/** A query-like buffer: 2 ID bytes, then the key. */
const q = (key: Buffer | string, id = 0): Buffer =>
  Buffer.concat([
    Buffer.from([id >> 8, id & 0xff]),
    typeof key === 'string' ? Buffer.from(key, 'latin1') : key,
  ]);
const reply = (n: number): Buffer => Buffer.from(`reply ${n}`);

test('a key is the bytes after the ID: queries differing only in their ID share one entry', (t) => {
  const table = new ReplyTable(10, new KeptBytes());
  table.set(q('alpha', 1), reply(1));
  t.deepEqual(table.get(q('alpha', 2)), reply(1));
  t.is(table.get(q('alph', 2)), undefined, 'a prefix is another key');
  t.is(table.get(q('alphaa', 2)), undefined, 'a longer key is another key');
  t.is(table.get(q('alphb', 1)), undefined, 'one byte differs');
  table.set(q('alpha', 7), reply(2));
  t.is(table.size, 1, 'set again: replaced');
  t.deepEqual(table.get(q('alpha', 3)), reply(2));
  t.deepEqual([...table.keys()], [Buffer.from('alpha')]);
});

test('the response is kept as a copy, and get returns that copy itself', (t) => {
  const table = new ReplyTable(10, new KeptBytes());
  const built = reply(1);
  table.set(q('k'), built);
  built.fill(0);
  const kept = table.get(q('k'));
  t.deepEqual(kept, reply(1), 'later writes to the built buffer do not reach the entry');
  t.is(table.get(q('k')), kept, 'the same buffer every time (answer.ts writes the ID into it)');
});

test('thousands of keys: each found, through every growth of slots and key bytes, none invented', (t) => {
  const table = new ReplyTable(100_000, new KeptBytes());
  const keys: Buffer[] = [];
  // Lengths 1..126 (the longest kept query is 128 bytes with its ID): the key bytes outgrow 8 KiB.
  for (let i = 0; i < 5000; i++) {
    const key = Buffer.alloc(1 + (i % 126), i % 251);
    if (key.length >= 2) key.writeUInt16BE(i);
    else key[0] = i & 0xff;
    keys.push(key);
  }
  const distinct = new Map(keys.map((k, i) => [k.toString('latin1'), i]));
  for (const [text, i] of distinct) table.set(q(Buffer.from(text, 'latin1')), reply(i));
  t.is(table.size, distinct.size);
  for (const [text, i] of distinct) t.deepEqual(table.get(q(Buffer.from(text, 'latin1'), 0xbeef)), reply(i));
  let invented = 0;
  for (let i = 0; i < 5000; i++) if (table.get(q(`absent ${i}`)) !== undefined) invented++;
  t.is(invented, 0);
});

test('keys with the same 32-bit hash are told apart by their bytes', (t) => {
  // Keys until two share a hash (a birthday collision: expected within ~100,000).
  const seen = new Map<number, Buffer>();
  let pair: [Buffer, Buffer] | undefined;
  for (let i = 0; i < 1_000_000 && !pair; i++) {
    // Eight bytes: four-byte keys of one length never collide (every step of FNV-1a is a bijection).
    const key = Buffer.alloc(8);
    key.writeUInt32BE(i);
    key.writeUInt32BE(Math.imul(i, 0x9e3779b1) >>> 0, 4);
    const hash = hashKey(q(key));
    const other = seen.get(hash);
    if (other) pair = [other, key];
    else seen.set(hash, key);
  }
  if (!pair) return t.fail('no collision among a million keys');
  const [a, b] = pair;
  t.is(hashKey(q(a)), hashKey(q(b)));
  t.notDeepEqual(a, b);
  const table = new ReplyTable(10, new KeptBytes());
  table.set(q(a), reply(1));
  t.is(table.get(q(b)), undefined, 'same hash, other bytes: not this entry');
  table.set(q(b), reply(2));
  t.is(table.size, 2);
  t.deepEqual(table.get(q(a)), reply(1));
  t.deepEqual(table.get(q(b)), reply(2));
});

test('bounded: at its limit a new key clears the table first; clear forgets everything', (t) => {
  const table = new ReplyTable(3, new KeptBytes());
  for (const k of ['a', 'b', 'c']) table.set(q(k), reply(k.charCodeAt(0)));
  t.is(table.size, 3);
  table.set(q('b'), reply(0));
  t.is(table.size, 3, 'a known key is replaced without clearing');
  table.set(q('d'), reply(4));
  t.is(table.size, 1, 'the fourth key cleared the three before');
  t.is(table.get(q('a')), undefined);
  t.deepEqual(table.get(q('d')), reply(4));
  table.clear();
  t.is(table.size, 0);
  t.is(table.get(q('d')), undefined);
  t.throws(() => new ReplyTable(0, new KeptBytes()), { instanceOf: RangeError });
});
