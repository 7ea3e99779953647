/**
 * Whole UDP responses by the query's bytes after its ID (`zone.replies`, answer.ts): the first thing
 * every UDP query looks at, so its lookup is the stub's hottest code.
 *
 * An open-addressing table over typed arrays: a 32-bit FNV-1a hash of the query's bytes picks a slot,
 * a slot holds its entry's hash and number, and an entry's key bytes sit in one arena. A hit hashes
 * the query, reads one or two slots and compares its bytes with one key; nothing is allocated.
 * Before, the key was a latin1 string of the query in a `Map`: one string made and hashed per query,
 * and its lookup (`FindOrderedHashMapEntry`, the keys scattered over the heap) was 4.4 % of the
 * stub's samples under dnsperf, its largest part outside the kernel and Node's own UDP code
 * (BENCHMARKS.md, bench:dns).
 *
 * Bounded: at `limit` entries it is cleared, so random names cannot grow it (as `zone.answers`).
 * Its arrays start small and grow with the entries.
 */
import type { KeptBytes } from './kept.js';

/** Slots before the first growth (a power of two). */
const FIRST_SLOTS = 256;
/** Key bytes before the first growth. */
const FIRST_ARENA = 8 * 1024;
const FNV_OFFSET = 0x811c9dc5 | 0;
const FNV_PRIME = 0x01000193;
/** Where a key starts in a query: after its 2-byte ID. */
const KEY_FROM = 2;

export class ReplyTable {
  /** slot → entry number + 1 (0: empty); at most half of them are used. */
  private slots = new Int32Array(FIRST_SLOTS);
  /** slot → the hash of its entry's key, so that a probe compares bytes only when they agree. */
  private hashes = new Int32Array(FIRST_SLOTS);
  private mask = FIRST_SLOTS - 1;
  /** entry → where its key starts in `arena`; the key ends where the next one starts (`arenaUsed` for the last). */
  private keyStart: number[] = [];
  private arena = Buffer.allocUnsafeSlow(FIRST_ARENA);
  private arenaUsed = 0;
  private replies: Buffer[] = [];

  /**
   * `limit`: entries before the table is cleared (at least 1). `kept`: where responses are copied to
   * (a response as built may be a slice of Node's shared pool; kept.ts).
   */
  constructor(
    readonly limit: number,
    private readonly kept: KeptBytes,
  ) {
    if (!(limit >= 1)) throw new RangeError(`limit ${limit}: must be at least 1`);
  }

  get size(): number {
    return this.replies.length;
  }

  /** The response kept for this query (its bytes after the ID), itself, not a copy. */
  get(query: Buffer): Buffer | undefined {
    const hash = hashKey(query);
    const entry = this.find(query, hash);
    return entry < 0 ? undefined : this.replies[entry];
  }

  /** Keeps a copy of `reply` for this query, replacing one kept before; clears the table when full. */
  set(query: Buffer, reply: Buffer): void {
    const hash = hashKey(query);
    const copy = this.kept.keep(reply);
    const known = this.find(query, hash);
    if (known >= 0) {
      this.replies[known] = copy;
      return;
    }
    if (this.replies.length >= this.limit) this.clear();
    if (2 * (this.replies.length + 1) > this.slots.length) this.grow();
    const entry = this.replies.length;
    this.replies.push(copy);
    this.keyStart.push(this.append(query));
    this.place(entry, hash);
  }

  clear(): void {
    this.slots = new Int32Array(FIRST_SLOTS);
    this.hashes = new Int32Array(FIRST_SLOTS);
    this.mask = FIRST_SLOTS - 1;
    this.keyStart = [];
    this.arena = Buffer.allocUnsafeSlow(FIRST_ARENA);
    this.arenaUsed = 0;
    this.replies = [];
  }

  /** The keys (each query's bytes after its ID, copied) in the order they were kept. */
  *keys(): IterableIterator<Buffer> {
    for (let e = 0; e < this.replies.length; e++)
      yield Buffer.from(this.arena.subarray(this.keyStart[e] ?? 0, this.keyStart[e + 1] ?? this.arenaUsed));
  }

  /** The kept responses, in the order they were kept. */
  values(): IterableIterator<Buffer> {
    return this.replies.values();
  }

  /** The entry holding this query's key, or -1. */
  private find(query: Buffer, hash: number): number {
    const slots = this.slots;
    const mask = this.mask;
    for (let slot = hash & mask; ; slot = (slot + 1) & mask) {
      const e = (slots[slot] ?? 0) - 1;
      if (e < 0) return -1;
      if (this.hashes[slot] === hash && this.sameKey(e, query)) return e;
    }
  }

  private sameKey(entry: number, query: Buffer): boolean {
    const from = this.keyStart[entry] ?? 0;
    const to = this.keyStart[entry + 1] ?? this.arenaUsed;
    const n = query.length - KEY_FROM;
    if (to - from !== n) return false;
    const arena = this.arena;
    for (let i = 0; i < n; i++) if (arena[from + i] !== query[KEY_FROM + i]) return false;
    return true;
  }

  private place(entry: number, hash: number): void {
    const mask = this.mask;
    let slot = hash & mask;
    while ((this.slots[slot] ?? 0) !== 0) slot = (slot + 1) & mask;
    this.slots[slot] = entry + 1;
    this.hashes[slot] = hash;
  }

  /** Twice the slots, every entry placed again (its hash is still in `hashes`). */
  private grow(): void {
    const oldSlots = this.slots;
    const oldHashes = this.hashes;
    this.slots = new Int32Array(oldSlots.length * 2);
    this.hashes = new Int32Array(oldSlots.length * 2);
    this.mask = this.slots.length - 1;
    for (let s = 0; s < oldSlots.length; s++) {
      const e = (oldSlots[s] ?? 0) - 1;
      if (e >= 0) this.place(e, oldHashes[s] ?? 0);
    }
  }

  /** Copies the query's key into the arena (grown as needed); returns where it starts. */
  private append(query: Buffer): number {
    const n = query.length - KEY_FROM;
    if (this.arenaUsed + n > this.arena.length) {
      const larger = Buffer.allocUnsafeSlow(Math.max(2 * this.arena.length, this.arenaUsed + n));
      larger.set(this.arena.subarray(0, this.arenaUsed));
      this.arena = larger;
    }
    const from = this.arenaUsed;
    this.arena.set(query.subarray(KEY_FROM), from);
    this.arenaUsed += n;
    return from;
  }
}

/** 32-bit FNV-1a of a query's bytes after its ID. */
export function hashKey(query: Buffer): number {
  let hash = FNV_OFFSET;
  for (let i = KEY_FROM; i < query.length; i++) hash = Math.imul(hash ^ (query[i] ?? 0), FNV_PRIME);
  return hash;
}
