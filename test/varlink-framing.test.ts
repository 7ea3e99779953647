import test from 'ava';
import fc from 'fast-check';
import { NulFramer, VARLINK_BUFFER_MAX, type FramerOutput } from '../src/varlink/framing.js';

const b = (text: string): Buffer => Buffer.from(text, 'latin1');

function messages(output: FramerOutput): string[] {
  if (output.kind !== 'messages') throw new Error('unexpected overflow');
  return output.messages.map((m) => m.toString('latin1'));
}

test('a message split across reads is delivered once its NUL arrives', (t) => {
  const framer = new NulFramer();
  t.deepEqual(messages(framer.push(b('{"meth'))), []);
  t.is(framer.state, 'partial');
  t.is(framer.bufferedBytes, 6);
  t.deepEqual(messages(framer.push(b('od":"x"'))), []);
  t.deepEqual(messages(framer.push(b('}\0'))), ['{"method":"x"}']);
  t.is(framer.state, 'idle');
  t.is(framer.bufferedBytes, 0);
});

test('pipelined messages in one read come out in order, with the rest kept', (t) => {
  const framer = new NulFramer();
  t.deepEqual(messages(framer.push(b('{"a":1}\0{"b":2}\0{"c"'))), ['{"a":1}', '{"b":2}']);
  t.deepEqual(messages(framer.push(b(':3}\0'))), ['{"c":3}']);
});

test('leading whitespace and empty messages are framed as they are, for the parser to judge', (t) => {
  const framer = new NulFramer();
  t.deepEqual(messages(framer.push(b(' \n{"a":1}\0\0'))), [' \n{"a":1}', '']);
});

test('a NUL inside a JSON string ends the message there', (t) => {
  const framer = new NulFramer();
  t.deepEqual(messages(framer.push(b('{"userName":"a\0b"}\0'))), ['{"userName":"a', 'b"}']);
});

test('the limit counts only the message still waiting for its NUL', (t) => {
  const framer = new NulFramer(8);
  t.deepEqual(messages(framer.push(b('12345678\0' + '12345678\0'))), ['12345678', '12345678']);
  t.deepEqual(messages(framer.push(b('1234'))), []);
  t.deepEqual(messages(framer.push(b('5678\0'))), ['12345678']);
});

test('more than the limit without a NUL overflows, and stays overflowed', (t) => {
  const framer = new NulFramer(8);
  t.deepEqual(messages(framer.push(b('12345'))), []);
  t.is(framer.push(b('6789')).kind, 'overflow');
  t.is(framer.state, 'overflowed');
  t.is(framer.push(b('\0{}\0')).kind, 'overflow');
  t.is(framer.bufferedBytes, 0);
});

test("the default limit is systemd 252's VARLINK_BUFFER_MAX of 16 MiB", (t) => {
  t.is(VARLINK_BUFFER_MAX, 16 * 1024 * 1024);
  const framer = new NulFramer();
  t.deepEqual(messages(framer.push(Buffer.alloc(VARLINK_BUFFER_MAX, 0x20))), []);
  t.is(framer.push(b(' ')).kind, 'overflow');
});

test('any split of a byte stream yields the same messages as reading it whole', (t) => {
  fc.assert(
    fc.property(
      fc.array(fc.string({ unit: fc.constantFrom('a', '{', '"', ' ', 'ä') }), { maxLength: 8 }),
      fc.array(fc.nat(), { maxLength: 10 }),
      (texts, cuts) => {
        const stream = Buffer.from(texts.map((s) => s + '\0').join(''), 'utf8');
        const points = [...new Set(cuts.map((c) => c % (stream.length + 1)))].sort((x, y) => x - y);
        const framer = new NulFramer();
        const out: string[] = [];
        let last = 0;
        for (const p of [...points, stream.length]) {
          out.push(
            ...messages(framer.push(stream.subarray(last, p))).map((m) =>
              Buffer.from(m, 'latin1').toString('utf8'),
            ),
          );
          last = p;
        }
        return JSON.stringify(out) === JSON.stringify(texts) && framer.state === 'idle';
      },
    ),
  );
  t.pass();
});
