/**
 * A D-Bus connection with the guarantees the registry needs and dbus-next lacks: every call has a
 * deadline, calls pending when the connection drops fail at once (dbus-next would leave them hanging
 * forever), the end of the connection is an event, match rules are explicit, and D-Bus errors become
 * named `BusError` values. Replies are returned as raw bodies; callers parse them with zod.
 *
 * dbus-next (@particle fork, pinned: reference/peers.md §5) is used only for the wire format and the
 * authentication handshake, except for calls whose arguments are strings, object paths, 32-bit
 * integers and booleans (GetMachineAddresses, Properties.GetAll, …): those go over a second, lean
 * connection with our own codec (dbus-channel.ts, dbus-wire.ts), about half of dbus-next's CPU per
 * call or less. Either connection ending ends this BusConnection.
 */
import {
  DBusError,
  Message,
  MessageFlag,
  MessageType,
  sessionBus,
  type MessageBus,
} from '@particle/dbus-next';
import type { Socket } from 'node:net';
import { CallChannel, ChannelUnusable } from './dbus-channel.js';
import {
  WireError,
  badObjectPathArgument,
  canEncode,
  decodeBody,
  isObjectPath,
  MessageKind,
  type WireMessage,
} from './dbus-wire.js';

/** Named failures of a D-Bus call, with the wire error name kept for logs. */
export type BusErrorCode =
  | 'NoSuchMachine'
  | 'NoSuchImage'
  | 'NoMachineForPID'
  | 'MachineExists'
  | 'NoPrivateNetworking'
  | 'NoOSReleaseInformation'
  | 'NoSuchUserMapping'
  | 'NoSuchGroupMapping'
  | 'NotSupported'
  | 'InvalidArgs'
  | 'AccessDenied'
  /** Nobody owns the destination name (machined not running and not activatable). */
  | 'ServiceUnknown'
  | 'UnknownMethod'
  | 'Timeout'
  | 'Disconnected'
  /** The reply did not have the documented signature. */
  | 'BadReply'
  /** `System.Error.E…`: an errno from the service. */
  | 'SystemError'
  | 'Other';

/** D-Bus error names → codes (machined's own names: reference §5, bus-common-errors.c). */
const ERROR_NAMES: ReadonlyMap<string, BusErrorCode> = new Map([
  ['org.freedesktop.machine1.NoSuchMachine', 'NoSuchMachine'],
  ['org.freedesktop.machine1.NoSuchImage', 'NoSuchImage'],
  ['org.freedesktop.machine1.NoMachineForPID', 'NoMachineForPID'],
  ['org.freedesktop.machine1.MachineExists', 'MachineExists'],
  ['org.freedesktop.machine1.NoPrivateNetworking', 'NoPrivateNetworking'],
  ['org.freedesktop.machine1.NoOSReleaseInformation', 'NoOSReleaseInformation'],
  ['org.freedesktop.machine1.NoSuchUserMapping', 'NoSuchUserMapping'],
  ['org.freedesktop.machine1.NoSuchGroupMapping', 'NoSuchGroupMapping'],
  ['org.freedesktop.DBus.Error.NotSupported', 'NotSupported'],
  ['org.freedesktop.DBus.Error.InvalidArgs', 'InvalidArgs'],
  ['org.freedesktop.DBus.Error.AccessDenied', 'AccessDenied'],
  ['org.freedesktop.DBus.Error.InteractiveAuthorizationRequired', 'AccessDenied'],
  ['org.freedesktop.DBus.Error.ServiceUnknown', 'ServiceUnknown'],
  ['org.freedesktop.DBus.Error.NameHasNoOwner', 'ServiceUnknown'],
  ['org.freedesktop.DBus.Error.UnknownMethod', 'UnknownMethod'],
  ['org.freedesktop.DBus.Error.UnknownObject', 'UnknownMethod'],
  ['org.freedesktop.DBus.Error.UnknownInterface', 'UnknownMethod'],
  ['org.freedesktop.DBus.Error.NoReply', 'Timeout'],
  ['org.freedesktop.DBus.Error.Timeout', 'Timeout'],
  ['org.freedesktop.DBus.Error.TimedOut', 'Timeout'],
  ['org.freedesktop.DBus.Error.Disconnected', 'Disconnected'],
]);

export class BusError extends Error {
  override readonly name = 'BusError';
  constructor(
    readonly code: BusErrorCode,
    message: string,
    /** The D-Bus error name, or '' for local failures. */
    readonly dbusName: string = '',
  ) {
    super(message);
  }

  static fromDBus(dbusName: string, text: string): BusError {
    const code =
      ERROR_NAMES.get(dbusName) ?? (dbusName.startsWith('System.Error.') ? 'SystemError' : 'Other');
    return new BusError(code, text || dbusName, dbusName);
  }
}

export function isBusError(err: unknown, code?: BusErrorCode): err is BusError {
  return err instanceof BusError && (code === undefined || err.code === code);
}

export interface CallSpec {
  readonly destination: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly signature?: string;
  readonly body?: readonly unknown[];
  /** Do not bus-activate the destination (polls must not wake machined: reference/peers.md §5.2). */
  readonly noAutoStart?: boolean | undefined;
  readonly timeoutMs?: number | undefined;
  /**
   * How a reply over the lean connection is read (default `decodeBody`), e.g.
   * `decodePropertiesBody`. Replies through dbus-next always come in dbus-next's shapes.
   */
  readonly readBody?: ((reply: WireMessage) => unknown[]) | undefined;
}

/** A received signal, reduced to what routing needs. */
export interface BusSignal {
  readonly sender: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly body: readonly unknown[];
}

export const DBUS_NAME = 'org.freedesktop.DBus';
const DBUS_PATH = '/org/freedesktop/DBus';
const DEFAULT_TIMEOUT_MS = 25_000; // libdbus/sd-bus default method timeout

/** Builds a match rule string from keys in a fixed order (the bus compares rules textually on removal). */
export function matchRule(fields: Readonly<Record<string, string>>): string {
  return Object.entries(fields)
    .map(([k, v]) => `${k}='${v.replace(/'/g, "'\\''")}'`)
    .join(',');
}

/** The rule for the bus's NameOwnerChanged signals about `name` (it appearing, going, changing hands). */
export function nameOwnerRule(name: string): string {
  return matchRule({
    type: 'signal',
    sender: DBUS_NAME,
    interface: DBUS_NAME,
    member: 'NameOwnerChanged',
    arg0: name,
  });
}

/** The bus address machined lives on: `$DBUS_SYSTEM_BUS_ADDRESS`, else the standard socket. */
export function systemBusAddress(env: NodeJS.ProcessEnv = process.env): string {
  return env.DBUS_SYSTEM_BUS_ADDRESS ?? 'unix:path=/run/dbus/system_bus_socket';
}

export interface BusOpenOptions {
  /** Deadline of the connection and its handshake, both connections' (default 5 s). */
  readonly timeoutMs?: number;
  /** Open the lean call connection (default true); false: every call through dbus-next. */
  readonly directCalls?: boolean;
}

export class BusConnection {
  private readonly pending = new Set<(err: BusError) => void>();
  private readonly signalListeners = new Set<(signal: BusSignal) => void>();
  private readonly closeListeners = new Set<(reason: string) => void>();
  private closedReason: string | undefined;
  /** Calls made, by path: `direct` over the lean connection, `generic` through dbus-next (a test hook). */
  readonly callCounts = { direct: 0, generic: 0 };

  private constructor(
    private readonly bus: MessageBus,
    readonly address: string,
    private readonly channel: CallChannel | undefined,
    /** Why calls all go through dbus-next, when they do. */
    readonly directCallsError: string | undefined,
  ) {
    bus.on('message', (msg: Message) => {
      if (msg.type !== MessageType.SIGNAL) return;
      const signal: BusSignal = {
        sender: msg.sender,
        path: msg.path,
        interface: msg.interface,
        member: msg.member,
        body: Array.isArray(msg.body) ? (msg.body as unknown[]) : [],
      };
      for (const l of [...this.signalListeners]) l(signal);
    });
    bus.on('error', (err: unknown) => this.markClosed(`bus error: ${describe(err)}`));
    channel?.onClose((reason) => this.markClosed(`call connection: ${reason}`));
  }

  /**
   * Connects and completes the Hello exchange; rejects with a BusError when the bus is not there.
   * The lean connection is opened at the same time, under the same deadline; a bus it cannot use
   * (ChannelUnusable) is still a bus, and dbus-next makes every call then. Any other failure of it,
   * a timeout included, fails the open: the bus is not answering as it should.
   */
  static open(address: string, options: BusOpenOptions = {}): Promise<BusConnection> {
    const timeoutMs = options.timeoutMs ?? 5_000;
    const lean: Promise<CallChannel | Error> =
      (options.directCalls ?? true)
        ? CallChannel.open(address, timeoutMs).catch((err: unknown) =>
            err instanceof Error ? err : new Error(String(err)),
          )
        : Promise.resolve(new ChannelUnusable('turned off'));
    return BusConnection.openGeneric(address, timeoutMs, lean);
  }

  /** dbus-next's connection, completed with the lean one's outcome (`lean` never rejects). */
  private static openGeneric(
    address: string,
    timeoutMs: number,
    lean: Promise<CallChannel | Error>,
  ): Promise<BusConnection> {
    return new Promise((resolve, reject) => {
      let settled = false;
      const cannotConnect = (err: unknown): void => {
        settled = true;
        // a lean connection that opens after all is not needed
        void lean.then((l) => {
          if (l instanceof CallChannel) l.close();
        });
        reject(new BusError('Disconnected', `cannot connect to ${address}: ${describe(err)}`));
      };
      let bus: MessageBus;
      try {
        bus = sessionBus({ busAddress: address, authMethods: ['EXTERNAL'] });
      } catch (err) {
        cannotConnect(err);
        return;
      }
      const timer = setTimeout(() => {
        fail(new Error('timed out'));
      }, timeoutMs);
      const fail = (err: unknown): void => {
        if (settled) return;
        clearTimeout(timer);
        bus.removeListener('connect', connected);
        streamOf(bus)?.destroy();
        cannotConnect(err);
      };
      const connected = (): void => {
        const stream = streamOf(bus);
        if (!stream) {
          fail(new Error('unsupported transport'));
          return;
        }
        const lost = (): void => fail(new Error('connection closed by the bus'));
        stream.once('close', lost);
        void lean.then((l) => {
          if (settled) return;
          if (l instanceof Error && !(l instanceof ChannelUnusable)) {
            fail(new Error(`call connection: ${l.message}`));
            return;
          }
          settled = true;
          clearTimeout(timer);
          bus.removeListener('error', fail);
          stream.removeListener('close', lost);
          const conn =
            l instanceof CallChannel
              ? new BusConnection(bus, address, l, undefined)
              : new BusConnection(bus, address, undefined, l.message);
          stream.once('close', () => conn.markClosed('connection closed by the bus'));
          resolve(conn);
        });
      };
      bus.once('connect', connected);
      bus.once('error', fail);
    });
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /** This connection's unique name on the bus (`:1.42`). */
  get uniqueName(): string {
    const name: unknown = Reflect.get(this.bus, 'name');
    return typeof name === 'string' ? name : '';
  }

  /** True when calls `canEncode` takes go over the lean connection (a test hook). */
  get directCalls(): boolean {
    return this.channel !== undefined && !this.channel.closed;
  }

  /** Calls a method; resolves to the reply body, rejects with a BusError. */
  call(spec: CallSpec): Promise<unknown[]> {
    if (this.closedReason !== undefined)
      return Promise.reject(new BusError('Disconnected', `not connected: ${this.closedReason}`));
    const signature = spec.signature ?? '';
    const body = spec.body ?? [];
    // dbus-next checks the header fields itself and refuses what is wrong locally; ours does not
    if (this.channel && isObjectPath(spec.path) && canEncode(signature, body))
      return this.callDirect(this.channel, spec, signature, body);
    return this.callGeneric(spec);
  }

  /**
   * Through dbus-next's connection: the one that receives signals, so match rules and calls whose
   * answer must not be older than a signal go this way.
   */
  private callGeneric(spec: CallSpec): Promise<unknown[]> {
    if (this.closedReason !== undefined)
      return Promise.reject(new BusError('Disconnected', `not connected: ${this.closedReason}`));
    const what = `${spec.interface}.${spec.member}`;
    const signature = spec.signature ?? '';
    const body = spec.body ?? [];
    const badPath = badObjectPathArgument(signature, body);
    if (badPath !== undefined)
      return Promise.reject(
        new BusError('InvalidArgs', `${what}: not an object path: ${JSON.stringify(badPath)}`),
      );
    let msg: Message;
    try {
      msg = new Message({
        type: MessageType.METHOD_CALL,
        destination: spec.destination,
        path: spec.path,
        interface: spec.interface,
        member: spec.member,
        signature,
        body: [...body],
        flags: spec.noAutoStart ? MessageFlag.NO_AUTO_START : 0,
      });
    } catch (err) {
      // an invalid destination, path, interface or member name
      return Promise.reject(new BusError('InvalidArgs', `${what}: ${describe(err)}`));
    }
    this.callCounts.generic++;
    return this.awaitReply(
      what,
      spec.timeoutMs,
      this.bus.call(msg),
      (reply) => (reply && Array.isArray(reply.body) ? (reply.body as unknown[]) : []),
      (err, what) =>
        err instanceof DBusError
          ? BusError.fromDBus(err.type, err.text)
          : new BusError('Disconnected', `${what}: ${describe(err)}`),
    );
  }

  private callDirect(
    channel: CallChannel,
    spec: CallSpec,
    signature: string,
    body: readonly unknown[],
  ): Promise<unknown[]> {
    this.callCounts.direct++;
    const sent = channel.send({
      destination: spec.destination,
      path: spec.path,
      interface: spec.interface,
      member: spec.member,
      signature,
      body,
      noAutoStart: spec.noAutoStart === true,
    });
    const what = `${spec.interface}.${spec.member}`;
    return this.awaitReply(
      what,
      spec.timeoutMs,
      sent.reply,
      (reply) => replyBody(reply, what, spec.readBody ?? decodeBody),
      (err) =>
        err instanceof WireError
          ? new BusError('InvalidArgs', `${what}: ${err.message}`)
          : new BusError('Disconnected', `${what}: ${describe(err)}`),
      () => {
        channel.abandon(sent.serial);
      },
    );
  }

  /**
   * A call's reply body within its deadline. Until then the call is in `pending`, so a connection
   * that ends fails it at once; `onAbort` runs when it fails before its reply came.
   */
  private awaitReply<T>(
    what: string,
    timeoutMs: number | undefined,
    reply: Promise<T>,
    body: (reply: T) => unknown[],
    failure: (err: unknown, what: string) => BusError,
    onAbort: () => void = () => undefined,
  ): Promise<unknown[]> {
    const ms = timeoutMs ?? DEFAULT_TIMEOUT_MS;
    return new Promise<unknown[]>((resolve, reject) => {
      const abort = (err: BusError): void => {
        clearTimeout(timer);
        this.pending.delete(abort);
        onAbort();
        reject(err);
      };
      const timer = setTimeout(() => abort(new BusError('Timeout', `${what}: no reply within ${ms} ms`)), ms);
      this.pending.add(abort);
      reply.then(
        (r) => {
          clearTimeout(timer);
          this.pending.delete(abort);
          try {
            resolve(body(r));
          } catch (err) {
            reject(err instanceof BusError ? err : new BusError('BadReply', `${what}: ${describe(err)}`));
          }
        },
        (err: unknown) => abort(failure(err, what)),
      );
    });
  }

  addMatch(rule: string): Promise<unknown[]> {
    return this.callGeneric({
      destination: DBUS_NAME,
      path: DBUS_PATH,
      interface: DBUS_NAME,
      member: 'AddMatch',
      signature: 's',
      body: [rule],
    });
  }

  /**
   * The unique name owning `name`, or undefined when nobody does. Through dbus-next's connection,
   * as NameOwnerChanged comes: the bus orders the answer with the signals, so a "no owner" answer is
   * never read after the signal that gave `name` its owner.
   */
  async getNameOwner(name: string): Promise<string | undefined> {
    try {
      const [owner] = await this.callGeneric({
        destination: DBUS_NAME,
        path: DBUS_PATH,
        interface: DBUS_NAME,
        member: 'GetNameOwner',
        signature: 's',
        body: [name],
      });
      return typeof owner === 'string' ? owner : undefined;
    } catch (err) {
      if (isBusError(err, 'ServiceUnknown')) return undefined;
      throw err;
    }
  }

  onSignal(listener: (signal: BusSignal) => void): () => void {
    this.signalListeners.add(listener);
    return () => this.signalListeners.delete(listener);
  }

  /** Called once when the connection ends for any reason (also after `close()`). */
  onClose(listener: (reason: string) => void): () => void {
    if (this.closedReason !== undefined) {
      const reason = this.closedReason;
      queueMicrotask(() => listener(reason));
      return () => undefined;
    }
    this.closeListeners.add(listener);
    return () => this.closeListeners.delete(listener);
  }

  close(): void {
    if (this.closedReason !== undefined) return;
    this.markClosed('closed');
    try {
      this.bus.disconnect();
    } catch {
      // the stream may already be gone; there is nothing left to release
    }
    streamOf(this.bus)?.destroy();
  }

  private markClosed(reason: string): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = reason;
    this.channel?.close();
    const err = new BusError('Disconnected', `connection lost: ${reason}`);
    for (const abort of [...this.pending]) abort(err);
    for (const l of [...this.closeListeners]) l(reason);
    this.closeListeners.clear();
  }
}

/** A reply's body; an ERROR message becomes its BusError (text: its first string argument). */
function replyBody(reply: WireMessage, what: string, read: (reply: WireMessage) => unknown[]): unknown[] {
  let body: unknown[];
  try {
    body = read(reply);
  } catch (err) {
    if (err instanceof WireError) throw new BusError('BadReply', `${what}: malformed reply: ${err.message}`);
    throw err;
  }
  if (reply.kind === MessageKind.ERROR) {
    const [text] = body;
    throw BusError.fromDBus(reply.errorName, typeof text === 'string' ? text : '');
  }
  return body;
}

/**
 * dbus-next's MessageBus does not report the end of its stream; the socket is reached through its
 * private `_connection.stream` (stable in the pinned 0.11.4; checked at runtime, not assumed).
 */
function streamOf(bus: MessageBus): Socket | undefined {
  const conn: unknown = Reflect.get(bus, '_connection');
  if (typeof conn !== 'object' || conn === null) return undefined;
  const stream: unknown = Reflect.get(conn, 'stream');
  if (typeof stream !== 'object' || stream === null || !('destroy' in stream) || !('once' in stream))
    return undefined;
  return stream as Socket;
}

function describe(err: unknown): string {
  return err instanceof Error ? err.message : String(err);
}
