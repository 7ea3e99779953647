/**
 * The DNS stub the daemon wires: listeners (UDP and TCP per address, or inherited sockets), the zone
 * kept current from the registry view, the client filter, and the forwarder. Transports hold no DNS
 * state: both call the one answer function.
 *
 * Lifecycle: `new DnsServer(options)` validates every option (throws `DnsError`, exit status 2);
 * `start()` reads resolv.conf if asked, binds, refuses to forward to itself, and resolves to the real
 * bound addresses (rejects with `DnsError`: `DNS_BIND_FAILED` exit 1, `DNS_FORWARD_LOOP` and
 * `DNS_NO_UPSTREAM` exit 2); `close()` stops accepting, finishes the answers in flight, and closes.
 */
import dgram from 'node:dgram';
import { readFile } from 'node:fs/promises';
import net from 'node:net';
import { performance } from 'node:perf_hooks';
import type { Logger } from '../log.js';
import { parseAddress } from '../registry-client/address.js';
import type { RegistryView } from '../registry-client/view.js';
import { answer, fitForwarded, unreachableReply, type Transport } from './answer.js';
import {
  formatHostPort,
  parseUpstream,
  parseResolvConf,
  resolveConfig,
  type DnsConfig,
  type DnsServerOptions,
  type InheritedSocket,
  type ListenAddress,
  type Upstream,
} from './config.js';
import { DnsError } from './errors.js';
import { Forwarder, literalLookup4, literalLookup6 } from './forward.js';
import { ClientFilter } from './nets.js';
import { TcpConnection, type QueryHandler } from './tcp.js';
import { ZoneCompiler, type Zone } from './zone.js';

export interface BoundListener {
  readonly transport: 'udp' | 'tcp';
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
  /** Passed in by the service manager rather than bound by us. */
  readonly inherited: boolean;
}

/** Largest TCP query we read: a question is at most 259 bytes, EDNS padding (RFC 8467) adds ~468. */
const MAX_TCP_QUERY = 4096;
/** Answers a TCP connection may owe before we stop reading it. */
const MAX_TCP_PENDING = 32;
/** Attempts at finding a port free for both UDP and TCP when asked for port 0. */
const PORT_ATTEMPTS = 8;
/** The warning about the TCP connection limit is repeated at most this often. */
const LIMIT_WARNING_INTERVAL_MS = 60_000;
/** Pending TCP connections the kernel queues for us (it caps this at net.core.somaxconn). */
const TCP_BACKLOG = 4096;
/**
 * Receive buffer asked for each UDP socket. Node's event loop reads at most 32 datagrams per turn,
 * so while a burst of TCP and Varlink work makes the turns long, queries wait in the kernel; the
 * default buffer (208 KiB on Debian, ~200 small datagrams, 20 ms at 10,000 q/s) then overflows and
 * queries are lost. 4 MiB (unbound's so-rcvbuf advice) holds most of a second. The kernel caps it at
 * net.core.rmem_max; a .socket unit's ReceiveBuffer= is not capped (systemd sets it with
 * SO_RCVBUFFORCE), and an inherited socket's buffer is raised to this only if it is smaller.
 */
const UDP_RECEIVE_BUFFER = 4 * 1024 * 1024;

type State = 'new' | 'starting' | 'running' | 'closing' | 'closed';

export class DnsServer {
  private readonly config: DnsConfig;
  private readonly view: RegistryView;
  private readonly logger: Logger;
  private readonly debug: boolean;
  private readonly clients: ClientFilter;
  private readonly compiler: ZoneCompiler;
  private zone: Zone;
  private forwarder: Forwarder | undefined;
  private state: State = 'new';
  private closing: Promise<void> | undefined;
  private unsubscribe: (() => void) | undefined;
  private rebuildQueued = false;
  private warned = new Set<string>();
  private readonly udpSockets: dgram.Socket[] = [];
  private readonly tcpServers: net.Server[] = [];
  private readonly connections = new Set<TcpConnection>();
  private limitWarnedAt = Number.NEGATIVE_INFINITY;
  private bound: BoundListener[] = [];
  private inflight = 0;
  private inflightWaiters: (() => void)[] = [];
  private readonly tcpHandler: QueryHandler;

  constructor(options: DnsServerOptions) {
    this.config = resolveConfig(options);
    this.view = options.view;
    this.logger = options.logger;
    this.debug = options.logger.enabled('debug');
    this.clients = new ClientFilter(this.config.allowNets);
    this.compiler = new ZoneCompiler({
      domain: this.config.domain,
      ttl: this.config.ttl,
      includeLinkLocal: this.config.includeLinkLocal,
      excludeNets: this.config.excludeNets,
      forwarding: this.config.forwardSpecs.length > 0,
    });
    this.zone = this.compile();
    this.tcpHandler = (query) => this.answerTcp(query);
  }

  /** The real bound addresses (port 0 resolved), once started. */
  get listeners(): readonly BoundListener[] {
    return this.bound;
  }

  /** The zone now being served (rebuilt from the view when its generation moved). */
  currentZone(): Zone {
    if (this.zone.generation !== this.view.generation) this.zone = this.compile();
    return this.zone;
  }

  async start(): Promise<readonly BoundListener[]> {
    if (this.state !== 'new') throw new Error(`DnsServer.start() called in state ${this.state}`);
    this.state = 'starting';
    try {
      const upstreams = await this.loadUpstreams();
      this.checkForwardLoop(upstreams, this.config.listen);
      for (const socket of this.config.inherited) await this.adopt(socket);
      for (const address of this.config.listen) await this.bindPair(address);
      this.checkForwardLoop(upstreams, this.bound);
      if (upstreams.length > 0) {
        this.forwarder = new Forwarder(upstreams, this.config.forwardTimeoutMs, (attempt) => {
          if (this.debug)
            this.logger.debug(
              `dns: forward to ${attempt.upstream} over ${attempt.transport} failed: ${attempt.error}`,
            );
        });
      }
    } catch (error) {
      await this.closeSockets();
      this.state = 'closed';
      throw error;
    }
    this.unsubscribe = this.view.onChange(() => {
      this.scheduleRebuild();
    });
    this.state = 'running';
    this.currentZone(); // machines that came or went while binding
    for (const l of this.bound) {
      this.logger.info(
        `dns: listening on ${l.transport} ${formatHostPort(l.address, l.port)}${l.inherited ? ' (inherited)' : ''}`,
      );
    }
    return this.bound;
  }

  /** Stops accepting, finishes answers in flight (forwards included), then closes every socket. */
  close(): Promise<void> {
    this.closing ??= this.shutdown();
    return this.closing;
  }

  // ---- zone ---------------------------------------------------------------------------------

  private compile(): Zone {
    const zone = this.compiler.compile(this.view);
    // Warn once per collision (and per unservable name) for as long as it lasts.
    const current = new Set<string>();
    for (const c of zone.collisions) {
      const key = `collision\0${c.names.join('\0')}`;
      current.add(key);
      if (!this.warned.has(key)) {
        this.logger.warn(
          `dns: machine names ${c.names.join(', ')} differ only in case; ${c.key} answers only the exact spelling, other spellings get SERVFAIL`,
        );
      }
    }
    for (const s of zone.skipped) {
      const key = `skipped\0${s.name}`;
      current.add(key);
      if (!this.warned.has(key))
        this.logger.warn(`dns: machine ${JSON.stringify(s.name)} is not served: ${s.reason}`);
    }
    this.warned = current;
    return zone;
  }

  /** Rebuild soon after a burst of changes, so warnings appear without waiting for a query. */
  private scheduleRebuild(): void {
    if (this.rebuildQueued) return;
    this.rebuildQueued = true;
    queueMicrotask(() => {
      this.rebuildQueued = false;
      if (this.state === 'running') this.currentZone();
    });
  }

  // ---- queries ------------------------------------------------------------------------------

  private onDatagram(socket: dgram.Socket, message: Buffer, peer: dgram.RemoteInfo): void {
    if (this.state !== 'running') return;
    // Not an open resolver: other clients get nothing at all, not even REFUSED (no amplification).
    if (!this.clients.allows(peer.address)) {
      if (this.debug) this.logger.debug(`dns: ignoring udp from ${peer.address}`);
      return;
    }
    // Sent at once below (the lookup is synchronous, literalLookup4/6): a kept response may be
    // sent itself with this ID, unless a reply still waits in a send queue (it may be that one).
    const reply = answer(message, this.currentZone(), 'udp', this.udpSendsSettled());
    if (typeof reply !== 'string') {
      socket.send(reply, peer.port, peer.address);
      return;
    }
    if (reply === 'drop') {
      if (this.debug)
        this.logger.debug(`dns: dropped a ${message.length}-byte datagram from ${peer.address}`);
      return;
    }
    const forwarded = this.forward(message, 'udp');
    if (!(forwarded instanceof Promise)) {
      if (forwarded) socket.send(forwarded, peer.port, peer.address);
      return;
    }
    this.track(
      forwarded.then((bytes) => {
        if (bytes) socket.send(bytes, peer.port, peer.address);
      }),
    );
  }

  /**
   * Whether every UDP reply sent so far has left our buffers. libuv sends at once when it can; when
   * the kernel refuses (EAGAIN), the send waits in the socket's queue holding the reply's bytes,
   * which must then not be written to.
   */
  private udpSendsSettled(): boolean {
    for (const s of this.udpSockets) if (s.getSendQueueCount() !== 0) return false;
    return true;
  }

  private answerTcp(query: Buffer): Buffer | undefined | Promise<Buffer | undefined> {
    const reply = answer(query, this.currentZone(), 'tcp');
    if (typeof reply !== 'string') return reply;
    if (reply === 'drop') return undefined;
    const forwarded = this.forward(query, 'tcp');
    if (forwarded instanceof Promise) this.track(forwarded);
    return forwarded;
  }

  /** The upstream's answer fitted to the client, or SERVFAIL when none came (or too many are in flight). */
  private forward(query: Buffer, transport: Transport): Buffer | undefined | Promise<Buffer | undefined> {
    const forwarder = this.forwarder;
    if (!forwarder || this.inflight >= this.config.maxForwards) {
      return unreachableReply(query, this.currentZone(), transport);
    }
    return forwarder
      .forward(query)
      .then((response) =>
        response
          ? fitForwarded(query, response, transport)
          : unreachableReply(query, this.currentZone(), transport),
      );
  }

  /** Counts work that `close()` must wait for; logs (never rethrows) a failure, which would be our bug. */
  private track(work: Promise<unknown>): void {
    this.inflight++;
    work
      .catch((error: unknown) => {
        this.logger.error(
          `dns: forwarding failed unexpectedly: ${error instanceof Error ? error.message : String(error)}`,
        );
      })
      .finally(() => {
        this.inflight--;
        if (this.inflight === 0) for (const wake of this.inflightWaiters.splice(0)) wake();
      });
  }

  private onConnection(socket: net.Socket): void {
    const peer = socket.remoteAddress ?? '';
    if (this.state !== 'running' || !this.clients.allows(peer)) {
      if (this.debug) this.logger.debug(`dns: refusing tcp connection from ${peer}`);
      socket.destroy();
      return;
    }
    if (this.connections.size >= this.config.maxTcpConnections && !this.evictIdlest()) {
      if (this.debug) this.logger.debug(`dns: refusing tcp connection from ${peer}: all connections busy`);
      socket.destroy();
      return;
    }
    const connection = new TcpConnection(
      socket,
      this.tcpHandler,
      {
        idleTimeoutMs: this.config.tcpIdleTimeoutMs,
        maxQuery: MAX_TCP_QUERY,
        maxPending: MAX_TCP_PENDING,
        share: this.config.streamShare,
      },
      (c) => this.connections.delete(c),
      (error) => {
        if (this.debug) this.logger.debug(`dns: tcp connection from ${peer}: ${error.message}`);
      },
    );
    this.connections.add(connection);
  }

  /**
   * At the connection limit, the connection idle the longest (nothing owed; partial bytes are not
   * activity) is closed so that a new client is served: RFC 7766 §6.2.3 lets a server under
   * resource pressure close idle connections, and clients reconnect. Without it, allowed clients
   * holding idle connections would lock every other TCP client out until the idle timeout.
   */
  private evictIdlest(): boolean {
    let idlest: TcpConnection | undefined;
    for (const c of this.connections)
      if (c.idle && (idlest === undefined || c.lastQueryAt < idlest.lastQueryAt)) idlest = c;
    const now = performance.now();
    if (now - this.limitWarnedAt >= LIMIT_WARNING_INTERVAL_MS) {
      this.limitWarnedAt = now;
      this.logger.warn(
        `dns: ${this.connections.size} tcp connections open, the limit: ${idlest ? 'closing the longest idle ones to accept new ones' : 'none is idle, refusing new ones'}`,
      );
    }
    if (!idlest) return false;
    this.connections.delete(idlest); // its slot is free now, even before its socket has closed
    idlest.destroy();
    return true;
  }

  // ---- forwarding set-up --------------------------------------------------------------------

  /** Explicit upstreams, and resolv.conf's nameservers in its place (read now, not per query). */
  private async loadUpstreams(): Promise<Upstream[]> {
    const upstreams: Upstream[] = [];
    for (const spec of this.config.forwardSpecs) {
      if (spec.kind === 'upstream') {
        upstreams.push(spec.upstream);
        continue;
      }
      let text: string;
      try {
        text = await readFile(this.config.resolvConfPath, 'utf8');
      } catch (error) {
        throw new DnsError('DNS_NO_UPSTREAM', `cannot read ${this.config.resolvConfPath}`, { cause: error });
      }
      let found = 0;
      for (const server of parseResolvConf(text)) {
        const upstream = parseUpstream(server);
        if (!upstream) continue;
        // resolv.conf commonly names us (that is how clients find the stub): skip ourselves there.
        if (this.ownAddress(upstream, this.config.listen)) {
          this.logger.warn(
            `dns: not forwarding to ${server} from ${this.config.resolvConfPath}: it is this stub`,
          );
          continue;
        }
        upstreams.push(upstream);
        found++;
      }
      if (found === 0)
        throw new DnsError('DNS_NO_UPSTREAM', `no usable nameserver in ${this.config.resolvConfPath}`);
    }
    return upstreams;
  }

  private checkForwardLoop(
    upstreams: readonly Upstream[],
    listeners: readonly { host?: string; address?: string; port: number }[],
  ): void {
    for (const upstream of upstreams) {
      if (this.ownAddress(upstream, listeners)) {
        throw new DnsError('DNS_FORWARD_LOOP', formatHostPort(upstream.address, upstream.port));
      }
    }
  }

  /** Whether an upstream is one of our listeners (a wildcard listener covers loopback and host addresses). */
  private ownAddress(
    upstream: Upstream,
    listeners: readonly { host?: string; address?: string; port: number }[],
  ): boolean {
    const target = parseAddress(upstream.address.replace(/%.*$/, ''));
    if (!target) return false;
    for (const l of listeners) {
      if (l.port !== upstream.port || l.port === 0) continue;
      const listening = parseAddress(l.host ?? l.address ?? '');
      if (!listening || listening.length !== target.length) continue;
      if (listening.equals(target)) return true;
      if (listening.every((b) => b === 0)) {
        const local =
          target.length === 4 ? target[0] === 127 : target.equals(parseAddress('::1') ?? Buffer.alloc(0));
        if (local || this.config.hostAddresses.some((h) => parseAddress(h)?.equals(target))) return true;
      }
    }
    return false;
  }

  // ---- sockets ------------------------------------------------------------------------------

  private async bindPair(address: ListenAddress): Promise<void> {
    for (let attempt = 1; ; attempt++) {
      const udp = await this.bindUdp(address);
      const port = udp.address().port;
      try {
        await this.listenTcp(address, port);
        return;
      } catch (error) {
        // Port 0: the free UDP port may be taken for TCP; try another pair.
        if (address.port === 0 && attempt < PORT_ATTEMPTS && isAddressInUse(error)) {
          this.udpSockets.splice(this.udpSockets.indexOf(udp), 1);
          this.bound = this.bound.filter(
            (l) => !(l.transport === 'udp' && l.port === port && l.address === address.host),
          );
          await closeUdp(udp);
          continue;
        }
        throw error;
      }
    }
  }

  private createUdp(family: 4 | 6): dgram.Socket {
    const socket = dgram.createSocket({
      type: family === 6 ? 'udp6' : 'udp4',
      lookup: family === 6 ? literalLookup6 : literalLookup4,
      ipv6Only: family === 6,
    });
    socket.once('listening', () => {
      // Raised, never lowered: a buffer set by the service manager (ReceiveBuffer=) may be larger.
      try {
        if (socket.getRecvBufferSize() < UDP_RECEIVE_BUFFER) socket.setRecvBufferSize(UDP_RECEIVE_BUFFER);
        if (this.debug) this.logger.debug(`dns: udp receive buffer ${socket.getRecvBufferSize()} bytes`);
      } catch (error) {
        this.logger.warn(
          `dns: cannot raise the udp receive buffer: ${error instanceof Error ? error.message : String(error)}`,
        );
      }
    });
    socket.on('message', (message: Buffer, peer: dgram.RemoteInfo) => {
      this.onDatagram(socket, message, peer);
    });
    return socket;
  }

  private async bindUdp(address: ListenAddress): Promise<dgram.Socket> {
    const socket = this.createUdp(address.family);
    const where = `udp ${formatHostPort(address.host, address.port)}`;
    await new Promise<void>((resolve, reject) => {
      socket.once('error', (error) => {
        reject(new DnsError('DNS_BIND_FAILED', `${where}: ${error.message}`, { cause: error }));
      });
      socket.bind({ address: address.host, port: address.port, exclusive: true }, () => {
        resolve();
      });
    });
    this.registerUdp(socket, false);
    return socket;
  }

  private async adopt(inherited: InheritedSocket): Promise<void> {
    const where = `inherited ${inherited.kind} fd ${inherited.fd}`;
    if (inherited.kind === 'udp') {
      const socket = this.createUdp(inherited.family);
      await new Promise<void>((resolve, reject) => {
        socket.once('error', (error) => {
          reject(new DnsError('DNS_BIND_FAILED', `${where}: ${error.message}`, { cause: error }));
        });
        socket.bind({ fd: inherited.fd }, () => {
          resolve();
        });
      });
      this.registerUdp(socket, true);
      return;
    }
    const server = this.createTcp();
    await listen(server, { fd: inherited.fd }, where);
    this.registerTcp(server, true);
  }

  private registerUdp(socket: dgram.Socket, inherited: boolean): void {
    socket.removeAllListeners('error');
    socket.on('error', (error) => {
      this.logger.warn(`dns: udp socket error: ${error.message}`);
    });
    this.udpSockets.push(socket);
    const a = socket.address();
    this.bound.push({
      transport: 'udp',
      address: a.address,
      port: a.port,
      family: a.family === 'IPv6' ? 6 : 4,
      inherited,
    });
  }

  private createTcp(): net.Server {
    // allowHalfOpen: a client may send its queries and shut down its side; we still answer them.
    const server = net.createServer({ allowHalfOpen: true });
    server.on('connection', (socket) => {
      this.onConnection(socket);
    });
    return server;
  }

  private async listenTcp(address: ListenAddress, port: number): Promise<void> {
    const server = this.createTcp();
    await listen(
      server,
      { host: address.host, port, ipv6Only: address.family === 6, exclusive: true, backlog: TCP_BACKLOG },
      `tcp ${formatHostPort(address.host, port)}`,
    );
    this.registerTcp(server, false);
  }

  private registerTcp(server: net.Server, inherited: boolean): void {
    server.on('error', (error) => {
      this.logger.warn(`dns: tcp listener error: ${error.message}`);
    });
    this.tcpServers.push(server);
    const a = server.address();
    if (a && typeof a === 'object') {
      this.bound.push({
        transport: 'tcp',
        address: a.address,
        port: a.port,
        family: a.family === 'IPv6' ? 6 : 4,
        inherited,
      });
    }
  }

  private async shutdown(): Promise<void> {
    if (this.state === 'new') {
      this.state = 'closed';
      return;
    }
    this.state = 'closing';
    this.unsubscribe?.();
    const listenersClosed = this.tcpServers.map(
      (server) =>
        new Promise<void>((resolve) => {
          // Resolves once every connection of this listener has closed.
          server.close(() => {
            resolve();
          });
        }),
    );
    for (const connection of this.connections) connection.shutdown();
    if (this.inflight > 0) await new Promise<void>((resolve) => this.inflightWaiters.push(resolve));
    await Promise.all(listenersClosed);
    await this.closeSockets();
    this.state = 'closed';
  }

  private async closeSockets(): Promise<void> {
    const udp = this.udpSockets.splice(0);
    const tcp = this.tcpServers.splice(0);
    await Promise.all([
      ...udp.map(closeUdp),
      ...tcp.map(
        (server) =>
          new Promise<void>((resolve) => {
            if (!server.listening) {
              resolve();
              return;
            }
            server.close(() => {
              resolve();
            });
          }),
      ),
    ]);
  }
}

/** `{ fd }` is an inherited listening socket (Node's listen(handle) form). */
function listen(
  server: net.Server,
  options: net.ListenOptions | { readonly fd: number },
  where: string,
): Promise<void> {
  return new Promise<void>((resolve, reject) => {
    const onError = (error: Error): void => {
      reject(new DnsError('DNS_BIND_FAILED', `${where}: ${error.message}`, { cause: error }));
    };
    server.once('error', onError);
    server.listen(options, () => {
      server.off('error', onError);
      resolve();
    });
  });
}

function closeUdp(socket: dgram.Socket): Promise<void> {
  return new Promise<void>((resolve) => {
    try {
      socket.close(() => {
        resolve();
      });
    } catch {
      resolve(); // already closed
    }
  });
}

function isAddressInUse(error: unknown): boolean {
  return (
    error instanceof DnsError &&
    error.cause instanceof Error &&
    'code' in error.cause &&
    error.cause.code === 'EADDRINUSE'
  );
}
