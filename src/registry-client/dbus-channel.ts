/**
 * A second, lean connection to the same bus for the registry's frequent method calls
 * (GetMachineAddresses, Properties.GetAll): our own codec (dbus-wire.ts) over a unix socket, EXTERNAL
 * authentication, one Hello. BusConnection owns it next to dbus-next's connection, which keeps
 * signals, match rules and every call this codec cannot write; either connection ending ends both.
 *
 * Replies on this connection and signals on the other are not ordered with each other. So the calls
 * whose answers are weighed against signals stay on dbus-next's connection, where the bus orders
 * both: AddMatch and GetNameOwner (a "no owner" answer read after the NameOwnerChanged that gave
 * machined its name would undo it). Machine fetches come here: a fetch result for a machine removed
 * meanwhile is dropped by its per-name epoch (sync.ts), and a result that arrives before the removal
 * is undone by it.
 *
 * Like any bus client it answers the calls addressed to it (`busctl`, a monitoring tool pinging every
 * peer): org.freedesktop.DBus.Peer and Introspectable, and UnknownMethod for everything else, so a
 * caller is told at once instead of waiting for its timeout.
 */
import { readFileSync } from 'node:fs';
import { connect, type Socket } from 'node:net';
import {
  MessageKind,
  MessageReader,
  NO_AUTO_START,
  NO_REPLY_EXPECTED,
  WireError,
  decodeBody,
  encodeCall,
  encodeError,
  encodeReturn,
  type WireMessage,
} from './dbus-wire.js';

/**
 * The bus cannot be used this way at all (no unix socket in its address, our authentication
 * refused): the caller may make its calls another way. A timeout or a broken connection is not this.
 */
export class ChannelUnusable extends Error {
  override readonly name = 'ChannelUnusable';
}

export interface ChannelCall {
  readonly destination: string;
  readonly path: string;
  readonly interface: string;
  readonly member: string;
  readonly signature: string;
  readonly body: readonly unknown[];
  readonly noAutoStart: boolean;
}

/** The socket path of the first unix transport in a D-Bus address (abstract names with their NUL). */
export function unixSocketPath(address: string): string | undefined {
  for (const entry of address.split(';')) {
    const colon = entry.indexOf(':');
    if (entry.slice(0, colon) !== 'unix') continue;
    const params = new Map(
      entry
        .slice(colon + 1)
        .split(',')
        .map((kv) => {
          const eq = kv.indexOf('=');
          return [kv.slice(0, eq), unescapeAddressValue(kv.slice(eq + 1))] as const;
        }),
    );
    const path = params.get('path');
    if (path) return path;
    const abstract = params.get('abstract');
    if (abstract) return `\0${abstract}`;
  }
  return undefined;
}

/** D-Bus address values escape bytes as %XX. */
function unescapeAddressValue(value: string): string {
  return value.replace(/%([0-9a-fA-F]{2})/g, (_, hex: string) => String.fromCharCode(parseInt(hex, 16)));
}

const PEER = 'org.freedesktop.DBus.Peer';
const INTROSPECTABLE = 'org.freedesktop.DBus.Introspectable';

/** What Introspect gives for every path: this connection exports no objects. */
export const INTROSPECTION = `<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"
 "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">
<node>
 <interface name="${PEER}">
  <method name="Ping"/>
  <method name="GetMachineId">
   <arg type="s" name="machine_uuid" direction="out"/>
  </method>
 </interface>
 <interface name="${INTROSPECTABLE}">
  <method name="Introspect">
   <arg name="xml_data" type="s" direction="out"/>
  </method>
 </interface>
</node>
`;

/** This host's machine ID (/etc/machine-id), or why there is none. */
export function readMachineId(path = '/etc/machine-id'): string | Error {
  try {
    const id = readFileSync(path, 'latin1').trim();
    return /^[0-9a-f]{32}$/.test(id) ? id : new Error(`${path} holds no machine ID`);
  } catch (err) {
    return new Error(`cannot read ${path}: ${err instanceof Error ? err.message : String(err)}`);
  }
}

/**
 * The answer to a method call received on the lean connection, or undefined when the caller asked
 * for none. `machineId` is read only when GetMachineId is asked.
 */
export function answerCall(
  call: WireMessage,
  serial: number,
  machineId: () => string | Error,
): Buffer | undefined {
  if (call.flags & NO_REPLY_EXPECTED) return undefined;
  const h = { serial, replySerial: call.serial, destination: call.sender };
  const iface = call.interface;
  if (call.signature === '') {
    if ((iface === PEER || iface === '') && call.member === 'Ping') return encodeReturn(h, '', []);
    if ((iface === PEER || iface === '') && call.member === 'GetMachineId') {
      const id = machineId();
      return typeof id === 'string'
        ? encodeReturn(h, 's', [id])
        : encodeError(h, 'org.freedesktop.DBus.Error.FileNotFound', id.message);
    }
    if ((iface === INTROSPECTABLE || iface === '') && call.member === 'Introspect')
      return encodeReturn(h, 's', [INTROSPECTION]);
  }
  const known = iface === PEER || iface === INTROSPECTABLE;
  return encodeError(
    h,
    known ? 'org.freedesktop.DBus.Error.InvalidArgs' : 'org.freedesktop.DBus.Error.UnknownMethod',
    known
      ? `${iface}.${call.member} takes no arguments, or does not exist`
      : `Unknown method ${call.member} or interface ${iface || '(none)'}: this connection exports no objects`,
  );
}

export class CallChannel {
  private serial = 1;
  private machineId: string | Error | undefined;
  /** This connection's unique name on the bus, from Hello. */
  uniqueName = '';
  private readonly pending = new Map<
    number,
    { resolve: (m: WireMessage) => void; reject: (e: Error) => void }
  >();
  private readonly reader = new MessageReader();
  private closedReason: string | undefined;
  private corked = false;
  private readonly closeListeners = new Set<(reason: string) => void>();

  private constructor(private readonly socket: Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.onData(chunk);
    });
    socket.on('error', (err) => {
      this.markClosed(`socket error: ${err.message}`);
    });
    socket.on('close', () => {
      this.markClosed('connection closed by the bus');
    });
    socket.resume(); // paused after the authentication line
  }

  /** Connects, authenticates (EXTERNAL) and says Hello; rejects when any of it fails. */
  static async open(address: string, timeoutMs = 5_000): Promise<CallChannel> {
    const path = unixSocketPath(address);
    if (path === undefined) throw new ChannelUnusable(`no unix socket in bus address ${address}`);
    const socket = connect(path);
    const timer = setTimeout(() => socket.destroy(new Error(`no answer in ${timeoutMs} ms`)), timeoutMs);
    try {
      await new Promise<void>((resolve, reject) => {
        socket.once('connect', resolve);
        socket.once('error', reject);
      });
      const uid = process.getuid?.() ?? 0;
      socket.write(`\0AUTH EXTERNAL ${Buffer.from(String(uid)).toString('hex')}\r\n`);
      const line = await readLine(socket);
      if (!line.startsWith('OK ')) throw new ChannelUnusable(`authentication refused: ${line}`);
      socket.write('BEGIN\r\n');
      const channel = new CallChannel(socket);
      const hello = await channel.call({
        destination: 'org.freedesktop.DBus',
        path: '/org/freedesktop/DBus',
        interface: 'org.freedesktop.DBus',
        member: 'Hello',
        signature: '',
        body: [],
        noAutoStart: false,
      });
      if (hello.kind !== MessageKind.METHOD_RETURN) throw new Error(`Hello refused: ${hello.errorName}`);
      const [name] = decodeBody(hello);
      channel.uniqueName = typeof name === 'string' ? name : '';
      return channel;
    } catch (err) {
      socket.destroy();
      throw err;
    } finally {
      clearTimeout(timer);
    }
  }

  get closed(): boolean {
    return this.closedReason !== undefined;
  }

  /**
   * Sends a call; `reply` resolves to its METHOD_RETURN or ERROR message and rejects when the
   * connection ends, or with a WireError when the call cannot be written (nothing is sent then).
   * `serial` is what `abandon` takes.
   */
  send(c: ChannelCall): { readonly serial: number; readonly reply: Promise<WireMessage> } {
    const serial = this.serial;
    if (this.closedReason !== undefined)
      return { serial, reply: Promise.reject(new Error(this.closedReason)) };
    this.nextSerial();
    let bytes: Buffer;
    try {
      const flags = c.noAutoStart ? NO_AUTO_START : 0;
      const { destination, path, member, signature } = c;
      bytes = encodeCall(
        { serial, destination, path, interface: c.interface, member, signature, flags },
        c.body,
      );
    } catch (err) {
      const wire = err instanceof WireError ? err : new WireError(`cannot write the call: ${String(err)}`);
      return { serial, reply: Promise.reject(wire) };
    }
    const reply = new Promise<WireMessage>((resolve, reject) => {
      this.pending.set(serial, { resolve, reject });
    });
    this.write(bytes);
    return { serial, reply };
  }

  private nextSerial(): number {
    const serial = this.serial;
    this.serial = serial >= 0xffffffff ? 1 : serial + 1;
    return serial;
  }

  private write(bytes: Buffer): void {
    // Messages written in one turn of the event loop leave in one write: each write wakes the bus.
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      process.nextTick(() => {
        this.corked = false;
        this.socket.uncork();
      });
    }
    this.socket.write(bytes);
  }

  call(c: ChannelCall): Promise<WireMessage> {
    return this.send(c).reply;
  }

  /** Gives up on a call (its deadline passed): its reply, should one still come, is dropped. */
  abandon(serial: number): void {
    this.pending.delete(serial);
  }

  /** Calls still waiting for a reply (a test hook). */
  get waiting(): number {
    return this.pending.size;
  }

  /** Called once when the connection ends. */
  onClose(listener: (reason: string) => void): void {
    if (this.closedReason !== undefined) queueMicrotask(() => listener(this.closedReason ?? ''));
    else this.closeListeners.add(listener);
  }

  close(): void {
    this.markClosed('closed');
    this.socket.destroy();
  }

  private onData(chunk: Buffer): void {
    let messages: WireMessage[];
    try {
      messages = this.reader.push(chunk);
    } catch (err) {
      this.markClosed(`unreadable message: ${err instanceof WireError ? err.message : String(err)}`);
      this.socket.destroy();
      return;
    }
    for (const m of messages) {
      if (m.kind === MessageKind.METHOD_CALL) {
        const answer = answerCall(m, this.serial, () => (this.machineId ??= readMachineId()));
        if (answer && this.closedReason === undefined) {
          this.nextSerial();
          this.write(answer);
        }
        continue;
      }
      if (m.kind !== MessageKind.METHOD_RETURN && m.kind !== MessageKind.ERROR) continue; // NameAcquired
      const waiter = this.pending.get(m.replySerial);
      if (!waiter) continue; // its caller gave up (deadline)
      this.pending.delete(m.replySerial);
      waiter.resolve(m);
    }
  }

  private markClosed(reason: string): void {
    if (this.closedReason !== undefined) return;
    this.closedReason = reason;
    const err = new Error(reason);
    for (const w of this.pending.values()) w.reject(err);
    this.pending.clear();
    for (const l of this.closeListeners) l(reason);
    this.closeListeners.clear();
  }
}

/** One CRLF-terminated line of the authentication exchange. */
function readLine(socket: Socket): Promise<string> {
  return new Promise((resolve, reject) => {
    let text = '';
    const onData = (chunk: Buffer): void => {
      text += chunk.toString('latin1');
      const end = text.indexOf('\r\n');
      if (end < 0) {
        if (text.length > 4096) done(new Error('authentication line too long'));
        return;
      }
      if (end + 2 !== text.length) done(new Error('unexpected bytes after the authentication line'));
      else done(undefined, text.slice(0, end));
    };
    const onEnd = (): void => done(new Error('connection closed during authentication'));
    const done = (err: Error | undefined, line = ''): void => {
      socket.off('data', onData);
      socket.off('error', done);
      socket.off('close', onEnd);
      socket.pause();
      if (err) reject(err);
      else resolve(line);
    };
    socket.on('data', onData);
    socket.once('error', done);
    socket.once('close', onEnd);
  });
}
