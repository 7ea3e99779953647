import { Variant } from '@particle/dbus-next';
import test from 'ava';
import { isBusError } from '../src/registry-client/bus.js';
import { Machine1Client } from '../src/registry-client/machine1.js';

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
