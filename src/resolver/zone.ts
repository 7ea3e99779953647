/**
 * The zone: everything the answer function needs, derived from the registry view once per view
 * generation (never per query). Pure: `compileZone(view, policy)`.
 *
 * Owner names are keyed by their lower-cased wire form (a latin1 string, root label included), which
 * is what the query parser produces without building a dotted string, and which cannot confuse a
 * label containing a literal dot with two labels.
 */
import type { MachineRecord, RegistryView } from '../registry-client/view.js';
import { anyNetContains, type Net } from './nets.js';
import { KeptBytes } from './kept.js';
import { ReplyTable } from './replies.js';
import { encodeName, MAX_NAME_WIRE, nameKey, nameText, reverseKey, Type } from './wire.js';

export interface ZonePolicy {
  /** Lower-case, no trailing dot, validated (`resolveConfig`). */
  readonly domain: string;
  readonly ttl: number;
  readonly includeLinkLocal: boolean;
  readonly excludeNets: readonly Net[];
  /** Names that are not ours go upstream instead of getting REFUSED. */
  readonly forwarding: boolean;
}

/** One record's type and ready-made RDATA. */
export interface RdataRecord {
  readonly type: number;
  readonly rdata: Buffer;
}

/** A machine as the stub serves it: the policy already applied to its addresses. */
export interface ServedMachine {
  readonly name: string;
  /** The name's wire labels without the root label, case kept: the exact-case rule compares these. */
  readonly labels: Buffer;
  /** How many labels the machine name has (`my.ct`: 2). */
  readonly labelCount: number;
  readonly a: readonly RdataRecord[];
  readonly aaaa: readonly RdataRecord[];
  /** A and AAAA in the view's (machined's) order, for ANY. */
  readonly any: readonly RdataRecord[];
  /** `NAME.<domain>.` as PTR RDATA. */
  readonly ptr: RdataRecord;
}

export type ZoneNode =
  /** The domain itself: SOA and NS. */
  | { readonly kind: 'apex' }
  /**
   * A machine name, `NAME.<domain>` (inDomain) or the bare single label `NAME`. Several machines when
   * their names differ only in case (a collision).
   */
  | { readonly kind: 'machine'; readonly inDomain: boolean; readonly machines: readonly ServedMachine[] }
  /** A reverse name of a served address: one PTR per machine claiming it, in registration order. */
  | { readonly kind: 'reverse'; readonly machines: readonly ServedMachine[] }
  /**
   * A name between the apex and a dotted machine name (`ct.machine` for a machine `my.ct`): it
   * exists without data, so NODATA rather than NXDOMAIN (RFC 8020 §2: NXDOMAIN means nothing below).
   */
  | { readonly kind: 'empty' };

/** Machines whose names differ only in case; `key` is the lower-cased dotted name under the domain. */
export interface Collision {
  readonly key: string;
  readonly names: readonly string[];
}

/** A machine the zone cannot carry, and why. */
export interface SkippedMachine {
  readonly name: string;
  readonly reason: 'name-not-encodable' | 'name-too-long';
}

export interface Zone {
  /** The view generation this zone was compiled from. */
  readonly generation: number;
  readonly policy: ZonePolicy;
  /** The domain on the wire, lower-case, root label included. */
  readonly domainWire: Buffer;
  readonly domainLabels: number;
  /** SOA serial: the view generation, so it moves whenever the zone's content may have. */
  readonly serial: number;
  /** Shared with the compiler, which updates it in place for the next zone (see ZoneCompiler). */
  readonly nodes: ReadonlyMap<string, ZoneNode>;
  /** Sorted by key. */
  readonly collisions: readonly Collision[];
  /** Sorted by name. */
  readonly skipped: readonly SkippedMachine[];
  /**
   * Encoded answers of this zone by question (see `answer.ts`). Belongs to the zone, so a view change
   * (a new zone) invalidates it as a whole.
   */
  readonly answers: Map<string, Buffer>;
  /**
   * Whole UDP responses by the query's exact bytes after its ID (see `answer.ts`): a repeated query
   * costs a hash of its bytes and one table probe (replies.ts). Same lifetime and limit as `answers`.
   */
  readonly replies: ReplyTable;
  /** How many entries `answers` and `replies` may each hold before it is cleared (`answerCacheLimit`). */
  readonly answerLimit: number;
  /** Where the entries of `answers` and `replies` are copied to (kept.ts). */
  readonly kept: KeptBytes;
}

/** The smallest answer cache, whatever the zone. */
export const ANSWER_CACHE_MIN = 8192;

/**
 * Room for the answers of every name twice over (A and AAAA, with and without EDNS, are the usual
 * questions), never less than ANSWER_CACHE_MIN; cleared when full, so random names cannot grow it
 * beyond this. A fixed 8192 made most questions miss at 10,000 machines (40,000 names): a miss
 * costs 2.5 µs more than a hit and churns memory (BENCHMARKS.md, bench:scale).
 */
export function answerCacheLimit(names: number): number {
  return Math.max(ANSWER_CACHE_MIN, 2 * names);
}

const APEX: ZoneNode = { kind: 'apex' };
const EMPTY: ZoneNode = { kind: 'empty' };

/**
 * A machine as far as it can be prepared alone: its served form and every key it occupies. Records
 * are immutable snapshots, so this is computed once per record and reused by every later zone.
 */
interface PreparedMachine {
  readonly served: ServedMachine | undefined;
  readonly skipped: SkippedMachine['reason'] | undefined;
  readonly fqdnKey: string;
  /** The bare single-label form, unless the name has several labels or is the apex itself. */
  readonly bareKey: string | undefined;
  /** Reverse names of the served addresses, in the order of `served.any`. */
  readonly reverseKeys: readonly string[];
}

/**
 * The nodes of machine and reverse names, kept by the compiler and served as they are: one object per
 * name, where settling used to build a second (40,000 at 10,000 machines, on every zone from scratch).
 */
interface NameNode {
  readonly kind: 'machine';
  readonly inDomain: boolean;
  readonly machines: ServedMachine[];
}
interface ReverseNode {
  readonly kind: 'reverse';
  readonly machines: ServedMachine[];
}

/** What a compiler keeps between zones, updated in place by the machines that came and went. */
interface CompiledState {
  /** The records of the view the zone was compiled from, each with its index in the view's list. */
  position: ReadonlyMap<MachineRecord, number>;
  readonly nodes: Map<string, ZoneNode>;
  /**
   * Machine names (in the domain, and bare) → their machines in view order. Each entry is the very
   * node the zone serves for its name (unless a reverse name takes it), its list changed in place.
   */
  readonly names: Map<string, NameNode>;
  /** Reverse names → their machines in view order, as nodes too. */
  readonly reverses: Map<string, ReverseNode>;
  /** Names between the apex and dotted machine names → how many such machine names are below. */
  readonly ancestors: Map<string, number>;
  /** Machine names in the domain with machines whose names differ only in case. */
  readonly collisions: Set<string>;
  readonly skipped: Map<MachineRecord, SkippedMachine>;
}

/**
 * Compiles zones for one policy. Every view change makes a new zone. Preparing each machine (names,
 * RDATA, reverse names) is kept per record in a WeakMap, and the zone's names are updated in place
 * by the machines that came and went, so a change costs what it changes plus a pass over the view's
 * list: at 10,000 machines (40,000 names) building every name again after each registration held
 * the event loop for 31–124 ms (BENCHMARKS.md, bench:micro). The view's order decides the order of
 * machines under a shared name (collisions, reverse names); when it changed for machines that stayed
 * (a resync), or when many machines changed, the names are built from scratch.
 *
 * A zone's `nodes` map is the compiler's own and is updated in place by the next `compile`: a zone
 * is meant to be used until the next one is compiled (the DNS server keeps only the current one).
 */
export class ZoneCompiler {
  private readonly domainWire: Buffer;
  private readonly domainLabels: number;
  private readonly apexKey: string;
  private readonly prepared = new WeakMap<MachineRecord, PreparedMachine>();
  /** The record each served machine was prepared from: its place in the view orders shared names. */
  private readonly recordOf = new WeakMap<ServedMachine, MachineRecord>();
  private state: CompiledState | undefined;

  constructor(readonly policy: ZonePolicy) {
    const domainWire = encodeName(policy.domain);
    if (!domainWire) throw new RangeError(`domain ${policy.domain} is not a valid DNS name`);
    this.domainWire = domainWire;
    this.domainLabels = countLabels(domainWire);
    this.apexKey = nameKey(domainWire);
  }

  compile(view: RegistryView): Zone {
    const records = view.all();
    const position = new Map<MachineRecord, number>();
    for (let i = 0; i < records.length; i++) {
      const record = records[i];
      if (record) position.set(record, i);
    }
    let state = this.state;
    const changed = state ? changes(state, records, position) : undefined;
    if (state && changed && changed.added.length + changed.removed.length <= rebuildAbove(records.length)) {
      const touched = new Set<string>();
      for (const record of changed.removed) this.unplace(state, record, touched);
      for (const record of changed.added) this.place(state, record, position, touched);
      for (const key of touched) this.settle(state, key);
    } else {
      state = this.fresh();
      for (const record of records) this.place(state, record, position, undefined);
      for (const key of state.names.keys()) this.settle(state, key);
      for (const key of state.reverses.keys()) this.settle(state, key);
      for (const key of state.ancestors.keys()) this.settle(state, key);
    }
    state.position = position;
    this.state = state;

    const collisions: Collision[] = [];
    for (const key of state.collisions) {
      collisions.push({
        key: nameText(Buffer.from(key, 'latin1')).slice(0, -1),
        names: (state.names.get(key)?.machines ?? []).map((m) => m.name),
      });
    }
    collisions.sort((x, y) => compareText(x.key, y.key));
    const skipped = [...state.skipped.values()].sort((x, y) => compareText(x.name, y.name));
    const answerLimit = answerCacheLimit(state.nodes.size);
    const kept = new KeptBytes();
    return {
      generation: view.generation,
      policy: this.policy,
      domainWire: Buffer.from(this.apexKey, 'latin1'),
      domainLabels: this.domainLabels,
      serial: view.generation >>> 0,
      nodes: state.nodes,
      collisions,
      skipped,
      answers: new Map(),
      replies: new ReplyTable(answerLimit, kept),
      answerLimit,
      kept,
    };
  }

  private fresh(): CompiledState {
    return {
      position: new Map(),
      nodes: new Map([[this.apexKey, APEX]]),
      names: new Map(),
      reverses: new Map(),
      ancestors: new Map(),
      collisions: new Set(),
      skipped: new Map(),
    };
  }

  private preparedFor(record: MachineRecord): PreparedMachine {
    let p = this.prepared.get(record);
    if (p === undefined) {
      p = this.prepare(record);
      this.prepared.set(record, p);
      if (p.served) this.recordOf.set(p.served, record);
    }
    return p;
  }

  /**
   * Adds a machine's names; `touched` collects every name whose node must be settled again (none when
   * every name is settled after placing all machines).
   */
  private place(
    state: CompiledState,
    record: MachineRecord,
    position: ReadonlyMap<MachineRecord, number>,
    touched: Set<string> | undefined,
  ): void {
    // The `.host` pseudo machine is the host itself, never a name we serve (nss-mymachines refuses it too).
    if (record.class === 'host') return;
    const p = this.preparedFor(record);
    const served = p.served;
    if (served === undefined) {
      state.skipped.set(record, { name: record.name, reason: p.skipped ?? 'name-not-encodable' });
      return;
    }
    const keys = p.bareKey === undefined ? [p.fqdnKey] : [p.fqdnKey, p.bareKey];
    for (const key of keys) {
      const inDomain = key === p.fqdnKey;
      const node = state.names.get(key);
      if (node) this.insertInViewOrder(node.machines, served, position);
      else {
        state.names.set(key, { kind: 'machine', inDomain, machines: [served] });
        if (inDomain && served.labelCount > 1) this.countAncestors(state, key, 1, touched);
      }
      touched?.add(key);
    }
    for (const key of p.reverseKeys) {
      const node = state.reverses.get(key);
      if (!node) state.reverses.set(key, { kind: 'reverse', machines: [served] });
      else if (!node.machines.includes(served)) this.insertInViewOrder(node.machines, served, position);
      touched?.add(key);
    }
  }

  private unplace(state: CompiledState, record: MachineRecord, touched: Set<string>): void {
    if (record.class === 'host') return;
    const p = this.preparedFor(record);
    const served = p.served;
    if (served === undefined) {
      state.skipped.delete(record);
      return;
    }
    const keys = p.bareKey === undefined ? [p.fqdnKey] : [p.fqdnKey, p.bareKey];
    for (const key of keys) {
      const node = state.names.get(key);
      if (!node) continue;
      remove(node.machines, served);
      if (node.machines.length === 0) {
        state.names.delete(key);
        if (node.inDomain && served.labelCount > 1) this.countAncestors(state, key, -1, touched);
      }
      touched.add(key);
    }
    for (const key of p.reverseKeys) {
      const node = state.reverses.get(key);
      if (!node) continue;
      remove(node.machines, served);
      if (node.machines.length === 0) state.reverses.delete(key);
      touched.add(key);
    }
  }

  /** Inserts `served` where the view's order puts it (lists are short: one machine, a few at most). */
  private insertInViewOrder(
    list: ServedMachine[],
    served: ServedMachine,
    position: ReadonlyMap<MachineRecord, number>,
  ): void {
    const at = this.positionOf(served, position);
    let i = list.length;
    for (; i > 0; i--) {
      const before = list[i - 1];
      if (!before || this.positionOf(before, position) <= at) break;
    }
    list.splice(i, 0, served);
  }

  private positionOf(served: ServedMachine, position: ReadonlyMap<MachineRecord, number>): number {
    const record = this.recordOf.get(served);
    return (record && position.get(record)) ?? Number.MAX_SAFE_INTEGER;
  }

  /** Names between a dotted machine name and the apex exist without data (RFC 8020 §2): counted. */
  private countAncestors(
    state: CompiledState,
    key: string,
    delta: 1 | -1,
    touched: Set<string> | undefined,
  ): void {
    let name = Buffer.from(key, 'latin1');
    for (;;) {
      name = name.subarray((name[0] ?? 0) + 1);
      const ancestor = name.toString('latin1');
      if (ancestor === this.apexKey || name.length <= 1) return;
      const count = (state.ancestors.get(ancestor) ?? 0) + delta;
      if (count > 0) state.ancestors.set(ancestor, count);
      else state.ancestors.delete(ancestor);
      touched?.add(ancestor);
    }
  }

  /** The node a name has now: a reverse name, else a machine name, else the apex, else empty or none. */
  private settle(state: CompiledState, key: string): void {
    const name = state.names.get(key);
    if (name && name.inDomain && name.machines.length > 1) state.collisions.add(key);
    else state.collisions.delete(key);
    const node = state.reverses.get(key) ?? name;
    if (node) state.nodes.set(key, node);
    else if (key === this.apexKey) state.nodes.set(key, APEX);
    else if (state.ancestors.has(key)) state.nodes.set(key, EMPTY);
    else state.nodes.delete(key);
  }

  private prepare(record: MachineRecord): PreparedMachine {
    const wire = encodeName(record.name);
    if (!wire || wire.length === 1)
      return {
        served: undefined,
        skipped: 'name-not-encodable',
        fqdnKey: '',
        bareKey: undefined,
        reverseKeys: [],
      };
    const labels = wire.subarray(0, wire.length - 1);
    const fqdn = Buffer.concat([labels, this.domainWire]);
    if (fqdn.length > MAX_NAME_WIRE)
      return {
        served: undefined,
        skipped: 'name-too-long',
        fqdnKey: '',
        bareKey: undefined,
        reverseKeys: [],
      };
    const served = serveMachine(record, labels, countLabels(wire), fqdn, this.policy);
    // The bare form: single labels only (a dotted name would claim a subtree outside our domain),
    // and never the apex itself when the domain is a single label.
    const bareKey = nameKey(wire);
    return {
      served,
      skipped: undefined,
      fqdnKey: nameKey(fqdn),
      bareKey: served.labelCount === 1 && bareKey !== this.apexKey ? bareKey : undefined,
      // RDATA is 4 or 16 bytes (serveMachine), so every address has its key
      reverseKeys: served.any.map((rdata) => reverseKey(rdata.rdata) ?? ''),
    };
  }
}

/** One zone from scratch (tests, one-off use); the DNS server keeps a ZoneCompiler instead. */
export function compileZone(view: RegistryView, policy: ZonePolicy): Zone {
  return new ZoneCompiler(policy).compile(view);
}

/**
 * The machines that came and went since the last zone, or undefined when the machines that stayed
 * are no longer in the same order (then everything is placed again).
 */
function changes(
  state: CompiledState,
  records: readonly MachineRecord[],
  position: ReadonlyMap<MachineRecord, number>,
): { added: MachineRecord[]; removed: MachineRecord[] } | undefined {
  const removed: MachineRecord[] = [];
  for (const record of state.position.keys()) if (!position.has(record)) removed.push(record);
  const added: MachineRecord[] = [];
  let last = -1;
  for (const record of records) {
    const before = state.position.get(record);
    if (before === undefined) added.push(record);
    else if (before < last) return undefined;
    else last = before;
  }
  return { added, removed };
}

/** Beyond this many machines added and removed at once, placing everything again is cheaper. */
function rebuildAbove(machines: number): number {
  return Math.max(64, machines >> 3);
}

function remove(list: ServedMachine[], served: ServedMachine): void {
  const i = list.indexOf(served);
  if (i >= 0) list.splice(i, 1);
}

function compareText(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

function countLabels(wire: Buffer): number {
  let count = 0;
  for (let off = 0; off < wire.length && wire[off] !== 0; off += (wire[off] ?? 0) + 1) count++;
  return count;
}

/** Up to this many addresses, serveMachine finds repeats by a scan (exported for tests). */
export const SCAN_ADDRESSES = 8;

/**
 * The address policy: link-local addresses only with `includeLinkLocal` (a DNS answer cannot carry
 * the scope they need), nothing inside `excludeNets`, each address once. Zone ids never reach the
 * wire: RDATA is the view's bytes, never text (dns-packet would mis-encode `fe80::1%x`).
 */
function serveMachine(
  record: MachineRecord,
  labels: Buffer,
  labelCount: number,
  fqdn: Buffer,
  policy: ZonePolicy,
): ServedMachine {
  const a: RdataRecord[] = [];
  const aaaa: RdataRecord[] = [];
  const any: RdataRecord[] = [];
  // Repeats are found by a scan while the list is short (a machine has a few addresses; a set of hex
  // strings cost two strings each), by a set when it is long: a container can add as many addresses
  // as it likes, and a scan of n of them costs n².
  const seen = record.addresses.length > SCAN_ADDRESSES ? new Set<string>() : undefined;
  for (const address of record.addresses) {
    const expected = address.family === 4 ? 4 : 16;
    if (address.bytes.length !== expected) continue;
    if (address.linkLocal && !policy.includeLinkLocal) continue;
    if (anyNetContains(policy.excludeNets, address.bytes)) continue;
    if (seen) {
      const text = address.bytes.toString('hex');
      if (seen.has(text)) continue;
      seen.add(text);
    } else if (any.some((rr) => rr.rdata.equals(address.bytes))) continue;
    // The record's own bytes (records are immutable snapshots, and their address bytes are copies of
    // their own, never views of a received message): a copy here cost a Buffer per address.
    const rr: RdataRecord = { type: expected === 4 ? Type.A : Type.AAAA, rdata: address.bytes };
    (expected === 4 ? a : aaaa).push(rr);
    any.push(rr);
  }
  return { name: record.name, labels, labelCount, a, aaaa, any, ptr: { type: Type.PTR, rdata: fqdn } };
}
