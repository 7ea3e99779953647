import test from 'ava';
import fc from 'fast-check';
import {
  JSON_DEPTH_MAX,
  readJson,
  readJsonText,
  type JsonNode,
  type JsonReadError,
} from '../src/varlink/json.js';

const bytes = (text: string): Buffer => Buffer.from(text, 'utf8');

function read(text: string): JsonNode {
  const result = readJsonText(text);
  if (!result.ok) throw new Error(`expected ${JSON.stringify(text)} to parse, got ${result.error}`);
  return result.node;
}

test('objects keep every entry in wire order, duplicates and integer-like keys included', (t) => {
  const node = read('{"b":1,"2":true,"a":null,"b":"x","1":[]}');
  if (node.kind !== 'object') return t.fail();
  t.deepEqual(
    node.entries.map((e) => [e.key, e.node.value]),
    [
      ['b', 1],
      ['2', true],
      ['a', null],
      ['b', 'x'],
      ['1', []],
    ],
  );
  // The plain value is what JSON.parse gives (last duplicate wins).
  t.deepEqual(node.value, JSON.parse('{"b":1,"2":true,"a":null,"b":"x","1":[]}'));
});

test('a "__proto__" key is an own property, never the prototype', (t) => {
  const node = read('{"__proto__":{"polluted":1}}');
  t.is(Object.getPrototypeOf(node.value), Object.prototype);
  t.deepEqual(Object.keys(node.value as object), ['__proto__']);
  t.is(({} as Record<string, unknown>).polluted, undefined);
});

test('numbers follow RFC 8259 and keep their value', (t) => {
  t.is(read('656360.0').value, 656360);
  t.is(read('6.5636e5').value, 656360);
  t.is(read('-0').value, -0);
  t.is(read('1E+2').value, 100);
  t.is(read('1e400').value, Infinity);
  t.is(read('18446744073709551616').value, 2 ** 64);
});

test('strings decode every escape and surrogate pair', (t) => {
  t.is(read(String.raw`"a\"b\\c\/d\b\f\n\r\t"`).value, 'a"b\\c/d\b\f\n\r\t');
  t.is(read(String.raw`"\u00e4\ud83d\ude00\uD83D\uDE00"`).value, 'ä😀😀');
  t.is(read('"ä😀"').value, 'ä😀');
});

// Each hostile text with the rule it pins; all of them closed the connection on machined 252.
const refused: [string, JsonReadError, string][] = [
  ['', 'syntax', 'an empty message'],
  ['   ', 'syntax', 'a message of whitespace only'],
  ['{"a":1} x', 'trailing-data', 'garbage after the value'],
  ['{}{}', 'trailing-data', 'two values in one message'],
  ['\ufeff{}', 'syntax', 'a byte-order mark before the value'],
  ['\u000b{}', 'syntax', 'a vertical tab, which is not JSON whitespace'],
  ['0656360', 'trailing-data', 'leading zeros'],
  ['+1', 'syntax', 'a plus sign'],
  ['1.', 'syntax', 'a fraction without digits'],
  ['.5', 'syntax', 'a fraction without integer part'],
  ['1e', 'syntax', 'an exponent without digits'],
  ['-', 'syntax', 'a lone minus'],
  ['NaN', 'syntax', 'NaN'],
  ['"a\u007fb"', 'syntax', 'a raw DEL in a string, as systemd does'],
  ['"a\tb"', 'syntax', 'a raw control character in a string'],
  [String.raw`"a\u0000b"`, 'syntax', 'an escaped NUL, as systemd does (C strings)'],
  [String.raw`"\ud800"`, 'syntax', 'a lone high surrogate'],
  [String.raw`"\udc00"`, 'syntax', 'a lone low surrogate'],
  [String.raw`"\ud800\u0041"`, 'syntax', 'a high surrogate followed by a non-surrogate'],
  [String.raw`"\x41"`, 'syntax', 'an unknown escape'],
  [String.raw`"\u12"`, 'syntax', 'a short \\u escape'],
  ['"abc', 'syntax', 'an unterminated string'],
  ['{"a" 1}', 'syntax', 'a missing colon'],
  ['{"a":1,}', 'syntax', 'a trailing comma in an object'],
  ['[1,]', 'syntax', 'a trailing comma in an array'],
  ['{a:1}', 'syntax', 'an unquoted key'],
  ['tru', 'syntax', 'a truncated literal'],
  ['[', 'syntax', 'an unterminated array'],
];
for (const [text, error, rule] of refused) {
  test(`the reader refuses ${rule}`, (t) => {
    const result = readJsonText(text);
    t.false(result.ok);
    if (!result.ok) t.is(result.error, error);
  });
}

test('whitespace around the value is accepted', (t) => {
  t.deepEqual(read(' \n\t\r{"a":[ 1 , 2 ]} \n').value, { a: [1, 2] });
});

test('invalid UTF-8 is refused before parsing', (t) => {
  for (const bad of [[0xff], [0xc0, 0x80], [0xed, 0xa0, 0x80], [0xf4, 0x90, 0x80, 0x80], [0xe2, 0x82]]) {
    const message = Buffer.concat([bytes('"'), Buffer.from(bad), bytes('"')]);
    const result = readJson(message);
    t.false(result.ok);
    if (!result.ok) t.is(result.error, 'invalid-utf8');
  }
  t.true(readJson(bytes('"ä"')).ok);
});

test(`nesting is allowed up to ${JSON_DEPTH_MAX} containers below the top-level value`, (t) => {
  // machined 252: a call whose parameters held 2047 nested arrays was answered, 2048 closed.
  const call = (n: number): string => `{"parameters":{"x":${'['.repeat(n)}${']'.repeat(n)}}}`;
  t.true(readJsonText(call(JSON_DEPTH_MAX - 1)).ok);
  const deep = readJsonText(call(JSON_DEPTH_MAX));
  t.false(deep.ok);
  if (!deep.ok) t.is(deep.error, 'too-deep');
});

test('a million nested brackets fail fast without exhausting the stack', (t) => {
  const result = readJsonText('['.repeat(1_000_000));
  t.false(result.ok);
  if (!result.ok) t.is(result.error, 'too-deep');
});

test('the reader agrees with JSON.parse on every JSON text it accepts', (t) => {
  fc.assert(
    fc.property(fc.json({ depthSize: 'small' }), (text) => {
      const result = readJsonText(text);
      // fc.json may produce strings with \u0000, lone surrogates or DEL, which systemd refuses.
      if (!result.ok) return /\\u0000|\\ud[89ab]|\\ud[c-f]|\u007f/i.test(text);
      return Object.is(JSON.stringify(result.node.value), JSON.stringify(JSON.parse(text)));
    }),
  );
  t.pass();
});

test('random bytes never throw, they parse or are refused', (t) => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 64 }), (data) => {
      const result = readJson(data);
      return typeof result.ok === 'boolean';
    }),
  );
  t.pass();
});
