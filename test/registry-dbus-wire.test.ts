/**
 * The lean D-Bus codec (src/registry-client/dbus-wire.ts) against dbus-next's own marshaller as the
 * independent implementation: messages dbus-next writes are read back by ours with the values and
 * shapes dbus-next's connection hands out, and calls ours writes are read back by dbus-next.
 * The same codec over a real dbus-daemon: test/registry-bus.test.ts.
 */
import { Variant } from '@particle/dbus-next';
import test from 'ava';
import { createRequire } from 'node:module';
import { INTROSPECTION, answerCall, unixSocketPath } from '../src/registry-client/dbus-channel.js';
import {
  MessageKind,
  MessageReader,
  NO_REPLY_EXPECTED,
  WireError,
  badObjectPathArgument,
  canEncode,
  decodeBody,
  decodePropertiesBody,
  encodeCall,
  PropertyValues,
  type WireMessage,
} from '../src/registry-client/dbus-wire.js';
import { prng } from './support/prng.js';

// dbus-next's marshaller and parser: internal modules of the pinned 0.11.4, used here as the reference.
const require = createRequire(import.meta.url);
const compat = require('@particle/dbus-next/lib/marshall-compat.js') as {
  marshallMessage(msg: Record<string, unknown>): [Buffer, unknown[]];
  messageToJsFmt(msg: Record<string, unknown>): { body: unknown[] };
};
const dbusMessage = require('@particle/dbus-next/lib/message.js') as {
  unmarshall(buf: Buffer, opts: Record<string, unknown>): Record<string, unknown>;
};

let serial = 1;
function reference(
  type: number,
  signature: string,
  body: unknown[],
  extra: Record<string, unknown> = {},
): Buffer {
  const bytes = compat.marshallMessage({
    type,
    serial: serial++,
    replySerial: 7,
    destination: ':1.5',
    sender: 'org.freedesktop.machine1',
    signature,
    body,
    ...extra,
  });
  return bytes[0];
}

function readOne(bytes: Buffer): WireMessage {
  const messages = new MessageReader().push(bytes);
  if (messages.length !== 1 || !messages[0]) throw new Error(`${messages.length} messages`);
  return messages[0];
}

const REPLIES: { title: string; signature: string; body: unknown[] }[] = [
  {
    title: 'GetMachineAddresses: a(iay)',
    signature: 'a(iay)',
    body: [
      [
        [2, Buffer.from([192, 0, 2, 1])],
        [10, Buffer.from('fd420000000000000000000000000001', 'hex')],
      ],
    ],
  },
  { title: 'an empty array', signature: 'a(iay)', body: [[]] },
  {
    title: 'Properties.GetAll of a machine: a{sv}',
    signature: 'a{sv}',
    body: [
      {
        Name: new Variant('s', 'alpha'),
        Id: new Variant('ay', Buffer.alloc(16, 0xab)),
        Timestamp: new Variant('t', 1_700_000_000_000_000n),
        TimestampMonotonic: new Variant('t', 18446744073709551615n),
        Service: new Variant('s', 'nspawn'),
        Leader: new Variant('u', 4_294_967_295),
        NetworkInterfaces: new Variant('ai', [3, -1, 2_147_483_647]),
        State: new Variant('s', 'running'),
      },
    ],
  },
  {
    title: 'ListMachines: a(ssso)',
    signature: 'a(ssso)',
    body: [
      [
        ['alpha', 'container', 'nspawn', '/org/freedesktop/machine1/machine/alpha'],
        ['bravo_2dtwo', 'vm', 'qemu', '/org/freedesktop/machine1/machine/bravo_5f2dtwo'],
      ],
    ],
  },
  {
    title: 'every basic type, in one struct after a byte (alignment)',
    signature: 'y(ybnqiuxtdsog)',
    body: [
      7,
      [
        255,
        true,
        -32768,
        65535,
        -2147483648,
        4294967295,
        -9007199254740993n,
        2n ** 64n - 1n,
        0.5,
        'ünï',
        '/a/b',
        'a{sv}',
      ],
    ],
  },
  {
    title: 'nested dictionaries and variants in variants',
    signature: 'a{sa{sv}}v',
    body: [
      { outer: { inner: new Variant('v', new Variant('s', 'deep')), list: new Variant('as', ['x', 'y']) } },
      new Variant('(iay)', [1, Buffer.from([9])]),
    ],
  },
  { title: 'machined error text', signature: 's', body: ['No machine "x" known'] },
];

for (const c of REPLIES) {
  test(`reads what dbus-next writes, in dbus-next's shapes: ${c.title}`, (t) => {
    const bytes = reference(MessageKind.METHOD_RETURN, c.signature, c.body);
    const m = readOne(bytes);
    t.is(m.kind, MessageKind.METHOD_RETURN);
    t.is(m.replySerial, 7);
    t.is(m.signature, c.signature);
    const ours = decodeBody(m);
    // What dbus-next's connection would have handed out for the same bytes.
    const theirs = compat.messageToJsFmt(dbusMessage.unmarshall(bytes, { ayBuffer: true })).body;
    t.deepEqual(ours, theirs);
    t.deepEqual(ours, c.body);
  });
}

test('a variant comes out as a dbus-next Variant, ay as a Buffer that does not share the received chunk', (t) => {
  const bytes = reference(MessageKind.METHOD_RETURN, 'a{sv}', [
    { Id: new Variant('ay', Buffer.alloc(16, 1)) },
  ]);
  const [props] = decodeBody(readOne(bytes)) as [Record<string, Variant>];
  const id = props.Id;
  t.true(id instanceof Variant);
  t.is(id?.signature, 'ay');
  const value: unknown = id?.value;
  t.true(Buffer.isBuffer(value));
  if (Buffer.isBuffer(value)) t.not(value.buffer, bytes.buffer);
});

test('decodePropertiesBody: an a{sv} reply as PropertyValues, each value and signature what the Variant dbus-next hands out has', (t) => {
  for (const c of REPLIES) {
    const bytes = reference(MessageKind.METHOD_RETURN, c.signature, c.body);
    const read = decodePropertiesBody(readOne(bytes));
    if (c.signature !== 'a{sv}') {
      t.deepEqual(read, decodeBody(readOne(bytes)), `${c.title}: as decodeBody`);
      continue;
    }
    const theirs = compat.messageToJsFmt(dbusMessage.unmarshall(bytes, { ayBuffer: true })).body as [
      Record<string, Variant>,
    ];
    const [props] = read;
    if (!(props instanceof PropertyValues)) return t.fail(`${c.title}: ${String(props)}`);
    t.deepEqual(Object.keys(props.values), Object.keys(theirs[0]));
    for (const [key, variant] of Object.entries(theirs[0])) {
      t.deepEqual(props.values[key], variant.value, key);
      t.is(props.signatures[key], variant.signature, key);
    }
  }
  // the same dict in a big-endian message, and a nested variant kept as a Variant
  const nested = reference(MessageKind.METHOD_RETURN, 'a{sv}', [
    { V: new Variant('v', new Variant('u', 5)) },
  ]);
  const [p] = decodePropertiesBody(readOne(nested));
  t.true(p instanceof PropertyValues);
  if (p instanceof PropertyValues) {
    t.is(p.signatures.V, 'v');
    t.deepEqual(p.values.V, new Variant('u', 5));
  }
});

test('decodePropertiesBody: an ERROR reply and an a{sv} that is not the whole body are read as decodeBody reads them', (t) => {
  const error = readOne(
    reference(MessageKind.ERROR, 's', ['No such object'], {
      errorName: 'org.freedesktop.DBus.Error.UnknownObject',
    }),
  );
  t.deepEqual(decodePropertiesBody(error), ['No such object']);
  const two = readOne(reference(MessageKind.METHOD_RETURN, 'a{sv}s', [{ A: new Variant('s', 'x') }, 'y']));
  t.deepEqual(decodePropertiesBody(two), decodeBody(two));
  // trailing bytes after the dict: refused as decodeBody refuses them
  const one = readOne(reference(MessageKind.METHOD_RETURN, 'a{sv}', [{ A: new Variant('s', 'x') }]));
  const longer = { ...one, body: Buffer.concat([one.body, Buffer.alloc(4)]) };
  t.throws(() => decodeBody(longer), { instanceOf: WireError });
  t.throws(() => decodePropertiesBody(longer), { instanceOf: WireError });
});

test('decodePropertiesBody: a "__proto__" property is an own one, not the prototype', (t) => {
  const m = readOne(reference(MessageKind.METHOD_RETURN, 'a{sv}', [{}]));
  // { "__proto__": <u 1> } written by hand: key, then variant signature "u", then the value
  const body = Buffer.alloc(8 + 4 + 10 + 3 + 3 + 4);
  let o = body.writeUInt32LE(body.length - 8, 0) + 4; // array length (elements start at 8)
  o = body.writeUInt32LE(9, o);
  o += body.write('__proto__\0', o, 'latin1');
  o = body.writeUInt8(1, o);
  o += body.write('u\0', o, 'latin1');
  o += 3; // align to 4
  body.writeUInt32LE(1, o);
  const [p] = decodePropertiesBody({ ...m, body });
  if (!(p instanceof PropertyValues)) return t.fail(String(p));
  t.deepEqual(Object.keys(p.values), ['__proto__']);
  t.is(Object.getPrototypeOf(p.values), Object.prototype);
  t.is(p.values.__proto__, 1);
  t.is(p.signatures.__proto__, 'u');
});

test('an ERROR message carries its name and text', (t) => {
  const bytes = reference(MessageKind.ERROR, 's', ['No machine foo known'], {
    errorName: 'org.freedesktop.machine1.NoSuchMachine',
  });
  const m = readOne(bytes);
  t.is(m.kind, MessageKind.ERROR);
  t.is(m.errorName, 'org.freedesktop.machine1.NoSuchMachine');
  t.deepEqual(decodeBody(m), ['No machine foo known']);
});

test('a "__proto__" dict key is an own property, not the prototype', (t) => {
  const bytes = reference(MessageKind.METHOD_RETURN, 'a{ss}', [{}]);
  // dbus-next cannot write that key from an object; patch an empty dict's reply into one entry.
  const m = readOne(bytes);
  const body = Buffer.alloc(8 + 4 + 10 + 2 + 4 + 2);
  body.writeUInt32LE(body.length - 8, 0); // array length (elements start at 8)
  let o = 8;
  o = body.writeUInt32LE(9, o);
  o += body.write('__proto__\0', o, 'latin1');
  o += 2; // align to 4
  o = body.writeUInt32LE(1, o);
  body.write('x\0', o, 'latin1');
  const dict = decodeBody({ ...m, body }) as [Record<string, unknown>];
  t.deepEqual(Object.keys(dict[0]), ['__proto__']);
  t.is(Object.getPrototypeOf(dict[0]), Object.prototype);
});

test('big-endian messages are read too', (t) => {
  // A METHOD_RETURN, serial 2, reply to 9, signature "u", body 0x01020304: written by hand.
  const fields = Buffer.from([
    5, 1, 0x75, 0, 0, 0, 0, 9, // REPLY_SERIAL u 9
    8, 1, 0x67, 0, 1, 0x75, 0, // SIGNATURE g "u"
  ]); // prettier-ignore
  const head = Buffer.from([0x42, 2, 0, 1, 0, 0, 0, 4, 0, 0, 0, 2, 0, 0, 0, fields.length]);
  const m = readOne(Buffer.concat([head, fields, Buffer.alloc(1), Buffer.from([1, 2, 3, 4])]));
  t.is(m.replySerial, 9);
  t.false(m.littleEndian);
  t.deepEqual(decodeBody(m), [0x01020304]);
});

test('messages split anywhere, or several in one chunk, come out whole and in order', (t) => {
  const all = Buffer.concat(REPLIES.map((c) => reference(MessageKind.METHOD_RETURN, c.signature, c.body)));
  for (const step of [1, 3, 7, 64, all.length]) {
    const reader = new MessageReader();
    const got: WireMessage[] = [];
    for (let i = 0; i < all.length; i += step) got.push(...reader.push(all.subarray(i, i + step)));
    t.deepEqual(
      got.map((m) => decodeBody(m)),
      REPLIES.map((c) => c.body),
      `chunks of ${step} bytes`,
    );
  }
});

test('a call we write is read back by dbus-next with every field, and its padding is zero', (t) => {
  const header = {
    serial: 42,
    destination: 'org.freedesktop.machine1',
    path: '/org/freedesktop/machine1/machine/_2dweird',
    interface: 'org.freedesktop.DBus.Properties',
    member: 'GetAll',
    signature: 'soiub',
    flags: 0x2,
  };
  const body = ['ünïcode', '/o/p', -5, 4_000_000_000, true];
  t.true(canEncode(header.signature, body));
  const bytes = encodeCall(header, body);
  const back = dbusMessage.unmarshall(bytes, { ayBuffer: true });
  t.like(back, {
    serial: 42,
    destination: header.destination,
    path: header.path,
    interface: header.interface,
    member: header.member,
    signature: header.signature,
    flags: 0x2,
    type: MessageKind.METHOD_CALL,
  });
  t.deepEqual(compat.messageToJsFmt(back).body, body);
  // Same bytes as dbus-next writes for the same call (its padding is zero too).
  const theirs = compat.marshallMessage({ ...header, type: MessageKind.METHOD_CALL, body: [...body] });
  t.deepEqual(bytes, theirs[0]);
});

test('a call without arguments has no signature field and an empty body, as dbus-next writes it', (t) => {
  const header = {
    serial: 1,
    destination: 'd.e',
    path: '/',
    interface: 'i.f',
    member: 'M',
    signature: '',
    flags: 0,
  };
  const bytes = encodeCall(header, []);
  const m = readOne(bytes);
  t.is(m.signature, '');
  t.is(m.body.length, 0);
  t.deepEqual(bytes, compat.marshallMessage({ ...header, type: MessageKind.METHOD_CALL, body: [] })[0]);
});

test('canEncode takes strings, object paths, 32-bit integers and booleans only, of the right kind and range', (t) => {
  t.true(canEncode('', []));
  t.true(canEncode('s', ['x']));
  t.true(canEncode('ui', [0xffffffff, -0x80000000]));
  t.true(canEncode('bb', [true, false]));
  t.false(canEncode('s', [1]), 'type mismatch');
  t.false(canEncode('s', []), 'count mismatch');
  t.false(canEncode('u', [-1]));
  t.false(canEncode('u', [2 ** 32]));
  t.false(canEncode('i', [2 ** 31]));
  t.false(canEncode('i', [1.5]));
  t.false(canEncode('b', [1]));
  t.false(canEncode('t', [1n]), '64-bit goes through dbus-next');
  t.false(canEncode('ay', [Buffer.alloc(1)]));
  t.false(canEncode('a{sv}', [{}]));
});

test('canEncode refuses what the bus would disconnect us for: a NUL in a string, an object path that is not one', (t) => {
  t.true(canEncode('o', ['/']));
  t.true(canEncode('o', ['/org/freedesktop/machine1/machine/_2dweird']));
  for (const bad of ['', 'org', '//', '/a/', '/a//b', '/a-b', '/ä', '/a\0'])
    t.false(canEncode('o', [bad]), JSON.stringify(bad));
  t.false(canEncode('s', ['a\0b']));
  t.false(canEncode('ss', ['fine', '\0']));
  t.true(canEncode('s', ['ünï\u{1f600}']));
});

test('badObjectPathArgument finds a malformed object path wherever it sits, in the form dbus-next takes', (t) => {
  const bad = '/not/a/path/';
  const cases: [signature: string, body: unknown[]][] = [
    ['o', [bad]],
    ['so', ['x', bad]],
    ['ao', [['/fine', bad]]],
    ['(so)', [['x', bad]]],
    [
      'a(sao)',
      [
        [
          ['x', ['/fine']],
          ['y', ['/', bad]],
        ],
      ],
    ],
    ['a{os}', [{ '/fine': 'x', [bad]: 'y' }]],
    ['a{so}', [{ x: '/fine', y: bad }]],
    ['v', [new Variant('o', bad)]],
    ['a{sv}', [{ Leader: new Variant('u', 1), Path: new Variant('o', bad) }]],
    ['v', [new Variant('v', new Variant('ao', ['/fine', bad]))]],
    ['(iv)', [[1, new Variant('(so)', ['x', bad])]]],
  ];
  for (const [signature, body] of cases) t.is(badObjectPathArgument(signature, body), bad, signature);
  const fine: [signature: string, body: unknown[]][] = [
    ['o', ['/']],
    ['ao', [['/a', '/a/b_c']]],
    ['a{os}', [{ '/a': 'x' }]],
    ['a{sv}', [{ Name: new Variant('s', '/not/a/path/'), Path: new Variant('o', '/a') }]],
    ['as', [['/not/a/path/']]],
    ['(so)', [['/not/a/path/', '/a']]],
    ['v', [new Variant('s', '/not/a/path/')]],
  ];
  for (const [signature, body] of fine) t.is(badObjectPathArgument(signature, body), undefined, signature);
  // a body of the wrong shape is dbus-next's to refuse: no throw here
  t.is(badObjectPathArgument('ao', ['/a']), undefined);
  t.is(badObjectPathArgument('a{os}', [['/a']]), undefined);
  t.is(badObjectPathArgument('v', ['/a']), undefined);
  t.is(badObjectPathArgument('a(', [[]]), undefined, 'a malformed signature');
});

/**
 * Fills the rest of the current Buffer.allocUnsafe pool with a non-zero byte, so that a writer
 * relying on zeroed memory for its padding shows it in the next small allocation.
 */
function dirtyBufferPool(): void {
  const probe = Buffer.allocUnsafe(1);
  new Uint8Array(probe.buffer).fill(0xa5, probe.byteOffset + 1);
}

/** Every signature the registry's calls send with simple arguments (machine1.ts, daemon/resolved.ts). */
const SENT_SIGNATURES = [
  '',
  's',
  'u',
  'i',
  'b',
  'o',
  'ss',
  'sss',
  'su',
  'si',
  'ssi',
  'sb',
  'ssb',
  'ssbb',
  'sssbb',
  'ib',
  'soiub',
];

test('calls are written byte for byte as dbus-next writes them, strings of 0 to 300 bytes in any position', (t) => {
  const header = {
    destination: 'org.freedesktop.machine1',
    path: '/org/freedesktop/machine1',
    interface: 'org.freedesktop.machine1.Manager',
    member: 'KillMachine',
    flags: 0x2,
  };
  const value = (code: string, length: number): unknown => {
    switch (code) {
      case 's':
        return 'x'.repeat(length);
      case 'o':
        return `/${'p'.repeat(length)}`;
      case 'i':
        return -length - 1;
      case 'u':
        return 0xffffff00 + (length % 256);
      default:
        return length % 2 === 0;
    }
  };
  let compared = 0;
  for (const signature of SENT_SIGNATURES) {
    const codes = signature.split(''); // type codes are ASCII
    const strings = codes.flatMap((c, i) => (c === 's' || c === 'o' ? [i] : []));
    for (let length = 0; length <= 300; length++) {
      // the long string at each position in turn (the others short), and all strings long
      const variants = [...strings.map((p) => [p]), strings];
      for (const long of variants) {
        const body = codes.map((c, i) => value(c, long.includes(i) ? length : 3));
        if (!canEncode(signature, body)) return t.fail(`canEncode ${signature} ${JSON.stringify(body)}`);
        const h = { ...header, serial: ++compared, signature };
        dirtyBufferPool();
        let ours: Buffer;
        try {
          ours = encodeCall(h, body);
        } catch (err) {
          return t.fail(`${signature}, strings at ${long.join(',')} of ${length} bytes: ${String(err)}`);
        }
        const theirs = compat.marshallMessage({ ...h, type: MessageKind.METHOD_CALL, body: [...body] })[0];
        if (!ours.equals(theirs))
          return t.fail(`${signature}, strings at ${long.join(',')} of ${length} bytes: bytes differ`);
      }
    }
  }
  t.true(compared > 10_000, `${compared} calls compared`);
});

test('malformed input is a WireError, never another exception', (t) => {
  const good = REPLIES.map((c) => reference(MessageKind.METHOD_RETURN, c.signature, c.body));
  const random = prng(20261202);
  let wireErrors = 0;
  for (let i = 0; i < 5000; i++) {
    const base = good[i % good.length] ?? Buffer.alloc(0);
    const bytes = Buffer.from(base);
    const flips = 1 + Math.floor(random() * 4);
    for (let f = 0; f < flips; f++) bytes[Math.floor(random() * bytes.length)] = Math.floor(random() * 256);
    try {
      for (const m of new MessageReader().push(bytes)) {
        decodePropertiesBody(m);
        decodeBody(m);
      }
    } catch (err) {
      if (!(err instanceof WireError)) return t.fail(`case ${i}: ${String(err)}`);
      wireErrors++;
    }
  }
  t.true(wireErrors > 500, `${wireErrors} of 5000 mutated messages refused`);
});

test('a header announcing a message over 128 MiB is refused before it is buffered', (t) => {
  const bytes = reference(MessageKind.METHOD_RETURN, 's', ['x']);
  bytes.writeUInt32LE(0x7fffffff, 4);
  t.throws(() => new MessageReader().push(bytes), { instanceOf: WireError, message: /message of/ });
});

test('unixSocketPath: path, abstract, escapes, the first unix entry; none for tcp', (t) => {
  t.is(unixSocketPath('unix:path=/run/dbus/system_bus_socket'), '/run/dbus/system_bus_socket');
  t.is(unixSocketPath('unix:path=/tmp/a%20b,guid=0123'), '/tmp/a b');
  t.is(unixSocketPath('unix:abstract=/tmp/dbus-x'), '\0/tmp/dbus-x');
  t.is(unixSocketPath('tcp:host=localhost,port=1;unix:path=/s'), '/s');
  t.is(unixSocketPath('tcp:host=localhost,port=1'), undefined);
});

/** A method call as the bus delivers it to us, written by dbus-next (the reference). */
function incomingCall(
  iface: string | undefined,
  member: string,
  extra: Record<string, unknown> = {},
): WireMessage {
  return readOne(
    compat.marshallMessage({
      type: MessageKind.METHOD_CALL,
      serial: 77,
      destination: ':1.9',
      sender: ':1.3',
      path: '/some/path',
      ...(iface === undefined ? {} : { interface: iface }),
      member,
      ...extra,
    })[0],
  );
}

/**
 * Our answer, read back by dbus-next; one without a body by our reader (dbus-next's `unmarshall`
 * needs a signature field; its connection reads bodiless messages another way).
 */
function answerOf(
  call: WireMessage,
  machineId: () => string | Error = () => 'ab'.repeat(16),
): Record<string, unknown> {
  const bytes = answerCall(call, 5, machineId);
  if (!bytes) throw new Error('no answer');
  const ours = readOne(bytes);
  if (ours.signature === '')
    return { type: ours.kind, serial: ours.serial, replySerial: ours.replySerial, body: decodeBody(ours) };
  const back = dbusMessage.unmarshall(bytes, { ayBuffer: true });
  return { ...back, body: compat.messageToJsFmt(back).body };
}

test('a method call received carries the header fields an answer needs', (t) => {
  const m = incomingCall('org.freedesktop.DBus.Peer', 'Ping', { flags: NO_REPLY_EXPECTED });
  t.like(m, {
    kind: MessageKind.METHOD_CALL,
    serial: 77,
    flags: NO_REPLY_EXPECTED,
    sender: ':1.3',
    path: '/some/path',
    interface: 'org.freedesktop.DBus.Peer',
    member: 'Ping',
    signature: '',
  });
});

test('calls to the lean connection: Peer and Introspectable answered, anything else UnknownMethod, none when no reply is wanted', (t) => {
  const reply = { type: MessageKind.METHOD_RETURN, serial: 5, replySerial: 77, destination: ':1.3' };
  const empty = { type: MessageKind.METHOD_RETURN, serial: 5, replySerial: 77, body: [] };
  t.like(answerOf(incomingCall('org.freedesktop.DBus.Peer', 'Ping')), empty);
  t.like(answerOf(incomingCall(undefined, 'Ping')), empty, 'no interface: the method name alone');
  t.like(answerOf(incomingCall('org.freedesktop.DBus.Peer', 'GetMachineId')), {
    ...reply,
    signature: 's',
    body: ['ab'.repeat(16)],
  });
  t.like(
    answerOf(incomingCall('org.freedesktop.DBus.Peer', 'GetMachineId'), () => new Error('cannot read it')),
    {
      type: MessageKind.ERROR,
      errorName: 'org.freedesktop.DBus.Error.FileNotFound',
      body: ['cannot read it'],
    },
  );
  t.like(answerOf(incomingCall('org.freedesktop.DBus.Introspectable', 'Introspect')), {
    ...reply,
    body: [INTROSPECTION],
  });
  const unknown = answerOf(incomingCall('org.example.Frob', 'Frobnicate'));
  t.like(unknown, {
    type: MessageKind.ERROR,
    replySerial: 77,
    destination: ':1.3',
    errorName: 'org.freedesktop.DBus.Error.UnknownMethod',
  });
  t.regex(String((unknown.body as unknown[])[0]), /Frobnicate/);
  t.like(answerOf(incomingCall('org.freedesktop.DBus.Peer', 'Ping', { signature: 's', body: ['x'] })), {
    type: MessageKind.ERROR,
    errorName: 'org.freedesktop.DBus.Error.InvalidArgs',
  });
  t.is(
    answerCall(incomingCall('org.freedesktop.DBus.Peer', 'Ping', { flags: NO_REPLY_EXPECTED }), 5, () => ''),
    undefined,
  );
  t.is(
    answerCall(incomingCall('org.example.Frob', 'Frobnicate', { flags: NO_REPLY_EXPECTED }), 5, () => ''),
    undefined,
  );
});
