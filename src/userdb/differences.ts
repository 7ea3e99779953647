/**
 * Every way our userdb socket behaves differently from machined 252's, in one table: the tests
 * replay machined's recorded replies and may only differ where a row says so, and docs/userdb.md
 * must describe every row. Everything not listed is meant to be byte-identical on the wire.
 */

export interface DifferenceFromMachined {
  readonly id: string;
  readonly topic: string;
  readonly machined: string;
  readonly mymachinesd: string;
  readonly why: string;
}

export const DIFFERENCES_FROM_MACHINED = [
  {
    id: 'enumeration',
    topic: 'GetUserRecord / GetGroupRecord with neither id nor name, with "more": true',
    machined: 'EnumerationNotSupported, so `getent passwd` and `userdbctl user` list no container users',
    mymachinesd:
      'streams each container\'s users (groups) in registration order: inner 0 and the accounts found inside it, only those a lookup by id returns identically; NoRecordFound when there are none. Without "more" it still answers EnumerationNotSupported',
    why: 'the missing feature users ask for; records are the ones lookups return, so nothing new is claimed',
  },
  {
    id: 'introspection',
    topic: 'org.varlink.service.GetInfo and GetInterfaceDescription',
    machined:
      'MethodNotImplemented for GetInfo (and for the misspelled GetInterface), MethodNotFound for GetInterfaceDescription; a oneway GetInfo keeps the connection',
    mymachinesd:
      'both answered with real interface descriptions (io.systemd.UserDatabase, io.systemd, org.varlink.service), parameter errors as InvalidParameter; GetInterface is MethodNotFound; a oneway call to them closes the connection like any method that replies',
    why: 'generic clients (varlinkctl ≥ 255, varlink-go) start with GetInfo; systemd ≥ 256 answers it too',
  },
  {
    id: 'owner-order',
    topic: 'a host UID/GID covered by the maps of several containers',
    machined: 'the first owner in hashmap iteration order, which is unspecified',
    mymachinesd: 'the first owner in registration order',
    why: 'deterministic answers; any order is machined-compatible since machined specifies none',
  },
  {
    id: 'map-freshness',
    topic: 'when a changed map or a dead leader becomes visible',
    machined: 'reads /proc/<leader>/uid_map and gid_map on every request',
    mymachinesd:
      "answers from the registry's in-memory copy of the maps and leader state, as soon as the registry has noticed the change; a map that cannot be read again while the same leader lives keeps its last copy (maps are written once per user namespace)",
    why: 'no I/O in a lookup: dbus-daemon resolves users through userdb, and lookups must never wait (systemd #40562)',
  },
  {
    id: 'per-uid-connection-limit',
    topic: 'connection limits',
    machined: 'at most 1024 connections per client UID and 4096 in total',
    mymachinesd:
      'at most 4096 connections in total (configurable), no per-UID limit; at the limit the connection idle the longest is closed for a new one, and input buffered over all connections is capped at 64 MiB',
    why: "Node's net module cannot read a unix socket's peer credentials (SO_PEERCRED); eviction keeps one user's idle connections from locking out everyone else's lookups",
  },
  {
    id: 'input-limit',
    topic: 'a message bigger than 16 MiB',
    machined:
      'closes once its read buffer exceeds 16 MiB, which happens somewhat above 16 MiB of message (it reads in 64 KiB steps)',
    mymachinesd: 'closes as soon as more than 16 MiB are buffered without a NUL',
    why: 'an exact limit is easier to state and to test; no real client comes near it',
  },
] as const satisfies readonly DifferenceFromMachined[];

export type DifferenceId = (typeof DIFFERENCES_FROM_MACHINED)[number]['id'];
