/**
 * A strict JSON reader for Varlink messages, with systemd 252's `json_parse` rules.
 *
 * JSON.parse cannot be used: systemd's `json_dispatch` walks an object's fields in wire order and
 * reports a duplicate key (ENOTUNIQ), so the first offending field decides the error
 * (reference §2.7). JSON.parse drops duplicates and reorders integer-like keys. This reader keeps
 * every object's entries in wire order, duplicates included, next to the plain value that zod reads.
 *
 * Where systemd's parser is stricter than RFC 8259, this one follows systemd (all seen on the real
 * machined 252, see docs/userdb.md): a raw DEL (0x7f) in a string, the escape `\u0000` and lone
 * UTF-16 surrogates are rejected; a byte-order mark is not whitespace; nesting deeper than 2048
 * containers below the top-level value is refused.
 */

export type JsonScalar = null | boolean | number | string;
export type JsonValue = JsonScalar | JsonValue[] | JsonObject;
export interface JsonObject {
  [key: string]: JsonValue;
}

export interface JsonEntry {
  readonly key: string;
  readonly node: JsonNode;
}

export type JsonNode =
  | { readonly kind: 'object'; readonly entries: readonly JsonEntry[]; readonly value: JsonObject }
  | { readonly kind: 'array'; readonly value: JsonValue[] }
  | { readonly kind: 'scalar'; readonly value: JsonScalar };

export type JsonReadError =
  /** Bytes that are not UTF-8 (overlong forms, surrogates, > U+10FFFF included). */
  | 'invalid-utf8'
  /** Not JSON, or JSON that systemd's parser refuses. */
  | 'syntax'
  /** More than `JSON_DEPTH_MAX` containers below the top-level value. */
  | 'too-deep'
  /** Something other than whitespace after the value. */
  | 'trailing-data';

export type JsonReadResult =
  | { readonly ok: true; readonly node: JsonNode }
  | { readonly ok: false; readonly error: JsonReadError; readonly offset: number };

/**
 * Containers allowed below the top-level value. machined 252 accepted a call whose parameters held
 * 2047 nested arrays (2048 levels below the call object) and closed the connection at 2048 arrays.
 */
export const JSON_DEPTH_MAX = 2048;

// ignoreBOM: keep a leading U+FEFF in the text so that it is refused like any other non-whitespace
// byte, as systemd does; TextDecoder would otherwise strip it silently.
const utf8 = new TextDecoder('utf-8', { fatal: true, ignoreBOM: true });

/** Decodes UTF-8 strictly, then parses one JSON value surrounded by optional whitespace. */
export function readJson(bytes: Uint8Array): JsonReadResult {
  let text: string;
  try {
    text = utf8.decode(bytes);
  } catch (err: unknown) {
    // A fatal TextDecoder throws exactly this for malformed input; anything else is a bug.
    if (err instanceof TypeError) return { ok: false, error: 'invalid-utf8', offset: 0 };
    throw err;
  }
  return readJsonText(text);
}

/** Parses text that is already a JS string (tests, and clients that decoded it themselves). */
export function readJsonText(text: string): JsonReadResult {
  const parser = new Parser(text);
  const node = parser.document();
  if (node === undefined) {
    return { ok: false, error: parser.error, offset: parser.pos };
  }
  return { ok: true, node };
}

/** Unwinds the recursive descent in one step; only thrown and caught inside this module. */
class JsonSyntaxError extends Error {
  constructor(readonly error: JsonReadError) {
    super(error);
  }
}

class Parser {
  pos = 0;
  error: JsonReadError = 'syntax';

  constructor(private readonly text: string) {}

  document(): JsonNode | undefined {
    try {
      this.skipWhitespace();
      const node = this.value(0);
      this.skipWhitespace();
      if (this.pos !== this.text.length) throw new JsonSyntaxError('trailing-data');
      return node;
    } catch (err: unknown) {
      // Only our own syntax errors are expected here; they unwind the recursion in one step.
      if (!(err instanceof JsonSyntaxError)) throw err;
      this.error = err.error;
      return undefined;
    }
  }

  private fail(): never {
    throw new JsonSyntaxError('syntax');
  }

  private skipWhitespace(): void {
    const t = this.text;
    let p = this.pos;
    for (;;) {
      const c = t.charCodeAt(p);
      // JSON whitespace only (systemd: " \t\n\r"); NaN past the end stops the loop.
      if (c === 0x20 || c === 0x09 || c === 0x0a || c === 0x0d) p++;
      else break;
    }
    this.pos = p;
  }

  private value(depth: number): JsonNode {
    const c = this.text.charCodeAt(this.pos);
    switch (c) {
      case 0x7b /* { */:
        return this.object(depth);
      case 0x5b /* [ */:
        return this.array(depth);
      case 0x22 /* " */:
        return { kind: 'scalar', value: this.string() };
      case 0x74 /* t */:
        return this.literal('true', true);
      case 0x66 /* f */:
        return this.literal('false', false);
      case 0x6e /* n */:
        return this.literal('null', null);
      default:
        if (c === 0x2d || (c >= 0x30 && c <= 0x39)) return { kind: 'scalar', value: this.number() };
        return this.fail();
    }
  }

  private enter(depth: number): number {
    if (depth > JSON_DEPTH_MAX) throw new JsonSyntaxError('too-deep');
    return depth + 1;
  }

  private object(depth: number): JsonNode {
    const inner = this.enter(depth);
    this.pos++; // {
    const entries: JsonEntry[] = [];
    const value: JsonObject = {};
    this.skipWhitespace();
    if (this.text.charCodeAt(this.pos) === 0x7d /* } */) {
      this.pos++;
      return { kind: 'object', entries, value };
    }
    for (;;) {
      if (this.text.charCodeAt(this.pos) !== 0x22) this.fail();
      const key = this.string();
      this.skipWhitespace();
      if (this.text.charCodeAt(this.pos) !== 0x3a /* : */) this.fail();
      this.pos++;
      this.skipWhitespace();
      const node = this.value(inner);
      entries.push({ key, node });
      // defineProperty, not assignment: a "__proto__" key must become an own property (as with
      // JSON.parse), never the object's prototype. Duplicates: the last one wins in `value`; the
      // entries keep all of them for wire-order checks.
      Object.defineProperty(value, key, {
        value: node.value,
        enumerable: true,
        writable: true,
        configurable: true,
      });
      this.skipWhitespace();
      const c = this.text.charCodeAt(this.pos);
      this.pos++;
      if (c === 0x2c /* , */) {
        this.skipWhitespace();
        continue;
      }
      if (c === 0x7d /* } */) return { kind: 'object', entries, value };
      this.pos--;
      return this.fail();
    }
  }

  private array(depth: number): JsonNode {
    const inner = this.enter(depth);
    this.pos++; // [
    const value: JsonValue[] = [];
    this.skipWhitespace();
    if (this.text.charCodeAt(this.pos) === 0x5d /* ] */) {
      this.pos++;
      return { kind: 'array', value };
    }
    for (;;) {
      value.push(this.value(inner).value);
      this.skipWhitespace();
      const c = this.text.charCodeAt(this.pos);
      this.pos++;
      if (c === 0x2c /* , */) {
        this.skipWhitespace();
        continue;
      }
      if (c === 0x5d /* ] */) return { kind: 'array', value };
      this.pos--;
      return this.fail();
    }
  }

  private literal(word: string, value: JsonScalar): JsonNode {
    if (!this.text.startsWith(word, this.pos)) this.fail();
    this.pos += word.length;
    return { kind: 'scalar', value };
  }

  private number(): number {
    const t = this.text;
    const start = this.pos;
    let p = start;
    if (t.charCodeAt(p) === 0x2d) p++;
    // RFC 8259: no leading zeros, no '+', no bare '.', digits after '.' and after the exponent.
    if (t.charCodeAt(p) === 0x30) p++;
    else if (isDigit(t.charCodeAt(p))) while (isDigit(t.charCodeAt(p))) p++;
    else this.fail();
    if (t.charCodeAt(p) === 0x2e /* . */) {
      p++;
      if (!isDigit(t.charCodeAt(p))) this.fail();
      while (isDigit(t.charCodeAt(p))) p++;
    }
    const e = t.charCodeAt(p);
    if (e === 0x65 || e === 0x45 /* e E */) {
      p++;
      const s = t.charCodeAt(p);
      if (s === 0x2b || s === 0x2d) p++;
      if (!isDigit(t.charCodeAt(p))) this.fail();
      while (isDigit(t.charCodeAt(p))) p++;
    }
    this.pos = p;
    // Integers beyond 2^53 lose precision here, as they become reals in systemd once they overflow
    // 64 bits; every consumer only asks "is this a valid 32-bit id", which both answer alike.
    return Number(t.slice(start, p));
  }

  private string(): string {
    const t = this.text;
    let p = this.pos + 1; // after the opening quote
    let out = '';
    let runStart = p;
    for (;;) {
      const c = t.charCodeAt(p);
      if (c === 0x22 /* " */) {
        out += t.slice(runStart, p);
        this.pos = p + 1;
        return out;
      }
      if (c === 0x5c /* \ */) {
        out += t.slice(runStart, p) + this.escape(p + 1);
        p = runStart = this.pos;
        continue;
      }
      // Control characters and, as systemd 252 does, DEL must be escaped; NaN: unterminated string.
      if (!(c >= 0x20) || c === 0x7f) {
        this.pos = p;
        return this.fail();
      }
      p++;
    }
  }

  /** Decodes the escape whose letter is at `p` and leaves `pos` after it. */
  private escape(p: number): string {
    const t = this.text;
    const c = t.charCodeAt(p);
    const simple = SIMPLE_ESCAPES.get(c);
    if (simple !== undefined) {
      this.pos = p + 1;
      return simple;
    }
    if (c !== 0x75 /* u */) {
      this.pos = p;
      return this.fail();
    }
    const unit = this.hex4(p + 1);
    // systemd refuses NUL in strings (they are C strings) and unpaired surrogates.
    if (unit === 0 || (unit >= 0xdc00 && unit <= 0xdfff)) return this.fail();
    if (unit < 0xd800 || unit > 0xdbff) {
      this.pos = p + 5;
      return String.fromCharCode(unit);
    }
    if (t.charCodeAt(p + 5) !== 0x5c || t.charCodeAt(p + 6) !== 0x75) return this.fail();
    const low = this.hex4(p + 7);
    if (low < 0xdc00 || low > 0xdfff) return this.fail();
    this.pos = p + 11;
    return String.fromCharCode(unit, low);
  }

  private hex4(p: number): number {
    let v = 0;
    for (let i = 0; i < 4; i++) {
      const d = hexValue(this.text.charCodeAt(p + i));
      if (d < 0) {
        this.pos = p + i;
        return this.fail();
      }
      v = v * 16 + d;
    }
    return v;
  }
}

/** The one-letter escapes of RFC 8259 §7, by the code of their letter. */
const SIMPLE_ESCAPES = new Map<number, string>([
  [0x22, '"'],
  [0x5c, '\\'],
  [0x2f, '/'],
  [0x62, '\b'],
  [0x66, '\f'],
  [0x6e, '\n'],
  [0x72, '\r'],
  [0x74, '\t'],
]);

function isDigit(c: number): boolean {
  return c >= 0x30 && c <= 0x39;
}

function hexValue(c: number): number {
  if (c >= 0x30 && c <= 0x39) return c - 0x30;
  if (c >= 0x61 && c <= 0x66) return c - 0x57;
  if (c >= 0x41 && c <= 0x46) return c - 0x37;
  return -1;
}
