/**
 * The D-Bus wire format for the method calls the registry makes most: a method call with a body of
 * strings, object paths, 32-bit integers and booleans out, any reply in. Through dbus-next a
 * GetMachineAddresses cost 94–277 µs of our CPU, 16 in flight (its generic marshaller builds each
 * message from small buffers and converts every reply twice); through this codec and BusConnection
 * 45–101 µs, most of it the socket and the promise (BENCHMARKS.md, 2026-12-02). Values come out in
 * dbus-next's shapes, so the callers' zod schemas do not care which path a reply took: `t`/`x` as
 * bigint, `ay` as Buffer, a dict as a plain object, a variant as dbus-next's `Variant`, a struct as
 * an array.
 *
 * Little-endian messages are written; both byte orders are read. Unix fds (`h`) are not supported.
 * Specification: https://dbus.freedesktop.org/doc/dbus-specification.html#message-protocol
 */
import { Variant } from '@particle/dbus-next';

export const MessageKind = { METHOD_CALL: 1, METHOD_RETURN: 2, ERROR: 3, SIGNAL: 4 } as const;
export const NO_AUTO_START = 0x2;
/** The specification's limit on a whole message. */
export const MAX_MESSAGE = 134_217_728;

const FIELD = {
  PATH: 1,
  INTERFACE: 2,
  MEMBER: 3,
  ERROR_NAME: 4,
  REPLY_SERIAL: 5,
  DESTINATION: 6,
  SENDER: 7,
  SIGNATURE: 8,
};

/** Header flag: the caller wants no reply. */
export const NO_REPLY_EXPECTED = 0x1;

export class WireError extends Error {
  override readonly name = 'WireError';
}

// ---- writing ------------------------------------------------------------------------------------

/** The argument types `encodeCall` writes: what the registry's frequent calls carry. */
const WRITABLE = /^[soiub]*$/;

/** The specification's object path: `/`, or `/`-separated non-empty elements of [A-Za-z0-9_]. */
const OBJECT_PATH = /^\/$|^(?:\/[A-Za-z0-9_]+)+$/;

export function isObjectPath(value: string): boolean {
  return OBJECT_PATH.test(value);
}

/**
 * True when `signature` and `body` can be written by `encodeCall` as a message the bus accepts. A
 * string with a NUL or a malformed object path is refused here: the bus disconnects a client that
 * sends one, which would end every call of the BusConnection.
 */
export function canEncode(signature: string, body: readonly unknown[]): boolean {
  if (!WRITABLE.test(signature) || body.length !== signature.length) return false;
  for (let i = 0; i < body.length; i++) {
    const v = body[i];
    switch (signature[i]) {
      case 's':
        if (typeof v !== 'string' || v.includes('\0')) return false;
        break;
      case 'o':
        if (typeof v !== 'string' || !OBJECT_PATH.test(v)) return false;
        break;
      case 'i':
        if (!Number.isInteger(v) || (v as number) < -0x80000000 || (v as number) > 0x7fffffff) return false;
        break;
      case 'u':
        if (!Number.isInteger(v) || (v as number) < 0 || (v as number) > 0xffffffff) return false;
        break;
      case 'b':
        if (typeof v !== 'boolean') return false;
        break;
      case undefined:
      default:
        return false;
    }
  }
  return true;
}

/**
 * An object path in `body` that is not one, wherever it sits: an argument, an element of an array, a
 * struct member, a dict key or value, or the value of a variant. `body` is in dbus-next's form
 * (arrays and structs as arrays, dicts as plain objects, variants as `{ signature, value }`).
 * dbus-next does not check object paths (a TODO in its marshaller) and sends them for the bus to
 * disconnect it, ending every call of the connection, so they are refused before either path. What
 * does not have the shape its signature asks for is left to dbus-next, which refuses it itself.
 */
export function badObjectPathArgument(signature: string, body: readonly unknown[]): string | undefined {
  if (!signature.includes('o') && !signature.includes('v')) return undefined;
  let types: readonly TypeNode[];
  try {
    types = parseSignature(signature);
  } catch (err) {
    if (err instanceof WireError) return undefined; // dbus-next refuses a malformed signature itself
    throw err;
  }
  for (let i = 0; i < types.length; i++) {
    const type = types[i];
    const bad = type ? badObjectPathIn(type, body[i], 0) : undefined;
    if (bad !== undefined) return bad;
  }
  return undefined;
}

/** Variants within variants deeper than this are left to dbus-next (and the bus's own limit of 64). */
const VARIANT_DEPTH_MAX = 64;

function badObjectPathIn(type: TypeNode, value: unknown, variants: number): string | undefined {
  if (!type.text.includes('o') && !type.text.includes('v')) return undefined;
  switch (type.code) {
    case 'o':
      return typeof value === 'string' && !OBJECT_PATH.test(value) ? value : undefined;
    case 'a': {
      const element = type.children[0];
      if (!element) return undefined;
      if (element.code === '{') {
        const [key, item] = element.children;
        if (!key || !item || typeof value !== 'object' || value === null || Array.isArray(value))
          return undefined;
        for (const [k, v] of Object.entries(value)) {
          if (key.code === 'o' && !OBJECT_PATH.test(k)) return k;
          const bad = badObjectPathIn(item, v, variants);
          if (bad !== undefined) return bad;
        }
        return undefined;
      }
      if (!Array.isArray(value)) return undefined;
      for (const v of value as readonly unknown[]) {
        const bad = badObjectPathIn(element, v, variants);
        if (bad !== undefined) return bad;
      }
      return undefined;
    }
    case '(': {
      if (!Array.isArray(value)) return undefined;
      const members = value as readonly unknown[];
      for (let i = 0; i < type.children.length; i++) {
        const member = type.children[i];
        const bad = member ? badObjectPathIn(member, members[i], variants) : undefined;
        if (bad !== undefined) return bad;
      }
      return undefined;
    }
    case 'v': {
      if (variants >= VARIANT_DEPTH_MAX || typeof value !== 'object' || value === null) return undefined;
      const { signature, value: inner } = value as { signature?: unknown; value?: unknown };
      if (typeof signature !== 'string') return undefined;
      let inside: readonly TypeNode[];
      try {
        inside = parseSignature(signature);
      } catch (err) {
        if (err instanceof WireError) return undefined;
        throw err;
      }
      const only = inside.length === 1 ? inside[0] : undefined;
      return only ? badObjectPathIn(only, inner, variants + 1) : undefined;
    }
    default:
      return undefined;
  }
}

export interface CallHeader {
  readonly serial: number;
  readonly destination: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly signature: string;
  readonly flags: number;
}

/** A little-endian METHOD_CALL; `body` must pass `canEncode(signature, body)`. */
export function encodeCall(h: CallHeader, body: readonly unknown[]): Buffer {
  const w = new Writer();
  const fieldsStart = w.start(MessageKind.METHOD_CALL, h.flags, h.serial);
  w.field(FIELD.PATH, 'o', h.path);
  w.align(8);
  w.raw(callFields(h));
  return w.finish(fieldsStart, h.signature, body);
}

/**
 * The INTERFACE, MEMBER, DESTINATION and SIGNATURE header fields of a kind of call, written once.
 * Each header field starts 8-aligned, so after PATH they are the same bytes in every call of that
 * kind: one copy instead of four strings written per call (encodeCall took 96 ms of the first sync's
 * CPU at 10,000 machines in a profile; BENCHMARKS.md, 2026-12-06).
 */
const callFieldsByKind = new Map<string, Buffer>();
/** The registry makes a few dozen kinds of call; anything beyond this is written afresh each time. */
const CALL_FIELDS_KEPT = 256;

function callFields(h: CallHeader): Buffer {
  const kind = `${h.destination}\0${h.interface}\0${h.member}\0${h.signature}`;
  const kept = callFieldsByKind.get(kind);
  if (kept !== undefined) return kept;
  const w = new Writer();
  w.field(FIELD.INTERFACE, 's', h.interface);
  w.field(FIELD.MEMBER, 's', h.member);
  w.field(FIELD.DESTINATION, 's', h.destination);
  if (h.signature !== '') w.field(FIELD.SIGNATURE, 'g', h.signature);
  const bytes = Buffer.from(w.done());
  if (callFieldsByKind.size < CALL_FIELDS_KEPT) callFieldsByKind.set(kind, bytes);
  return bytes;
}

export interface ReplyHeader {
  readonly serial: number;
  /** The call's serial. */
  readonly replySerial: number;
  /** The caller's unique name; '' on a connection without a bus (nobody to route to). */
  readonly destination: string;
}

/** A little-endian METHOD_RETURN with a body of strings (`signature` of `s`s, or ''). */
export function encodeReturn(h: ReplyHeader, signature: string, body: readonly string[]): Buffer {
  return encodeMessage(MessageKind.METHOD_RETURN, 0, h.serial, replyFields(h), signature, body);
}

/** A little-endian ERROR message carrying `text` as its one string argument. */
export function encodeError(h: ReplyHeader, errorName: string, text: string): Buffer {
  return encodeMessage(
    MessageKind.ERROR,
    0,
    h.serial,
    [...replyFields(h), [FIELD.ERROR_NAME, 's', errorName]],
    's',
    [text],
  );
}

type HeaderField = readonly [code: number, type: 's' | 'o' | 'u', value: string | number];

function replyFields(h: ReplyHeader): HeaderField[] {
  const fields: HeaderField[] = [[FIELD.REPLY_SERIAL, 'u', h.replySerial]];
  if (h.destination !== '') fields.push([FIELD.DESTINATION, 's', h.destination]);
  return fields;
}

function encodeMessage(
  kind: number,
  flags: number,
  serial: number,
  fields: readonly HeaderField[],
  signature: string,
  body: readonly unknown[],
): Buffer {
  const w = new Writer();
  const fieldsStart = w.start(kind, flags, serial);
  for (const [code, type, value] of fields) w.field(code, type, value);
  if (signature !== '') w.field(FIELD.SIGNATURE, 'g', signature);
  return w.finish(fieldsStart, signature, body);
}

/** Writes every byte up to `off` itself, padding included: its buffers are not zero-filled. */
class Writer {
  buf = Buffer.allocUnsafe(256);
  off = 0;

  private room(n: number): void {
    if (this.off + n <= this.buf.length) return;
    const bigger = Buffer.allocUnsafe(Math.max(this.buf.length * 2, this.off + n));
    this.buf.copy(bigger, 0, 0, this.off);
    this.buf = bigger;
  }

  /** Pads with zero bytes (the bus rejects messages with other padding). */
  align(n: number): void {
    const pad = (n - (this.off % n)) % n;
    this.room(pad);
    this.buf.fill(0, this.off, this.off + pad);
    this.off += pad;
  }

  /** The fixed part of a little-endian header; returns where the header field array starts. */
  start(kind: number, flags: number, serial: number): number {
    this.bytes(0x6c, kind, flags, 1);
    this.u32(0); // body length, patched by finish
    this.u32(serial);
    this.u32(0); // header field array length, patched by finish
    return this.off;
  }

  /**
   * Ends the header field array (the SIGNATURE field, if any, already written), writes the body
   * and patches both lengths: the message.
   */
  finish(fieldsStart: number, signature: string, body: readonly unknown[]): Buffer {
    const fieldsLength = this.off - fieldsStart;
    this.align(8);
    const bodyStart = this.off;
    for (let i = 0; i < body.length; i++) {
      const v = body[i];
      switch (signature[i]) {
        case 's':
        case 'o':
          this.string(v as string);
          break;
        case 'i':
          this.i32(v as number);
          break;
        case 'u':
          this.u32(v as number);
          break;
        case 'b':
          this.u32(v === true ? 1 : 0);
          break;
        case undefined:
        default:
          throw new WireError(`cannot write signature ${signature}`);
      }
    }
    const out = this.done();
    out.writeUInt32LE(out.length - bodyStart, 4);
    out.writeUInt32LE(fieldsLength, 12);
    return out;
  }

  raw(bytes: Buffer): void {
    this.room(bytes.length);
    bytes.copy(this.buf, this.off);
    this.off += bytes.length;
  }

  bytes(...values: number[]): void {
    this.room(values.length);
    for (const v of values) this.buf[this.off++] = v;
  }

  u32(v: number): void {
    this.align(4);
    this.room(4);
    this.buf.writeUInt32LE(v, this.off);
    this.off += 4;
  }

  i32(v: number): void {
    this.align(4);
    this.room(4);
    this.buf.writeInt32LE(v, this.off);
    this.off += 4;
  }

  string(v: string): void {
    const length = Buffer.byteLength(v);
    this.u32(length);
    this.room(length + 1);
    this.buf.write(v, this.off, 'utf8');
    this.off += length;
    this.buf[this.off++] = 0;
  }

  field(code: number, type: 's' | 'o' | 'g' | 'u', value: string | number): void {
    this.align(8);
    this.bytes(code, 1, type.charCodeAt(0), 0);
    if (typeof value === 'number') this.u32(value);
    else if (type === 'g') {
      this.bytes(value.length);
      this.room(value.length + 1);
      this.buf.write(value, this.off, 'latin1');
      this.off += value.length;
      this.buf[this.off++] = 0;
    } else this.string(value);
  }

  done(): Buffer {
    return this.buf.subarray(0, this.off);
  }
}

// ---- reading ------------------------------------------------------------------------------------

/** A received message, with the header fields replies and errors need. */
export interface WireMessage {
  readonly kind: number;
  readonly flags: number;
  readonly serial: number;
  readonly replySerial: number;
  readonly errorName: string;
  readonly signature: string;
  readonly body: Buffer;
  readonly littleEndian: boolean;
  /** Header fields a method call needs answering by; '' when absent. */
  readonly sender: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
}

/**
 * Splits a byte stream into messages. `push` returns every complete message so far; a malformed
 * header throws WireError (the stream cannot be resynchronised after that).
 */
export class MessageReader {
  private pending: Buffer[] = [];
  private pendingLength = 0;

  /** Length of the message being received, once its fixed header is in (no concatenation before). */
  private awaited = 0;

  push(chunk: Buffer): WireMessage[] {
    this.pending.push(chunk);
    this.pendingLength += chunk.length;
    if (this.pendingLength < this.awaited) return [];
    const out: WireMessage[] = [];
    let buf = this.pending.length === 1 ? chunk : Buffer.concat(this.pending, this.pendingLength);
    let off = 0;
    this.awaited = 0;
    for (;;) {
      const total = messageLength(buf, off);
      if (total === undefined) break;
      if (buf.length - off < total) {
        this.awaited = total;
        break;
      }
      out.push(decodeHeader(buf.subarray(off, off + total)));
      off += total;
    }
    buf = buf.subarray(off);
    this.pending = buf.length > 0 ? [buf] : [];
    this.pendingLength = buf.length;
    return out;
  }
}

/** The whole length of the message starting at `off`, or undefined while its fixed header is incomplete. */
function messageLength(buf: Buffer, off: number): number | undefined {
  if (buf.length - off < 16) return undefined;
  const endian = buf[off];
  if (endian !== 0x6c && endian !== 0x42) throw new WireError(`bad endianness byte ${String(endian)}`);
  if (buf[off + 3] !== 1) throw new WireError(`unsupported protocol version ${String(buf[off + 3])}`);
  const le = endian === 0x6c;
  const bodyLength = le ? buf.readUInt32LE(off + 4) : buf.readUInt32BE(off + 4);
  const fieldsLength = le ? buf.readUInt32LE(off + 12) : buf.readUInt32BE(off + 12);
  const total = 16 + fieldsLength + pad8(16 + fieldsLength) + bodyLength;
  if (total > MAX_MESSAGE) throw new WireError(`message of ${total} bytes`);
  return total;
}

function pad8(n: number): number {
  return (8 - (n % 8)) % 8;
}

function decodeHeader(msg: Buffer): WireMessage {
  const le = msg[0] === 0x6c;
  const r = new Reader(msg, le);
  r.off = 1;
  const kind = r.byte();
  const flags = r.byte();
  r.off = 8;
  const serial = r.u32();
  const fieldsLength = r.u32();
  const fieldsEnd = 16 + fieldsLength;
  let replySerial = 0;
  let errorName = '';
  let signature = '';
  let sender = '';
  let path = '';
  let iface = '';
  let member = '';
  while (r.off < fieldsEnd) {
    r.align(8);
    if (r.off >= fieldsEnd) break;
    const code = r.byte();
    const v: unknown = r.variant().value;
    if (code === FIELD.REPLY_SERIAL && typeof v === 'number') replySerial = v;
    else if (code === FIELD.ERROR_NAME && typeof v === 'string') errorName = v;
    else if (code === FIELD.SIGNATURE && typeof v === 'string') signature = v;
    else if (code === FIELD.SENDER && typeof v === 'string') sender = v;
    else if (code === FIELD.PATH && typeof v === 'string') path = v;
    else if (code === FIELD.INTERFACE && typeof v === 'string') iface = v;
    else if (code === FIELD.MEMBER && typeof v === 'string') member = v;
  }
  if (r.off !== fieldsEnd) throw new WireError('header fields overrun their length');
  const bodyStart = fieldsEnd + pad8(fieldsEnd);
  return {
    kind,
    flags,
    serial,
    replySerial,
    errorName,
    signature,
    body: msg.subarray(bodyStart),
    littleEndian: le,
    sender,
    path,
    interface: iface,
    member,
  };
}

/** The body's values in dbus-next's shapes; throws WireError on a malformed body. */
export function decodeBody(msg: WireMessage): unknown[] {
  const r = new Reader(msg.body, msg.littleEndian);
  const types = parseSignature(msg.signature);
  const out = types.map((t) => r.value(t));
  if (r.off !== msg.body.length) throw new WireError('body longer than its signature');
  return out;
}

/**
 * A Properties.GetAll reply (`a{sv}`) read without a `Variant` per property: each property's value
 * in the codec's shapes and its variant's signature, so a caller can check the types by signature
 * instead of by schema. At 10,000 machines the first sync reads one such reply per machine: the
 * Variants, their unwrapped copy and the zod parse of it (with GetMachineAddresses' decoding) were
 * about 250 ms of its CPU in a profile; without them spawn → `ready` took a median 0.25 s less
 * (BENCHMARKS.md, 2026-12-06).
 */
export class PropertyValues {
  constructor(
    /** Property name → value, as `decodeBody` would give the variant's value. */
    readonly values: Readonly<Record<string, unknown>>,
    /** Property name → the signature of its variant. */
    readonly signatures: Readonly<Record<string, string>>,
  ) {}
}

/**
 * `decodeBody`, except that a method return whose body is exactly one `a{sv}` comes out as
 * `[PropertyValues]`. Throws WireError on a malformed body, as decodeBody does.
 */
export function decodePropertiesBody(msg: WireMessage): unknown[] {
  if (msg.kind !== MessageKind.METHOD_RETURN || msg.signature !== 'a{sv}') return decodeBody(msg);
  const r = new Reader(msg.body, msg.littleEndian);
  const values: Record<string, unknown> = {};
  const signatures: Record<string, string> = {};
  r.dictionary(STRING, (key) => {
    const [signature, value] = r.variantParts();
    own(values, key, value);
    own(signatures, key, signature);
  });
  if (r.off !== msg.body.length) throw new WireError('body longer than its signature');
  return [new PropertyValues(values, signatures)];
}

/** Sets a property, `__proto__` included, as an own enumerable one. */
function own(target: Record<string, unknown>, key: string, value: unknown): void {
  if (key === '__proto__') Object.defineProperty(target, key, { value, enumerable: true, writable: true });
  else target[key] = value;
}

// A parsed signature: one node per complete type.
interface TypeNode {
  readonly code: string;
  readonly children: readonly TypeNode[];
  /** The signature text of this type (for variants). */
  readonly text: string;
}

const signatureCache = new Map<string, readonly TypeNode[]>();
const BASIC = 'ybnqiuxtdsogh';
const STRING: TypeNode = { code: 's', children: [], text: 's' };

export function parseSignature(signature: string): readonly TypeNode[] {
  const cached = signatureCache.get(signature);
  if (cached) return cached;
  if (signature.length > 255) throw new WireError('signature over 255 characters');
  const out: TypeNode[] = [];
  let i = 0;
  const one = (depth: number): TypeNode => {
    if (depth > 64) throw new WireError('signature nested too deeply');
    const start = i;
    const c = signature[i++];
    if (c === undefined) throw new WireError(`incomplete signature ${signature}`);
    if (BASIC.includes(c) || c === 'v') return { code: c, children: [], text: c };
    if (c === 'a') {
      const child = one(depth + 1);
      return { code: 'a', children: [child], text: signature.slice(start, i) };
    }
    if (c === '(' || c === '{') {
      const close = c === '(' ? ')' : '}';
      const children: TypeNode[] = [];
      while (signature[i] !== close) children.push(one(depth + 1));
      i++;
      const first = children[0];
      if (
        children.length === 0 ||
        (c === '{' && (children.length !== 2 || !first || !BASIC.includes(first.code)))
      )
        throw new WireError(`bad container in signature ${signature}`);
      return { code: c, children, text: signature.slice(start, i) };
    }
    throw new WireError(`bad type code ${c} in signature ${signature}`);
  };
  while (i < signature.length) out.push(one(0));
  if (signatureCache.size < 256) signatureCache.set(signature, out);
  return out;
}

const ALIGN: Readonly<Record<string, number>> = {
  y: 1, b: 4, n: 2, q: 2, i: 4, u: 4, x: 8, t: 8, d: 8, s: 4, o: 4, g: 1, h: 4, a: 4, '(': 8, '{': 8, v: 1,
}; // prettier-ignore

class Reader {
  off = 0;
  constructor(
    private readonly buf: Buffer,
    private readonly le: boolean,
  ) {}

  private need(n: number): void {
    if (this.off + n > this.buf.length) throw new WireError('value runs past the end of the message');
  }

  align(n: number): void {
    this.off += (n - (this.off % n)) % n;
    if (this.off > this.buf.length) throw new WireError('padding runs past the end of the message');
  }

  byte(): number {
    this.need(1);
    return this.buf[this.off++] ?? 0;
  }

  u32(): number {
    this.align(4);
    this.need(4);
    const v = this.le ? this.buf.readUInt32LE(this.off) : this.buf.readUInt32BE(this.off);
    this.off += 4;
    return v;
  }

  private text(length: number): string {
    this.need(length + 1);
    const s = this.buf.toString('utf8', this.off, this.off + length);
    if (this.buf[this.off + length] !== 0) throw new WireError('string without its terminating nul');
    this.off += length + 1;
    return s;
  }

  variant(): Variant {
    const [signature, value] = this.variantParts();
    return new Variant(signature, value);
  }

  /** A variant's signature and value, without the Variant. */
  variantParts(): [string, unknown] {
    const signature = this.text(this.byte());
    const [type, ...rest] = parseSignature(signature);
    if (!type || rest.length > 0) throw new WireError(`variant signature ${signature} is not one type`);
    return [signature, this.value(type)];
  }

  /** An array of dict entries `a{K…}`: `entry` reads each value after its key. */
  dictionary(keyType: TypeNode, entry: (key: string) => void): void {
    const end = this.arrayEnd(8);
    while (this.off < end) {
      this.align(8);
      entry(String(this.value(keyType)));
    }
    if (this.off !== end) throw new WireError('dict overruns its length');
  }

  /** Reads an array's length and the padding before its first element; returns where it ends. */
  private arrayEnd(elementAlignment: number): number {
    const length = this.u32();
    if (length > 67_108_864) throw new WireError(`array of ${length} bytes`);
    this.align(elementAlignment);
    this.need(length);
    return this.off + length;
  }

  value(t: TypeNode): unknown {
    const b = this.buf;
    this.align(ALIGN[t.code] ?? 1);
    switch (t.code) {
      case 'y':
        return this.byte();
      case 'b':
        return this.u32() !== 0;
      case 'n':
        this.need(2);
        this.off += 2;
        return this.le ? b.readInt16LE(this.off - 2) : b.readInt16BE(this.off - 2);
      case 'q':
        this.need(2);
        this.off += 2;
        return this.le ? b.readUInt16LE(this.off - 2) : b.readUInt16BE(this.off - 2);
      case 'i':
        this.need(4);
        this.off += 4;
        return this.le ? b.readInt32LE(this.off - 4) : b.readInt32BE(this.off - 4);
      case 'u':
        return this.u32();
      case 'x':
        this.need(8);
        this.off += 8;
        return this.le ? b.readBigInt64LE(this.off - 8) : b.readBigInt64BE(this.off - 8);
      case 't':
        this.need(8);
        this.off += 8;
        return this.le ? b.readBigUInt64LE(this.off - 8) : b.readBigUInt64BE(this.off - 8);
      case 'd':
        this.need(8);
        this.off += 8;
        return this.le ? b.readDoubleLE(this.off - 8) : b.readDoubleBE(this.off - 8);
      case 's':
      case 'o':
        return this.text(this.u32());
      case 'g':
        return this.text(this.byte());
      case 'v':
        return this.variant();
      case '(':
        return t.children.map((c) => this.value(c));
      case 'a':
        return this.array(t);
      default:
        throw new WireError(`cannot read type ${t.code}`);
    }
  }

  private array(t: TypeNode): unknown {
    const element = t.children[0];
    if (!element) throw new WireError('array without element type');
    if (element.code === '{') {
      const [keyType, valueType] = element.children;
      if (!keyType || !valueType) throw new WireError('dict entry without key or value');
      const dict: Record<string, unknown> = {};
      this.dictionary(keyType, (key) => own(dict, key, this.value(valueType)));
      return dict;
    }
    const end = this.arrayEnd(ALIGN[element.code] ?? 1);
    if (element.code === 'y') {
      const start = this.off;
      this.off = end;
      // A copy: a view would keep the whole received chunk alive for as long as the value lives.
      return Buffer.from(this.buf.subarray(start, end));
    }
    const out: unknown[] = [];
    while (this.off < end) out.push(this.value(element));
    if (this.off !== end) throw new WireError('array overruns its length');
    return out;
  }
}
