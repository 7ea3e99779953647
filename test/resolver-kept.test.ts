import test from 'ava';
import { KeptBytes } from '../src/resolver/kept.js';

test('kept copies are equal to what was given, independent of it and of each other', (t) => {
  const kept = new KeptBytes();
  const sources = Array.from({ length: 1000 }, (_, i) => Buffer.alloc(1 + (i % 200), i % 251));
  const copies = sources.map((s) => kept.keep(s));
  for (const s of sources) s.fill(0xff);
  copies.forEach((c, i) => t.true(c.equals(Buffer.alloc(1 + (i % 200), i % 251)), `copy ${i}`));
});

test('small copies are packed into 32 KiB slabs; large ones get a buffer of their own', (t) => {
  const kept = new KeptBytes();
  const small = Array.from({ length: 1000 }, () => kept.keep(Buffer.alloc(100, 1)));
  const slabs = new Set(small.map((c) => c.buffer));
  // 1000 × 104 (8-byte aligned) bytes fit in four 32 KiB slabs.
  t.is(slabs.size, 4);
  for (const slab of slabs) t.is(slab.byteLength, 32 * 1024);
  const large = kept.keep(Buffer.alloc(9000, 2));
  t.is(large.buffer.byteLength, 9000);
  t.false(slabs.has(large.buffer));
});
