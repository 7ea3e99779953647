/**
 * Following machined: keeps a MachineTable equal to machined's machine list.
 *
 * - Subscribes to MachineNew/MachineRemoved and to machined's NameOwnerChanged *before* the first
 *   ListMachines, so no registration between the two is lost.
 * - Resyncs whenever machined gets a new owner (restart, idle exit and bus activation under a new
 *   unique name) and after a bus reconnect (back-off). While machined is away the last known state
 *   is kept and served; the resync then converges.
 * - Never activates machined itself (every call is NO_AUTO_START): if machined is not running,
 *   nothing is registered.
 * - Addresses: machined sends no signal when they change (reference §5.4). After MachineNew they are
 *   re-read on a short bounded schedule (the network comes up after registration), then every
 *   `refreshIntervalMs`. A removal applies at once and cancels everything pending for that name.
 * - The per-name epoch makes late results of a fetch for a machine removed meanwhile harmless.
 */
import { BusConnection, isBusError, matchRule, DBUS_NAME, type BusSignal } from './bus.js';
import { formatAddress, isLinkLocal, AF_INET, AF_INET6 } from './address.js';
import { procHost, sortLikeMachined, type HostReader, type MapRead } from './host.js';
import {
  MACHINE1_NAME,
  MACHINE1_SIGNAL_RULES,
  Machine1Client,
  parseMachine1Signal,
  type MachineProperties,
  type RawAddress,
} from './machine1.js';
import { MachineTable } from './registry.js';
import type { Logger } from '../log.js';
import type {
  IdRange,
  InnerAccount,
  MachineAddress,
  MachineClass,
  MachineRecord,
  MachineState,
  NetworkInterface,
  RegistryView,
} from './view.js';

export interface RegistryOptions {
  readonly busAddress: string;
  readonly logger: Logger;
  readonly host?: HostReader;
  /** Re-read every machine's addresses this often (worst-case staleness after the settle window). */
  readonly refreshIntervalMs?: number;
  /** Delays after MachineNew at which addresses are re-read until the machine has some. */
  readonly settleDelaysMs?: readonly number[];
  /** How often leaders are checked for being alive (a cheap /proc read per machine). */
  readonly leaderCheckIntervalMs?: number;
  /** Deadline of each D-Bus call (GetMachineAddresses forks into the container). */
  readonly callTimeoutMs?: number;
  /** Parallel D-Bus fetches during a resync. */
  readonly concurrency?: number;
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
}

export interface RegistryStatus {
  readonly busConnected: boolean;
  /** machined's unique bus name, undefined while it is not running. */
  readonly machinedOwner: string | undefined;
  /** Date.now() of the last completed resync, 0 before the first. */
  readonly lastSyncAt: number;
  readonly lastSyncMs: number;
  readonly machines: number;
  readonly lastError: string | undefined;
}

export const DEFAULTS = {
  refreshIntervalMs: 10_000,
  settleDelaysMs: [100, 250, 500, 1_000, 2_000, 4_000] as readonly number[],
  leaderCheckIntervalMs: 2_000,
  callTimeoutMs: 5_000,
  concurrency: 16,
  reconnectMinMs: 100,
  reconnectMaxMs: 5_000,
};

const NAME_OWNER_RULE = matchRule({
  type: 'signal',
  sender: DBUS_NAME,
  interface: DBUS_NAME,
  member: 'NameOwnerChanged',
  arg0: MACHINE1_NAME,
});

/**
 * How long the leader check reads /proc (a few µs per leader) before it lets queries in: slices of
 * 256 leaders held DNS answers for over a millisecond every 2 s at 1,000 machines and made the p99
 * at 10,000 q/s 1.4–2.6 ms instead of 0.3–0.5 ms (BENCHMARKS.md, bench:dns).
 */
const LEADER_CHECK_SLICE_MS = 0.25;

type Fetched = { readonly kind: 'found'; readonly record: MachineRecord } | { readonly kind: 'gone' };

export class Registry {
  private readonly table = new MachineTable();
  private readonly host: HostReader;
  private readonly opts: typeof DEFAULTS;
  private conn: BusConnection | undefined;
  private client: Machine1Client | undefined;
  private owner: string | undefined;
  private stopped = false;
  private readonly epochs = new Map<string, number>();
  private readonly fetches = new Map<string, { rerun: boolean; done: Promise<void> }>();
  private readonly refreshes = new Map<string, Promise<void>>();
  private readonly settleTimers = new Map<string, NodeJS.Timeout>();
  private readonly leaderStarts = new Map<string, number>();
  /** Rank of each machine's MachineNew, for its place in registration order. */
  private readonly arrivals = new Map<string, number>();
  private arrivalCount = 0;
  private resync: { queue: (() => void)[]; again: boolean } | undefined;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectDelay: number;
  private refreshTimer: NodeJS.Timeout | undefined;
  private refreshWake: (() => void) | undefined;
  private leaderTimer: NodeJS.Timeout | undefined;
  private lastSyncAt = 0;
  private lastSyncMs = 0;
  private lastError: string | undefined;
  private firstSync: { promise: Promise<void>; resolve: () => void };
  private readonly syncListeners = new Set<() => void>();
  private linkCache: { at: number; links: Promise<ReadonlyMap<number, string>> } | undefined;

  constructor(private readonly options: RegistryOptions) {
    this.host = options.host ?? procHost;
    this.opts = {
      refreshIntervalMs: options.refreshIntervalMs ?? DEFAULTS.refreshIntervalMs,
      settleDelaysMs: options.settleDelaysMs ?? DEFAULTS.settleDelaysMs,
      leaderCheckIntervalMs: options.leaderCheckIntervalMs ?? DEFAULTS.leaderCheckIntervalMs,
      callTimeoutMs: options.callTimeoutMs ?? DEFAULTS.callTimeoutMs,
      concurrency: options.concurrency ?? DEFAULTS.concurrency,
      reconnectMinMs: options.reconnectMinMs ?? DEFAULTS.reconnectMinMs,
      reconnectMaxMs: options.reconnectMaxMs ?? DEFAULTS.reconnectMaxMs,
    };
    this.reconnectDelay = this.opts.reconnectMinMs;
    let resolve: () => void = () => undefined;
    const promise = new Promise<void>((r) => (resolve = r));
    this.firstSync = { promise, resolve };
  }

  get view(): RegistryView {
    return this.table;
  }

  status(): RegistryStatus {
    return {
      busConnected: this.conn !== undefined && !this.conn.closed,
      machinedOwner: this.owner,
      lastSyncAt: this.lastSyncAt,
      lastSyncMs: this.lastSyncMs,
      machines: this.table.all().length,
      lastError: this.lastError,
    };
  }

  /** Called after every completed resync. */
  onSynced(listener: () => void): () => void {
    this.syncListeners.add(listener);
    return () => this.syncListeners.delete(listener);
  }

  /**
   * Connects and performs the first sync. Resolves once the view reflects machined, or once it is
   * clear there is nothing to reflect (no bus, no machined): it never rejects for their absence and
   * keeps trying in the background.
   */
  async start(): Promise<void> {
    void this.connect();
    void this.refreshRounds();
    this.scheduleLeaderCheck();
    await this.firstSync.promise;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    clearTimeout(this.refreshTimer);
    this.refreshWake?.();
    clearTimeout(this.leaderTimer);
    for (const t of this.settleTimers.values()) clearTimeout(t);
    this.settleTimers.clear();
    this.conn?.close();
    this.firstSync.resolve();
    await Promise.allSettled([...this.fetches.values()].map((f) => f.done));
    await Promise.allSettled([...this.refreshes.values()]);
  }

  // ---- connection -------------------------------------------------------------------------------

  private async connect(): Promise<void> {
    if (this.stopped) return;
    const log = this.options.logger;
    let conn: BusConnection;
    try {
      conn = await BusConnection.open(this.options.busAddress);
    } catch (err) {
      this.noteError(`bus ${this.options.busAddress}: ${describe(err)}`);
      // Serve what we know (nothing, at start) and keep trying.
      this.firstSync.resolve();
      this.scheduleReconnect();
      return;
    }
    if (this.stopped) {
      conn.close();
      return;
    }
    this.conn = conn;
    this.client = new Machine1Client(conn, { noAutoStart: true, timeoutMs: this.opts.callTimeoutMs });
    conn.onSignal((s) => this.onSignal(s));
    conn.onClose((reason) => {
      if (this.conn !== conn) return;
      this.conn = undefined;
      this.client = undefined;
      this.owner = undefined;
      if (this.stopped) return;
      log.warn(
        `lost the bus (${reason}); serving ${this.table.all().length} machine(s) as last seen, reconnecting`,
      );
      this.scheduleReconnect();
    });
    try {
      // Subscribe first, list second: a registration between the two still arrives as a signal.
      await Promise.all([
        conn.addMatch(NAME_OWNER_RULE),
        ...MACHINE1_SIGNAL_RULES.map((r) => conn.addMatch(r)),
      ]);
      this.owner = await conn.getNameOwner(MACHINE1_NAME);
      this.reconnectDelay = this.opts.reconnectMinMs;
      log.info(
        `connected to ${this.options.busAddress}; machined ${this.owner ? `is ${this.owner}` : 'is not running'}`,
      );
      await this.resyncNow();
    } catch (err) {
      this.noteError(`initial sync: ${describe(err)}`);
      this.firstSync.resolve();
      conn.close();
    }
  }

  private scheduleReconnect(): void {
    if (this.stopped || this.reconnectTimer) return;
    const delay = this.reconnectDelay;
    this.reconnectDelay = Math.min(this.reconnectDelay * 2, this.opts.reconnectMaxMs);
    this.reconnectTimer = setTimeout(() => {
      this.reconnectTimer = undefined;
      void this.connect();
    }, delay);
  }

  private onSignal(signal: BusSignal): void {
    if (signal.member === 'NameOwnerChanged' && signal.interface === DBUS_NAME) {
      const [name, , newOwner] = signal.body;
      if (name !== MACHINE1_NAME || typeof newOwner !== 'string') return;
      this.owner = newOwner === '' ? undefined : newOwner;
      if (this.owner) {
        this.options.logger.info(`machined appeared as ${this.owner}; resyncing`);
        void this.resyncNow();
      } else {
        this.options.logger.info(
          `machined left the bus; serving ${this.table.all().length} machine(s) as last seen`,
        );
      }
      return;
    }
    const event = parseMachine1Signal(signal);
    if (!event) return;
    if (event.kind === 'MachineRemoved') {
      // Applied at once, also during a resync: a removed machine is never served again.
      this.arrivals.delete(event.name);
      this.forget(event.name);
      if (this.table.remove(event.name)) this.options.logger.info(`machine ${event.name} removed`);
      this.resync?.queue.push(() => this.forget(event.name));
      return;
    }
    const { name, path } = event;
    // Registration order is the order of these signals, not the order in which fetches finish
    // (machined answers lookups with the first machine that owns an id, reference §2.3).
    this.arrivals.set(name, ++this.arrivalCount);
    if (this.resync) this.resync.queue.push(() => this.onMachineNew(name, path));
    else this.onMachineNew(name, path);
  }

  /** `path`: machined's object path from the signal, which saves the GetMachine round trip. */
  private onMachineNew(name: string, path?: string): void {
    void this.fetchAndApply(name, path).then(() => this.startSettling(name));
  }

  /** Drops everything pending for a name; results of fetches already running are discarded. */
  private forget(name: string): void {
    this.epochs.set(name, (this.epochs.get(name) ?? 0) + 1);
    clearTimeout(this.settleTimers.get(name));
    this.settleTimers.delete(name);
    this.leaderStarts.delete(name);
  }

  // ---- resync -----------------------------------------------------------------------------------

  private async resyncNow(): Promise<void> {
    if (this.resync) {
      this.resync.again = true;
      return;
    }
    const state: { queue: (() => void)[]; again: boolean } = { queue: [], again: false };
    this.resync = state;
    try {
      do {
        state.again = false;
        await this.resyncOnce();
      } while (state.again && !this.stopped);
    } catch (err) {
      this.noteError(`resync: ${describe(err)}`);
    } finally {
      this.resync = undefined;
      for (const replay of state.queue) replay();
      this.firstSync.resolve();
    }
  }

  private async resyncOnce(): Promise<void> {
    const client = this.client;
    if (!client) return;
    const began = Date.now();
    if (!this.owner) {
      // No machined: nothing is registered (machined idle-exits only without machines).
      if (this.table.all().length > 0) this.table.replaceAll([]);
      this.finishSync(began);
      return;
    }
    const listing = await client.listMachines();
    const epochs = new Map(listing.map((l) => [l.name, this.epochs.get(l.name) ?? 0]));
    const fetched = await mapLimit(listing, this.opts.concurrency, (l) =>
      this.fetchMachine(l.name, l.path).catch((err: unknown) => {
        // One machine that cannot be read now does not fail the sync: keep what we knew of it
        // and try it again on its own.
        this.noteError(`machine ${l.name}: ${describe(err)}`);
        this.resync?.queue.push(() => this.onMachineNew(l.name, l.path));
        const known = this.table.byName(l.name);
        return known ? ({ kind: 'found', record: known } as const) : ({ kind: 'gone' } as const);
      }),
    );
    const byName = new Map<string, MachineRecord>();
    listing.forEach((l, i) => {
      const f = fetched[i];
      // Removed (or removed and re-added) while we fetched: the queued signals decide.
      if (f?.kind === 'found' && (this.epochs.get(l.name) ?? 0) === epochs.get(l.name))
        byName.set(l.name, f.record);
    });
    // Keep the registration order of machines we already knew; new ones follow in the order they
    // registered (their Timestamp): ListMachines gives machined's hashmap order, random per machined
    // process, which made "the first registered owner" (userdb, row owner-order) a coin toss after
    // a start. Machines without a timestamp follow, in listing order.
    const ordered: MachineRecord[] = [];
    for (const known of this.table.all()) {
      const r = byName.get(known.name);
      if (r) {
        ordered.push(r);
        byName.delete(known.name);
      }
    }
    ordered.push(...[...byName.values()].sort(byRegistrationTime));
    this.table.replaceAll(ordered);
    for (const r of ordered) this.startSettlingIfNeeded(r);
    this.finishSync(began);
    this.options.logger.info(`synced ${ordered.length} machine(s) in ${this.lastSyncMs} ms`);
  }

  private finishSync(began: number): void {
    this.lastSyncAt = Date.now();
    this.lastSyncMs = this.lastSyncAt - began;
    for (const l of [...this.syncListeners]) l();
  }

  // ---- fetching one machine ---------------------------------------------------------------------

  /** Fetches a machine and applies the result; concurrent requests for one name are coalesced. */
  private fetchAndApply(name: string, path?: string): Promise<void> {
    const running = this.fetches.get(name);
    if (running) {
      running.rerun = true; // the machine may have changed after the running fetch read it
      return running.done;
    }
    const entry = { rerun: false, done: Promise.resolve() };
    entry.done = (async () => {
      do {
        entry.rerun = false;
        const epoch = this.epochs.get(name) ?? 0;
        let result: Fetched;
        try {
          result = await this.fetchMachine(name, path);
        } catch (err) {
          this.noteError(`machine ${name}: ${describe(err)}`);
          return;
        }
        if ((this.epochs.get(name) ?? 0) !== epoch || this.stopped) return;
        if (result.kind === 'gone') {
          this.table.remove(name);
        } else {
          const known = this.table.byName(name);
          if (!known) this.options.logger.info(`machine ${name} (${result.record.class}) registered`);
          if (!known || !sameMachine(known, result.record))
            this.table.upsert(result.record, this.arrivals.get(name));
        }
      } while (entry.rerun && !this.stopped);
    })().finally(() => this.fetches.delete(name));
    this.fetches.set(name, entry);
    return entry.done;
  }

  private async fetchMachine(name: string, knownPath?: string): Promise<Fetched> {
    const client = this.client;
    if (!client) throw new Error('not connected');
    let props: MachineProperties;
    let path: string;
    try {
      path = knownPath ?? (await client.getMachine(name));
      props = await client.machineProperties(path);
    } catch (err) {
      if (isBusError(err, 'NoSuchMachine') || isBusError(err, 'UnknownMethod')) return { kind: 'gone' };
      throw err;
    }
    const cls = parseClass(props.Class);
    if (!cls) {
      this.options.logger.warn(`machine ${name} has unknown class "${props.Class}"; not served`);
      return { kind: 'gone' };
    }
    // Independent reads overlap: link names (`ip link`, a process) with the leader's start time and
    // everything withHostData asks machined and /proc.
    const [networkInterfaces, leaderStart] = await Promise.all([
      this.interfaceNames(props.NetworkInterfaces),
      this.host.startTime(props.Leader),
    ]);
    const base: MachineRecord = {
      name: props.Name,
      id: props.Id.toString('hex'),
      class: cls,
      service: props.Service,
      unit: props.Unit,
      leader: props.Leader,
      rootDirectory: props.RootDirectory,
      networkInterfaces,
      state: parseState(props.State),
      timestamp: props.Timestamp,
      timestampMonotonic: props.TimestampMonotonic,
      objectPath: path,
      addresses: [],
      addressSource: 'none',
      addressError: undefined,
      addressesCheckedAt: 0,
      uidMap: undefined,
      gidMap: undefined,
      innerUsers: undefined,
      innerGroups: undefined,
      leaderAlive: true,
    };
    if (leaderStart !== undefined) this.leaderStarts.set(name, leaderStart);
    const record = await this.withHostData({
      ...base,
      leaderAlive: cls === 'host' || leaderStart !== undefined,
    });
    return { kind: 'found', record };
  }

  /**
   * Adds addresses, maps and accounts to a record (everything that can change without a signal).
   * The addresses (machined) and the maps and accounts (/proc, the container's files) are read at
   * the same time.
   */
  private async withHostData(record: MachineRecord): Promise<MachineRecord> {
    const [addresses, ids] = await Promise.all([this.readAddresses(record), this.readIds(record)]);
    return { ...record, ...addresses, ...ids };
  }

  private async readIds(
    record: MachineRecord,
  ): Promise<Pick<MachineRecord, 'uidMap' | 'gidMap' | 'innerUsers' | 'innerGroups'>> {
    let { uidMap, gidMap, innerUsers, innerGroups } = record;
    if (record.class === 'container' && record.leaderAlive) {
      const [uid, gid] = await Promise.all([
        this.host.readIdMap(record.leader, 'uid'),
        this.host.readIdMap(record.leader, 'gid'),
      ]);
      uidMap = mapOrUndefined(uid, record.name, 'uid', this.options.logger);
      gidMap = mapOrUndefined(gid, record.name, 'gid', this.options.logger);
      if (hasPrivateUserNamespace(uidMap) || hasPrivateUserNamespace(gidMap)) {
        [innerUsers, innerGroups] = await Promise.all([
          this.host.readAccounts(record.leader, record.rootDirectory, 'passwd'),
          this.host.readAccounts(record.leader, record.rootDirectory, 'group'),
        ]);
      }
    }
    return { uidMap, gidMap, innerUsers, innerGroups };
  }

  private async readAddresses(
    record: MachineRecord,
  ): Promise<Pick<MachineRecord, 'addresses' | 'addressSource' | 'addressError' | 'addressesCheckedAt'>> {
    if (!record.leaderAlive)
      return {
        addresses: [],
        addressSource: 'none',
        addressError: 'leader gone',
        addressesCheckedAt: Date.now(),
      };
    if (record.class === 'vm') {
      const ifindexes = new Set(record.networkInterfaces.map((n) => n.ifindex));
      if (ifindexes.size === 0)
        return {
          addresses: [],
          addressSource: 'none',
          addressError: 'no network interfaces',
          addressesCheckedAt: Date.now(),
        };
      const neighbours = await this.host.neighbours(ifindexes);
      const addresses = sortLikeMachined(neighbours.map((n) => toAddress(n.address, n.ifindex)));
      return {
        addresses: dedupe(addresses),
        addressSource: 'neighbours',
        addressError: undefined,
        addressesCheckedAt: Date.now(),
      };
    }
    if (record.class !== 'container')
      return { addresses: [], addressSource: 'none', addressError: undefined, addressesCheckedAt: 0 };
    const client = this.client;
    if (!client) throw new Error('not connected');
    let raw: RawAddress[];
    try {
      raw = await client.getMachineAddresses(record.name);
    } catch (err) {
      // Transient (no answer, no bus) or gone: the caller keeps what it knew or drops the machine.
      if (isBusError(err, 'Timeout') || isBusError(err, 'Disconnected') || isBusError(err, 'NoSuchMachine'))
        throw err;
      // machined's answer for this machine (NoPrivateNetworking, an errno from the netns fork, …)
      const reason = isBusError(err) ? err.code : 'error';
      this.options.logger.debug(`machine ${record.name}: no addresses (${describe(err)})`);
      return { addresses: [], addressSource: 'none', addressError: reason, addressesCheckedAt: Date.now() };
    }
    // nss-mymachines' rule: the scope of every address is the single NETIF entry, if exactly one.
    const scope = record.networkInterfaces.length === 1 ? (record.networkInterfaces[0]?.ifindex ?? 0) : 0;
    const addresses: MachineAddress[] = [];
    for (const a of raw) {
      if ((a.family === AF_INET && a.bytes.length === 4) || (a.family === AF_INET6 && a.bytes.length === 16))
        addresses.push(toAddress(a.bytes, scope));
      else
        this.options.logger.warn(
          `machine ${record.name}: ignoring address of family ${a.family} with ${a.bytes.length} bytes`,
        );
    }
    return { addresses, addressSource: 'machined', addressError: undefined, addressesCheckedAt: Date.now() };
  }

  private interfaceNames(ifindexes: readonly number[]): Promise<NetworkInterface[]> | NetworkInterface[] {
    if (ifindexes.length === 0) return [];
    const now = Date.now();
    if (!this.linkCache || now - this.linkCache.at > 1_000)
      this.linkCache = { at: now, links: this.host.links() };
    return this.linkCache.links.then((links) =>
      ifindexes.map((ifindex) => ({ ifindex, name: links.get(ifindex) })),
    );
  }

  // ---- freshness --------------------------------------------------------------------------------

  /** Re-reads what can change without a signal; coalesced per machine; applied only if changed. */
  refresh(name: string): Promise<void> {
    const running = this.refreshes.get(name);
    if (running) return running;
    const epoch = this.epochs.get(name) ?? 0;
    const done = (async () => {
      const current = this.table.byName(name);
      if (!current || !this.client) return;
      let next: MachineRecord;
      try {
        next = await this.withHostData(current);
      } catch (err) {
        if (isBusError(err, 'NoSuchMachine')) {
          // removed without our seeing the signal (e.g. while reconnecting)
          void this.fetchAndApply(name);
          return;
        }
        this.options.logger.debug(`refresh of ${name} failed: ${describe(err)}; keeping what is known`);
        return;
      }
      if ((this.epochs.get(name) ?? 0) !== epoch || this.table.byName(name) !== current) return;
      if (!sameMachine(current, next)) this.table.upsert(next);
    })().finally(() => this.refreshes.delete(name));
    this.refreshes.set(name, done);
    return done;
  }

  private startSettlingIfNeeded(record: MachineRecord): void {
    if (needsSettling(record)) this.startSettling(record.name);
  }

  /** Bounded re-reads after registration until the machine has addresses (and maps). */
  private startSettling(name: string, step = 0): void {
    if (this.stopped || this.settleTimers.has(name)) return;
    const delay = this.opts.settleDelaysMs[step];
    const record = this.table.byName(name);
    if (delay === undefined || !record || !needsSettling(record)) return;
    const epoch = this.epochs.get(name) ?? 0;
    this.settleTimers.set(
      name,
      setTimeout(() => {
        this.settleTimers.delete(name);
        if ((this.epochs.get(name) ?? 0) !== epoch) return;
        void this.refresh(name).then(() => this.startSettling(name, step + 1));
      }, delay),
    );
  }

  /**
   * Every machine is refreshed once per interval, one after the other, spread evenly over the
   * interval. The daemon serves meanwhile: a round done at once (16 at a time) came as a burst of
   * work and garbage whose scavenges and batched replies held DNS answers for milliseconds at 1,000
   * machines (BENCHMARKS.md, bench:dns). A round that needs longer than the interval (tens of
   * thousands of machines) simply runs without pauses, and the next one starts when it ends.
   */
  private async refreshRounds(): Promise<void> {
    const interval = this.opts.refreshIntervalMs;
    await this.pauseUntil(Date.now() + interval);
    while (!this.stopped) {
      const began = Date.now();
      const names = this.table
        .all()
        .filter((m) => m.class !== 'host')
        .map((m) => m.name);
      const gap = interval / Math.max(1, names.length);
      for (const [i, name] of names.entries()) {
        await this.pauseUntil(began + i * gap);
        if (this.stopped) return;
        await this.refresh(name);
      }
      await this.pauseUntil(began + interval);
    }
  }

  /** Resolves at `time` (Date.now() clock), or at once when it has passed or the registry stops. */
  private pauseUntil(time: number): Promise<void> {
    const wait = time - Date.now();
    if (wait <= 0 || this.stopped) return Promise.resolve();
    return new Promise((resolve) => {
      this.refreshWake = resolve;
      this.refreshTimer = setTimeout(() => {
        this.refreshWake = undefined;
        resolve();
      }, wait);
    });
  }

  /** A leader that died (machined keeps the machine: no systemd told it) loses its maps and addresses. */
  private scheduleLeaderCheck(): void {
    if (this.stopped) return;
    this.leaderTimer = setTimeout(() => {
      void (async () => {
        let slice = performance.now();
        for (const m of this.table.all()) {
          if (m.class === 'host' || !m.leaderAlive) continue;
          // procHost reads /proc synchronously: let queries in between, whatever the machine count.
          if (performance.now() - slice > LEADER_CHECK_SLICE_MS) {
            await new Promise<void>((resolve) => setImmediate(resolve));
            slice = performance.now();
          }
          const st = await this.host.startTime(m.leader);
          const expected = this.leaderStarts.get(m.name);
          if (st !== undefined && (expected === undefined || st === expected)) continue;
          if (this.table.byName(m.name) !== m) continue;
          this.options.logger.warn(
            `machine ${m.name}: leader ${m.leader} is gone; it stays registered in machined`,
          );
          this.table.upsert({
            ...m,
            leaderAlive: false,
            addresses: [],
            addressSource: 'none',
            addressError: 'leader gone',
          });
        }
      })().finally(() => this.scheduleLeaderCheck());
    }, this.opts.leaderCheckIntervalMs);
  }

  private noteError(message: string): void {
    this.lastError = message;
    this.options.logger.warn(message);
  }
}

// ---- pure helpers ---------------------------------------------------------------------------------

/** Earlier registrations first; machines without a timestamp (0) after all others. */
function byRegistrationTime(a: MachineRecord, b: MachineRecord): number {
  const x = a.timestamp === 0n ? Infinity : a.timestamp;
  const y = b.timestamp === 0n ? Infinity : b.timestamp;
  return x < y ? -1 : x > y ? 1 : 0;
}

function parseClass(value: string): MachineClass | undefined {
  return value === 'container' || value === 'vm' || value === 'host' ? value : undefined;
}

function parseState(value: string): MachineState {
  // machined documents that states may be added; an unknown one is treated as running.
  return value === 'opening' || value === 'closing' ? value : 'running';
}

function toAddress(bytes: Buffer, scope: number): MachineAddress {
  return {
    family: bytes.length === 4 ? 4 : 6,
    address: formatAddress(bytes),
    bytes,
    scope,
    linkLocal: isLinkLocal(bytes),
  };
}

function dedupe(list: MachineAddress[]): MachineAddress[] {
  const seen = new Set<string>();
  return list.filter((a) => (seen.has(a.address) ? false : (seen.add(a.address), true)));
}

function mapOrUndefined(
  read: MapRead,
  machine: string,
  which: string,
  logger: Logger,
): readonly IdRange[] | undefined {
  if (read.kind === 'ok') return read.ranges;
  logger.debug(`machine ${machine}: ${which}_map unreadable (${read.reason})`);
  return undefined;
}

function hasPrivateUserNamespace(map: readonly IdRange[] | undefined): boolean {
  return (map ?? []).some((r) => r.outer !== 0);
}

/**
 * Still settling: a live machine without a routable address, or a container whose user namespace is
 * not mapped yet. A link-local address alone does not end it: a container's link has one as soon as
 * it is up, and its routable addresses (DHCP, networkd) come later; stopping at the link-local one
 * left them to the refresh, 10 s later (BENCHMARKS.md, bench:propagation). A machine that only ever
 * has link-local addresses costs the bounded schedule, no more.
 */
function needsSettling(m: MachineRecord): boolean {
  if (!m.leaderAlive || m.class === 'host') return false;
  const noAddresses = m.addresses.every((a) => a.linkLocal) && m.addressError === undefined;
  const unmapped = m.class === 'container' && (m.uidMap === undefined || m.uidMap.length === 0);
  return noAddresses || unmapped;
}

function sameRanges(a: readonly IdRange[] | undefined, b: readonly IdRange[] | undefined): boolean {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  return a.every((r, i) => r.inner === b[i]?.inner && r.outer === b[i]?.outer && r.count === b[i]?.count);
}

function sameAccounts(
  a: readonly InnerAccount[] | undefined,
  b: readonly InnerAccount[] | undefined,
): boolean {
  if (a === b) return true;
  if (!a || !b || a.length !== b.length) return false;
  return a.every((x, i) => x.name === b[i]?.name && x.id === b[i]?.id);
}

/** True when nothing a consumer can see differs (the check timestamp does not count). */
export function sameMachine(a: MachineRecord, b: MachineRecord): boolean {
  return (
    a.name === b.name &&
    a.id === b.id &&
    a.class === b.class &&
    a.service === b.service &&
    a.unit === b.unit &&
    a.leader === b.leader &&
    a.rootDirectory === b.rootDirectory &&
    a.state === b.state &&
    a.timestamp === b.timestamp &&
    a.objectPath === b.objectPath &&
    a.leaderAlive === b.leaderAlive &&
    a.addressSource === b.addressSource &&
    a.addressError === b.addressError &&
    a.networkInterfaces.length === b.networkInterfaces.length &&
    a.networkInterfaces.every(
      (n, i) => n.ifindex === b.networkInterfaces[i]?.ifindex && n.name === b.networkInterfaces[i]?.name,
    ) &&
    a.addresses.length === b.addresses.length &&
    a.addresses.every((x, i) => x.address === b.addresses[i]?.address && x.scope === b.addresses[i]?.scope) &&
    sameRanges(a.uidMap, b.uidMap) &&
    sameRanges(a.gidMap, b.gidMap) &&
    sameAccounts(a.innerUsers, b.innerUsers) &&
    sameAccounts(a.innerGroups, b.innerGroups)
  );
}

/** Runs `fn` over `items` with at most `limit` in flight; results in input order. */
export async function mapLimit<T, R>(
  items: readonly T[],
  limit: number,
  fn: (item: T) => Promise<R>,
): Promise<R[]> {
  const results = new Array<R>(items.length);
  let next = 0;
  const worker = async (): Promise<void> => {
    while (next < items.length) {
      const i = next++;
      results[i] = await fn(items[i] as T);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return results;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
