import { Variant } from '@particle/dbus-next';
import test from 'ava';
import { isBusError, type CallSpec } from '../src/registry-client/bus.js';
import { decodePropertiesBody, PropertyValues } from '../src/registry-client/dbus-wire.js';
import {
  Machine1Client,
  machinePropertiesSchema,
  type MachineProperties,
} from '../src/registry-client/machine1.js';

/** A client whose every call is answered with `reply` (what the codecs decode a message body to). */
const answering = (reply: unknown[]): Machine1Client =>
  new Machine1Client({ call: () => Promise.resolve(reply) });

const good = {
  Name: new Variant('s', 'alpha'),
  Id: new Variant('ay', Buffer.alloc(16, 1)),
  Timestamp: new Variant('t', 1_700_000_000_000_000n),
  TimestampMonotonic: new Variant('t', 5_000_000n),
  Service: new Variant('s', 'nspawn'),
  Unit: new Variant('s', 'machine-alpha.scope'),
  Leader: new Variant('u', 4242),
  Class: new Variant('s', 'container'),
  RootDirectory: new Variant('s', '/var/lib/machines/alpha'),
  NetworkInterfaces: new Variant('ai', [7]),
  State: new Variant('s', 'running'),
};

test('Properties.GetAll of a machine: the variants unwrapped into typed properties', async (t) => {
  const props = await answering([good]).machineProperties('/org/freedesktop/machine1/machine/alpha');
  t.is(props.Name, 'alpha');
  t.is(props.Leader, 4242);
  t.is(props.Timestamp, 1_700_000_000_000_000n);
  t.deepEqual(props.Id, Buffer.alloc(16, 1));
  t.deepEqual(props.NetworkInterfaces, [7]);
});

test('a GetAll reply that is not a dict of variants, or a property of another type, is BadReply', async (t) => {
  const bad: [string, unknown[]][] = [
    ['a value that is not a variant', [{ ...good, Leader: 4242 }]],
    ['a property of another type', [{ ...good, Leader: new Variant('s', '4242') }]],
    ['a property missing', [Object.fromEntries(Object.entries(good).filter(([k]) => k !== 'State'))]],
    ['a value left undefined', [{ ...good, State: undefined }]],
    ['an array instead of a dict', [[good]]],
    ['a buffer instead of a dict', [Buffer.from('alpha')]],
    ['a string instead of a dict', ['alpha']],
    ['null', [null]],
    ['no body', []],
  ];
  for (const [what, reply] of bad) {
    const err = await t.throwsAsync(
      answering(reply).machineProperties('/org/freedesktop/machine1/machine/alpha'),
    );
    t.true(isBusError(err, 'BadReply'), `${what}: ${String(err)}`);
  }
});

/** The lean connection's form of `good` (decodePropertiesBody): values and signatures, no Variants. */
function asPropertyValues(dict: Record<string, Variant>): PropertyValues {
  const entries = Object.entries(dict);
  return new PropertyValues(
    Object.fromEntries(entries.map(([k, v]) => [k, v.value])),
    Object.fromEntries(entries.map(([k, v]) => [k, v.signature])),
  );
}

/** Counts the machine properties schema's parses while `work` runs (serial tests only: others would count too). */
async function schemaParses(work: () => Promise<unknown>): Promise<number> {
  // an own property over the schema's own or inherited safeParse, for the time of `work`
  const own = Object.getOwnPropertyDescriptor(machinePropertiesSchema, 'safeParse');
  const parse = machinePropertiesSchema.safeParse.bind(machinePropertiesSchema);
  let parses = 0;
  machinePropertiesSchema.safeParse = (...args) => {
    parses++;
    return parse(...args);
  };
  try {
    await work();
  } finally {
    if (own) Object.defineProperty(machinePropertiesSchema, 'safeParse', own);
    else Reflect.deleteProperty(machinePropertiesSchema, 'safeParse');
  }
  return parses;
}

test.serial(
  'GetAll asks the lean connection for PropertyValues; with systemd signatures they are the properties without the schema',
  async (t) => {
    const specs: CallSpec[] = [];
    const client = new Machine1Client({
      call: (spec) => {
        specs.push(spec);
        return Promise.resolve([asPropertyValues({ ...good, Extra: new Variant('s', 'ignored') })]);
      },
    });
    let props: MachineProperties | undefined;
    const parses = await schemaParses(async () => {
      props = await client.machineProperties('/org/freedesktop/machine1/machine/alpha');
    });
    t.is(parses, 0);
    t.is(specs[0]?.readBody, decodePropertiesBody);
    t.is(specs[0]?.member, 'GetAll');
    // the same object the schema makes of dbus-next's variants: unknown properties left out
    t.deepEqual(props, await answering([good]).machineProperties('/org/freedesktop/machine1/machine/alpha'));
  },
);

test.serial(
  'PropertyValues with another signature than systemd gives go through the schema: what it accepts is kept, the rest is BadReply',
  async (t) => {
    const path = '/org/freedesktop/machine1/machine/alpha';
    // Leader as int32: not what systemd sends, but a valid uid_t value, so the schema takes it
    let props: MachineProperties | undefined;
    const parses = await schemaParses(async () => {
      props = await answering([
        asPropertyValues({ ...good, Leader: new Variant('i', 4242) }),
      ]).machineProperties(path);
    });
    t.is(parses, 1);
    t.is(props?.Leader, 4242);
    const bad: [string, Record<string, Variant>][] = [
      ['a property of another type', { ...good, Leader: new Variant('s', '4242') }],
      ['a negative Leader', { ...good, Leader: new Variant('i', -1) }],
      ['a property missing', Object.fromEntries(Object.entries(good).filter(([k]) => k !== 'State'))],
      ['NetworkInterfaces as bytes', { ...good, NetworkInterfaces: new Variant('ay', Buffer.from([7])) }],
    ];
    for (const [what, dict] of bad) {
      const err = await t.throwsAsync(answering([asPropertyValues(dict)]).machineProperties(path));
      t.true(isBusError(err, 'BadReply'), `${what}: ${String(err)}`);
    }
  },
);
