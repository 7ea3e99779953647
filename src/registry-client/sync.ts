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
 * - Every `fullRefreshRounds`th refresh round also reconciles the view with one ListMachines: a
 *   machine whose MachineNew was lost or whose fetch failed (machined did not answer in time) is
 *   fetched again, and one whose MachineRemoved was lost is checked and dropped. Signals alone would
 *   leave such a machine missing or stale until machined restarts.
 * - The per-name epoch makes late results of a fetch for a machine removed meanwhile harmless.
 * - What was read from /proc and could not be read again is kept while the leader is the same
 *   process: a user namespace's maps are written once, so a failed re-read (EMFILE, a transient
 *   error) says nothing new about them, and serving from what is known beats serving nothing.
 */
import { BusConnection, isBusError, nameOwnerRule, DBUS_NAME, type BusError, type BusSignal } from './bus.js';
import { formatAddress, isLinkLocal, AF_INET, AF_INET6 } from './address.js';
import { procHost, sortLikeMachined, type AccountsRead, type HostReader, type MapRead } from './host.js';
import {
  MACHINE1_NAME,
  MACHINE1_SIGNAL_RULES,
  Machine1Client,
  parseMachine1Signal,
  type MachineProperties,
  type RawAddress,
} from './machine1.js';
import { GroupedWarnings, type GroupedWarningsOptions } from './grouped-warnings.js';
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
  /**
   * At most this many machines are refreshed per second: with more machines than
   * `refreshIntervalMs` × rate, a round takes longer than the interval (machined forks into the
   * container for every GetMachineAddresses, and each answer costs the daemon ~0.3 ms of CPU).
   */
  readonly refreshRate?: number;
  /**
   * Machined is asked for each container's addresses at least once in this many refresh rounds,
   * even when its network namespace shows no change (HostReader.networkState); 1 asks every round.
   * The asks are staggered (a container's turn comes in the rounds where its place, fixed when the
   * rounds first see it, plus the round number is a multiple of this), so each round asks for 1/N
   * of the containers. Otherwise a container whose namespace digest is unchanged keeps its
   * addresses without a call: one
   * GetMachineAddresses is a fork of machined into the container, and the calls woke machined and
   * dbus-daemon 100 times a second at 1,000 machines (BENCHMARKS.md, bench:dns). Every Nth round
   * also reconciles the view with ListMachines (lost signals are repaired within N rounds).
   */
  readonly fullRefreshRounds?: number;
  /** Delays after MachineNew at which addresses are re-read until the machine has some. */
  readonly settleDelaysMs?: readonly number[];
  /** How often leaders are checked for being alive (a cheap /proc read per machine). */
  readonly leaderCheckIntervalMs?: number;
  /**
   * At most this many leaders are checked per second: with more machines than
   * `leaderCheckIntervalMs` × rate, a round takes N / rate seconds (at 10,000 machines, checking
   * every leader every 2 s took 7–9 % of a core while idle and cost DNS a fifth of its q/s).
   */
  readonly leaderCheckRate?: number;
  /**
   * The refresh and the leader check each wake at most once in this many ms and do a batch of
   * machines (yielding to queries every 0.25 ms): they woke once per machine, or once in 50 ms, and
   * at 1,000 machines the wakes themselves took more of an idle daemon's CPU than the work (65
   * against 25 ms a second with 200; BENCHMARKS.md, idle CPU). The rates still bound how many
   * machines a second each does; a batch is at most `step` × rate of them.
   */
  readonly pollStepMs?: number;
  /** Deadline of each D-Bus call (GetMachineAddresses forks into the container). */
  readonly callTimeoutMs?: number;
  /**
   * Parallel D-Bus fetches and refreshes (a resync, a burst of MachineNew signals). Stay well under
   * dbus-daemon's max_replies_per_connection (128 on the system bus): calls beyond it fail (with 256,
   * 3,798 of 10,000 machines were not synced). 64 synced 10,000 machines faster than 16 in 10 of 12
   * pairs, but then one full test-suite run answered 274 ms late during a big resync (deadline 250 ms;
   * BENCHMARKS.md).
   */
  readonly concurrency?: number;
  /**
   * Parallel D-Bus fetches of the first sync only, which runs before the DNS stub is started and
   * before `ready` (userdb and control answer from the empty view meanwhile: serve.ts): nothing
   * is served from the machines it fetches yet, so it may take the event loop that later syncs share.
   * Every later sync (machined or the bus came back) and every signal uses `concurrency`; signals
   * during the first sync add at most that many: 112 calls in flight by default, under dbus-daemon's
   * 128 (a test holds the defaults to that). 96 rather than 64: at 10,000 machines spawn → `ready`
   * took 2.65–2.78 s against 2.78–2.92 s, faster in 5 of 5 pairs taking turns (BENCHMARKS.md).
   */
  readonly firstSyncConcurrency?: number;
  readonly reconnectMinMs?: number;
  readonly reconnectMaxMs?: number;
  /** How warnings about reading many machines' maps and files are grouped (defaults: 3 in full, then a line per 5 s). */
  readonly groupedWarnings?: GroupedWarningsOptions;
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
  /** Time between two refreshes of one machine: the interval, or longer when the rate bound stretches it. */
  readonly refreshRoundMs: number;
  /** GetMachineAddresses calls made since start. */
  readonly addressCalls: number;
  /** Refreshes that kept a container's addresses without a call: its network namespace was unchanged. */
  readonly addressesKept: number;
}

export const DEFAULTS = {
  refreshIntervalMs: 10_000,
  refreshRate: 100,
  fullRefreshRounds: 6,
  settleDelaysMs: [100, 250, 500, 1_000, 2_000, 4_000] as readonly number[],
  leaderCheckIntervalMs: 2_000,
  leaderCheckRate: 1_000,
  pollStepMs: 200,
  callTimeoutMs: 5_000,
  concurrency: 16,
  firstSyncConcurrency: 96,
  reconnectMinMs: 100,
  reconnectMaxMs: 5_000,
};

const NAME_OWNER_RULE = nameOwnerRule(MACHINE1_NAME);

/**
 * How long the leader check and a batch of refreshes read /proc (a few µs per leader, tens per
 * container) before they let queries in: slices of
 * 256 leaders held DNS answers for over a millisecond every 2 s at 1,000 machines and made the p99
 * at 10,000 q/s 1.4–2.6 ms instead of 0.3–0.5 ms (BENCHMARKS.md, bench:dns).
 */
const POLL_SLICE_MS = 0.25;

/**
 * Every how many refresh rounds a container's passwd and group are checked again (a stat of each,
 * a read when changed; only enumeration uses them): one in six, a minute with the defaults. At
 * 10,000 machines these asynchronous file checks were two thirds of the refresh's CPU (BENCHMARKS.md,
 * bench:scale).
 */
const ACCOUNT_ROUNDS = 6;

/** Every how many leader-check rounds each leader's start time is read (see leaderRounds). */
const LEADER_FULL_CHECK_EVERY = 5;

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
  /**
   * Each container's place in the staggered asks, fixed when a refresh round first sees it: its
   * index in a round's list would shift as machines before it come and go, and a container moving
   * up one place per round as the round number goes up by one would never get its turn.
   */
  private readonly turns = new Map<string, number>();
  private turnCount = 0;
  private resync: ResyncState | undefined;
  /** Counts machine1 signals as they arrive: orders them against the fetches of a resync. */
  private signalSeq = 0;
  /** At most `concurrency` machines are fetched or refreshed at once, however many signals come. */
  private readonly limit: <T>(work: () => Promise<T>) => Promise<T>;
  private reconnectTimer: NodeJS.Timeout | undefined;
  private reconnectDelay: number;
  private readonly refreshPause = new Pause();
  private readonly leaderPause = new Pause();
  /** The user namespace each container's maps were last read in (see readIds). */
  private readonly userNamespaces = new Map<string, string>();
  /**
   * Each container's network namespace digest (HostReader.networkState) taken just before machined
   * last answered for it, with the leader it was taken of: a refresh that finds the same digest
   * keeps the addresses of that answer.
   */
  private readonly netStates = new Map<string, { readonly leader: number; readonly digest: string }>();
  /** GetMachineAddresses calls made, and refreshes that kept the addresses on an unchanged digest. */
  private addressCalls = 0;
  private addressesKept = 0;
  /** The accounts deferred by the latest resync (readAccountsAfterSync). */
  private accountsRead: Promise<void> = Promise.resolve();
  /** How long a refresh round takes now (the interval, or longer when the rate bound stretches it). */
  private refreshRoundMs: number;
  /** Which rounds are stretched by their rate bound now (see noteStretch). */
  private readonly stretched = new Set<'refresh' | 'leader check'>();
  private lastSyncAt = 0;
  private lastSyncMs = 0;
  private lastError: string | undefined;
  private firstSync: { promise: Promise<void>; resolve: () => void };
  private readonly syncListeners = new Set<() => void>();
  private linkCache: { at: number; links: Promise<ReadonlyMap<number, string>> } | undefined;
  /** `machine\0topic` → the warning last given about reading its maps or accounts (given once). */
  private readonly hostProblems = new Map<string, string>();
  private readonly hostWarnings: GroupedWarnings;

  constructor(private readonly options: RegistryOptions) {
    this.host = options.host ?? procHost;
    this.hostWarnings = new GroupedWarnings(options.logger, options.groupedWarnings);
    this.opts = {
      refreshIntervalMs: options.refreshIntervalMs ?? DEFAULTS.refreshIntervalMs,
      refreshRate: options.refreshRate ?? DEFAULTS.refreshRate,
      fullRefreshRounds: options.fullRefreshRounds ?? DEFAULTS.fullRefreshRounds,
      settleDelaysMs: options.settleDelaysMs ?? DEFAULTS.settleDelaysMs,
      leaderCheckIntervalMs: options.leaderCheckIntervalMs ?? DEFAULTS.leaderCheckIntervalMs,
      leaderCheckRate: options.leaderCheckRate ?? DEFAULTS.leaderCheckRate,
      pollStepMs: options.pollStepMs ?? DEFAULTS.pollStepMs,
      callTimeoutMs: options.callTimeoutMs ?? DEFAULTS.callTimeoutMs,
      concurrency: options.concurrency ?? DEFAULTS.concurrency,
      firstSyncConcurrency: options.firstSyncConcurrency ?? DEFAULTS.firstSyncConcurrency,
      reconnectMinMs: options.reconnectMinMs ?? DEFAULTS.reconnectMinMs,
      reconnectMaxMs: options.reconnectMaxMs ?? DEFAULTS.reconnectMaxMs,
    };
    if (!(this.opts.refreshRate > 0))
      throw new RangeError(`refreshRate ${this.opts.refreshRate}: must be > 0`);
    if (!(this.opts.leaderCheckRate > 0))
      throw new RangeError(`leaderCheckRate ${this.opts.leaderCheckRate}: must be > 0`);
    if (!(this.opts.pollStepMs > 0)) throw new RangeError(`pollStepMs ${this.opts.pollStepMs}: must be > 0`);
    if (!Number.isInteger(this.opts.fullRefreshRounds) || this.opts.fullRefreshRounds < 1)
      throw new RangeError(`fullRefreshRounds ${this.opts.fullRefreshRounds}: must be an integer ≥ 1`);
    for (const key of ['concurrency', 'firstSyncConcurrency'] as const) {
      const n = this.opts[key];
      if (!Number.isInteger(n) || n < 1) throw new RangeError(`${key} ${n}: must be an integer ≥ 1`);
    }
    this.refreshRoundMs = this.opts.refreshIntervalMs;
    this.reconnectDelay = this.opts.reconnectMinMs;
    this.limit = concurrencyLimit(this.opts.concurrency);
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
      refreshRoundMs: this.refreshRoundMs,
      addressCalls: this.addressCalls,
      addressesKept: this.addressesKept,
    };
  }

  /**
   * Resolves when the accounts deferred by the latest resync are applied (enumeration complete);
   * 'read the accounts of N container(s)' is logged then.
   */
  whenAccountsRead(): Promise<void> {
    return this.accountsRead;
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
    void this.leaderRounds();
    await this.firstSync.promise;
  }

  async stop(): Promise<void> {
    this.stopped = true;
    clearTimeout(this.reconnectTimer);
    this.refreshPause.cancel();
    this.leaderPause.cancel();
    for (const t of this.settleTimers.values()) clearTimeout(t);
    this.settleTimers.clear();
    this.conn?.close(); // pending D-Bus calls fail at once
    this.firstSync.resolve();
    // Work still running reads /proc or a container's files; it gets a deadline too, so that a
    // read that never returns cannot keep the daemon from exiting.
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([
        ...[...this.fetches.values()].map((f) => f.done),
        ...this.refreshes.values(),
        this.accountsRead,
      ]),
      new Promise<void>((resolve) => (timer = setTimeout(resolve, this.opts.callTimeoutMs))),
    ]);
    clearTimeout(timer);
    this.hostWarnings.flush();
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
        `connected to ${this.options.busAddress}; machined ${this.owner ? `is ${this.owner}` : 'is not running'}` +
          (conn.directCallsError === undefined
            ? ''
            : `; every call through dbus-next (lean call connection: ${conn.directCallsError})`),
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
    const seq = ++this.signalSeq;
    if (event.kind === 'MachineRemoved') {
      // Applied at once, also during a resync: a removed machine is never served again.
      this.arrivals.delete(event.name);
      this.forget(event.name);
      if (this.table.remove(event.name)) this.options.logger.info(`machine ${event.name} removed`);
      this.resync?.queue.push({ kind: 'removed', name: event.name });
      return;
    }
    // Registration order is the order of these signals, not the order in which fetches finish
    // (machined answers lookups with the first machine that owns an id, reference §2.3).
    this.arrivals.set(event.name, ++this.arrivalCount);
    if (this.resync) this.resync.queue.push({ kind: 'new', name: event.name, path: event.path, seq });
    else this.onMachineNew(event.name, event.path);
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
    this.userNamespaces.delete(name);
    this.netStates.delete(name);
    this.turns.delete(name);
    for (const topic of ['uid_map', 'gid_map', 'passwd', 'group'])
      this.hostProblems.delete(`${name}\0${topic}`);
  }

  // ---- resync -----------------------------------------------------------------------------------

  private async resyncNow(): Promise<void> {
    if (this.resync) {
      this.resync.again = true;
      return;
    }
    const state: ResyncState = { queue: [], again: false, fresh: new Map() };
    this.resync = state;
    try {
      do {
        state.again = false;
        await this.resyncOnce(state);
      } while (state.again && !this.stopped);
    } catch (err) {
      this.noteError(`resync: ${describe(err)}`);
    } finally {
      this.resync = undefined;
      for (const event of state.queue) {
        if (event.kind === 'removed') this.forget(event.name);
        // A MachineNew that arrived before the resync's own fetch of that machine began is already
        // reflected in what the resync applied: fetching again would only repeat it. After
        // machined restarts, it announces every machine while we resync: this halves the calls.
        else if (event.kind === 'retry' || (state.fresh.get(event.name) ?? -1) < event.seq)
          this.onMachineNew(event.name, event.path);
      }
      this.firstSync.resolve();
    }
  }

  private async resyncOnce(state: ResyncState): Promise<void> {
    const client = this.client;
    if (!client) return;
    const began = monotonic();
    if (!this.owner) {
      // No machined on the bus. At start that means nothing is registered (the table is empty).
      // Later — e.g. the bus came back before machined — the last known state stays: machined
      // idle-exits only without machines, and nothing can be unregistered while it is away; when
      // it returns it reloads its machines and the resync then converges.
      this.finishSync(began);
      return;
    }
    const listing = await client.listMachines();
    const epochs = new Map(listing.map((l) => [l.name, this.epochs.get(l.name) ?? 0]));
    const startedAt = new Map<string, number>();
    // The first sync is bounded by its own width only; later ones share `limit` with the signals.
    const first = this.lastSyncAt === 0;
    const width = first ? this.opts.firstSyncConcurrency : this.opts.concurrency;
    const fetched = await mapLimit(listing, width, (l) => {
      startedAt.set(l.name, this.signalSeq);
      const fetch = first
        ? this.fetchMachineNow(l.name, l.path, 'after-sync')
        : this.fetchMachine(l.name, l.path, 'after-sync');
      return fetch.catch((err: unknown) => {
        // One machine that cannot be read now does not fail the sync: keep what we knew of it
        // and try it again on its own.
        this.noteError(`machine ${l.name}: ${describe(err)}`);
        startedAt.delete(l.name);
        state.queue.push({ kind: 'retry', name: l.name, path: l.path });
        const known = this.table.byName(l.name);
        return known ? ({ kind: 'found', record: known } as const) : ({ kind: 'gone' } as const);
      });
    });
    const byName = new Map<string, MachineRecord>();
    listing.forEach((l, i) => {
      const f = fetched[i];
      // Removed (or removed and re-added) while we fetched: the queued signals decide.
      if (f?.kind === 'found' && (this.epochs.get(l.name) ?? 0) === epochs.get(l.name)) {
        byName.set(l.name, f.record);
        const seq = startedAt.get(l.name);
        if (seq !== undefined) state.fresh.set(l.name, seq);
      }
    });
    // Registration order is machined's `Timestamp` (when the machine was registered), not
    // ListMachines' order, which is hashmap order: the first owner of an id must not depend on it.
    // A machine that did not change keeps its record, so a resync that changed nothing (machined
    // restarted) changes nothing: no new zone, no new id index. Recompiling 2,000 machines' zone
    // blocked the event loop for 93 ms while machined came back (reliability-faults-double).
    const ordered = [...byName.values()]
      .map((r) => {
        const known = this.table.byName(r.name);
        return known && sameMachine(known, r) ? known : r;
      })
      .sort(byRegistration);
    this.table.replaceAll(ordered);
    for (const r of ordered) this.startSettlingIfNeeded(r);
    this.finishSync(began);
    this.options.logger.info(`synced ${ordered.length} machine(s) in ${this.lastSyncMs} ms`);
    this.accountsRead = this.readAccountsAfterSync(ordered).catch((err: unknown) =>
      this.noteError(`reading container accounts: ${describe(err)}`),
    );
  }

  /** `began`: monotonic() when the resync began. */
  private finishSync(began: number): void {
    this.lastSyncAt = Date.now();
    this.lastSyncMs = Math.round(monotonic() - began);
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
          if (this.table.remove(name)) this.options.logger.info(`machine ${name} removed`);
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

  /**
   * `accounts`: 'after-sync' (a resync) leaves the container's passwd and group to `readAccountsAfterSync`;
   * the record meanwhile keeps the accounts read before for the same leader, if any.
   */
  private fetchMachine(name: string, knownPath?: string, accounts: AccountsWhen = 'now'): Promise<Fetched> {
    return this.limit(() => this.fetchMachineNow(name, knownPath, accounts));
  }

  private async fetchMachineNow(
    name: string,
    knownPath: string | undefined,
    accounts: AccountsWhen,
  ): Promise<Fetched> {
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
      leaderAlive: cls === 'host' || leaderStart !== undefined,
    };
    const previousStart = this.leaderStarts.get(name);
    if (leaderStart !== undefined) this.leaderStarts.set(name, leaderStart);
    // What we read of the same leader before stands in for what cannot be read now.
    const known = this.table.byName(name);
    const sameLeader =
      known !== undefined &&
      known.leader === props.Leader &&
      leaderStart !== undefined &&
      previousStart === leaderStart;
    const record = await this.withHostData(base, sameLeader ? known : undefined, accounts);
    return { kind: 'found', record };
  }

  /**
   * Adds addresses, maps and accounts to a record (everything that can change without a signal).
   * `known` is what was read before for the same leader: its maps and accounts stand in for any
   * that cannot be read now. The addresses (machined) and the maps and accounts (/proc, the
   * container's files) are read at the same time.
   */
  private async withHostData(
    record: MachineRecord,
    known: MachineRecord | undefined,
    accounts: AccountsWhen = 'now',
    addresses: AddressesWhen = 'ask',
  ): Promise<MachineRecord> {
    const [read, ids] = await Promise.all([
      this.readAddresses(record, addresses === 'if-changed'),
      this.readIds(record, known, accounts),
    ]);
    return { ...record, ...read, ...ids };
  }

  private async readIds(
    record: MachineRecord,
    known: MachineRecord | undefined,
    accounts: AccountsWhen,
  ): Promise<Pick<MachineRecord, 'uidMap' | 'gidMap' | 'innerUsers' | 'innerGroups'>> {
    let { uidMap, gidMap, innerUsers, innerGroups } = record;
    if (record.class === 'container' && record.leaderAlive) {
      // Maps, once written, never change for a user namespace: the same namespace as when the
      // known maps were read means the same maps (one readlink instead of two /proc reads).
      const userns = this.host.userNamespace?.(record.leader);
      const sameNamespace =
        userns !== undefined &&
        known !== undefined &&
        known.leader === record.leader &&
        this.userNamespaces.get(record.name) === userns &&
        (known.uidMap?.length ?? 0) > 0 &&
        (known.gidMap?.length ?? 0) > 0;
      if (sameNamespace) {
        uidMap = known.uidMap;
        gidMap = known.gidMap;
      } else {
        const [uid, gid] = await Promise.all([
          this.host.readIdMap(record.leader, 'uid'),
          this.host.readIdMap(record.leader, 'gid'),
        ]);
        uidMap = this.mapOr(uid, record.name, 'uid', known?.uidMap);
        gidMap = this.mapOr(gid, record.name, 'gid', known?.gidMap);
        if (userns === undefined || uid.kind !== 'ok' || gid.kind !== 'ok')
          this.userNamespaces.delete(record.name);
        else this.userNamespaces.set(record.name, userns);
      }
      if (hasPrivateUserNamespace(uidMap) || hasPrivateUserNamespace(gidMap)) {
        const knownAccounts = known?.innerUsers !== undefined && known.innerGroups !== undefined;
        if (accounts === 'after-sync' || (accounts === 'if-missing' && knownAccounts)) {
          innerUsers = known?.innerUsers;
          innerGroups = known?.innerGroups;
        } else ({ innerUsers, innerGroups } = await this.readAccountsOf(record, known));
      }
    }
    return { uidMap, gidMap, innerUsers, innerGroups };
  }

  /** The container's passwd and group (what `known` had stands in for a file that cannot be read). */
  private async readAccountsOf(
    record: MachineRecord,
    known: MachineRecord | undefined,
  ): Promise<Pick<MachineRecord, 'innerUsers' | 'innerGroups'>> {
    const [passwd, group] = await Promise.all([
      this.host.readAccounts(record.leader, record.rootDirectory, 'passwd'),
      this.host.readAccounts(record.leader, record.rootDirectory, 'group'),
    ]);
    return {
      innerUsers: this.accountsOr(passwd, record, 'passwd', known?.innerUsers),
      innerGroups: this.accountsOr(group, record, 'group', known?.innerGroups),
    };
  }

  /**
   * After a resync: every container with its own user namespace gets its passwd and group, read
   * 16 at a time (asynchronous file reads cost ~0.15 ms of the event loop each: 10,000 machines took
   * 3 s longer to sync with them; BENCHMARKS.md, bench:scale), and applied in one change. They only
   * serve enumeration: lookups by id or name never needed them. A record replaced meanwhile (a
   * refresh, a new registration) read its own.
   */
  private async readAccountsAfterSync(records: readonly MachineRecord[]): Promise<void> {
    const targets = records.filter(
      (m) =>
        m.class === 'container' &&
        m.leaderAlive &&
        (hasPrivateUserNamespace(m.uidMap) || hasPrivateUserNamespace(m.gidMap)),
    );
    const began = monotonic();
    const read = await mapLimit(targets, this.opts.concurrency, (m) =>
      this.stopped ? Promise.resolve(undefined) : this.limit(() => this.readAccountsOf(m, m)),
    );
    if (this.stopped) return;
    const patched: MachineRecord[] = [];
    targets.forEach((m, i) => {
      const accounts = read[i];
      if (
        accounts &&
        this.table.byName(m.name) === m &&
        !(
          sameAccounts(m.innerUsers, accounts.innerUsers) && sameAccounts(m.innerGroups, accounts.innerGroups)
        )
      )
        patched.push({ ...m, ...accounts });
    });
    this.table.replaceSome(patched);
    this.options.logger.info(
      `read the accounts of ${targets.length} container(s) in ${Math.round(monotonic() - began)} ms`,
    );
  }

  /** A map just read, else the one known before (with a warning once per machine, map and reason). */
  private mapOr(
    read: MapRead,
    machine: string,
    which: 'uid' | 'gid',
    known: readonly IdRange[] | undefined,
  ): readonly IdRange[] | undefined {
    if (read.kind === 'ok') {
      this.hostProblem(machine, `${which}_map`, undefined);
      return read.ranges;
    }
    const message = `${which}_map unreadable (${read.reason}); ${known ? 'keeping the map read before' : 'no users or groups for it until it can be read'}`;
    this.hostProblem(machine, `${which}_map`, message, message);
    return known;
  }

  /**
   * Accounts just read, else those known before. Enumeration lists them; without any it lists only
   * inner id 0, which is never a failure (lookups by id or name do not need them).
   */
  private accountsOr(
    read: AccountsRead,
    machine: MachineRecord,
    which: 'passwd' | 'group',
    known: readonly InnerAccount[] | undefined,
  ): readonly InnerAccount[] | undefined {
    if (read.kind === 'ok') {
      const problem = read.leaderRootProblem;
      if (problem === undefined) this.hostProblem(machine.name, which, undefined);
      else
        this.hostProblem(
          machine.name,
          which,
          `cannot read /proc/${machine.leader}/root/etc/${which} (${problem}); using ${machine.rootDirectory}/etc/${which}, the registered root directory`,
          `cannot read /proc/PID/root/etc/${which} (${problem}); using etc/${which} under the registered root directory`,
        );
      return read.accounts;
    }
    const fallback = `enumerating ${known ? `the accounts read before` : 'only inner id 0'}`;
    this.hostProblem(
      machine.name,
      which,
      `cannot read the container's etc/${which} (${read.reason}); ${fallback}`,
      `cannot read the container's etc/${which}; ${fallback}`,
    );
    return known;
  }

  /**
   * Warns once per machine, topic and message; a later success (undefined) says so and resets it.
   * Warnings of one `kind` (the message without what is particular to the machine) about many
   * machines are told a few times, then counted (GroupedWarnings).
   */
  private hostProblem(machine: string, topic: string, message: undefined): void;
  private hostProblem(machine: string, topic: string, message: string, kind: string): void;
  private hostProblem(machine: string, topic: string, message: string | undefined, kind?: string): void {
    // Nothing to clear (every read so far succeeded): no key is built.
    if (message === undefined && this.hostProblems.size === 0) return;
    const key = `${machine}\0${topic}`;
    if (message === undefined) {
      if (this.hostProblems.delete(key))
        this.options.logger.info(`machine ${machine}: ${topic} readable again`);
      return;
    }
    if (this.hostProblems.get(key) === message) return;
    this.hostProblems.set(key, message);
    this.hostWarnings.warn(kind ?? message, machine, message);
  }

  /**
   * `keepIfUnchanged` (a refresh of the record in the table): the record's addresses, which are
   * machined's latest answer, are kept without a call while the leader's network namespace digest
   * is still the one taken before that answer.
   */
  private async readAddresses(
    record: MachineRecord,
    keepIfUnchanged = false,
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
    // Taken before the call: a change after it shows as a different digest next time.
    const digest = this.host.networkState?.(record.leader);
    const before = this.netStates.get(record.name);
    if (
      keepIfUnchanged &&
      digest !== undefined &&
      before?.digest === digest &&
      before.leader === record.leader
    ) {
      this.addressesKept++;
      const { addresses, addressSource, addressError, addressesCheckedAt } = record;
      return { addresses, addressSource, addressError, addressesCheckedAt };
    }
    this.netStates.delete(record.name);
    let raw: RawAddress[];
    this.addressCalls++;
    try {
      raw = await client.getMachineAddresses(record.name);
    } catch (err) {
      // No answer, no bus, machined not on the bus (ServiceUnknown while it restarts), or the
      // machine gone: thrown, so the caller keeps what it knew or drops the machine. Anything else
      // is an answer about this machine (NoPrivateNetworking, an errno from the netns fork, a bus
      // policy that denies the call): no addresses, and why.
      if (!isBusError(err) || isTransient(err)) throw err;
      const reason = err.code;
      this.options.logger.debug(`machine ${record.name}: no addresses (${describe(err)})`);
      if (digest !== undefined) this.netStates.set(record.name, { leader: record.leader, digest });
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
    if (digest !== undefined) this.netStates.set(record.name, { leader: record.leader, digest });
    return { addresses, addressSource: 'machined', addressError: undefined, addressesCheckedAt: Date.now() };
  }

  private interfaceNames(ifindexes: readonly number[]): Promise<NetworkInterface[]> | NetworkInterface[] {
    if (ifindexes.length === 0) return [];
    const now = monotonic();
    if (!this.linkCache || now - this.linkCache.at > 1_000)
      this.linkCache = { at: now, links: this.host.links() };
    return this.linkCache.links.then((links) =>
      ifindexes.map((ifindex) => ({ ifindex, name: links.get(ifindex) })),
    );
  }

  // ---- freshness --------------------------------------------------------------------------------

  /**
   * Re-reads what can change without a signal; coalesced per machine; applied only if changed.
   * `addresses`: 'if-changed' keeps a container's addresses without asking machined while its
   * network namespace digest is unchanged (the refresh rounds, except in the container's turn).
   */
  refresh(name: string, accounts: AccountsWhen = 'now', addresses: AddressesWhen = 'ask'): Promise<void> {
    const running = this.refreshes.get(name);
    if (running) return running;
    const epoch = this.epochs.get(name) ?? 0;
    const done = (async () => {
      const current = this.table.byName(name);
      // While machined is away there is nobody to ask: what is known stays as it is.
      if (!current || !this.client || !this.owner) return;
      let next: MachineRecord;
      try {
        next = await this.limit(() => this.withHostData(current, current, accounts, addresses));
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
   * Every `fullRefreshRounds`th round reconciles with ListMachines; every round refreshes every machine once, one after the
   * other, spread evenly over the interval. The daemon serves meanwhile: a round done at once (16 at
   * a time) came as a burst of work and garbage whose scavenges and batched replies held DNS answers
   * for milliseconds at 1,000 machines (BENCHMARKS.md, bench:dns). The round wakes once per
   * `pollStepMs` and refreshes the machines whose turns fall in that step, one after the other; a
   * batch of k machines begins no sooner than k/`refreshRate` s after the batch before: with more
   * machines than interval × rate (1,000 by default), a round takes N / rate seconds instead (at
   * 10,000 machines, 1,000 calls a second took half a core of the daemon and 1,000 forks a second
   * of machined: BENCHMARKS.md, bench:scale). The log says when
   * rounds are stretched, and `mymachinesd list --json` gives the round time. Every
   * `ACCOUNT_ROUNDS`th round also checks the containers' passwd and group. Machined is asked for a
   * container's addresses when its network namespace digest changed (readAddresses), and anyway in
   * one round of every `fullRefreshRounds`, staggered: a round that asked for every container came
   * as 100 calls a second for 10 s each minute, and its tail showed in the DNS p99 at 10,000 q/s
   * (BENCHMARKS.md, bench:dns). Only every `fullRefreshRounds`th round reconciles: a ListMachines of
   * 1,000 machines every 10 s cost FakeMachined 10–40 ms of CPU each and moved the same p99, and
   * lost signals are rare.
   */
  private async refreshRounds(): Promise<void> {
    const interval = this.opts.refreshIntervalMs;
    const closest = 1000 / this.opts.refreshRate;
    let earliest = -Infinity; // when the next batch may begin, across rounds (the rate bound)
    await this.refreshPause.until(monotonic() + interval);
    for (let round = 1; !this.stopped; round++) {
      const began = monotonic();
      const accounts = round % ACCOUNT_ROUNDS === 0 ? 'now' : 'if-missing';
      const full = this.opts.fullRefreshRounds;
      if (round % full === 0) await this.reconcile();
      const names = this.table
        .all()
        .filter((m) => m.class !== 'host')
        .map((m) => m.name);
      const gap = Math.max(interval / Math.max(1, names.length), closest);
      this.noteRoundTime(names.length, gap * names.length);
      const batch = Math.max(1, Math.floor(this.opts.pollStepMs / gap));
      const slices = new RoundSlices(this.refreshPause);
      for (const [i, name] of names.entries()) {
        if (i % batch === 0) {
          // A batch may begin once the one before has had its share of the rate bound.
          await slices.batchAt(Math.max(began + i * gap, earliest));
          earliest = monotonic() + Math.min(batch, names.length - i) * closest;
        }
        await slices.letQueriesIn();
        if (this.stopped) return;
        // (a machine removed since the round began gets no place: it would never be dropped)
        const turn = this.table.byName(name) !== undefined && (this.turnOf(name) + round) % full === 0;
        await this.refresh(name, accounts, turn ? 'ask' : 'if-changed');
      }
      await this.refreshPause.until(began + Math.max(interval, names.length * gap));
    }
  }

  private turnOf(name: string): number {
    let turn = this.turns.get(name);
    if (turn === undefined) {
      turn = this.turnCount++;
      this.turns.set(name, turn);
    }
    return turn;
  }

  /** Says when a round is stretched beyond the interval by the rate bound, and when it no longer is. */
  private noteRoundTime(machines: number, roundMs: number): void {
    this.refreshRoundMs = Math.max(roundMs, this.opts.refreshIntervalMs);
    const every = `${Math.round(this.refreshRoundMs / 100) / 10} s`;
    this.noteStretch('refresh', roundMs > this.opts.refreshIntervalMs, (stretched) =>
      stretched
        ? `refresh: ${machines} machines at most ${this.opts.refreshRate} per second (--refresh-rate): each machine's addresses are re-read every ${every}, not every ${this.opts.refreshIntervalMs / 1000} s`
        : `refresh: each machine's addresses are re-read every ${every} again`,
    );
  }

  /** Logs once when the rounds of `what` become stretched by their rate bound, and once when no longer. */
  private noteStretch(
    what: 'refresh' | 'leader check',
    stretched: boolean,
    message: (stretched: boolean) => string,
  ): void {
    if (this.stretched.has(what) === stretched) return;
    if (stretched) this.stretched.add(what);
    else this.stretched.delete(what);
    this.options.logger.info(message(stretched));
  }

  /**
   * One ListMachines against the view. A listed machine we do not serve (its MachineNew was lost,
   * or its fetch failed) is fetched; a served machine machined no longer lists (a lost
   * MachineRemoved) is fetched too, which drops it only if machined confirms it is gone: the listing
   * alone never removes anything, so a registration racing with it cannot be lost. A resync does
   * all of this and more, so none runs meanwhile. The call never starts machined (NO_AUTO_START),
   * and runs in every `fullRefreshRounds`th round only.
   */
  private async reconcile(): Promise<void> {
    const client = this.client;
    if (!client || !this.owner || this.resync) return;
    let listing: { name: string }[];
    try {
      listing = await client.listMachines();
    } catch (err) {
      this.options.logger.debug(`reconciling with ListMachines failed: ${describe(err)}; trying next round`);
      return;
    }
    if (this.resync || this.client !== client || this.stopped) return;
    const listed = new Set(listing.map((l) => l.name));
    for (const { name } of listing) {
      if (this.table.byName(name) || this.fetches.has(name)) continue;
      this.options.logger.warn(
        `machine ${name} is registered but was not served (a lost signal or a failed fetch); fetching it`,
      );
      this.onMachineNew(name);
    }
    for (const m of this.table.all()) {
      if (listed.has(m.name) || this.fetches.has(m.name)) continue;
      this.options.logger.warn(
        `machine ${m.name} is served but no longer listed by machined (a lost signal); checking it`,
      );
      void this.fetchAndApply(m.name);
    }
  }

  /**
   * A leader that died (machined keeps the machine: no systemd told it) loses its maps and addresses.
   * Every `LEADER_FULL_CHECK_EVERY`th round reads each leader's start time (a pid reused by another
   * process); the rounds between only ask whether the pid exists (signal 0), and read the start
   * time of those that do not: at 10,000 machines the full check every 2 s took 8 % of the daemon's
   * CPU under DNS load (BENCHMARKS.md, bench:scale), signal 0 about a tenth of that. A round is
   * spread over its period, a batch of leaders every `pollStepMs`, and lasts at least
   * N / `leaderCheckRate` s: checking 10,000 leaders every 2 s still took 7–9 % of a core while idle
   * and a fifth of the DNS q/s under load (BENCHMARKS.md, bench:scale).
   */
  private async leaderRounds(): Promise<void> {
    const interval = this.opts.leaderCheckIntervalMs;
    await this.leaderPause.until(monotonic() + interval);
    let lastBatch = -Infinity; // when the latest batch began, across rounds
    for (let round = 0; !this.stopped; round++) {
      const began = monotonic();
      const full = round % LEADER_FULL_CHECK_EVERY === 0;
      const names = this.table
        .all()
        .filter((m) => m.class !== 'host' && m.leaderAlive)
        .map((m) => m.name);
      const period = Math.max(interval, (names.length / this.opts.leaderCheckRate) * 1000);
      this.noteStretch('leader check', period > interval, (stretched) =>
        stretched
          ? `leader check: ${names.length} leaders at most ${this.opts.leaderCheckRate} per second: a dead leader is noticed within ${Math.round(period / 100) / 10} s, not ${interval / 1000} s`
          : `leader check: a dead leader is noticed within ${interval / 1000} s again`,
      );
      const gap = period / Math.max(1, names.length);
      const batch = Math.max(1, Math.ceil(this.opts.pollStepMs / gap));
      const slices = new RoundSlices(this.leaderPause);
      for (const [i, name] of names.entries()) {
        if (i % batch === 0) {
          // Behind schedule (the daemon was stopped or starved), batches come at most twice as
          // often as planned, not all at once.
          await slices.batchAt(Math.max(began + i * gap, lastBatch + this.opts.pollStepMs / 2));
          lastBatch = monotonic();
        }
        await slices.letQueriesIn();
        if (this.stopped) return;
        const m = this.table.byName(name);
        if (!m || m.class === 'host' || !m.leaderAlive) continue;
        try {
          await this.checkLeader(m, full);
        } catch (err) {
          // procHost answers undefined rather than throwing; anything else must not end the check
          this.options.logger.debug(`leader check of ${name} failed: ${describe(err)}`);
        }
      }
      await this.leaderPause.until(began + period);
    }
  }

  /** Marks the machine's leader gone when its pid no longer exists or now belongs to another process. */
  private async checkLeader(m: MachineRecord, full: boolean): Promise<void> {
    if (!full && this.host.exists?.(m.leader) === true) return;
    const st = await this.host.startTime(m.leader);
    const expected = this.leaderStarts.get(m.name);
    if (st !== undefined && (expected === undefined || st === expected)) return;
    if (this.table.byName(m.name) !== m) return;
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

  private noteError(message: string): void {
    this.lastError = message;
    this.options.logger.warn(message);
  }
}

/**
 * The pacing inside one round of the refresh or the leader check: each batch waits for its time, and
 * between machines the round lets queries in once it has held the event loop for POLL_SLICE_MS
 * (procHost reads /proc synchronously), whatever the batch. A batch that waited begins a fresh slice;
 * one behind schedule follows in the same turn, in the slice it is in.
 */
class RoundSlices {
  private start = monotonic();

  constructor(private readonly pause: Pause) {}

  async batchAt(due: number): Promise<void> {
    const waits = due > monotonic();
    await this.pause.until(due);
    if (waits) this.start = monotonic();
  }

  async letQueriesIn(): Promise<void> {
    if (monotonic() - this.start <= POLL_SLICE_MS) return;
    await new Promise<void>((resolve) => setImmediate(resolve));
    this.start = monotonic();
  }
}

/** A cancellable wait on the monotonic() clock; after cancel() every wait resolves at once. */
class Pause {
  private timer: NodeJS.Timeout | undefined;
  private wake: (() => void) | undefined;
  private cancelled = false;

  /** Resolves at `time`, or at once when it has passed or the pause was cancelled. */
  until(time: number): Promise<void> {
    const wait = time - monotonic();
    if (wait <= 0 || this.cancelled) return Promise.resolve();
    return new Promise((resolve) => {
      this.wake = resolve;
      this.timer = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, wait);
    });
  }

  cancel(): void {
    this.cancelled = true;
    clearTimeout(this.timer);
    this.wake?.();
    this.wake = undefined;
  }
}

// ---- pure helpers ---------------------------------------------------------------------------------

/** Signals held back while a resync runs, replayed in order after it. */
type HeldEvent =
  | { readonly kind: 'removed'; readonly name: string }
  | { readonly kind: 'new'; readonly name: string; readonly path: string; readonly seq: number }
  /** The resync could not fetch this machine: fetch it on its own. */
  | { readonly kind: 'retry'; readonly name: string; readonly path: string };

/** Whether a refresh asks machined for a container's addresses: always, or only when its netns changed. */
type AddressesWhen = 'ask' | 'if-changed';

/**
 * When a fetch or refresh reads the container's passwd and group: 'now'; 'after-sync' (a resync:
 * `readAccountsAfterSync` reads them); 'if-missing' (a refresh between account rounds: only when the
 * record has none yet).
 */
type AccountsWhen = 'now' | 'after-sync' | 'if-missing';

interface ResyncState {
  readonly queue: HeldEvent[];
  again: boolean;
  /** Machines the resync applied → the signal count when their fetch began. */
  readonly fresh: Map<string, number>;
}

/**
 * Registration order: machined's Timestamp (CLOCK_REALTIME µs), then name for equal ones; machines
 * without a timestamp (0: unknown) after all others.
 */
function byRegistration(a: MachineRecord, b: MachineRecord): number {
  const x = a.timestamp === 0n ? Infinity : a.timestamp;
  const y = b.timestamp === 0n ? Infinity : b.timestamp;
  if (x !== y) return x < y ? -1 : 1;
  return a.name < b.name ? -1 : a.name > b.name ? 1 : 0;
}

/** Failures that say nothing about the machine: ask again later, keep what is known meanwhile. */
function isTransient(err: BusError): boolean {
  return (
    err.code === 'Timeout' ||
    err.code === 'Disconnected' ||
    err.code === 'ServiceUnknown' ||
    err.code === 'NoSuchMachine' // gone: the caller drops it
  );
}

/**
 * The clock every wait and duration here is measured on: milliseconds that never go back. The
 * system clock can be set back (an admin, chrony's makestep); rounds scheduled on it stopped for as
 * long as it was set back, because a time taken before the step was then still ahead.
 */
function monotonic(): number {
  return performance.now();
}

/** At most `limit` calls of `work` run at once; the others wait their turn, in order. */
export function concurrencyLimit(limit: number): <T>(work: () => Promise<T>) => Promise<T> {
  let active = 0;
  const waiting: (() => void)[] = [];
  return async <T>(work: () => Promise<T>): Promise<T> => {
    if (active < limit) active++;
    else await new Promise<void>((resolve) => waiting.push(resolve)); // the slot is handed over
    try {
      return await work();
    } finally {
      const next = waiting.shift();
      if (next) next();
      else active--;
    }
  };
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
