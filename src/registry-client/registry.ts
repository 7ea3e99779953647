/**
 * The registry's state: every known machine and all indexes over them, with one `upsert` and one
 * `remove` that keep every index consistent (as machined's `machine_free` drops a machine from all
 * of its hashmaps). Pure in-memory; `sync.ts` feeds it from D-Bus, tests feed it directly.
 */
import { ownsId } from './idmap.js';
import type { IdOwner, IdRange, MachineRecord, RegistryView, ViewChange } from './view.js';

/**
 * One indexed id range: host ids [start, end) owned by the machine `name` through `range`. By name,
 * not record: an update that keeps the machine's maps (a new address) keeps the index, and a record
 * held here would then be the superseded one, kept alive until the next rebuild.
 */
interface RangeEntry {
  readonly start: number;
  readonly end: number;
  readonly order: number;
  /** Line of the machine's map file: machined takes a machine's first matching line. */
  readonly line: number;
  readonly name: string;
  readonly range: IdRange;
}

/** What the index finds: the machine by name, and the inner id. */
interface IndexedOwner {
  readonly name: string;
  readonly inner: number;
}

/**
 * Host-id → owner index. Sorted by start with a running maximum of ends, so a lookup is a binary
 * search plus a backward walk that stops as soon as no earlier range can still cover the id: one
 * step when ranges do not overlap, whatever the number of machines.
 */
class RangeIndex {
  private readonly entries: RangeEntry[];
  private readonly maxEnd: number[];

  constructor(
    machines: readonly MachineRecord[],
    pick: (m: MachineRecord) => readonly IdRange[] | undefined,
  ) {
    const entries: RangeEntry[] = [];
    machines.forEach((machine, order) => {
      if (machine.class !== 'container' || !machine.leaderAlive) return;
      (pick(machine) ?? []).forEach((range, line) => {
        if (range.outer === 0 || range.count === 0) return; // machined skips these for host→inner
        entries.push({
          start: range.outer,
          end: range.outer + range.count,
          order,
          line,
          name: machine.name,
          range,
        });
      });
    });
    entries.sort((a, b) => a.start - b.start || a.order - b.order);
    this.entries = entries;
    this.maxEnd = [];
    let max = 0;
    for (const e of entries) {
      max = Math.max(max, e.end);
      this.maxEnd.push(max);
    }
  }

  owner(id: number): IndexedOwner | undefined {
    let lo = 0;
    let hi = this.entries.length;
    while (lo < hi) {
      const mid = (lo + hi) >>> 1;
      if ((this.entries[mid]?.start ?? 0) <= id) lo = mid + 1;
      else hi = mid;
    }
    // Among all ranges covering `id`, machined returns the first machine (and that machine's first
    // matching line): pick the lowest registration order, then let ownsId choose the line.
    let best: RangeEntry | undefined;
    for (let i = lo - 1; i >= 0 && (this.maxEnd[i] ?? 0) > id; i--) {
      const e = this.entries[i];
      if (!e || id >= e.end) continue;
      if (best === undefined || e.order < best.order || (e.order === best.order && e.line < best.line))
        best = e;
    }
    if (!best) return undefined;
    const result = ownsId([best.range], id);
    return result.kind === 'not-owned' ? undefined : { name: best.name, inner: result.inner };
  }
}

export class MachineTable implements RegistryView {
  private readonly machines = new Map<string, MachineRecord>();
  private readonly addressIndex = new Map<string, MachineRecord[]>();
  private uidIndex: RangeIndex | undefined;
  private gidIndex: RangeIndex | undefined;
  private ordered: readonly MachineRecord[] = [];
  /** Arrival ranks given with `upsert` (the registry's MachineNew order); absent: arrived before all. */
  private readonly ranks = new Map<string, number>();
  private readonly listeners = new Set<(change: ViewChange) => void>();
  private generationCounter = 0;

  get generation(): number {
    return this.generationCounter;
  }

  all(): readonly MachineRecord[] {
    return this.ordered;
  }

  byName(name: string): MachineRecord | undefined {
    return this.machines.get(name);
  }

  byAddress(address: string): readonly MachineRecord[] {
    return this.addressIndex.get(address) ?? [];
  }

  ownerOfUid(uid: number): IdOwner | undefined {
    this.uidIndex ??= new RangeIndex(this.ordered, (m) => m.uidMap);
    return this.current(this.uidIndex.owner(uid));
  }

  ownerOfGid(gid: number): IdOwner | undefined {
    this.gidIndex ??= new RangeIndex(this.ordered, (m) => m.gidMap);
    return this.current(this.gidIndex.owner(gid));
  }

  /** The machine's record now: an index outlives updates that keep the maps. */
  private current(found: IndexedOwner | undefined): IdOwner | undefined {
    const machine = found && this.machines.get(found.name);
    return machine && { machine, inner: found.inner };
  }

  onChange(listener: (change: ViewChange) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  /**
   * Adds or replaces a machine, keeping its registration position when it is already known. A new
   * machine goes after every machine of a lower `rank` (without one: after all), so machines take
   * their places in the order they registered even when their records arrive in another order.
   */
  upsert(machine: MachineRecord, rank?: number): void {
    const previous = this.machines.get(machine.name);
    if (previous === machine) return;
    this.machines.set(machine.name, machine);
    if (!previous && rank !== undefined) this.ranks.set(machine.name, rank);
    this.reindex(previous, machine);
    this.emit(previous ? { kind: 'updated', machine, previous } : { kind: 'added', machine });
  }

  remove(name: string): MachineRecord | undefined {
    const previous = this.machines.get(name);
    if (!previous) return undefined;
    this.machines.delete(name);
    this.ranks.delete(name);
    this.reindex(previous, undefined);
    this.emit({ kind: 'removed', machine: previous });
    return previous;
  }

  /**
   * Replaces the whole table (resync) with one `reset` change instead of one per machine. The same
   * records in the same order are no change at all: listeners hear nothing, the generation stays.
   */
  replaceAll(machines: readonly MachineRecord[]): void {
    this.ranks.clear();
    if (machines.length === this.ordered.length && machines.every((m, i) => m === this.ordered[i])) return;
    this.machines.clear();
    for (const m of machines) this.machines.set(m.name, m);
    this.addressIndex.clear();
    for (const m of this.machines.values()) this.indexAddresses(m);
    this.ordered = [...this.machines.values()];
    this.uidIndex = undefined;
    this.gidIndex = undefined;
    this.emit({ kind: 'reset' });
  }

  /**
   * Replaces known machines by name, each keeping its place (in the order and under its addresses),
   * with one `reset` change: the accounts read after a resync. Unknown names are ignored.
   */
  replaceSome(machines: readonly MachineRecord[]): void {
    const replaced = new Map<MachineRecord, MachineRecord>();
    for (const next of machines) {
      const previous = this.machines.get(next.name);
      if (!previous || previous === next) continue;
      replaced.set(previous, next);
      this.machines.set(next.name, next);
      if (previous.addresses === next.addresses)
        for (const a of next.addresses) {
          const list = this.addressIndex.get(a.address);
          const at = list?.indexOf(previous) ?? -1;
          if (list && at >= 0)
            this.addressIndex.set(
              a.address,
              list.map((m, i) => (i === at ? next : m)),
            );
        }
      else {
        this.unindexAddresses(previous);
        this.indexAddresses(next);
      }
    }
    if (replaced.size === 0) return;
    this.ordered = this.ordered.map((m) => replaced.get(m) ?? m);
    this.uidIndex = undefined;
    this.gidIndex = undefined;
    this.emit({ kind: 'reset' });
  }

  private reindex(previous: MachineRecord | undefined, next: MachineRecord | undefined): void {
    if (previous) this.unindexAddresses(previous);
    if (next) this.indexAddresses(next);
    this.ordered = this.placed(previous, next);
    // Id indexes are rebuilt lazily: a change costs O(1) now, the next id lookup pays O(n log n) once.
    if (!previous || !next || previous.uidMap !== next.uidMap || previous.leaderAlive !== next.leaderAlive)
      this.uidIndex = undefined;
    if (!previous || !next || previous.gidMap !== next.gidMap || previous.leaderAlive !== next.leaderAlive)
      this.gidIndex = undefined;
  }

  /** The new order (a new array: callers may hold the old one). */
  private placed(previous: MachineRecord | undefined, next: MachineRecord | undefined): MachineRecord[] {
    if (previous && next) return this.ordered.map((m) => (m === previous ? next : m));
    if (previous) return this.ordered.filter((m) => m !== previous);
    if (!next) return [...this.ordered];
    const rank = this.ranks.get(next.name);
    const at =
      rank === undefined ? -1 : this.ordered.findIndex((m) => (this.ranks.get(m.name) ?? -Infinity) > rank);
    return at < 0 ? [...this.ordered, next] : [...this.ordered.slice(0, at), next, ...this.ordered.slice(at)];
  }

  private indexAddresses(machine: MachineRecord): void {
    for (const a of machine.addresses) {
      const list = this.addressIndex.get(a.address);
      if (!list) this.addressIndex.set(a.address, [machine]);
      else if (!list.includes(machine)) list.push(machine);
    }
  }

  private unindexAddresses(machine: MachineRecord): void {
    for (const a of machine.addresses) {
      const list = this.addressIndex.get(a.address);
      if (!list) continue;
      const rest = list.filter((m) => m !== machine);
      if (rest.length === 0) this.addressIndex.delete(a.address);
      else this.addressIndex.set(a.address, rest);
    }
  }

  private emit(change: ViewChange): void {
    this.generationCounter++;
    for (const listener of [...this.listeners]) listener(change);
  }
}
