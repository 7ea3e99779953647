/**
 * The `io.systemd.UserDatabase` Varlink interface over the registry view: the method table, the
 * parameter rules of machined 252, and the one mapping from lookup outcomes to wire replies.
 *
 * Every answer is computed synchronously from memory (records.ts); nothing here awaits anything.
 * Behaviour: reference §2.4–§2.7 and §7, checked against the real machined 252 (docs/userdb.md).
 */
import { z } from 'zod';
import { isValidUnixId } from '../registry-client/idmap.js';
import type { RegistryView } from '../registry-client/view.js';
import { method, type MethodResult, type VarlinkInterface } from '../varlink/interface.js';
import { parameters, type ParameterProblem } from '../varlink/parameters.js';
import type { VarlinkErrorReply, VarlinkReply } from '../varlink/protocol.js';
import {
  groupRecords,
  userRecords,
  Errno,
  lookupGroup,
  lookupUser,
  type ErrnoValue,
  type Lookup,
} from './records.js';

/** machined's socket is /run/systemd/userdb/io.systemd.Machine; clients send its basename. */
export const MACHINED_SERVICE_NAME = 'io.systemd.Machine';

export const USER_DATABASE_IDL = `# User and group records (https://systemd.io/USER_GROUP_API/): the users and
# groups of systemd-machined's containers, vu-MACHINE-UID and vg-MACHINE-GID,
# with the host's UID/GID in the record.
interface io.systemd.UserDatabase

# Look up one user by UID or name (both: they must agree), or, with 'more' and
# neither given, list all of them.
method GetUserRecord(
  uid: ?int,
  userName: ?string,
  service: string
) -> (
  record: object,
  incomplete: ?bool
)

# Look up one group by GID or name (both: they must agree), or, with 'more' and
# neither given, list all of them.
method GetGroupRecord(
  gid: ?int,
  groupName: ?string,
  service: string
) -> (
  record: object,
  incomplete: ?bool
)

# Supplementary group memberships: containers' users have none.
method GetMemberships(
  userName: ?string,
  groupName: ?string,
  service: string
) -> (
  userName: string,
  groupName: string
)

# No record matches the lookup.
error NoRecordFound()

# 'service' is not the name of this socket.
error BadService()

error ServiceNotAvailable()

# The UID/GID and the name given belong to different records.
error ConflictingRecordFound()

# Listing all records needs 'more'.
error EnumerationNotSupported()
`;

export const IO_SYSTEMD_IDL = `# Errors shared by systemd services.
interface io.systemd

# A system call failed with this Linux errno (the systemd 252 form of the error).
error System(errno: int)
`;

export const UserDatabaseErrors = {
  NoRecordFound: 'io.systemd.UserDatabase.NoRecordFound',
  BadService: 'io.systemd.UserDatabase.BadService',
  ServiceNotAvailable: 'io.systemd.UserDatabase.ServiceNotAvailable',
  ConflictingRecordFound: 'io.systemd.UserDatabase.ConflictingRecordFound',
  EnumerationNotSupported: 'io.systemd.UserDatabase.EnumerationNotSupported',
} as const;
export const SYSTEM_ERROR = 'io.systemd.System';

// v252 errors always carry `"parameters":{}` (reference §2.7); built once, shared by every call.
const NO_RECORD: VarlinkErrorReply = { error: UserDatabaseErrors.NoRecordFound, parameters: {} };
const BAD_SERVICE: VarlinkErrorReply = { error: UserDatabaseErrors.BadService, parameters: {} };
const CONFLICTING: VarlinkErrorReply = { error: UserDatabaseErrors.ConflictingRecordFound, parameters: {} };
const NO_ENUMERATION: VarlinkErrorReply = {
  error: UserDatabaseErrors.EnumerationNotSupported,
  parameters: {},
};
const SYSTEM_ERRORS = new Map<ErrnoValue, VarlinkErrorReply>(
  Object.values(Errno).map((errno) => [errno, { error: SYSTEM_ERROR, parameters: { errno } }]),
);

function systemError(errno: ErrnoValue): VarlinkErrorReply {
  return SYSTEM_ERRORS.get(errno) ?? { error: SYSTEM_ERROR, parameters: { errno } };
}

// ---- parameters: machined 252's json_dispatch tables (reference §2.4–§2.7) -----------------------

/**
 * systemd's `string_is_safe` (JSON_SAFE): no control characters, no quotes, no backslash, no DEL.
 * Seen on machined 252: `a'b`, `a"b`, `a\b`, `a\u007fb`, `a\tb` → errno 22; `a b`, `ä`, U+0080 pass.
 */
export function isJsonSafe(text: string): boolean {
  // eslint-disable-next-line no-control-regex -- control characters are exactly what is refused
  return !/[\x00-\x1f\x7f"'\\]/.test(text);
}

// Type checks are zod's built-in checks, value checks are refinements (see varlink/parameters.ts).
// JSON_VARIANT_UNSIGNED: a non-negative integral number, an integral real such as 656360.0 included.
const jsonUnsigned = z
  .number()
  .nonnegative()
  .multipleOf(1)
  .max(2 ** 64);
// json_dispatch_uid_gid: then a valid id: 65535 and ≥ 2^32-1 are EINVAL, after the duplicate check.
const unixId = jsonUnsigned.refine(isValidUnixId);
const safeName = z.string().refine(isJsonSafe);
// `service` has no JSON_SAFE flag: any string, compared with our name afterwards.
const serviceName = z.string();

const userParameters = parameters({
  uid: unixId.optional(),
  userName: safeName.optional(),
  service: serviceName.optional(),
});
const groupParameters = parameters({
  gid: unixId.optional(),
  groupName: safeName.optional(),
  service: serviceName.optional(),
});
const membershipParameters = parameters({
  userName: safeName.optional(),
  groupName: safeName.optional(),
  service: serviceName.optional(),
});

/**
 * A `json_dispatch` failure is returned by machined's handler as a negative errno, which v252 sends
 * as `io.systemd.System {"errno":N}` (not InvalidParameter, which came with v256's IDL checks). The
 * first bad field in wire order decides, and it is decided before the service check.
 */
function jsonDispatchError(problem: ParameterProblem): VarlinkErrorReply {
  switch (problem.kind) {
    case 'unknown-field':
      return systemError(Errno.EADDRNOTAVAIL);
    case 'repeated-field':
      return systemError(Errno.ENOTUNIQ);
    case 'invalid-value':
      return systemError(Errno.EINVAL);
    case 'missing-field':
      // No UserDatabase field is mandatory in 252; json_dispatch would say ENXIO.
      return systemError(Errno.ENXIO);
  }
}

function lookupReply<R>(outcome: Lookup<R>): VarlinkReply {
  switch (outcome.kind) {
    case 'found':
      return { parameters: { record: outcome.record } };
    case 'not-found':
      return NO_RECORD;
    case 'conflict':
      return CONFLICTING;
    case 'system-error':
      return systemError(outcome.errno);
  }
}

/** Beyond machined: with `more`, stream every record; without it, machined's refusal (§2.4). */
function enumeration(more: boolean, records: () => Iterable<object>): MethodResult {
  if (!more) return NO_ENUMERATION;
  return { stream: replies(records()), whenEmpty: NO_RECORD };
}

/** One reply per record, made when the stream asks for it (not all of them before the first is sent). */
function* replies(records: Iterable<object>): Generator<{ record: object }, void, undefined> {
  for (const record of records) yield { record };
}

/**
 * The interfaces a userdb socket serves: `io.systemd.UserDatabase` and `io.systemd` (whose System
 * error it sends). `service` is the socket's basename, which clients put in every call (§7.6).
 */
export function userDatabaseInterfaces(
  view: RegistryView,
  service: string = MACHINED_SERVICE_NAME,
): readonly VarlinkInterface[] {
  const userDatabase: VarlinkInterface = {
    name: 'io.systemd.UserDatabase',
    description: USER_DATABASE_IDL,
    parameterError: jsonDispatchError,
    methods: {
      'io.systemd.UserDatabase.GetUserRecord': method(userParameters, (p, call) => {
        if (p.service !== service) return BAD_SERVICE;
        if (p.uid === undefined && p.userName === undefined)
          return enumeration(call.more, () => userRecords(view, service));
        return lookupReply(lookupUser(view, { id: p.uid, name: p.userName }, service));
      }),
      'io.systemd.UserDatabase.GetGroupRecord': method(groupParameters, (p, call) => {
        if (p.service !== service) return BAD_SERVICE;
        if (p.gid === undefined && p.groupName === undefined)
          return enumeration(call.more, () => groupRecords(view, service));
        return lookupReply(lookupGroup(view, { id: p.gid, name: p.groupName }, service));
      }),
      // Containers' users have no supplementary groups: always NoRecordFound after the checks.
      'io.systemd.UserDatabase.GetMemberships': method(membershipParameters, (p) =>
        p.service === service ? NO_RECORD : BAD_SERVICE,
      ),
    },
  };
  const ioSystemd: VarlinkInterface = { name: 'io.systemd', description: IO_SYSTEMD_IDL, methods: {} };
  return [userDatabase, ioSystemd];
}
