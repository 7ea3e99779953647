/**
 * Queries built and responses read with dns-packet: an implementation independent of ours, so a
 * test checks our bytes against someone else's reading of RFC 1035.
 */
import * as dnsPacket from 'dns-packet';

export interface QuerySpec {
  id?: number;
  /** RD bit, default on (as dig and glibc send). */
  rd?: boolean;
  cd?: boolean;
  qclass?: 'IN' | 'CH' | 'HS' | 'ANY';
  /** Add an OPT record. */
  edns?: { udpSize?: number; version?: number; do?: boolean; options?: { code: number; data: Buffer }[] };
}

/** dns-packet encodes ANY (255) though its typings leave it out. */
export type QType = dnsPacket.RecordType | 'ANY';

export function query(name: string, type: QType, spec: QuerySpec = {}): Buffer {
  const flags =
    (spec.rd === false ? 0 : dnsPacket.RECURSION_DESIRED) | (spec.cd ? dnsPacket.CHECKING_DISABLED : 0);
  const additionals: dnsPacket.Answer[] = [];
  if (spec.edns) {
    // dns-packet's typings only know its own option codes; the encoder takes any code with data.
    const opt = {
      name: '.',
      type: 'OPT' as const,
      udpPayloadSize: spec.edns.udpSize ?? 1232,
      extendedRcode: 0,
      ednsVersion: spec.edns.version ?? 0,
      flags: spec.edns.do ? dnsPacket.DNSSEC_OK : 0,
      flag_do: spec.edns.do ?? false,
      options: [],
    };
    additionals.push(opt);
  }
  const bytes = dnsPacket.encode({
    type: 'query',
    id: spec.id ?? 0x1234,
    flags,
    questions: [{ name, type: type as dnsPacket.RecordType, class: spec.qclass ?? 'IN' }],
    additionals,
  });
  return spec.edns?.options?.length ? withOptions(bytes, spec.edns.options) : bytes;
}

/** Appends EDNS options to the (last, only) OPT record of an encoded query. */
function withOptions(bytes: Buffer, options: { code: number; data: Buffer }[]): Buffer {
  const extra = Buffer.concat(
    options.map((o) => {
      const head = Buffer.alloc(4);
      head.writeUInt16BE(o.code, 0);
      head.writeUInt16BE(o.data.length, 2);
      return Buffer.concat([head, o.data]);
    }),
  );
  const out = Buffer.concat([bytes, extra]);
  const rdlenAt = bytes.length - 2;
  out.writeUInt16BE(out.readUInt16BE(rdlenAt) + extra.length, rdlenAt);
  return out;
}

export interface Summary {
  id: number;
  /** Full RCODE: header bits plus the OPT's extended bits (BADVERS = 16). */
  rcode: number;
  aa: boolean;
  tc: boolean;
  rd: boolean;
  ra: boolean;
  cd: boolean;
  /** `name type` of the question, name as on the wire (case kept). */
  question: string | undefined;
  answers: string[];
  authority: string[];
  opt:
    | { udpSize: number; version: number; do: boolean; ede: { code: number; text: string } | undefined }
    | undefined;
  additionalCount: number;
}

export function summarize(bytes: Buffer): Summary {
  const p = dnsPacket.decode(bytes);
  const optRecord = (p.additionals ?? []).find((a): a is dnsPacket.OptAnswer => a.type === 'OPT');
  const flags = bytes.readUInt16BE(2);
  let ede: { code: number; text: string } | undefined;
  for (const o of optRecord?.options ?? []) {
    const data = o.data;
    if ((o.code as number) === 15 && data)
      ede = { code: data.readUInt16BE(0), text: data.subarray(2).toString('utf8') };
  }
  const q = p.questions?.[0];
  return {
    id: p.id ?? -1,
    rcode: (flags & 0x0f) | ((optRecord?.extendedRcode ?? 0) << 4),
    aa: p.flag_aa,
    tc: p.flag_tc,
    rd: p.flag_rd,
    ra: p.flag_ra,
    cd: p.flag_cd,
    question: q ? `${q.name} ${q.type}` : undefined,
    answers: (p.answers ?? []).map(recordText),
    authority: (p.authorities ?? []).map(recordText),
    opt: optRecord
      ? { udpSize: optRecord.udpPayloadSize, version: optRecord.ednsVersion, do: optRecord.flag_do, ede }
      : undefined,
    additionalCount: (p.additionals ?? []).length,
  };
}

/** `name TTL type data`, with SOA as `mname rname serial minimum`. */
export function recordText(a: dnsPacket.Answer): string {
  const ttl = 'ttl' in a ? (a.ttl ?? 0) : 0;
  if (a.type === 'SOA') return `${a.name} ${ttl} SOA ${a.data.mname} ${a.data.rname} ${a.data.minimum ?? 0}`;
  if (a.type === 'A' || a.type === 'AAAA' || a.type === 'PTR' || a.type === 'NS' || a.type === 'CNAME') {
    return `${a.name} ${ttl} ${a.type} ${a.data}`;
  }
  return `${a.name} ${ttl} ${a.type}`;
}

export const RCODE = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  BADVERS: 16,
} as const;
