import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import test from 'ava';
import type { RegistryView } from '../src/registry-client/view.js';
import { DIFFERENCES_FROM_MACHINED } from '../src/userdb/differences.js';
import { Errno } from '../src/userdb/records.js';
import {
  IO_SYSTEMD_IDL,
  SYSTEM_ERROR,
  USER_DATABASE_IDL,
  UserDatabaseErrors,
  isJsonSafe,
  userDatabaseInterfaces,
} from '../src/userdb/service.js';
import { idlMembers, invalidParameter, isStream, type VarlinkInterface } from '../src/varlink/interface.js';
import { ORG_VARLINK_SERVICE_IDL } from '../src/varlink/introspection.js';
import { readJsonText } from '../src/varlink/json.js';
import { VarlinkErrors, type VarlinkReply } from '../src/varlink/protocol.js';
import { labTable } from './support/lab-machines.js';

const USER = 'io.systemd.UserDatabase.GetUserRecord';
const GROUP = 'io.systemd.UserDatabase.GetGroupRecord';
const MEMBERSHIPS = 'io.systemd.UserDatabase.GetMemberships';

function userDatabase(view: RegistryView = labTable(), service?: string): VarlinkInterface {
  const [iface] = userDatabaseInterfaces(view, service);
  if (!iface) throw new Error('no interface');
  return iface;
}

type Answer = VarlinkReply | { readonly items: readonly unknown[]; readonly whenEmpty: VarlinkReply };

/** Calls a method as the server would, without a socket; answers must never be promises. */
function invoke(iface: VarlinkInterface, method: string, parametersJson: string, more = false): Answer {
  const read = readJsonText(parametersJson);
  if (!read.ok || read.node.kind !== 'object') throw new Error(`bad test input ${parametersJson}`);
  const target = iface.methods[method];
  if (!target) throw new Error(`no method ${method}`);
  const invocation = target.invoke(read.node.entries, read.node.value, { method, more });
  if (invocation.kind === 'parameter-problem')
    return (iface.parameterError ?? invalidParameter)(invocation.problem);
  const result = invocation.result;
  if (result instanceof Promise) throw new Error('userdb answered asynchronously');
  if (!isStream(result)) return result;
  const stream = result.stream;
  if (!(Symbol.iterator in stream)) throw new Error('userdb streamed asynchronously');
  return { items: [...stream], whenEmpty: result.whenEmpty };
}

const noRecord = { error: UserDatabaseErrors.NoRecordFound, parameters: {} };
const badService = { error: UserDatabaseErrors.BadService, parameters: {} };
const errno = (n: number) => ({ error: SYSTEM_ERROR, parameters: { errno: n } });

// ---- §7.6: the service name is the socket's basename ---------------------------------------------

test('service must equal the socket name exactly, for every method', (t) => {
  const iface = userDatabase();
  for (const method of [USER, GROUP, MEMBERSHIPS]) {
    t.deepEqual(invoke(iface, method, '{}'), badService, method);
    t.deepEqual(invoke(iface, method, '{"service":"io.systemd.Multiplexer"}'), badService, method);
    t.deepEqual(invoke(iface, method, '{"service":"io.systemd.machine"}'), badService, method);
    t.deepEqual(invoke(iface, method, '{"service":"io.systemd.Machine "}'), badService, method);
  }
});

test('a socket with another name answers to that name and puts it in its records', (t) => {
  const iface = userDatabase(labTable(), 'io.mymachinesd');
  t.deepEqual(invoke(iface, USER, '{"service":"io.systemd.Machine","uid":656360}'), badService);
  const reply = invoke(iface, USER, '{"service":"io.mymachinesd","uid":656360}');
  t.like(reply, { parameters: { record: { userName: 'vu-testct-1000', service: 'io.mymachinesd' } } });
});

// ---- §7.8, §2.7: parameter errors are v252 json_dispatch errnos ---------------------------------

const parameterCases: [string, string, string, VarlinkReply][] = [
  ['a null uid is EINVAL', USER, '{"service":"io.systemd.Machine","uid":null}', errno(Errno.EINVAL)],
  [
    'a null userName is EINVAL',
    USER,
    '{"service":"io.systemd.Machine","userName":null}',
    errno(Errno.EINVAL),
  ],
  ['a null service is EINVAL, not BadService', USER, '{"service":null}', errno(Errno.EINVAL)],
  ['a null gid is EINVAL', GROUP, '{"service":"io.systemd.Machine","gid":null}', errno(Errno.EINVAL)],
  ['a null groupName in GetMemberships is EINVAL', MEMBERSHIPS, '{"groupName":null}', errno(Errno.EINVAL)],
  ['a string uid is EINVAL', USER, '{"uid":"656360"}', errno(Errno.EINVAL)],
  ['a negative uid is EINVAL', USER, '{"uid":-1}', errno(Errno.EINVAL)],
  ['a fractional uid is EINVAL', USER, '{"uid":656360.5}', errno(Errno.EINVAL)],
  ['uid 65535 is EINVAL', USER, '{"uid":65535}', errno(Errno.EINVAL)],
  ['uid 4294967295 is EINVAL', USER, '{"uid":4294967295}', errno(Errno.EINVAL)],
  ['uid 2^32 is EINVAL', USER, '{"uid":4294967296}', errno(Errno.EINVAL)],
  ['a uid of 1e400 is EINVAL', GROUP, '{"gid":1e400}', errno(Errno.EINVAL)],
  ['an unsafe userName (quote) is EINVAL', USER, `{"userName":"a'b"}`, errno(Errno.EINVAL)],
  ['an unsafe groupName (backslash) is EINVAL', GROUP, String.raw`{"groupName":"a\\b"}`, errno(Errno.EINVAL)],
  [
    'an unsafe userName in GetMemberships is EINVAL',
    MEMBERSHIPS,
    String.raw`{"userName":"a\u0001"}`,
    errno(Errno.EINVAL),
  ],
  [
    'an unknown key is EADDRNOTAVAIL',
    USER,
    '{"service":"io.systemd.Machine","extra":1}',
    errno(Errno.EADDRNOTAVAIL),
  ],
  ['a key of another method is EADDRNOTAVAIL', GROUP, '{"uid":1}', errno(Errno.EADDRNOTAVAIL)],
  ['a repeated key is ENOTUNIQ', USER, '{"service":"x","service":"x"}', errno(Errno.ENOTUNIQ)],
  // the first bad field in wire order decides
  ['a bad value before an unknown key is EINVAL', USER, '{"uid":"x","extra":1}', errno(Errno.EINVAL)],
  [
    'an unknown key before a bad value is EADDRNOTAVAIL',
    USER,
    '{"extra":1,"uid":"x"}',
    errno(Errno.EADDRNOTAVAIL),
  ],
  [
    'an integer-like unknown key first is EADDRNOTAVAIL',
    USER,
    '{"0":1,"uid":"x"}',
    errno(Errno.EADDRNOTAVAIL),
  ],
  // per field: type, then repeat, then value
  ['a repeated key with a wrongly typed value is EINVAL', USER, '{"uid":1,"uid":"x"}', errno(Errno.EINVAL)],
  [
    'a repeated key with an invalid but well-typed value is ENOTUNIQ',
    USER,
    '{"uid":1,"uid":65535}',
    errno(Errno.ENOTUNIQ),
  ],
  ['a repeated unsafe name is ENOTUNIQ', USER, `{"userName":"a","userName":"a'b"}`, errno(Errno.ENOTUNIQ)],
  // parameter errors come before the service check
  ['a parameter error beats a bad service', USER, '{"service":"bad","uid":"x"}', errno(Errno.EINVAL)],
  [
    'an unknown key beats a bad service',
    MEMBERSHIPS,
    '{"service":"bad","uid":1}',
    errno(Errno.EADDRNOTAVAIL),
  ],
];
for (const [title, method, params, expected] of parameterCases) {
  test(title, (t) => {
    t.deepEqual(invoke(userDatabase(), method, params), expected);
  });
}

test('safe strings refuse exactly control characters, quotes, backslash and DEL', (t) => {
  for (const safe of ['vu-a-0', 'a b', 'ä', '\u0080', '\u2028', 'a`$;&|<>/']) t.true(isJsonSafe(safe), safe);
  for (const unsafe of ['\u0001', '\t', '\n', '"', "'", '\\', '\u007f', '\u001f'])
    t.false(isJsonSafe(unsafe), unsafe);
});

test('an integral real is accepted as a uid', (t) => {
  t.like(invoke(userDatabase(), USER, '{"service":"io.systemd.Machine","uid":656360.0}'), {
    parameters: { record: { uid: 656360 } },
  });
  t.like(invoke(userDatabase(), GROUP, '{"service":"io.systemd.Machine","gid":6.5636e5}'), {
    parameters: { record: { gid: 656360 } },
  });
});

// ---- §7.5 and §2.6: precedence, enumeration, memberships ----------------------------------------

test('without id or name and without more, lookups answer EnumerationNotSupported', (t) => {
  const iface = userDatabase();
  const notSupported = { error: UserDatabaseErrors.EnumerationNotSupported, parameters: {} };
  t.deepEqual(invoke(iface, USER, '{"service":"io.systemd.Machine"}'), notSupported);
  t.deepEqual(invoke(iface, GROUP, '{"service":"io.systemd.Machine"}'), notSupported);
});

test('with more and neither id nor name, lookups stream every record, NoRecordFound when empty', (t) => {
  const users = invoke(userDatabase(), USER, '{"service":"io.systemd.Machine"}', true);
  t.true('items' in users);
  if (!('items' in users)) return;
  t.is(users.items.length, 5);
  t.like(users.items[0], { record: { userName: 'vu-testct-0', uid: 655360 } });
  t.deepEqual(users.whenEmpty, noRecord);
  const groups = invoke(userDatabase(), GROUP, '{"service":"io.systemd.Machine"}', true);
  t.like(groups, { items: [{ record: { groupName: 'vg-testct-0' } }] });
});

test('a lookup with more still answers once', (t) => {
  t.like(invoke(userDatabase(), USER, '{"service":"io.systemd.Machine","userName":"vu-testct-0"}', true), {
    parameters: { record: { uid: 655360 } },
  });
});

test('GetMemberships is NoRecordFound after the service check, whatever it is asked', (t) => {
  const iface = userDatabase();
  for (const params of [
    '{"service":"io.systemd.Machine"}',
    '{"service":"io.systemd.Machine","userName":"vu-testct-0"}',
    '{"service":"io.systemd.Machine","groupName":"vg-testct-0"}',
    '{"service":"io.systemd.Machine","userName":"vu-testct-0","groupName":"vg-testct-0"}',
  ]) {
    t.deepEqual(invoke(iface, MEMBERSHIPS, params), noRecord, params);
    t.deepEqual(invoke(iface, MEMBERSHIPS, params, true), noRecord, params);
  }
});

test('lookup outcomes map to the UserDatabase errors and io.systemd.System', (t) => {
  const iface = userDatabase();
  t.deepEqual(
    invoke(iface, USER, '{"service":"io.systemd.Machine","uid":656361,"userName":"vu-testct-1000"}'),
    {
      error: UserDatabaseErrors.ConflictingRecordFound,
      parameters: {},
    },
  );
  t.deepEqual(invoke(iface, USER, '{"service":"io.systemd.Machine","uid":1114112}'), errno(Errno.EINVAL));
  t.deepEqual(
    invoke(iface, GROUP, '{"service":"io.systemd.Machine","groupName":"vg-gone-0"}'),
    errno(Errno.ENOENT),
  );
  t.deepEqual(invoke(iface, USER, '{"service":"io.systemd.Machine","uid":65536}'), noRecord);
});

// ---- the interface text and the documentation --------------------------------------------------

test('every error name the userdb socket can send is declared by an interface it serves', (t) => {
  const declared = new Set<string>();
  for (const idl of [USER_DATABASE_IDL, IO_SYSTEMD_IDL, ORG_VARLINK_SERVICE_IDL]) {
    const members = idlMembers(idl);
    for (const error of members.errors) declared.add(`${members.name}.${error}`);
  }
  for (const name of [...Object.values(UserDatabaseErrors), SYSTEM_ERROR, ...Object.values(VarlinkErrors)])
    t.true(declared.has(name), name);
});

test('the served interfaces are io.systemd.UserDatabase and io.systemd, with all three methods declared', (t) => {
  const [userdb, ioSystemd] = userDatabaseInterfaces(labTable());
  t.is(userdb?.name, 'io.systemd.UserDatabase');
  t.is(ioSystemd?.name, 'io.systemd');
  t.deepEqual(
    [...idlMembers(USER_DATABASE_IDL).methods],
    ['GetUserRecord', 'GetGroupRecord', 'GetMemberships'],
  );
  t.deepEqual(Object.keys(userdb?.methods ?? {}), [USER, GROUP, MEMBERSHIPS]);
});

test('docs/userdb.md describes every difference from machined', (t) => {
  const docs = readFileSync(join(import.meta.dirname, '..', '..', 'docs', 'userdb.md'), 'utf8');
  for (const difference of DIFFERENCES_FROM_MACHINED)
    t.true(docs.includes(`\`${difference.id}\``), difference.id);
});
