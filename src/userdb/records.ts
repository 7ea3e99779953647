/**
 * Pure synthesis of machined 252's container users and groups (`vu-<machine>-<inner uid>`,
 * `vg-<machine>-<inner gid>`) over the registry view: lookups by id and by name, their precedence,
 * enumeration, and why a machine's name cannot carry user names. No I/O and nothing awaited:
 * dbus-daemon itself resolves users through userdb, so a lookup that waited on D-Bus could deadlock
 * (systemd #40562). Everything needed is in the MachineRecord.
 *
 * Behaviour: reference §2.2–§2.6 and §7, checked against the real machined 252 (docs/userdb.md).
 */
import { isValidUnixId, translateId } from '../registry-client/idmap.js';
import type { IdOwner, IdRange, InnerAccount, MachineRecord, RegistryView } from '../registry-client/view.js';

// ---- constants of the record format --------------------------------------------------------------

/** The shell of Debian's build (NOLOGIN); machined puts it in every user record. */
export const NOLOGIN_SHELL = '/usr/sbin/nologin';
/** GID_NOBODY: the primary group of every container user, never the translated group. */
export const GID_NOBODY = 65534;
/** Host ids below this belong to the host: id lookups never answer for them (reference §2.4). */
export const HOST_ID_RANGE_END = 0x10000;
/** UT_NAMESIZE - 1: the longest strict user name. */
export const USER_NAME_MAX = 31;

/** errno values machined's userdb replies carry in `io.systemd.System` (reference §2.7). */
export const Errno = {
  ENOENT: 2,
  /** json_dispatch: a mandatory field is missing (no UserDatabase field is mandatory in 252). */
  ENXIO: 6,
  EINVAL: 22,
  ENOTUNIQ: 76,
  EADDRNOTAVAIL: 99,
} as const;
export type ErrnoValue = (typeof Errno)[keyof typeof Errno];

// Key order is part of the contract: it is the order machined sends (reference §2.4, §2.5).
export interface UserRecord {
  readonly userName: string;
  readonly uid: number;
  readonly gid: number;
  readonly realName?: string;
  readonly homeDirectory: string;
  readonly shell: string;
  readonly locked: boolean;
  readonly service: string;
  readonly disposition: 'container';
}

export interface GroupRecord {
  readonly groupName: string;
  readonly gid: number;
  readonly description?: string;
  readonly service: string;
  readonly disposition: 'container';
}

// ---- names ---------------------------------------------------------------------------------------

/**
 * systemd's `parse_uid`: decimal only, no sign, no leading zero, no whitespace, at most 2^32-1, and
 * neither 65535 nor 4294967295. Anything else is not an id.
 */
export function parseUnixId(text: string): number | undefined {
  if (!/^(?:0|[1-9][0-9]{0,9})$/.test(text)) return undefined;
  const id = Number(text);
  return isValidUnixId(id) ? id : undefined;
}

/**
 * systemd's strict `valid_user_group_name(name, 0)`: first character an ASCII letter or `_`, the
 * rest letters, digits, `_` or `-` (so no dots), at most 31 characters, and not a numeric id.
 */
export function isValidUserName(name: string): boolean {
  if (name.length === 0 || name.length > USER_NAME_MAX) return false;
  if (parseUnixId(name) !== undefined) return false;
  return /^[A-Za-z_][A-Za-z0-9_-]*$/.test(name);
}

/** systemd's `valid_gecos`: no control characters and no ':' (the text is a JS string: valid UTF-16). */
export function isValidGecos(text: string): boolean {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
  return !/[\x00-\x1f\x7f:]/.test(text);
}

// ---- the two kinds of records, as data -------------------------------------------------------------

interface KindRules<R> {
  readonly prefix: 'vu-' | 'vg-';
  readonly map: (m: MachineRecord) => readonly IdRange[] | undefined;
  readonly accounts: (m: MachineRecord) => readonly InnerAccount[] | undefined;
  readonly owner: (view: RegistryView, hostId: number) => IdOwner | undefined;
  readonly build: (name: string, hostId: number, text: string | undefined, service: string) => R;
  readonly text: (inner: number, machine: string) => string;
}

const USER: KindRules<UserRecord> = {
  prefix: 'vu-',
  map: (m) => m.uidMap,
  accounts: (m) => m.innerUsers,
  owner: (view, id) => view.ownerOfUid(id),
  text: (inner, machine) => `UID ${inner} of Container ${machine}`,
  build: (userName, uid, realName, service) => ({
    userName,
    uid,
    gid: GID_NOBODY,
    // machined drops a realName that is not valid GECOS; with machined's machine names it never is.
    ...(realName === undefined ? {} : { realName }),
    homeDirectory: '/',
    shell: NOLOGIN_SHELL,
    locked: true,
    service,
    disposition: 'container',
  }),
};

const GROUP: KindRules<GroupRecord> = {
  prefix: 'vg-',
  map: (m) => m.gidMap,
  accounts: (m) => m.innerGroups,
  owner: (view, id) => view.ownerOfGid(id),
  text: (inner, machine) => `GID ${inner} of Container ${machine}`,
  build: (groupName, gid, description, service) => ({
    groupName,
    gid,
    ...(description === undefined ? {} : { description }),
    service,
    disposition: 'container',
  }),
};

// ---- lookups ---------------------------------------------------------------------------------------

/** The outcome of one lookup; the service maps it to the wire in one switch. */
export type Lookup<R> =
  | { readonly kind: 'found'; readonly record: R }
  | { readonly kind: 'not-found' }
  | { readonly kind: 'conflict' }
  /** machined's handler fails with a negative errno: `io.systemd.System {"errno":N}`. */
  | { readonly kind: 'system-error'; readonly errno: ErrnoValue };

const NOT_FOUND = { kind: 'not-found' } as const;
const CONFLICT = { kind: 'conflict' } as const;
const EINVAL = { kind: 'system-error', errno: Errno.EINVAL } as const;
const ENOENT = { kind: 'system-error', errno: Errno.ENOENT } as const;

export interface IdQuery {
  readonly id?: number | undefined;
  readonly name?: string | undefined;
}

export function lookupUser(view: RegistryView, query: IdQuery, service: string): Lookup<UserRecord> {
  return lookup(USER, view, query, service, (r) => r.userName);
}

export function lookupGroup(view: RegistryView, query: IdQuery, service: string): Lookup<GroupRecord> {
  return lookup(GROUP, view, query, service, (r) => r.groupName);
}

/**
 * uid beats name: with both, the id decides and the name must match the record it finds, else
 * ConflictingRecordFound; when the id finds nothing the name is not tried (reference §2.4).
 * Callers handle "neither" (enumeration) themselves.
 */
function lookup<R>(
  rules: KindRules<R>,
  view: RegistryView,
  query: IdQuery,
  service: string,
  nameOf: (record: R) => string,
): Lookup<R> {
  if (query.id !== undefined) {
    const found = byId(rules, view, query.id, service);
    if (found.kind === 'found' && query.name !== undefined && nameOf(found.record) !== query.name)
      return CONFLICT;
    return found;
  }
  if (query.name !== undefined) return byName(rules, view, query.name, service);
  return NOT_FOUND;
}

/** Host id → record (`user_lookup_uid` / `group_lookup_gid`). */
function byId<R>(rules: KindRules<R>, view: RegistryView, hostId: number, service: string): Lookup<R> {
  if (hostId < HOST_ID_RANGE_END) return NOT_FOUND;
  // The first container (registration order) whose map covers the id, skipping outer-start-0
  // lines; dead leaders do not count (machined cannot open their map: "not owned").
  const owner = rules.owner(view, hostId);
  if (owner === undefined) return NOT_FOUND;
  // The id maps to inner 65535 or 2^32-1: machined fails the whole lookup with EINVAL (§2.3).
  if (!isValidUnixId(owner.inner)) return EINVAL;
  const name = `${rules.prefix}${owner.machine.name}-${owner.inner}`;
  // Names machined cannot synthesize (dots, too long) are simply not found (§2.4 step 4).
  if (!isValidUserName(name)) return NOT_FOUND;
  return {
    kind: 'found',
    record: rules.build(name, hostId, gecos(rules.text(owner.inner, owner.machine.name)), service),
  };
}

/** Name → record (`user_lookup_name` / `group_lookup_name`). No host-range guard here (§7.3). */
function byName<R>(rules: KindRules<R>, view: RegistryView, name: string, service: string): Lookup<R> {
  if (!isValidUserName(name) || !name.startsWith(rules.prefix)) return NOT_FOUND;
  // The last '-' separates the machine name from the inner id.
  const dash = name.lastIndexOf('-');
  if (dash < rules.prefix.length) return NOT_FOUND;
  const inner = parseUnixId(name.slice(dash + 1));
  if (inner === undefined) return NOT_FOUND;
  const machine = view.byName(name.slice(rules.prefix.length, dash));
  if (machine === undefined || machine.class !== 'container') return NOT_FOUND;
  // machined reads /proc/<leader>/{u,g}id_map here; a dead leader makes fopen fail with ENOENT,
  // which it returns as is (seen on machined 252: `io.systemd.System {"errno":2}`).
  const map = rules.map(machine);
  if (!machine.leaderAlive || map === undefined) return ENOENT;
  const translated = translateId(map, inner);
  switch (translated.kind) {
    case 'unmapped':
      return NOT_FOUND;
    case 'invalid-host':
      return EINVAL;
    case 'mapped':
      return {
        kind: 'found',
        record: rules.build(name, translated.host, gecos(rules.text(inner, machine.name)), service),
      };
  }
}

function gecos(text: string): string | undefined {
  return isValidGecos(text) ? text : undefined;
}

// ---- enumeration (beyond machined) ---------------------------------------------------------------

/**
 * Every user record of every container, containers in registration order, each container's inner
 * ids ascending: inner 0 always, plus the accounts the registry found inside it. Only records that
 * both lookups return identically are listed: the id lookup must name this machine and inner id,
 * so identity-mapped containers (no user namespace) and names machined cannot form list nothing.
 */
export function enumerateUsers(view: RegistryView, service: string): UserRecord[] {
  return [...userRecords(view, service)];
}

export function enumerateGroups(view: RegistryView, service: string): GroupRecord[] {
  return [...groupRecords(view, service)];
}

/**
 * enumerateUsers one record at a time, for a stream: the machines are those of the call (the view's
 * list then), each record is looked up when it is asked for.
 */
export function userRecords(view: RegistryView, service: string): Generator<UserRecord, void, undefined> {
  return enumerate(USER, view, service, (r) => r.userName);
}

export function groupRecords(view: RegistryView, service: string): Generator<GroupRecord, void, undefined> {
  return enumerate(GROUP, view, service, (r) => r.groupName);
}

function* enumerate<R>(
  rules: KindRules<R>,
  view: RegistryView,
  service: string,
  nameOf: (r: R) => string,
): Generator<R, void, undefined> {
  for (const machine of view.all()) {
    const map = rules.map(machine);
    if (machine.class !== 'container' || !machine.leaderAlive || map === undefined) continue;
    for (const inner of innerIds(rules.accounts(machine))) {
      const translated = translateId(map, inner);
      if (translated.kind !== 'mapped') continue;
      const found = byId(rules, view, translated.host, service);
      if (found.kind === 'found' && nameOf(found.record) === `${rules.prefix}${machine.name}-${inner}`)
        yield found.record;
    }
  }
}

function innerIds(accounts: readonly InnerAccount[] | undefined): number[] {
  const ids = new Set<number>([0]);
  for (const account of accounts ?? []) if (isValidUnixId(account.id)) ids.add(account.id);
  return [...ids].sort((a, b) => a - b);
}

// ---- machines whose names cannot carry user names ------------------------------------------------

export type UserdbNameProblem =
  /** The name has characters user names cannot have (machined allows '.' in machine names). */
  | { readonly kind: 'bad-characters'; readonly message: string }
  /** Even `vu-<name>-0` is longer than 31 characters. */
  | { readonly kind: 'too-long'; readonly message: string }
  /** Short ids get names, long ones do not: inner ids above `largestNamedId` stay nameless. */
  | { readonly kind: 'too-long-for-some-ids'; readonly largestNamedId: number; readonly message: string };

/**
 * Why a container's users and groups are (partly) missing from userdb although its maps are fine.
 * machined answers NoRecordFound for such names without saying anything; so do we on the wire, and
 * this is what the daemon logs once and `mymachinesd list` shows. Undefined: no problem, or not a
 * container (which never has records).
 */
export function userdbNameProblem(
  machine: Pick<MachineRecord, 'name' | 'class' | 'uidMap' | 'gidMap'>,
): UserdbNameProblem | undefined {
  if (machine.class !== 'container') return undefined;
  const name = machine.name;
  if (!/^[A-Za-z0-9_-]*$/.test(name)) {
    const what = name.includes('.') ? "contains '.'" : 'has characters other than letters, digits, _ and -';
    return {
      kind: 'bad-characters',
      message: `machine name '${name}' ${what}: no user or group names vu-${name}-N / vg-${name}-N can exist (machined answers NoRecordFound for them, and so do we)`,
    };
  }
  const digitsLeft = USER_NAME_MAX - `vu-${name}-`.length;
  if (digitsLeft < 1) {
    return {
      kind: 'too-long',
      message: `machine name '${name}' is ${name.length} characters: vu-${name}-N would exceed ${USER_NAME_MAX} characters, so its users and groups have no names (machined answers NoRecordFound, and so do we)`,
    };
  }
  const largestNamedId = 10 ** digitsLeft - 1;
  const largestInner = Math.max(largestInnerId(machine.uidMap), largestInnerId(machine.gidMap));
  if (largestNamedId >= largestInner) return undefined;
  return {
    kind: 'too-long-for-some-ids',
    largestNamedId,
    message: `machine name '${name}' is ${name.length} characters: only inner ids up to ${largestNamedId} get user and group names (vu-${name}-N must fit in ${USER_NAME_MAX} characters); larger ids answer NoRecordFound, as with machined`,
  };
}

/** The largest valid inner id a map covers; the usual 16-bit range when the map is unknown. */
function largestInnerId(map: readonly IdRange[] | undefined): number {
  if (map === undefined) return GID_NOBODY;
  let largest = 0;
  for (const r of map) {
    if (r.count === 0) continue;
    let top = r.inner + r.count - 1;
    if (top >= 0xffffffff) top = 0xfffffffe;
    largest = Math.max(largest, top);
  }
  return largest;
}
