/**
 * The DNS wire format as the stub needs it: the registry numbers we use, names, a query parser that
 * fills a reusable struct (no allocation on the hot path), and a response writer over one scratch
 * buffer.
 *
 * Hand-written rather than dns-packet because the stub needs what dns-packet 5.6.1 does not give:
 * name compression against the question (so every owner name echoes the question's case byte for
 * byte, and answers are as small as dnsmasq's), a parser that never allocates arrays from untrusted
 * counts and reports one of four outcomes instead of throwing assorted errors, and exact control of
 * truncation. dns-packet stays the independent decoder the tests check our bytes with.
 */

export const HEADER_SIZE = 12;
/** RFC 1035 §3.1: a name is at most 255 octets on the wire, a label at most 63. */
export const MAX_NAME_WIRE = 255;
export const MAX_LABEL = 63;
/** 255 octets hold at most 127 labels plus the root. */
const MAX_LABELS = 128;
/** RFC 1035 §2.3.4 / RFC 6891 §6.2.5: the UDP floor, and the DNS Flag Day 2020 ceiling we advertise. */
export const UDP_MIN = 512;
export const EDNS_UDP_SIZE = 1232;
export const TCP_MAX = 65535;

export const Type = {
  A: 1,
  NS: 2,
  SOA: 6,
  PTR: 12,
  AAAA: 28,
  OPT: 41,
  TKEY: 249,
  TSIG: 250,
  IXFR: 251,
  AXFR: 252,
  MAILB: 253,
  MAILA: 254,
  ANY: 255,
} as const;

export const Class = { IN: 1, ANY: 255 } as const;

/** Header RCODEs, plus BADVERS, which needs the OPT's extended-RCODE byte (RFC 6891 §6.1.3). */
export const Rcode = {
  NOERROR: 0,
  FORMERR: 1,
  SERVFAIL: 2,
  NXDOMAIN: 3,
  NOTIMP: 4,
  REFUSED: 5,
  BADVERS: 16,
} as const;
export type RcodeValue = (typeof Rcode)[keyof typeof Rcode];

/** RFC 8914 Extended DNS Error info-codes we send (EDNS option 15). */
export const EdeCode = {
  OTHER: 0,
  NOT_AUTHORITATIVE: 20,
  NOT_SUPPORTED: 21,
  NO_REACHABLE_AUTHORITY: 22,
} as const;
export type EdeCodeValue = (typeof EdeCode)[keyof typeof EdeCode];
const OPTION_EDE = 15;

/** Header byte 2 and byte 3 bits (RFC 1035 §4.1.1, RFC 4035 §3.2 for CD). */
export const Flag = {
  QR: 0x80,
  AA: 0x04,
  TC: 0x02,
  RD: 0x01,
  /** byte 3 */
  RA: 0x80,
  CD: 0x10,
} as const;

/** Meta types that never name data (RFC 6895 §3.1): zone transfers, TSIG/TKEY, MAILA/MAILB, OPT. */
export function isMetaQueryType(qtype: number): boolean {
  return qtype === Type.OPT || (qtype >= Type.TKEY && qtype <= Type.MAILA);
}

// ---- names ------------------------------------------------------------------------------------

/**
 * Encodes a dotted name (one trailing dot allowed, no escapes) to wire labels ending with the root
 * label. Keeps the case. Undefined for an empty label, a label over 63 octets, a name over 255
 * octets, or a character outside printable ASCII: machined only registers valid host names, and an
 * unencodable name is skipped rather than mangled.
 */
export function encodeName(text: string): Buffer | undefined {
  const trimmed = text.endsWith('.') ? text.slice(0, -1) : text;
  if (trimmed === '') return Buffer.from([0]);
  const labels = trimmed.split('.');
  const out = Buffer.alloc(trimmed.length + 2);
  let off = 0;
  for (const label of labels) {
    if (label.length === 0 || label.length > MAX_LABEL) return undefined;
    out[off++] = label.length;
    for (let i = 0; i < label.length; i++) {
      const c = label.charCodeAt(i);
      if (c <= 0x20 || c >= 0x7f) return undefined;
      out[off++] = c;
    }
  }
  out[off++] = 0;
  return off > MAX_NAME_WIRE ? undefined : out;
}

/** ASCII-only case folding (RFC 4343 §3): bytes outside A–Z are compared as they are. */
export function lowerByte(b: number): number {
  return b >= 0x41 && b <= 0x5a ? b | 0x20 : b;
}

/** Where nameKey lowers a name (a name is at most MAX_NAME_WIRE bytes; longer ones get their own). */
const nameKeyScratch = Buffer.allocUnsafe(MAX_NAME_WIRE);

/**
 * The map key of a wire name: its bytes, ASCII lower-cased, as a latin1 string (root label included).
 * Lowered in a reused buffer: a zone of 10,000 machines takes two keys per machine.
 */
export function nameKey(wire: Buffer): string {
  const lowered = wire.length <= MAX_NAME_WIRE ? nameKeyScratch : Buffer.allocUnsafe(wire.length);
  for (let i = 0; i < wire.length; i++) lowered[i] = lowerByte(wire[i] ?? 0);
  return lowered.toString('latin1', 0, wire.length);
}

/** Dotted text of an uncompressed wire name, for logs and messages (non-printable bytes escaped). */
export function nameText(wire: Buffer, start = 0): string {
  const labels: string[] = [];
  let off = start;
  while (off < wire.length) {
    const len = wire[off] ?? 0;
    if (len === 0 || (len & 0xc0) !== 0) break;
    let label = '';
    for (let i = off + 1; i <= off + len && i < wire.length; i++) {
      const c = wire[i] ?? 0;
      label +=
        c === 0x2e || c === 0x5c
          ? `\\${String.fromCharCode(c)}`
          : c > 0x20 && c < 0x7f
            ? String.fromCharCode(c)
            : `\\${String(c).padStart(3, '0')}`;
    }
    labels.push(label);
    off += len + 1;
  }
  return labels.length === 0 ? '.' : `${labels.join('.')}.`;
}

const IN_ADDR_ARPA = Buffer.from('\x07in-addr\x04arpa\x00', 'latin1');
const IP6_ARPA = Buffer.from('\x03ip6\x04arpa\x00', 'latin1');
const HEX_DIGIT = Buffer.from('0123456789abcdef', 'latin1');
/** Room for the longest reverse key: 32 nibble labels (64 bytes) and `ip6.arpa` (10). */
const reverseScratch = Buffer.alloc(80);

/**
 * The map key (`nameKey`) of an address's reverse name, `d.c.b.a.in-addr.arpa` (RFC 1035 §3.5) or
 * the 32-nibble `ip6.arpa` name (RFC 3596 §2.5), written straight from its bytes: the same string
 * as encoding the dotted name and lower-casing it, without the dotted text, its 34 parts, the wire
 * buffer and its lower-cased copy. That detour was a quarter of compiling a zone of 10,000
 * machines. Undefined for a length other than 4 or 16.
 */
export function reverseKey(bytes: Uint8Array): string | undefined {
  let off = 0;
  if (bytes.length === 4) {
    for (let i = 3; i >= 0; i--) {
      const b = bytes[i] ?? 0;
      const digits = b >= 100 ? 3 : b >= 10 ? 2 : 1;
      reverseScratch[off++] = digits;
      if (digits === 3) reverseScratch[off++] = 0x30 + Math.floor(b / 100);
      if (digits >= 2) reverseScratch[off++] = 0x30 + (Math.floor(b / 10) % 10);
      reverseScratch[off++] = 0x30 + (b % 10);
    }
    off += IN_ADDR_ARPA.copy(reverseScratch, off);
  } else if (bytes.length === 16) {
    for (let i = 15; i >= 0; i--) {
      const b = bytes[i] ?? 0;
      reverseScratch[off++] = 1;
      reverseScratch[off++] = HEX_DIGIT[b & 0x0f] ?? 0;
      reverseScratch[off++] = 1;
      reverseScratch[off++] = HEX_DIGIT[b >> 4] ?? 0;
    }
    off += IP6_ARPA.copy(reverseScratch, off);
  } else return undefined;
  return reverseScratch.toString('latin1', 0, off);
}

// ---- queries ----------------------------------------------------------------------------------

/**
 * Everything the stub reads from a query. One instance is reused for every query on the hot path
 * (fixed shape, reset by `parseQuery`); a caller that keeps fields across an await uses its own.
 */
export class QueryFields {
  id = 0;
  /** Header byte 2 (QR, opcode, AA, TC, RD) and byte 3 (RA, Z, AD, CD, RCODE). */
  flags2 = 0;
  flags3 = 0;
  opcode = 0;
  /** The question name is [HEADER_SIZE, nameEnd), root label included. */
  nameEnd = 0;
  labelCount = 0;
  /** Offset of each label's length byte; labelStarts[labelCount] is the root label's offset. */
  readonly labelStarts = new Uint16Array(MAX_LABELS + 1);
  qtype = 0;
  qclass = 0;
  /** Offset just past the question. */
  questionEnd = 0;
  /** Offset of the OPT record (RFC 6891 §6.1.2), -1 when the query has none. */
  optOffset = -1;
  ednsVersion = 0;
  dnssecOk = false;
  /** The requestor's UDP payload size (the OPT's CLASS field). */
  udpSize = 0;

  /** RFC 6891 §6.2.5: the client's size, never below 512 nor above what we advertise; 512 without EDNS. */
  udpLimit(): number {
    if (this.optOffset < 0) return UDP_MIN;
    return Math.min(Math.max(this.udpSize, UDP_MIN), EDNS_UDP_SIZE);
  }
}

/** `drop`: no answer at all (not a query, or too short to carry an ID to answer to). */
export type ParseStatus = 'ok' | 'drop' | 'formerr' | 'notimp';

/**
 * Reads a query into `q`. A ladder of early exits in a fixed order: too short for a header or a
 * response (QR=1) → drop; opcode other than QUERY → notimp; QDCOUNT ≠ 1 or anything in the answer
 * or authority sections → formerr (a query carries neither, as resolved's stub also insists);
 * malformed question or additional section → formerr. Counts are never trusted: every record is
 * bounds-checked as it is read, so a count only bounds a loop that the packet length ends first.
 */
export function parseQuery(buf: Buffer, q: QueryFields): ParseStatus {
  const len = buf.length;
  q.optOffset = -1;
  q.ednsVersion = 0;
  q.dnssecOk = false;
  q.udpSize = 0;
  q.labelCount = 0;
  q.nameEnd = 0;
  q.questionEnd = 0;
  if (len < HEADER_SIZE) return 'drop';
  const flags2 = buf[2] ?? 0;
  if ((flags2 & Flag.QR) !== 0) return 'drop';
  q.id = buf.readUInt16BE(0);
  q.flags2 = flags2;
  q.flags3 = buf[3] ?? 0;
  q.opcode = (flags2 >> 3) & 0x0f;
  if (q.opcode !== 0) return 'notimp';
  if (buf.readUInt16BE(4) !== 1 || buf.readUInt16BE(6) !== 0 || buf.readUInt16BE(8) !== 0) return 'formerr';
  const arcount = buf.readUInt16BE(10);

  // The question name: plain labels only. A compression pointer here could only point back into
  // the header, so it is malformed (RFC 1035 §4.1.4 pointers refer to prior names).
  let off = HEADER_SIZE;
  let labels = 0;
  for (;;) {
    if (off >= len) return 'formerr';
    const labelLen = buf[off] ?? 0;
    q.labelStarts[labels] = off;
    if (labelLen === 0) break;
    if ((labelLen & 0xc0) !== 0) return 'formerr';
    off += labelLen + 1;
    labels++;
    if (off - HEADER_SIZE >= MAX_NAME_WIRE) return 'formerr';
  }
  q.labelCount = labels;
  q.nameEnd = off + 1;
  if (q.nameEnd + 4 > len) return 'formerr';
  q.qtype = buf.readUInt16BE(q.nameEnd);
  q.qclass = buf.readUInt16BE(q.nameEnd + 2);
  q.questionEnd = q.nameEnd + 4;

  // The additional section: at most one OPT (RFC 6891 §6.1.1), with the root as owner; anything
  // else (a TSIG we do not verify) is skipped. Bytes after the last record are ignored.
  off = q.questionEnd;
  for (let i = 0; i < arcount; i++) {
    const rrStart = off;
    off = skipName(buf, off);
    if (off < 0 || off + 10 > len) return 'formerr';
    const type = buf.readUInt16BE(off);
    const rdlen = buf.readUInt16BE(off + 8);
    const rdata = off + 10;
    if (rdata + rdlen > len) return 'formerr';
    if (type === Type.OPT) {
      if (q.optOffset >= 0 || off !== rrStart + 1) return 'formerr';
      if (!optionsWellFormed(buf, rdata, rdata + rdlen)) return 'formerr';
      q.optOffset = rrStart;
      q.udpSize = buf.readUInt16BE(off + 2);
      q.ednsVersion = buf[off + 5] ?? 0;
      q.dnssecOk = ((buf[off + 6] ?? 0) & 0x80) !== 0;
    }
    off = rdata + rdlen;
  }
  return 'ok';
}

/**
 * Offset just past a possibly compressed name, or -1 when it is malformed or runs off the end. A
 * pointer is not followed (we never need the name), but it must point back into the message, before
 * this name began (RFC 1035 §4.1.4: "a prior occurrence of the same name"): one pointing into the
 * name itself or ahead of it (a loop, or past the end) makes the message malformed, as it would for
 * a decoder that follows it.
 */
function skipName(buf: Buffer, start: number): number {
  let off = start;
  for (;;) {
    if (off >= buf.length) return -1;
    const b = buf[off] ?? 0;
    if (b === 0) return off + 1;
    const kind = b & 0xc0;
    if (kind === 0xc0) {
      if (off + 2 > buf.length) return -1;
      const target = ((b & 0x3f) << 8) | (buf[off + 1] ?? 0);
      return target < start ? off + 2 : -1;
    }
    if (kind !== 0) return -1; // 0x40 and 0x80 label types are reserved (RFC 6891 §5)
    off += b + 1;
    if (off - start >= MAX_NAME_WIRE) return -1;
  }
}

/** RFC 6891 §6.1.2: OPT RDATA is a sequence of {code, length, data} that must end exactly. */
function optionsWellFormed(buf: Buffer, start: number, end: number): boolean {
  let off = start;
  while (off < end) {
    if (off + 4 > end) return false;
    off += 4 + buf.readUInt16BE(off + 2);
  }
  return off === end;
}

/** Whether the question name is the domain or below it (label-aligned, ASCII case-insensitive). */
export function questionInDomain(
  buf: Buffer,
  q: QueryFields,
  domainWire: Buffer,
  domainLabels: number,
): boolean {
  if (q.labelCount < domainLabels) return false;
  const start = q.labelStarts[q.labelCount - domainLabels] ?? 0;
  if (q.nameEnd - start !== domainWire.length) return false;
  for (let i = 0; i < domainWire.length; i++) {
    if (lowerByte(buf[start + i] ?? 0) !== domainWire[i]) return false;
  }
  return true;
}

// ---- responses --------------------------------------------------------------------------------

/** Owner name of every record we write: a compression pointer into the question (RFC 1035 §4.1.4). */
function pointer(offset: number): number {
  return 0xc000 | offset;
}

/**
 * Builds one response in a scratch buffer. Records are only written while they fit under the limit
 * given to `begin`; `rr` reports whether one did, so the caller applies the truncation rule. The OPT
 * record's size is reserved up front so it always fits.
 */
export class ResponseWriter {
  private readonly buf = Buffer.allocUnsafe(TCP_MAX);
  private off = 0;
  private limit = 0;
  private answers = 0;
  private authority = 0;

  /** Header and question (copied from the query, so its case is the client's). */
  begin(query: Buffer, q: QueryFields, flags2: number, flags3: number, limit: number, reserve: number): void {
    const b = this.buf;
    b.writeUInt16BE(q.id, 0);
    b[2] = flags2;
    b[3] = flags3;
    b.writeUInt32BE(0, 4);
    b.writeUInt32BE(0, 8);
    this.off = HEADER_SIZE;
    this.answers = 0;
    this.authority = 0;
    this.limit = Math.min(limit, TCP_MAX) - reserve;
    if (q.questionEnd > 0) {
      query.copy(b, HEADER_SIZE, HEADER_SIZE, q.questionEnd);
      b.writeUInt16BE(1, 4);
      this.off = q.questionEnd;
    }
  }

  /** Header only, for FORMERR/NOTIMP: nothing of a message we could not read is echoed. */
  headerOnly(q: QueryFields, flags2: number, flags3: number): Buffer {
    const b = this.buf;
    b.writeUInt16BE(q.id, 0);
    b[2] = flags2;
    b[3] = flags3;
    b.writeUInt32BE(0, 4);
    b.writeUInt32BE(0, 8);
    this.off = HEADER_SIZE;
    this.answers = 0;
    this.authority = 0;
    return this.finish();
  }

  private fits(bytes: number): boolean {
    return this.off + bytes <= this.limit;
  }

  private rrHeader(owner: number, type: number, ttl: number, rdlen: number): void {
    const b = this.buf;
    b.writeUInt16BE(pointer(owner), this.off);
    b.writeUInt16BE(type, this.off + 2);
    b.writeUInt16BE(Class.IN, this.off + 4);
    b.writeUInt32BE(ttl, this.off + 6);
    b.writeUInt16BE(rdlen, this.off + 10);
    this.off += 12;
  }

  /** An answer record owned by the name at `owner` with ready-made RDATA. */
  rr(owner: number, type: number, ttl: number, rdata: Buffer): boolean {
    if (!this.fits(12 + rdata.length)) return false;
    this.rrHeader(owner, type, ttl, rdata.length);
    rdata.copy(this.buf, this.off);
    this.off += rdata.length;
    this.answers++;
    return true;
  }

  /** NS at the apex, pointing at the apex itself (RFC 6303 §3 style for a locally served zone). */
  ns(apex: number, ttl: number): boolean {
    if (!this.fits(14)) return false;
    this.rrHeader(apex, Type.NS, ttl, 2);
    this.buf.writeUInt16BE(pointer(apex), this.off);
    this.off += 2;
    this.answers++;
    return true;
  }

  /** The zone's SOA, in the answer or the authority section (RFC 2308 §3). */
  soa(apex: number, ttl: number, serial: number, minimum: number, section: 'answer' | 'authority'): boolean {
    const rdlen = 2 + RNAME.length + 20;
    if (!this.fits(12 + rdlen)) return false;
    this.rrHeader(apex, Type.SOA, ttl, rdlen);
    const b = this.buf;
    b.writeUInt16BE(pointer(apex), this.off);
    RNAME.copy(b, this.off + 2);
    let o = this.off + 2 + RNAME.length;
    for (const v of [serial, SOA_REFRESH, SOA_RETRY, SOA_EXPIRE, minimum]) {
      b.writeUInt32BE(v >>> 0, o);
      o += 4;
    }
    this.off = o;
    if (section === 'answer') this.answers++;
    else this.authority++;
    return true;
  }

  /**
   * The OPT record (RFC 6891 §6.1.2): our UDP size, the upper RCODE bits, version 0, the DO bit
   * copied from the query (RFC 3225 §3), and an Extended DNS Error when given (RFC 8914 §2).
   * Always fits: its size was reserved in `begin`.
   */
  opt(extendedRcode: number, dnssecOk: boolean, ede: Ede | undefined): void {
    const b = this.buf;
    const edeLen = ede ? 6 + ede.text.length : 0;
    b[this.off] = 0;
    b.writeUInt16BE(Type.OPT, this.off + 1);
    b.writeUInt16BE(EDNS_UDP_SIZE, this.off + 3);
    b[this.off + 5] = extendedRcode;
    b[this.off + 6] = 0;
    b.writeUInt16BE(dnssecOk ? 0x8000 : 0, this.off + 7);
    b.writeUInt16BE(edeLen, this.off + 9);
    this.off += 11;
    if (ede) {
      b.writeUInt16BE(OPTION_EDE, this.off);
      b.writeUInt16BE(2 + ede.text.length, this.off + 2);
      b.writeUInt16BE(ede.code, this.off + 4);
      ede.text.copy(b, this.off + 6);
      this.off += edeLen;
    }
    b.writeUInt16BE(1, 10);
  }

  /** Drops every record written so far (the question stays) and sets TC (RFC 2181 §9). */
  truncate(questionEnd: number): void {
    this.buf[2] = (this.buf[2] ?? 0) | Flag.TC;
    this.off = Math.max(HEADER_SIZE, questionEnd);
    this.answers = 0;
    this.authority = 0;
  }

  /** Writes the section counts and returns a copy of the message. */
  finish(): Buffer {
    const b = this.buf;
    b.writeUInt16BE(this.answers, 6);
    b.writeUInt16BE(this.authority, 8);
    const out = Buffer.allocUnsafe(this.off);
    b.copy(out, 0, 0, this.off);
    return out;
  }
}

/** An RFC 8914 Extended DNS Error: info-code and UTF-8 extra text (already encoded). */
export interface Ede {
  readonly code: EdeCodeValue;
  readonly text: Buffer;
}

/** Size of the OPT record `opt` writes. */
export function optSize(ede: Ede | undefined): number {
  return 11 + (ede ? 6 + ede.text.length : 0);
}

/** RFC 6303 §3: the responsible mailbox of a locally served zone is `nobody.invalid.`. */
const RNAME = encodeName('nobody.invalid') ?? Buffer.from([0]);
/** SOA timers of RFC 6303 §3; meaningless here (no secondaries), but valid. */
const SOA_REFRESH = 3600;
const SOA_RETRY = 1200;
const SOA_EXPIRE = 604800;
