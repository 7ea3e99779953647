/**
 * The read-only view of the registry: the only thing the resolver and userdb see of machined.
 *
 * Records are immutable snapshots. The registry replaces a machine's record whenever anything about
 * it changes, so a consumer may keep a reference (or derive a cache keyed on `generation`) without
 * ever seeing a half-updated machine.
 */

/** machined's machine classes (`Class` property). `host` is the `.host` pseudo machine. */
export type MachineClass = 'container' | 'vm' | 'host';

/** machined's `State` property. It emits no change signal (reference §5.3). */
export type MachineState = 'opening' | 'running' | 'closing';

export interface NetworkInterface {
  /** Host-side ifindex given at registration (`NetworkInterfaces`, `NETIF=`). */
  readonly ifindex: number;
  /** Its name in the daemon's network namespace, if the link exists there. */
  readonly name: string | undefined;
}

export interface MachineAddress {
  readonly family: 4 | 6;
  /** Canonical text form, never with a zone suffix. */
  readonly address: string;
  /** 4 or 16 bytes in network order. */
  readonly bytes: Buffer;
  /**
   * The ifindex a socket needs to reach the address (sockaddr_in6.sin6_scope_id), 0 when unknown.
   * Containers follow nss-mymachines: the single NETIF entry when there is exactly one, else 0, for
   * every address, IPv4 too (reference §1.2 step 9). VMs: the link the neighbour entry is on.
   */
  readonly scope: number;
  /** fe80::/10 or 169.254.0.0/16: DNS cannot carry their scope. */
  readonly linkLocal: boolean;
}

/** Where a machine's addresses come from. */
export type AddressSource =
  /** `GetMachineAddresses` (containers with a private network namespace). */
  | 'machined'
  /** Neighbour entries on the machine's `NetworkInterfaces` (VMs; machined has none for them). */
  | 'neighbours'
  /** No source: no private networking, no interfaces, or not looked up yet. */
  | 'none';

/** One line of `/proc/<pid>/uid_map` or `gid_map`: `inner outer count`. */
export interface IdRange {
  readonly inner: number;
  readonly outer: number;
  readonly count: number;
}

/** An account that exists inside a container (its own /etc/passwd or /etc/group). */
export interface InnerAccount {
  readonly name: string;
  readonly id: number;
}

export interface MachineRecord {
  readonly name: string;
  /** 32 lower-case hex digits, or '' when machined has no id. */
  readonly id: string;
  readonly class: MachineClass;
  readonly service: string;
  readonly unit: string;
  readonly leader: number;
  readonly rootDirectory: string;
  readonly networkInterfaces: readonly NetworkInterface[];
  readonly state: MachineState;
  /** µs since the epoch / since boot, as machined reports them. */
  readonly timestamp: bigint;
  readonly timestampMonotonic: bigint;
  readonly objectPath: string;

  /** In machined's order (IPv4 first, then scope, metric, ifindex, bytes). */
  readonly addresses: readonly MachineAddress[];
  readonly addressSource: AddressSource;
  /** Why there are no addresses, when machined said so (e.g. `NoPrivateNetworking`). */
  readonly addressError: string | undefined;
  /** `Date.now()` of the last successful address lookup; 0 before the first. */
  readonly addressesCheckedAt: number;

  /** Parsed maps; undefined when not readable (not a container, leader gone, not written yet). */
  readonly uidMap: readonly IdRange[] | undefined;
  readonly gidMap: readonly IdRange[] | undefined;
  /** Accounts inside the container, for enumeration; undefined when unreadable. */
  readonly innerUsers: readonly InnerAccount[] | undefined;
  readonly innerGroups: readonly InnerAccount[] | undefined;
  /** False once the leader process is known to be gone (machined keeps such machines registered). */
  readonly leaderAlive: boolean;
}

/** The owner of a host UID or GID, with the id inside the container. */
export interface IdOwner {
  readonly machine: MachineRecord;
  readonly inner: number;
}

export type ViewChange =
  | { readonly kind: 'added'; readonly machine: MachineRecord }
  | { readonly kind: 'updated'; readonly machine: MachineRecord; readonly previous: MachineRecord }
  | { readonly kind: 'removed'; readonly machine: MachineRecord }
  /** Many machines changed at once (resync): consumers should rebuild what they derive. */
  | { readonly kind: 'reset' };

export interface RegistryView {
  /** Increments on every change; caches derived from the view key on it. */
  readonly generation: number;
  /** Every machine, in registration order (the order in which the registry learned of them). */
  all(): readonly MachineRecord[];
  /** Exact, case-sensitive name, as machined keys its table. */
  byName(name: string): MachineRecord | undefined;
  /** Machines with this address (several when two machines claim one). */
  byAddress(address: string): readonly MachineRecord[];
  /**
   * The first container (registration order) whose uid_map maps this host UID, skipping lines with
   * outer start 0 as machined does (reference §2.3). The inner id may be invalid (65535): callers
   * decide what that means.
   */
  ownerOfUid(uid: number): IdOwner | undefined;
  ownerOfGid(gid: number): IdOwner | undefined;
  /** Called after every change, synchronously, in order. Returns the unsubscribe function. */
  onChange(listener: (change: ViewChange) => void): () => void;
}
