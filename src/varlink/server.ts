/**
 * A Varlink server on AF_UNIX stream sockets: a method table per interface, `more` streaming,
 * `oneway`, `org.varlink.service` introspection, limits, and a graceful close. It knows nothing of
 * what the methods mean; userdb and the daemon's control interface are both plain interfaces.
 *
 * Wire behaviour follows systemd 252 (reference §4, checked against the real machined 252):
 * - bad JSON or a bad call object closes that connection without a reply;
 * - an unknown method gets MethodNotFound, except oneway, which is dropped and the connection kept;
 * - a oneway call to a method that replies closes the connection (v252 fails the reply with EBUSY);
 * - replies always carry a `parameters` object; `continues` only ever answers a `more` call;
 * - 16 MiB of buffered input (VARLINK_BUFFER_MAX) and 16 MiB of queued output per connection.
 * Each connection answers its calls one after another, so replies keep call order even when a
 * handler is asynchronous.
 *
 * At the connection limit a new client is not turned away: the connection that has been idle the
 * longest (no call being answered; a partial message does not count as activity) is closed to make
 * room. machined has a per-UID limit below the total for this; Node cannot read a unix socket's peer
 * credentials, so without eviction one local user holding 4096 idle connections would lock every
 * nss-systemd lookup out. Real clients (nss-systemd, userdbctl, our CLI) connect per lookup.
 */
import { chmod, lstat, unlink } from 'node:fs/promises';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../log.js';
import { streamShare, type TurnShare } from '../turn-share.js';
import { NulFramer, VARLINK_BUFFER_MAX } from './framing.js';
import {
  idlMembers,
  invalidParameter,
  isStream,
  type MethodResult,
  type VarlinkInterface,
  type VarlinkMethod,
  type VarlinkStream,
} from './interface.js';
import { orgVarlinkService, type ServiceInfo } from './introspection.js';
import { readJson } from './json.js';
import {
  EncodedParameters,
  encodeReply,
  encodedReplyParts,
  isErrorReply,
  parseCall,
  VarlinkErrors,
  type ReplyParameters,
  type VarlinkReply,
} from './protocol.js';

export interface VarlinkServerOptions {
  readonly logger: Logger;
  /** What GetInfo reports. */
  readonly info?: Partial<ServiceInfo>;
  /** Open connections at most; more are closed at once (systemd's default total limit: 4096). */
  readonly maxConnections?: number;
  /** Buffered input per connection, incomplete message and queued calls together. */
  readonly maxInputBytes?: number;
  /**
   * Buffered input over all connections (default 64 MiB, four maximal messages). Beyond it, the
   * connection holding the most is dropped: every connection may send 16 MiB, but 4096 of them
   * must not make us hold 64 GiB.
   */
  readonly maxTotalInputBytes?: number;
  /** Output queued per connection for a peer that does not read; beyond it the peer is dropped. */
  readonly maxOutputBytes?: number;
  /** How long close() lets in-flight replies finish before it drops the remaining connections. */
  readonly closeTimeoutMs?: number;
  /** The event loop's share for stream requests (default: the process's one, src/turn-share.ts). */
  readonly share?: TurnShare;
}

export interface ListenOptions {
  /** Permission bits of the socket file; machined's userdb socket is 0666 (reference §2.1). */
  readonly mode?: number;
}

/** Why `listen` refused a path (errors from bind itself, e.g. EACCES, are passed through). */
export class ListenError extends Error {
  constructor(
    readonly reason: 'in-use' | 'not-a-socket',
    readonly path: string,
  ) {
    super(
      reason === 'in-use'
        ? `${path}: another process is serving on this socket`
        : `${path}: exists and is not a socket`,
    );
    this.name = 'ListenError';
  }
}

export const DEFAULT_MAX_CONNECTIONS = 4096;
export const DEFAULT_MAX_TOTAL_INPUT_BYTES = 4 * VARLINK_BUFFER_MAX;
/** machined listens with SOMAXCONN (4096 on current kernels; the kernel caps it at net.core.somaxconn). */
const LISTEN_BACKLOG = 4096;
const DEFAULT_CLOSE_TIMEOUT_MS = 5000;
/** The warning about the connection limit is repeated at most this often. */
const LIMIT_WARNING_INTERVAL_MS = 60_000;
const DEFAULT_INFO: ServiceInfo = { vendor: 'mymachinesd', product: 'mymachinesd', version: '0', url: '' };

interface Route {
  readonly method: VarlinkMethod;
  readonly iface: VarlinkInterface;
}

/** What a connection needs from its server. */
interface ConnectionHost {
  readonly logger: Logger;
  readonly maxInputBytes: number;
  readonly maxOutputBytes: number;
  readonly share: TurnShare;
  route(method: string): Route | undefined;
  forget(connection: Connection): void;
  /** The connection's buffered input changed by `delta` bytes. */
  inputHeld(connection: Connection, delta: number): void;
}

export class VarlinkServer {
  private readonly logger: Logger;
  private readonly routes = new Map<string, Route>();
  private readonly interfaces = new Map<string, VarlinkInterface>();
  private readonly listeners: net.Server[] = [];
  private readonly connections = new Set<Connection>();
  private readonly host: ConnectionHost;
  private readonly maxConnections: number;
  private readonly closeTimeoutMs: number;
  private nextConnectionId = 1;
  private closing: Promise<void> | undefined;
  private limitWarnedAt = Number.NEGATIVE_INFINITY;
  private readonly maxTotalInputBytes: number;
  private totalInput = 0;
  private budgetWarnedAt = Number.NEGATIVE_INFINITY;

  constructor(options: VarlinkServerOptions) {
    this.logger = options.logger;
    this.maxConnections = options.maxConnections ?? DEFAULT_MAX_CONNECTIONS;
    this.closeTimeoutMs = options.closeTimeoutMs ?? DEFAULT_CLOSE_TIMEOUT_MS;
    this.host = {
      logger: options.logger,
      maxInputBytes: options.maxInputBytes ?? VARLINK_BUFFER_MAX,
      maxOutputBytes: options.maxOutputBytes ?? VARLINK_BUFFER_MAX,
      share: options.share ?? streamShare,
      route: (name) => this.routes.get(name),
      forget: (connection) => this.connections.delete(connection),
      inputHeld: (connection, delta) => {
        this.inputHeld(connection, delta);
      },
    };
    this.maxTotalInputBytes = options.maxTotalInputBytes ?? DEFAULT_MAX_TOTAL_INPUT_BYTES;
    this.addInterface(
      orgVarlinkService(
        { ...DEFAULT_INFO, ...options.info },
        {
          names: () => [...this.interfaces.keys()],
          description: (name) => this.interfaces.get(name)?.description,
        },
      ),
    );
  }

  /** Open connections right now. */
  get connectionCount(): number {
    return this.connections.size;
  }

  /**
   * Serves an interface. Every method must be named `<interface>.<Method>` and be declared by the
   * interface's description text, so that introspection never disagrees with the method table.
   */
  addInterface(iface: VarlinkInterface): void {
    if (this.interfaces.has(iface.name)) throw new Error(`interface ${iface.name} is already served`);
    const declared = idlMembers(iface.description);
    if (declared.name !== iface.name)
      throw new Error(`description of ${iface.name} declares interface '${declared.name}'`);
    const entries = Object.entries(iface.methods);
    for (const [name] of entries) {
      const dot = name.lastIndexOf('.');
      if (name.slice(0, dot) !== iface.name || !declared.methods.has(name.slice(dot + 1)))
        throw new Error(`${name} is not a method declared by interface ${iface.name}`);
    }
    this.interfaces.set(iface.name, iface);
    for (const [name, method] of entries) this.routes.set(name, { method, iface });
  }

  /**
   * Listens on a socket path. A stale socket file (nobody accepting) is replaced, as machined does;
   * a live one or a non-socket is refused with a ListenError.
   */
  async listen(path: string, options: ListenOptions = {}): Promise<void> {
    await removeStaleSocket(path);
    const server = this.netServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ path, backlog: LISTEN_BACKLOG }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.adopt(server);
    await chmod(path, options.mode ?? 0o666);
    this.logger.info(`varlink: listening on ${path}`);
  }

  /**
   * Listens on an inherited, already bound socket (systemd socket activation). `path` is where it is
   * bound, for the log line; the socket file belongs to whoever bound it and is left in place.
   */
  async listenFd(fd: number, path?: string): Promise<void> {
    const server = this.netServer();
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen({ fd }, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.adopt(server);
    this.logger.info(`varlink: listening on ${path ? `${path} (inherited fd ${fd})` : `inherited fd ${fd}`}`);
  }

  /**
   * Graceful stop: accept nothing more, let each connection finish the call it is answering, then
   * end it; after `closeTimeoutMs` the rest are dropped. Socket files we bound are removed (libuv
   * unlinks a pipe server's path when it closes).
   */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  private async shutdown(): Promise<void> {
    const stopped = this.listeners.map(
      (server) =>
        new Promise<void>((resolve) =>
          server.close(() => {
            resolve();
          }),
        ),
    );
    const connections = [...this.connections];
    for (const connection of connections) connection.shutdown();
    const timer = setTimeout(() => {
      for (const connection of this.connections) connection.destroy('close timeout');
    }, this.closeTimeoutMs);
    try {
      await Promise.all([...stopped, ...connections.map((c) => c.closed)]);
    } finally {
      clearTimeout(timer);
    }
  }

  private netServer(): net.Server {
    // allowHalfOpen: a client may shut down its sending side after its last call (nc, socat) and
    // still expects every reply; the connection is ended once those are written.
    const server = net.createServer({ allowHalfOpen: true }, (socket) => {
      this.accept(socket);
    });
    return server;
  }

  /** Once listening: errors from here on are the listener's own (a failed listen() rejects instead). */
  private adopt(server: net.Server): void {
    server.on('error', (err) => {
      this.logger.error(`varlink: listener failed: ${err.message}`);
    });
    this.listeners.push(server);
  }

  private accept(socket: net.Socket): void {
    const id = this.nextConnectionId++;
    if (this.closing === undefined && this.connections.size >= this.maxConnections) this.evictIdlest();
    if (this.closing !== undefined || this.connections.size >= this.maxConnections) {
      if (this.logger.enabled('debug'))
        this.logger.debug(
          `varlink: connection ${id} refused (${this.connections.size} open, closing: ${this.closing !== undefined})`,
        );
      socket.destroy();
      return;
    }
    this.connections.add(new Connection(socket, this.host, id));
  }

  /** Keeps the total of buffered input; over budget, drops the connection that holds the most. */
  private inputHeld(connection: Connection, delta: number): void {
    this.totalInput += delta;
    if (delta <= 0 || this.totalInput <= this.maxTotalInputBytes) return;
    let largest = connection;
    for (const c of this.connections) if (c.inputBytes > largest.inputBytes) largest = c;
    const now = performance.now();
    if (now - this.budgetWarnedAt >= LIMIT_WARNING_INTERVAL_MS) {
      this.budgetWarnedAt = now;
      this.logger.warn(
        `varlink: more than ${this.maxTotalInputBytes} bytes of unanswered input over all connections: dropping the connections that hold the most`,
      );
    }
    largest.destroy(`holds ${largest.inputBytes} of ${this.totalInput} bytes of input over all connections`);
  }

  /** Closes the connection idle the longest, if any is idle (see the file comment). */
  private evictIdlest(): void {
    let idlest: Connection | undefined;
    for (const c of this.connections)
      if (c.idle && (idlest === undefined || c.lastActiveAt < idlest.lastActiveAt)) idlest = c;
    const now = performance.now();
    if (now - this.limitWarnedAt >= LIMIT_WARNING_INTERVAL_MS) {
      this.limitWarnedAt = now;
      this.logger.warn(
        `varlink: ${this.connections.size} connections open, the limit: ${idlest ? 'closing the longest idle ones to accept new ones' : 'none is idle, refusing new ones'}`,
      );
    }
    if (!idlest) return;
    this.connections.delete(idlest); // its slot is free now, even before its socket has closed
    idlest.destroy('evicted at the connection limit (idle the longest)');
  }
}

/**
 * One client connection: frames in, calls answered strictly one after the other, replies out.
 *
 * States: open → (protocol violation | server closing) → ending → closed. `busy` is true while a
 * call is being answered asynchronously (a promise, a stream, or output waiting for `drain`);
 * meanwhile further calls wait in `queue`.
 */
class Connection {
  readonly closed: Promise<void>;
  /** performance.now() of the accept, or of the last complete message or finished answer. */
  lastActiveAt = performance.now();
  private state: 'open' | 'ending' | 'closed' = 'open';
  private readonly framer: NulFramer;
  private readonly queue: Buffer[] = [];
  private queuedBytes = 0;
  /** queuedBytes + the framer's partial message, as last reported to the server. */
  private held = 0;
  private busy = false;
  /** The peer shut down its sending side: end ours once its calls are answered. */
  private inputEnded = false;
  private drainWaiters: (() => void)[] = [];

  constructor(
    private readonly socket: net.Socket,
    private readonly host: ConnectionHost,
    private readonly id: number,
  ) {
    this.framer = new NulFramer(host.maxInputBytes);
    let markClosed: () => void = () => undefined;
    this.closed = new Promise<void>((resolve) => (markClosed = resolve));
    socket.on('data', (chunk: Buffer) => {
      this.receive(chunk);
    });
    socket.on('end', () => {
      this.inputEnded = true;
      this.pump();
    });
    socket.on('drain', () => {
      this.wakeDrainWaiters();
    });
    socket.on('error', (err) => {
      this.debug(`socket error: ${err.message}`);
    });
    socket.on('close', () => {
      this.state = 'closed';
      this.queue.length = 0;
      this.release();
      this.wakeDrainWaiters();
      host.forget(this);
      markClosed();
    });
  }

  /** Bytes of input this connection holds: calls not answered yet and an incomplete message. */
  get inputBytes(): number {
    return this.held;
  }

  /** Nothing to answer and nothing being answered: closing it loses no reply. */
  get idle(): boolean {
    return this.state === 'open' && !this.busy && this.queue.length === 0;
  }

  /** Server is closing: finish the call in progress, answer nothing new, then end. */
  shutdown(): void {
    if (this.state !== 'open') return;
    this.state = 'ending';
    this.dropQueue();
    if (!this.busy) this.end();
  }

  destroy(reason: string): void {
    this.debug(`dropped: ${reason}`);
    this.release();
    this.socket.destroy();
  }

  /** Tells the server how much input this connection holds now. */
  private report(): void {
    const held = this.state === 'closed' ? 0 : this.queuedBytes + this.framer.bufferedBytes;
    const delta = held - this.held;
    this.held = held;
    if (delta !== 0) this.host.inputHeld(this, delta);
  }

  /** Holds nothing any more (closing): the server's total goes down at once. */
  private release(): void {
    this.state = 'closed';
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.report();
  }

  private receive(chunk: Buffer): void {
    if (this.state !== 'open') return;
    const framed = this.framer.push(chunk);
    if (framed.kind === 'overflow') {
      this.violation(`more than ${this.host.maxInputBytes} bytes without a NUL`);
      return;
    }
    for (const message of framed.messages) {
      this.queue.push(message);
      this.queuedBytes += message.length;
    }
    if (framed.messages.length > 0) this.lastActiveAt = performance.now();
    if (this.queuedBytes + this.framer.bufferedBytes > this.host.maxInputBytes) {
      this.violation(`more than ${this.host.maxInputBytes} bytes of unanswered input`);
      return;
    }
    this.report();
    if (this.state !== 'open') return; // dropped by the server to stay within its total budget
    this.pump();
  }

  /** Answers queued calls in order until one goes asynchronous or the peer stops reading. */
  private pump(): void {
    while (!this.busy && this.state === 'open') {
      if (this.socket.writableNeedDrain) {
        // The peer is not reading: stop reading its calls too, until our output drains.
        this.socket.pause();
        this.busy = true;
        this.waitForDrain().then(() => {
          this.resume();
        }, this.fail);
        return;
      }
      if (this.queue.length === 0) {
        if (this.inputEnded) this.end();
        return;
      }
      if (!this.host.share.allows()) {
        // This turn's share for stream requests is spent: the rest in a later one.
        this.socket.pause();
        this.busy = true;
        this.host.share.later(() => {
          this.resume();
        });
        return;
      }
      const message = this.queue.shift();
      if (message === undefined) return;
      this.queuedBytes -= message.length;
      this.report();
      let pending: Promise<void> | undefined;
      try {
        pending = this.handle(message);
      } catch (err: unknown) {
        this.fail(err);
        return;
      }
      if (pending !== undefined) {
        this.busy = true;
        pending.then(() => {
          this.resume();
        }, this.fail);
      }
    }
  }

  private resume(): void {
    this.busy = false;
    this.lastActiveAt = performance.now();
    if (this.state === 'ending') {
      this.end();
      return;
    }
    if (this.state === 'open') this.socket.resume();
    this.pump();
  }

  /** A handler threw: that is our bug, not the client's. Log it and drop this connection only. */
  private readonly fail = (err: unknown): void => {
    const text = err instanceof Error ? (err.stack ?? err.message) : String(err);
    this.host.logger.error(`varlink: connection ${this.id}: internal error, dropping it: ${text}`);
    this.socket.destroy();
  };

  /** Returns a promise only when the answer is not complete yet. */
  private handle(message: Buffer): Promise<void> | undefined {
    const read = readJson(message);
    if (!read.ok) {
      this.violation(`invalid JSON (${read.error} at offset ${read.offset})`);
      return undefined;
    }
    const parsed = parseCall(read.node);
    if (!parsed.ok) {
      this.violation(`invalid call object (${parsed.violation})`);
      return undefined;
    }
    const call = parsed.call;
    this.debug(`call ${call.method}${call.more ? ' (more)' : ''}${call.oneway ? ' (oneway)' : ''}`);
    const route = this.host.route(call.method);
    if (route === undefined) {
      // v252 drops a oneway call to an unknown method and keeps the connection (reference §4.5).
      if (call.oneway) this.debug(`oneway call to unknown method ${call.method} ignored`);
      else this.send({ error: VarlinkErrors.MethodNotFound, parameters: { method: call.method } });
      return undefined;
    }
    if (call.oneway) {
      // Every method we serve replies; v252 then fails the reply with EBUSY and closes (§4.5).
      this.violation(`oneway call to ${call.method}, which replies`);
      return undefined;
    }
    const invocation = route.method.invoke(call.parameters, call.parameterValues, {
      method: call.method,
      more: call.more,
    });
    if (invocation.kind === 'parameter-problem') {
      this.send((route.iface.parameterError ?? invalidParameter)(invocation.problem));
      return undefined;
    }
    const result = invocation.result;
    if (result instanceof Promise) return result.then((r) => this.answer(r, call.more));
    return this.answer(result, call.more);
  }

  private answer(result: MethodResult, more: boolean): Promise<void> | undefined {
    if (!isStream(result)) {
      this.send(result);
      return undefined;
    }
    // A stream is only legal for `more` calls: `continues` on a plain call makes clients drop us.
    if (!more) {
      this.send({ error: VarlinkErrors.ExpectedMore, parameters: {} });
      return undefined;
    }
    return this.sendStream(result);
  }

  /**
   * Holds back one item so that the last one goes out without `continues` (reference §4.4). A long
   * stream (userdb's enumeration of 10,000 containers is 20,000 replies) takes the turn share like
   * separate calls do: once the turn's share is spent, the next item waits for a later turn, so
   * DNS and other clients are served in between (it held the event loop for 47–82 ms at once).
   */
  private async sendStream(result: VarlinkStream): Promise<void> {
    let previous: ReplyParameters | undefined;
    for await (const item of result.stream) {
      if (this.state === 'closed') return;
      if (previous !== undefined) {
        this.write(encodeReply({ parameters: previous }, true));
        if (this.socket.writableNeedDrain) await this.waitForDrain();
        else if (!this.host.share.allows())
          await new Promise<void>((resolve) => {
            this.host.share.later(resolve);
          });
      }
      previous = item;
    }
    this.send(previous === undefined ? result.whenEmpty : { parameters: previous });
  }

  private send(reply: VarlinkReply): void {
    if (!isErrorReply(reply) && reply.parameters instanceof EncodedParameters)
      this.writeParts(encodedReplyParts(reply.parameters, false));
    else this.write(encodeReply(reply, false));
  }

  private write(text: string): void {
    if (this.state === 'closed' || !this.socket.writable) return;
    this.socket.write(text + '\0');
    this.limitOutput();
  }

  /** A long reply in its pieces: no one string of it is made, nor encoded at once. */
  private writeParts(parts: readonly (string | Buffer)[]): void {
    if (this.state === 'closed' || !this.socket.writable) return;
    this.socket.cork();
    for (const part of parts) this.socket.write(part);
    this.socket.uncork();
    this.limitOutput();
  }

  private limitOutput(): void {
    if (this.socket.writableLength > this.host.maxOutputBytes)
      this.destroy(`peer does not read: more than ${this.host.maxOutputBytes} bytes of output queued`);
  }

  /** Resolves on `drain` or when the socket closes, so that nothing waits forever. */
  private waitForDrain(): Promise<void> {
    if (this.state === 'closed') return Promise.resolve();
    return new Promise<void>((resolve) => this.drainWaiters.push(resolve));
  }

  private wakeDrainWaiters(): void {
    const waiters = this.drainWaiters;
    this.drainWaiters = [];
    for (const wake of waiters) wake();
  }

  /** Bad input: no reply, close this connection only (reference §4.1, §4.2). */
  private violation(reason: string): void {
    this.debug(`protocol violation, closing: ${reason}`);
    this.state = 'ending';
    this.dropQueue();
    this.end();
  }

  private dropQueue(): void {
    this.queue.length = 0;
    this.queuedBytes = 0;
    this.report();
  }

  /** Sends what is already queued, then closes the socket (also if the peer keeps it open). */
  private end(): void {
    if (this.socket.writableEnded) return;
    this.socket.pause();
    this.socket.end();
    if (this.socket.writableFinished) this.socket.destroy();
    else this.socket.once('finish', () => this.socket.destroy());
  }

  private debug(message: string): void {
    if (this.host.logger.enabled('debug'))
      this.host.logger.debug(`varlink: connection ${this.id}: ${message}`);
  }
}

/** machined unlinks whatever is at its path; we only replace a socket nobody accepts on. */
async function removeStaleSocket(path: string): Promise<void> {
  let isSocket: boolean;
  try {
    isSocket = (await lstat(path)).isSocket();
  } catch (err: unknown) {
    if (isErrno(err, 'ENOENT')) return;
    throw err;
  }
  if (!isSocket) throw new ListenError('not-a-socket', path);
  if (await acceptsConnections(path)) throw new ListenError('in-use', path);
  try {
    await unlink(path);
  } catch (err: unknown) {
    if (!isErrno(err, 'ENOENT')) throw err;
  }
}

function acceptsConnections(path: string): Promise<boolean> {
  return new Promise((resolve) => {
    const probe = net.createConnection(path);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    // ECONNREFUSED: a leftover socket file; any other failure: treat it as not live either.
    probe.once('error', () => {
      resolve(false);
    });
  });
}

function isErrno(err: unknown, code: string): boolean {
  return err instanceof Error && 'code' in err && err.code === code;
}
