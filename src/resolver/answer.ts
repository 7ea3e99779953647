/**
 * The answer function: one query's bytes and the zone in, the response's bytes (or silence, or
 * "forward this") out. UDP and TCP both call it; it does no I/O and keeps no state outside the zone.
 *
 * It reads as resolved's stub does (`dns_stub_process_query`): a ladder of early exits, then one
 * lookup that ends in one `Outcome`, mapped to an RCODE in one exhaustive switch (`rcodeOf`).
 *
 * Hot path (undici's habit, perf-anchors "cached"), two levels, both kept in the zone, so a view
 * change (a new zone) drops every kept response:
 * 1. `zone.replies`: a UDP query of up to EXACT_QUERY_MAX bytes without EDNS options and without
 *    upper case in its name, by its exact bytes after the ID; a hit copies the response and sets the
 *    ID, without parsing.
 * 2. `zone.answers`: the encoded response of every question, keyed by the lower-cased question name,
 *    type, class and EDNS shape; a hit copies it and patches only the ID, the RD and CD bits and the
 *    question name's bytes (case echo; every other owner name is a compression pointer to the
 *    question). Exact-case picks among colliding machines and conflicts are never kept here.
 */
import type { ServedMachine, Zone, ZoneNode, RdataRecord } from './zone.js';
import {
  Class,
  EdeCode,
  Flag,
  HEADER_SIZE,
  isMetaQueryType,
  lowerByte,
  optSize,
  QueryFields,
  questionInDomain,
  Rcode,
  ResponseWriter,
  TCP_MAX,
  Type,
  parseQuery,
  type Ede,
  type RcodeValue,
} from './wire.js';

export type Transport = 'udp' | 'tcp';

/** Bytes to send; `drop`: send nothing; `forward`: not ours, ask the upstreams (forwarding is on). */
export type Reply = Buffer | 'drop' | 'forward';

/** The end of every question we do not forward. */
export type Outcome =
  /** `caseSensitive`: picked by the exact-case rule among colliding machines. */
  | { readonly kind: 'records'; readonly records: readonly AnswerRecord[]; readonly caseSensitive: boolean }
  /** The name exists without data of this type; the SOA goes with it when the name is in our domain. */
  | { readonly kind: 'nodata'; readonly soa: boolean }
  | { readonly kind: 'nxdomain' }
  /** Names that differ only in case, none matching the question exactly: we do not guess. */
  | { readonly kind: 'conflict'; readonly names: readonly string[] }
  | { readonly kind: 'refused'; readonly ede: Ede }
  | { readonly kind: 'badvers' }
  | { readonly kind: 'formerr' }
  | { readonly kind: 'notimp' }
  /** Forwarding failed on every upstream. */
  | { readonly kind: 'unreachable' };

/** An answer record: RDATA we hold, or the apex SOA/NS (their RDATA points into the question). */
export type AnswerRecord = RdataRecord | 'soa' | 'ns';

/** One internal outcome, one mapping to the wire (style-anchors "what to absorb" 4). */
export function rcodeOf(outcome: Outcome): RcodeValue {
  switch (outcome.kind) {
    case 'records':
    case 'nodata':
      return Rcode.NOERROR;
    case 'nxdomain':
      return Rcode.NXDOMAIN;
    case 'conflict':
    case 'unreachable':
      return Rcode.SERVFAIL;
    case 'refused':
      return Rcode.REFUSED;
    case 'badvers':
      return Rcode.BADVERS;
    case 'formerr':
      return Rcode.FORMERR;
    case 'notimp':
      return Rcode.NOTIMP;
    default:
      return unreachable(outcome);
  }
}

function unreachable(value: never): never {
  throw new TypeError(`unhandled outcome ${JSON.stringify(value)}`);
}

// One parse target, one writer and one key buffer for the whole process: `answer` is synchronous.
const fields = new QueryFields();
const writer = new ResponseWriter();
const keyScratch = Buffer.allocUnsafe(256 + 7);

const REFUSED_NOT_OURS: Outcome = {
  kind: 'refused',
  ede: ede(EdeCode.NOT_AUTHORITATIVE, 'not in this zone'),
};
const REFUSED_TYPE: Outcome = { kind: 'refused', ede: ede(EdeCode.NOT_SUPPORTED, 'meta query type') };
const REFUSED_CLASS: Outcome = { kind: 'refused', ede: ede(EdeCode.NOT_SUPPORTED, 'only class IN') };
const NXDOMAIN: Outcome = { kind: 'nxdomain' };
const NODATA_SOA: Outcome = { kind: 'nodata', soa: true };
const NODATA: Outcome = { kind: 'nodata', soa: false };
const APEX_SOA: Outcome = { kind: 'records', records: ['soa'], caseSensitive: false };
const APEX_NS: Outcome = { kind: 'records', records: ['ns'], caseSensitive: false };
const APEX_ANY: Outcome = { kind: 'records', records: ['soa', 'ns'], caseSensitive: false };
const BADVERS: Outcome = { kind: 'badvers' };
const FORMERR: Outcome = { kind: 'formerr' };
const NOTIMP: Outcome = { kind: 'notimp' };
const FORWARD = 'forward';

/**
 * Longest UDP query whose whole response is kept by its exact bytes. Plain questions are 17–70
 * bytes (name, OPT); longer ones take the parsed path every time.
 */
export const EXACT_QUERY_MAX = 128;

/**
 * Answers one query. `transport` sets the size limit: for UDP the client's EDNS size within
 * [512, 1232] (512 without EDNS), for TCP 65535.
 *
 * `reuse` (UDP): the caller hands the reply to the kernel before it calls this function again, and
 * no reply it sent earlier is still queued in a socket. A response kept by its exact bytes then comes
 * back itself, with this asker's ID written into its first two bytes (nothing else of it depends on
 * the asker), instead of as a copy: no allocation and no copy per query (DnsServer: a median 3 % more
 * q/s in 12 pairs of runs taking turns, 10 of them faster; BENCHMARKS.md). Without it every reply is
 * a buffer of its own, which the caller may keep.
 *
 * UDP first looks the query up by its exact bytes after the ID in `zone.replies`: the response is a
 * function of those bytes and the zone alone (this function keeps no other state and reads no
 * clock), so a client repeating a question gets the kept response with its own ID, without parsing.
 * A query differing in any byte is a different entry. Queries carrying EDNS options are not kept: a
 * client cookie (dig sends one, new in every invocation) would make each of them a new entry that is
 * never asked again and fill the map; nor are names with upper case (hasUpperCase). Both take the
 * second level.
 */
export function answer(query: Buffer, zone: Zone, transport: Transport, reuse = false): Reply {
  if (transport !== 'udp' || query.length > EXACT_QUERY_MAX || query.length <= HEADER_SIZE)
    return answerParsed(query, zone, transport);
  const kept = zone.replies.get(query);
  if (kept !== undefined) return reuse ? setId(kept, query) : withId(kept, query);
  const reply = answerParsed(query, zone, transport);
  // `fields` holds this query's parse: its OPT offset and name end are reset on every parse.
  if (typeof reply !== 'string' && !hasEdnsOptions(query, fields) && !hasUpperCase(query, fields))
    zone.replies.set(query, reply);
  return reply;
}

/**
 * The question name has an upper-case ASCII letter (length bytes never fall in A–Z's range as
 * labels are at most 63 bytes long). Such queries are not kept by their exact bytes: resolvers that
 * randomise the case of every query (0x20, e.g. Unbound's use-caps-for-id) would make each one a new
 * entry, never asked again, that fills the map and clears it for every other client. They take the
 * parsed path, whose key is case-folded.
 */
function hasUpperCase(query: Buffer, q: QueryFields): boolean {
  for (let i = HEADER_SIZE; i < q.nameEnd; i++) {
    const b = query[i] ?? 0;
    if (lowerByte(b) !== b) return true;
  }
  return false;
}

/** The OPT record's RDATA (its options) is not empty; its length is 9 bytes after its root owner. */
function hasEdnsOptions(query: Buffer, q: QueryFields): boolean {
  return q.optOffset >= 0 && query.readUInt16BE(q.optOffset + 9) > 0;
}

function answerParsed(query: Buffer, zone: Zone, transport: Transport): Reply {
  const status = parseQuery(query, fields);
  switch (status) {
    case 'ok':
      break;
    case 'drop':
      return 'drop';
    case 'formerr':
      return encode(FORMERR, query, fields, zone, TCP_MAX);
    case 'notimp':
      return encode(NOTIMP, query, fields, zone, TCP_MAX);
    default:
      return unreachable(status);
  }
  const limit = transport === 'tcp' ? TCP_MAX : fields.udpLimit();
  // RFC 6891 §6.1.3: we implement EDNS version 0 only.
  if (fields.optOffset >= 0 && fields.ednsVersion > 0) return encode(BADVERS, query, fields, zone, limit);

  const nameLength = fields.nameEnd - HEADER_SIZE;
  const key = answerKey(query, fields, limit);
  const kept = zone.answers.get(key);
  if (kept !== undefined) return patch(kept, query, fields);

  const resolution = resolve(query, fields, zone, key.slice(0, nameLength));
  if (resolution === FORWARD) return FORWARD;
  const bytes = encode(resolution, query, fields, zone, limit);
  if (isKeepable(resolution)) {
    if (zone.answers.size >= zone.answerLimit) zone.answers.clear();
    zone.answers.set(key, zone.kept.keep(bytes));
  }
  return bytes;
}

/**
 * The answer of a question depends only on its key unless a machine collision makes the exact case
 * matter: conflicts and exact-case picks are never kept under the case-folded key (`zone.replies`
 * keeps them by the query's exact bytes, case included).
 */
function isKeepable(outcome: Outcome): boolean {
  return outcome.kind !== 'conflict' && !(outcome.kind === 'records' && outcome.caseSensitive);
}

/**
 * The key of a question: lower-cased name bytes, type, class, and the EDNS shape that changes the
 * response (OPT present, DO bit, size limit). EDNS options (a client cookie differs per query) are
 * not part of it: we implement none, and RFC 6891 §6.1.2 lets us ignore them.
 */
function answerKey(query: Buffer, q: QueryFields, limit: number): string {
  const k = keyScratch;
  let o = 0;
  for (let i = HEADER_SIZE; i < q.nameEnd; i++) {
    const b = query[i] ?? 0;
    k[o++] = b >= 0x41 && b <= 0x5a ? b | 0x20 : b;
  }
  k.writeUInt16BE(q.qtype, o);
  k.writeUInt16BE(q.qclass, o + 2);
  k[o + 4] = (q.optOffset >= 0 ? 1 : 0) | (q.dnssecOk ? 2 : 0);
  k.writeUInt16BE(limit, o + 5);
  return k.toString('latin1', 0, o + 7);
}

/** The kept response itself, carrying the asker's ID (answer's `reuse`). */
function setId(kept: Buffer, query: Buffer): Buffer {
  kept[0] = query[0] ?? 0;
  kept[1] = query[1] ?? 0;
  return kept;
}

/** A copy of a kept response carrying the asker's ID. */
function withId(kept: Buffer, query: Buffer): Buffer {
  // TypedArray#set, not Buffer#copy: Node 20's copy validates in JS and was 3 % of the stub's CPU
  // under load (BENCHMARKS.md, bench:dns).
  const out = Buffer.allocUnsafe(kept.length);
  out.set(kept);
  out[0] = query[0] ?? 0;
  out[1] = query[1] ?? 0;
  return out;
}

function patch(kept: Buffer, query: Buffer, q: QueryFields): Buffer {
  const out = withId(kept, query);
  out[2] = ((kept[2] ?? 0) & ~Flag.RD) | (q.flags2 & Flag.RD);
  out[3] = ((kept[3] ?? 0) & ~Flag.CD) | (q.flags3 & Flag.CD);
  for (let i = HEADER_SIZE; i < q.nameEnd; i++) out[i] = query[i] ?? 0;
  return out;
}

/**
 * Where the question ends up. Inside our domain we are the authority (NXDOMAIN, NODATA, SOA).
 * Outside it we only claim what we serve there — A/AAAA/ANY of bare machine names, PTR/ANY of
 * their reverse names — so nothing below a machine name, and no other type of a name that is also a
 * real TLD (a machine `ai` must not break `nic.ai` nor the `ai` DS; systemd#43783).
 */
function resolve(query: Buffer, q: QueryFields, zone: Zone, nameKey: string): Outcome | typeof FORWARD {
  if (isMetaQueryType(q.qtype)) return REFUSED_TYPE;
  const node = zone.nodes.get(nameKey);
  const inDomain =
    node === undefined
      ? questionInDomain(query, q, zone.domainWire, zone.domainLabels)
      : node.kind === 'machine'
        ? node.inDomain
        : node.kind !== 'reverse';
  if (!inDomain && !claimsOutside(node, q.qtype)) return zone.policy.forwarding ? FORWARD : REFUSED_NOT_OURS;
  // Only class IN holds data (ANY queries IN too); no other class is served by us, nor forwarded.
  if (q.qclass !== Class.IN && q.qclass !== Class.ANY) return REFUSED_CLASS;
  if (node === undefined) return NXDOMAIN;
  return RESOLVERS[node.kind](query, q, zone, node);
}

function claimsOutside(node: ZoneNode | undefined, qtype: number): boolean {
  if (node?.kind === 'machine') return qtype === Type.A || qtype === Type.AAAA || qtype === Type.ANY;
  if (node?.kind === 'reverse') return qtype === Type.PTR || qtype === Type.ANY;
  return false;
}

type NodeResolver = (query: Buffer, q: QueryFields, zone: Zone, node: ZoneNode) => Outcome;

/** For this kind of name, this answer (dns-packet's habit: a table, not control flow). */
const RESOLVERS: Readonly<Record<ZoneNode['kind'], NodeResolver>> = {
  apex: (_query, q) =>
    q.qtype === Type.SOA
      ? APEX_SOA
      : q.qtype === Type.NS
        ? APEX_NS
        : q.qtype === Type.ANY
          ? APEX_ANY
          : NODATA_SOA,
  empty: () => NODATA_SOA,
  reverse: (_query, q, _zone, node) =>
    node.kind === 'reverse' && (q.qtype === Type.PTR || q.qtype === Type.ANY)
      ? { kind: 'records', records: node.machines.map((m) => m.ptr), caseSensitive: false }
      : NODATA,
  machine: (query, q, zone, node) => {
    if (node.kind !== 'machine') return NXDOMAIN;
    const nodata = node.inDomain ? NODATA_SOA : NODATA;
    const records = ADDRESS_RECORDS.get(q.qtype);
    if (records === undefined) return nodata;
    const picked = pickMachine(query, q, zone, node.machines, node.inDomain);
    if (picked.kind === 'conflict') return picked;
    const list = records(picked.machine);
    if (list.length === 0) return nodata;
    return { kind: 'records', records: list, caseSensitive: node.machines.length > 1 };
  },
};

const ADDRESS_RECORDS: ReadonlyMap<number, (m: ServedMachine) => readonly AnswerRecord[]> = new Map([
  [Type.A, (m: ServedMachine) => m.a],
  [Type.AAAA, (m: ServedMachine) => m.aaaa],
  [Type.ANY, (m: ServedMachine) => m.any],
]);

type Pick =
  { readonly kind: 'machine'; readonly machine: ServedMachine } | Extract<Outcome, { kind: 'conflict' }>;

/**
 * The collision rule: one machine → it; several whose names differ only in case → the one whose
 * name matches the question byte for byte, else a conflict (SERVFAIL), never a guess.
 */
function pickMachine(
  query: Buffer,
  q: QueryFields,
  zone: Zone,
  machines: readonly ServedMachine[],
  inDomain: boolean,
): Pick {
  const only = machines.length === 1 ? machines[0] : undefined;
  if (only) return { kind: 'machine', machine: only };
  const partEnd = inDomain ? (q.labelStarts[q.labelCount - zone.domainLabels] ?? 0) : q.nameEnd - 1;
  for (const machine of machines) {
    const length = machine.labels.length;
    if (
      partEnd - HEADER_SIZE === length &&
      query.compare(machine.labels, 0, length, HEADER_SIZE, partEnd) === 0
    ) {
      return { kind: 'machine', machine };
    }
  }
  return { kind: 'conflict', names: machines.map((m) => m.name) };
}

function ede(code: Ede['code'], text: string): Ede {
  return { code, text: Buffer.from(text, 'utf8') };
}

/** RFC 8914 §3: the extra text is for humans; keep it well inside a 512-byte response. */
const EDE_TEXT_MAX = 160;

function conflictEde(names: readonly string[]): Ede {
  let text = `machine names differ only in case: ${names.join(', ')}`;
  if (text.length > EDE_TEXT_MAX) text = `${text.slice(0, EDE_TEXT_MAX - 1)}…`;
  return ede(EdeCode.OTHER, text);
}

export const UNREACHABLE_EDE = ede(EdeCode.NO_REACHABLE_AUTHORITY, 'no upstream answered');

/**
 * Encodes an outcome for this query under `limit` bytes.
 *
 * Flags: QR; opcode copied; AA for everything we answer from the zone; RD and CD copied (RFC 1035
 * §4.1.1, RFC 6840 §5.9); RA only when we forward (we recurse for nobody otherwise).
 *
 * Truncation rule (written down as resolved's stub does): the OPT record always fits (its size is
 * reserved); if any answer record does not fit, the answer and authority sections are emptied and
 * TC is set — the client retries over TCP (RFC 7766 §5) and a cache never sees a partial RRset
 * (RFC 2181 §9); an authority SOA that does not fit is left out without TC (it is only a negative
 * caching hint; we sign nothing, so there is no DO case to honour).
 */
export function encode(outcome: Outcome, query: Buffer, q: QueryFields, zone: Zone, limit: number): Buffer {
  const rcode = rcodeOf(outcome);
  const aa = outcome.kind === 'records' || outcome.kind === 'nodata' || outcome.kind === 'nxdomain';
  const flags2 = Flag.QR | (q.flags2 & (0x78 | Flag.RD)) | (aa ? Flag.AA : 0);
  const flags3 = (zone.policy.forwarding ? Flag.RA : 0) | (q.flags3 & Flag.CD) | (rcode & 0x0f);
  if (outcome.kind === 'formerr' || outcome.kind === 'notimp') return writer.headerOnly(q, flags2, flags3);

  const hasOpt = q.optOffset >= 0;
  const extra =
    outcome.kind === 'conflict'
      ? conflictEde(outcome.names)
      : outcome.kind === 'refused'
        ? outcome.ede
        : outcome.kind === 'unreachable'
          ? UNREACHABLE_EDE
          : undefined;
  const edeForClient = hasOpt ? extra : undefined;
  writer.begin(query, q, flags2, flags3, limit, hasOpt ? optSize(edeForClient) : 0);
  const ttl = zone.policy.ttl;
  const apex = apexOffset(query, q, zone);

  if (outcome.kind === 'records') {
    for (const record of outcome.records) {
      const fits =
        record === 'soa'
          ? writer.soa(apex, ttl, zone.serial, ttl, 'answer')
          : record === 'ns'
            ? writer.ns(apex, ttl)
            : writer.rr(HEADER_SIZE, record.type, ttl, record.rdata);
      if (!fits) {
        writer.truncate(q.questionEnd);
        break;
      }
    }
  } else if ((outcome.kind === 'nodata' && outcome.soa) || outcome.kind === 'nxdomain') {
    // RFC 2308 §3/§5: negative answers carry the SOA; its minimum (= ttl) bounds negative caching,
    // so a machine that registers is never hidden by a cached NXDOMAIN for longer than `ttl`.
    writer.soa(apex, ttl, zone.serial, ttl, 'authority');
  }
  if (hasOpt) writer.opt(rcode >> 4, q.dnssecOk, edeForClient);
  return writer.finish();
}

/** Offset of the apex inside the question name (the SOA and NS owner and targets point there). */
function apexOffset(query: Buffer, q: QueryFields, zone: Zone): number {
  if (!questionInDomain(query, q, zone.domainWire, zone.domainLabels)) return HEADER_SIZE;
  return q.labelStarts[q.labelCount - zone.domainLabels] ?? HEADER_SIZE;
}

const UNREACHABLE: Outcome = { kind: 'unreachable' };

function limitOf(q: QueryFields, transport: Transport): number {
  return transport === 'tcp' ? TCP_MAX : q.udpLimit();
}

/** The reply when forwarding failed on every upstream: SERVFAIL, with EDE 22 for EDNS clients. */
export function unreachableReply(query: Buffer, zone: Zone, transport: Transport): Buffer | undefined {
  if (parseQuery(query, fields) !== 'ok') return undefined;
  return encode(UNREACHABLE, query, fields, zone, limitOf(fields, transport));
}

/**
 * An upstream's response as the client may receive it: unchanged when it fits the client's limit,
 * else (a TCP-sized answer for a UDP client) its header with TC, the question and our OPT — the same
 * truncation rule as for our own answers.
 */
export function fitForwarded(query: Buffer, response: Buffer, transport: Transport): Buffer | undefined {
  if (parseQuery(query, fields) !== 'ok') return undefined;
  const limit = limitOf(fields, transport);
  if (response.length <= limit) return response;
  const hasOpt = fields.optOffset >= 0;
  writer.begin(
    query,
    fields,
    (response[2] ?? 0) | Flag.TC,
    response[3] ?? 0,
    limit,
    hasOpt ? optSize(undefined) : 0,
  );
  if (hasOpt) writer.opt(0, fields.dnssecOk, undefined);
  return writer.finish();
}
