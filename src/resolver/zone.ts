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
import { encodeName, MAX_NAME_WIRE, nameKey, nameText, reverseName, Type } from './wire.js';

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
  readonly nodes: ReadonlyMap<string, ZoneNode>;
  readonly collisions: readonly Collision[];
  readonly skipped: readonly SkippedMachine[];
  /**
   * Encoded answers of this zone by question (see `answer.ts`). Belongs to the zone, so a view change
   * (a new zone) invalidates it as a whole.
   */
  readonly answers: Map<string, Buffer>;
  /**
   * Whole UDP responses by the query's exact bytes after its ID (see `answer.ts`): a repeated query
   * costs one string and one map lookup. Same lifetime and limit as `answers`.
   */
  readonly replies: Map<string, Buffer>;
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
 * Compiles zones for one policy. Every view change makes a new zone; preparing each machine (names,
 * RDATA, reverse names) is the bulk of that work, so it is kept per record in a WeakMap and only
 * machines that changed are prepared again. A zone of 10,000 machines took 119 ms to compile from
 * scratch, and each registration paid it with the event loop blocked (BENCHMARKS.md, bench:scale).
 */
export class ZoneCompiler {
  private readonly domainWire: Buffer;
  private readonly domainLabels: number;
  private readonly apexKey: string;
  private readonly prepared = new WeakMap<MachineRecord, PreparedMachine>();

  constructor(readonly policy: ZonePolicy) {
    const domainWire = encodeName(policy.domain);
    if (!domainWire) throw new RangeError(`domain ${policy.domain} is not a valid DNS name`);
    this.domainWire = domainWire;
    this.domainLabels = countLabels(domainWire);
    this.apexKey = nameKey(domainWire);
  }

  compile(view: RegistryView): Zone {
    const machineNodes = new Map<string, { inDomain: boolean; machines: ServedMachine[] }>();
    const reverseNodes = new Map<string, ServedMachine[]>();
    const skipped: SkippedMachine[] = [];

    for (const record of view.all()) {
      // The `.host` pseudo machine is the host itself, never a name we serve (nss-mymachines refuses it too).
      if (record.class === 'host') continue;
      let p = this.prepared.get(record);
      if (p === undefined) {
        p = this.prepare(record);
        this.prepared.set(record, p);
      }
      const served = p.served;
      if (served === undefined) {
        skipped.push({ name: record.name, reason: p.skipped ?? 'name-not-encodable' });
        continue;
      }
      addTo(machineNodes, p.fqdnKey, true, served);
      if (p.bareKey !== undefined) addTo(machineNodes, p.bareKey, false, served);
      for (const key of p.reverseKeys) {
        const list = reverseNodes.get(key);
        if (!list) reverseNodes.set(key, [served]);
        else if (!list.includes(served)) list.push(served);
      }
    }

    const apexKey = this.apexKey;
    const nodes = new Map<string, ZoneNode>();
    nodes.set(apexKey, APEX);
    const collisions: Collision[] = [];
    for (const [key, node] of machineNodes) {
      nodes.set(key, { kind: 'machine', inDomain: node.inDomain, machines: node.machines });
      if (node.inDomain && node.machines.length > 1) {
        collisions.push({
          key: nameText(Buffer.from(key, 'latin1')).slice(0, -1),
          names: node.machines.map((m) => m.name),
        });
      }
    }
    for (const [key, machines] of reverseNodes) nodes.set(key, { kind: 'reverse', machines });
    // Empty non-terminals between dotted machine names and the apex.
    for (const [key, node] of machineNodes) {
      if (!node.inDomain || node.machines[0]?.labelCount === 1) continue;
      let ancestor = Buffer.from(key, 'latin1');
      for (;;) {
        ancestor = ancestor.subarray((ancestor[0] ?? 0) + 1);
        const ancestorKey = ancestor.toString('latin1');
        if (ancestorKey === apexKey || nodes.has(ancestorKey)) break;
        nodes.set(ancestorKey, EMPTY);
      }
    }

    return {
      generation: view.generation,
      policy: this.policy,
      domainWire: Buffer.from(apexKey, 'latin1'),
      domainLabels: this.domainLabels,
      serial: view.generation >>> 0,
      nodes,
      collisions,
      skipped,
      answers: new Map(),
      replies: new Map(),
      answerLimit: answerCacheLimit(nodes.size),
      kept: new KeptBytes(),
    };
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
      reverseKeys: served.any.map((rdata) =>
        nameKey(encodeName(reverseName(rdata.rdata)) ?? Buffer.from([0])),
      ),
    };
  }
}

/** One zone from scratch (tests, one-off use); the DNS server keeps a ZoneCompiler instead. */
export function compileZone(view: RegistryView, policy: ZonePolicy): Zone {
  return new ZoneCompiler(policy).compile(view);
}

function addTo(
  nodes: Map<string, { inDomain: boolean; machines: ServedMachine[] }>,
  key: string,
  inDomain: boolean,
  machine: ServedMachine,
): void {
  const node = nodes.get(key);
  if (node) node.machines.push(machine);
  else nodes.set(key, { inDomain, machines: [machine] });
}

function countLabels(wire: Buffer): number {
  let count = 0;
  for (let off = 0; off < wire.length && wire[off] !== 0; off += (wire[off] ?? 0) + 1) count++;
  return count;
}

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
  const seen = new Set<string>();
  for (const address of record.addresses) {
    const expected = address.family === 4 ? 4 : 16;
    if (address.bytes.length !== expected) continue;
    if (address.linkLocal && !policy.includeLinkLocal) continue;
    if (anyNetContains(policy.excludeNets, address.bytes)) continue;
    const text = address.bytes.toString('hex');
    if (seen.has(text)) continue;
    seen.add(text);
    const rr: RdataRecord = { type: expected === 4 ? Type.A : Type.AAAA, rdata: Buffer.from(address.bytes) };
    (expected === 4 ? a : aaaa).push(rr);
    any.push(rr);
  }
  return { name: record.name, labels, labelCount, a, aaaa, any, ptr: { type: Type.PTR, rdata: fqdn } };
}
