import test from 'ava';
import fc from 'fast-check';
import { MachineTable } from '../src/registry-client/registry.js';
import {
  enumerateGroups,
  enumerateUsers,
  groupRecords,
  isValidGecos,
  isValidUserName,
  lookupGroup,
  lookupUser,
  parseUnixId,
  userRecords,
  userdbNameProblem,
  type Lookup,
  type UserdbNameProblem,
  type UserRecord,
} from '../src/userdb/records.js';
import { labTable } from './support/lab-machines.js';
import { machineRecord } from './support/records.js';

const SERVICE = 'io.systemd.Machine';

function userRecord(name: string, uid: number, inner: number, machine: string): UserRecord {
  return {
    userName: name,
    uid,
    gid: 65534,
    realName: `UID ${inner} of Container ${machine}`,
    homeDirectory: '/',
    shell: '/usr/sbin/nologin',
    locked: true,
    service: SERVICE,
    disposition: 'container',
  };
}

// ---- names (reference §2.4 step 4, §7.2, §7.4) --------------------------------------------------

const userNames: [string, boolean][] = [
  ['vu-testct-1000', true],
  ['_x', true],
  ['A-b_9', true],
  ['vu--0', true],
  ['', false],
  ['1abc', false], // first character must be a letter or _
  ['-abc', false],
  ['vu-my.ct-0', false], // no dots
  ['vu-a b-0', false],
  ['vu-ä-0', false],
  ['a'.repeat(31), true], // UT_NAMESIZE - 1
  ['a'.repeat(32), false],
  ['1000', false], // numeric-only
];
for (const [name, valid] of userNames) {
  test(`${JSON.stringify(name)} is ${valid ? '' : 'not '}a strict user name`, (t) => {
    t.is(isValidUserName(name), valid);
  });
}

const ids: [string, number | undefined][] = [
  ['0', 0],
  ['1000', 1000],
  ['65534', 65534],
  ['4294967294', 4294967294],
  ['65535', undefined], // the 16-bit invalid id
  ['4294967295', undefined], // (uid_t) -1
  ['4294967296', undefined],
  ['01000', undefined], // leading zero
  ['00', undefined],
  ['+1', undefined],
  ['-1', undefined],
  [' 1', undefined],
  ['1_0', undefined],
  ['', undefined],
  ['10000000000', undefined],
];
for (const [text, id] of ids) {
  test(`the id suffix ${JSON.stringify(text)} parses as ${String(id)}`, (t) => {
    t.is(parseUnixId(text), id);
  });
}

test('GECOS text refuses control characters and colons only', (t) => {
  t.true(isValidGecos('UID 0 of Container ä-b'));
  t.false(isValidGecos('a:b'));
  t.false(isValidGecos('a\nb'));
  t.false(isValidGecos('a\u007fb'));
});

// ---- lookups over the lab machines (reference §7) ---------------------------------------------

const view = labTable();
type Case = [string, Parameters<typeof lookupUser>[1], Lookup<UserRecord>];
const notFound = { kind: 'not-found' } as const;
const found = (name: string, uid: number, inner: number, machine: string): Lookup<UserRecord> => ({
  kind: 'found',
  record: userRecord(name, uid, inner, machine),
});

const userCases: Case[] = [
  // §7.1: the name carries the inner uid, the record the host uid
  [
    'a host uid names the inner uid of its container',
    { id: 656360 },
    found('vu-testct-1000', 656360, 1000, 'testct'),
  ],
  ['a name gives the host uid', { name: 'vu-testct-1000' }, found('vu-testct-1000', 656360, 1000, 'testct')],
  // §7.3: host range
  [
    'a name lookup has no host-range guard (identity map)',
    { name: 'vu-hostns-1000' },
    found('vu-hostns-1000', 1000, 1000, 'hostns'),
  ],
  ['uid lookups skip identity maps', { id: 1000 }, notFound],
  [
    'the 0 0 1 map of unshare -r gives host 0 by name',
    { name: 'vu-delta-0' },
    found('vu-delta-0', 0, 0, 'delta'),
  ],
  ['an inner id outside the map is not found', { name: 'vu-delta-1' }, notFound],
  // §7.4: every map line counts
  [
    'the second range of a two-line map resolves by id',
    { id: 983040 },
    found('vu-multi-1000', 983040, 1000, 'multi'),
  ],
  [
    'the second range of a two-line map resolves by name',
    { name: 'vu-multi-1999' },
    found('vu-multi-1999', 984039, 1999, 'multi'),
  ],
  ['a gap between ranges is not found', { id: 918504 }, notFound],
  [
    'a host uid mapping to inner 65535 fails the lookup with EINVAL',
    { id: 1114112 },
    { kind: 'system-error', errno: 22 },
  ],
  ['a name whose id is 65535 is not found', { name: 'vu-testct-65535' }, notFound],
  ['a name with a leading zero is not found', { name: 'vu-testct-01000' }, notFound],
  ['a name with a plus sign is not found', { name: 'vu-testct-+1000' }, notFound],
  ['the prefix is case-sensitive', { name: 'VU-testct-1000' }, notFound],
  ['the machine name is case-sensitive', { name: 'vu-TestCT-1000' }, notFound],
  ['an unknown machine is not found', { name: 'vu-nosuch-0' }, notFound],
  ['a host machine has no users', { name: 'vu-.host-0' }, notFound],
  [
    'the inner id may be up to 4294967294',
    { name: 'vu-edge-65534' },
    found('vu-edge-65534', 4294967294, 65534, 'edge'),
  ],
  // §7.2: dotted and long machine names
  ['a dotted machine never has users by id', { id: 720896 }, notFound],
  ['a dotted machine never has users by name', { name: 'vu-my.ct-0' }, notFound],
  [
    'a 26-character machine name fits for inner ids 0 to 9',
    { id: 786441 },
    found('vu-abcdefghijklmnopqrstuvwxyz-9', 786441, 9, 'abcdefghijklmnopqrstuvwxyz'),
  ],
  ['a 26-character machine name does not fit for inner id 10', { id: 786442 }, notFound],
  // §7.5: precedence
  [
    'uid and a matching name give the record',
    { id: 656360, name: 'vu-testct-1000' },
    found('vu-testct-1000', 656360, 1000, 'testct'),
  ],
  [
    'uid beats name: a mismatching name is a conflict',
    { id: 656361, name: 'vu-testct-1000' },
    { kind: 'conflict' },
  ],
  ['a foreign name with a uid is a conflict', { id: 656360, name: 'someone' }, { kind: 'conflict' }],
  ['an empty name with a uid is a conflict', { id: 656360, name: '' }, { kind: 'conflict' }],
  ['when the uid finds nothing the name is not tried', { id: 1000, name: 'vu-testct-1000' }, notFound],
  [
    'a uid error wins over any name',
    { id: 1114112, name: 'vu-nosuch-0' },
    { kind: 'system-error', errno: 22 },
  ],
  // first owner wins (registration order): testct and twin share a range
  [
    'the first registered owner of a shared range wins',
    { id: 655360 },
    found('vu-testct-0', 655360, 0, 'testct'),
  ],
  [
    'the later container still resolves by name',
    { name: 'vu-twin-0' },
    found('vu-twin-0', 655360, 0, 'twin'),
  ],
  ['an empty name is not found', { name: '' }, notFound],
  // a dead leader: machined cannot open /proc/<leader>/uid_map
  [
    'a dead leader makes a name lookup fail with ENOENT',
    { name: 'vu-gone-0' },
    { kind: 'system-error', errno: 2 },
  ],
  ['a dead leader owns no host uid', { id: 1048576 }, notFound],
];
for (const [title, query, expected] of userCases) {
  test(title, (t) => {
    t.deepEqual(lookupUser(view, query, SERVICE), expected);
  });
}

test('uid below 65536 is never a container user, while the name still resolves there', (t) => {
  const table = new MachineTable();
  table.upsert(machineRecord({ name: 'low', uidMap: [{ inner: 0, outer: 1000, count: 65536 }] }));
  t.deepEqual(lookupUser(table, { id: 1000 }, SERVICE), notFound);
  t.deepEqual(lookupUser(table, { id: 65535 }, SERVICE), notFound);
  t.deepEqual(lookupUser(table, { id: 65536 }, SERVICE), found('vu-low-64536', 65536, 64536, 'low'));
  t.deepEqual(lookupUser(table, { name: 'vu-low-0' }, SERVICE), found('vu-low-0', 1000, 0, 'low'));
  t.deepEqual(lookupGroup(table, { id: 65535 }, SERVICE), notFound);
  t.deepEqual(enumerateUsers(table, SERVICE), []);
});

test('user records have exactly machined 252 keys, in its order', (t) => {
  const result = lookupUser(view, { id: 656360 }, SERVICE);
  if (result.kind !== 'found') return t.fail();
  t.is(
    JSON.stringify(result.record),
    '{"userName":"vu-testct-1000","uid":656360,"gid":65534,"realName":"UID 1000 of Container testct","homeDirectory":"/","shell":"/usr/sbin/nologin","locked":true,"service":"io.systemd.Machine","disposition":"container"}',
  );
});

test('group records have exactly machined 252 keys, in its order, from the gid map', (t) => {
  const table = labTable([
    {
      name: 'split',
      uidMap: [{ inner: 0, outer: 2000000, count: 65536 }],
      gidMap: [{ inner: 0, outer: 3000000, count: 65536 }],
    },
  ]);
  const byGid = lookupGroup(table, { id: 3000005 }, SERVICE);
  t.deepEqual(byGid, lookupGroup(table, { name: 'vg-split-5' }, SERVICE));
  if (byGid.kind !== 'found') return t.fail();
  t.is(
    JSON.stringify(byGid.record),
    '{"groupName":"vg-split-5","gid":3000005,"description":"GID 5 of Container split","service":"io.systemd.Machine","disposition":"container"}',
  );
  t.deepEqual(lookupGroup(table, { id: 2000005 }, SERVICE), notFound);
  t.deepEqual(lookupGroup(table, { name: 'vu-split-5' }, SERVICE), notFound);
  t.deepEqual(lookupGroup(table, { id: 3000005, name: 'vg-split-6' }, SERVICE), { kind: 'conflict' });
});

test('the record names the configured service', (t) => {
  const result = lookupUser(view, { id: 656360 }, 'io.mymachinesd');
  t.is(result.kind === 'found' ? result.record.service : undefined, 'io.mymachinesd');
});

test('a machine whose map was never read fails a name lookup like an unreadable map file', (t) => {
  const table = new MachineTable();
  table.upsert(machineRecord({ name: 'fresh' }));
  t.deepEqual(lookupUser(table, { name: 'vu-fresh-0' }, SERVICE), { kind: 'system-error', errno: 2 });
  table.upsert(machineRecord({ name: 'fresh', uidMap: [] }));
  t.deepEqual(lookupUser(table, { name: 'vu-fresh-0' }, SERVICE), notFound);
});

test('a translated host id that is invalid fails a name lookup with EINVAL', (t) => {
  const table = new MachineTable();
  table.upsert(machineRecord({ name: 'top', uidMap: [{ inner: 0, outer: 4294967294, count: 2 }] }));
  t.deepEqual(lookupUser(table, { name: 'vu-top-1' }, SERVICE), { kind: 'system-error', errno: 22 });
});

test('a vm never has users, even with maps', (t) => {
  const table = new MachineTable();
  table.upsert(
    machineRecord({ name: 'vm1', class: 'vm', uidMap: [{ inner: 0, outer: 100000, count: 65536 }] }),
  );
  t.deepEqual(lookupUser(table, { id: 100000 }, SERVICE), notFound);
  t.deepEqual(lookupUser(table, { name: 'vu-vm1-0' }, SERVICE), notFound);
});

test('every host uid and its name lookup agree (round trip)', (t) => {
  fc.assert(
    fc.property(fc.integer({ min: 0, max: 0xfffffffe }), (uid) => {
      const byId = lookupUser(view, { id: uid }, SERVICE);
      if (byId.kind !== 'found') return true;
      const byName = lookupUser(view, { name: byId.record.userName }, SERVICE);
      return byName.kind === 'found' && byName.record.uid === uid;
    }),
  );
  fc.assert(
    fc.property(
      fc.integer({ min: 655360, max: 720895 }),
      (uid) => lookupUser(view, { id: uid }, SERVICE).kind === 'found' || uid === 720895,
    ),
  );
  t.pass();
});

// ---- enumeration (beyond machined) -------------------------------------------------------------

test('enumeration lists inner 0 and the inner accounts of each container, in registration order', (t) => {
  const table = new MachineTable();
  const map = (outer: number) => [{ inner: 0, outer, count: 65536 }];
  table.upsert(
    machineRecord({
      name: 'web',
      uidMap: map(100000),
      innerUsers: [
        { name: 'www-data', id: 33 },
        { name: 'nobody', id: 65534 },
        { name: 'root', id: 0 },
        { name: 'toor', id: 0 },
      ],
    }),
  );
  table.upsert(machineRecord({ name: 'db', uidMap: map(200000) }));
  table.upsert(
    machineRecord({
      name: 'noUserns',
      uidMap: [{ inner: 0, outer: 0, count: 4294967295 }],
      innerUsers: [{ name: 'a', id: 1 }],
    }),
  );
  table.upsert(machineRecord({ name: 'my.dot', uidMap: map(300000) }));
  table.upsert(machineRecord({ name: 'dead', uidMap: map(400000), leaderAlive: false }));
  table.upsert(machineRecord({ name: 'vm', class: 'vm', uidMap: map(500000) }));
  table.upsert(
    machineRecord({
      name: 'small',
      uidMap: [{ inner: 0, outer: 600000, count: 10 }],
      innerUsers: [{ name: 'far', id: 1000 }],
    }),
  );
  t.deepEqual(
    enumerateUsers(table, SERVICE).map((r) => [r.userName, r.uid]),
    [
      ['vu-web-0', 100000],
      ['vu-web-33', 100033],
      ['vu-web-65534', 165534],
      ['vu-db-0', 200000],
      ['vu-small-0', 600000],
    ],
  );
  t.deepEqual(
    enumerateGroups(table, SERVICE).map((r) => r.groupName),
    ['vg-web-0', 'vg-db-0', 'vg-small-0'],
  );
});

test('the enumeration streams are lazy: a record is looked up when it is asked for, among the machines of the call', (t) => {
  const table = new MachineTable();
  const range = (outer: number): { inner: number; outer: number; count: number }[] => [
    { inner: 0, outer, count: 65536 },
  ];
  for (const [i, name] of ['one', 'two', 'three'].entries())
    table.upsert(
      machineRecord({ name, uidMap: range(100000 * (i + 1)), innerUsers: [{ name: 'u', id: 1000 }] }),
    );
  t.deepEqual(
    [...userRecords(table, SERVICE)].map((r) => r.userName),
    enumerateUsers(table, SERVICE).map((r) => r.userName),
  );
  t.deepEqual(
    [...groupRecords(table, SERVICE)].map((r) => r.groupName),
    enumerateGroups(table, SERVICE).map((r) => r.groupName),
  );
  const users = userRecords(table, SERVICE);
  t.is(users.next().value?.userName, 'vu-one-0');
  // removed after the stream began: its records are gone; one registered after it is not listed
  table.remove('two');
  table.upsert(machineRecord({ name: 'four', uidMap: range(400000) }));
  t.deepEqual(
    [...users].map((r) => r.userName),
    ['vu-one-1000', 'vu-three-0', 'vu-three-1000'],
  );
});

test('enumeration lists exactly the records the lookups return', (t) => {
  for (const record of enumerateUsers(view, SERVICE)) {
    t.deepEqual(lookupUser(view, { id: record.uid }, SERVICE), { kind: 'found', record });
    t.deepEqual(lookupUser(view, { name: record.userName }, SERVICE), { kind: 'found', record });
  }
  t.deepEqual(
    enumerateUsers(view, SERVICE).map((r) => r.userName),
    [
      'vu-testct-0',
      'vu-abcdefghijklmnopqrstuvwxyz-0',
      'vu-abcdefghijklmnopqrstuvw-0',
      'vu-multi-0',
      'vu-edge-0',
    ],
  );
});

test('an inner id whose host id belongs to an earlier container is not listed twice', (t) => {
  // twin shares testct's range: testct owns the host ids, so only testct lists them.
  t.false(enumerateUsers(view, SERVICE).some((r) => r.userName.startsWith('vu-twin-')));
});

test('enumeration of an empty registry is empty', (t) => {
  t.deepEqual(enumerateUsers(new MachineTable(), SERVICE), []);
});

// ---- names machined cannot form ------------------------------------------------------------------

const problems: [string, Parameters<typeof userdbNameProblem>[0], UserdbNameProblem['kind'] | undefined][] = [
  [
    'a short name has no problem',
    machineRecord({ name: 'web1', uidMap: [{ inner: 0, outer: 100000, count: 65536 }] }),
    undefined,
  ],
  ['a dotted name has no user names at all', machineRecord({ name: 'my.ct' }), 'bad-characters'],
  ['a 27-character name has no user names at all', machineRecord({ name: 'a'.repeat(27) }), 'too-long'],
  [
    'a 26-character name names inner ids 0 to 9 only',
    machineRecord({ name: 'a'.repeat(26) }),
    'too-long-for-some-ids',
  ],
  [
    'a 22-character name names every id of a 65536 map',
    machineRecord({ name: 'a'.repeat(22), uidMap: [{ inner: 0, outer: 100000, count: 65536 }] }),
    undefined,
  ],
  [
    'a 22-character name is too long for ids above 99999 of a bigger map',
    machineRecord({ name: 'a'.repeat(22), uidMap: [{ inner: 0, outer: 100000, count: 200000 }] }),
    'too-long-for-some-ids',
  ],
  [
    'a vm has no name problem (it never has records)',
    machineRecord({ name: 'my.vm', class: 'vm' }),
    undefined,
  ],
];
for (const [title, machine, kind] of problems) {
  test(title, (t) => {
    t.is(userdbNameProblem(machine)?.kind, kind);
  });
}

test('the name problem says what is wrong and what still works', (t) => {
  t.regex(userdbNameProblem(machineRecord({ name: 'my.ct' }))?.message ?? '', /contains '\.'/);
  const partial = userdbNameProblem(machineRecord({ name: 'abcdefghijklmnopqrstuvwxyz' }));
  t.is(partial?.kind === 'too-long-for-some-ids' ? partial.largestNamedId : undefined, 9);
  t.regex(partial?.message ?? '', /only inner ids up to 9 /);
});

test('a name problem is reported exactly when some mapped inner id has no name', (t) => {
  fc.assert(
    fc.property(
      fc.stringMatching(/^[a-z][a-z0-9.-]{0,30}$/),
      fc.integer({ min: 1, max: 200000 }),
      (name, count) => {
        const machine = machineRecord({ name, uidMap: [{ inner: 0, outer: 1000000, count }] });
        const table = new MachineTable();
        table.upsert(machine);
        // 65535 is never a valid inner id, whatever the name: check the largest valid one instead.
        const top = count - 1 === 0xffff ? count - 2 : count - 1;
        const unnamed = [0, top].some(
          (inner) => lookupUser(table, { id: 1000000 + inner }, SERVICE).kind !== 'found',
        );
        return (userdbNameProblem(machine) !== undefined) === unnamed;
      },
    ),
  );
  t.pass();
});
