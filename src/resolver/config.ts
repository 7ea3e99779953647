/**
 * The stub's options as the daemon hands them over (strings straight from flags), validated once
 * here into typed values. Everything after this trusts its input.
 */
import { networkInterfaces } from 'node:os';
import { isIP } from 'node:net';
import type { Logger } from '../log.js';
import type { RegistryView } from '../registry-client/view.js';
import { streamShare, type TurnShare } from '../turn-share.js';
import { DnsError } from './errors.js';
import { LOOPBACK_NETS, parseNet, type Net } from './nets.js';
import { encodeName } from './wire.js';

/** A socket passed by the service manager (socket activation); its family is the caller's to say. */
export interface InheritedSocket {
  readonly fd: number;
  readonly kind: 'udp' | 'tcp';
  readonly family: 4 | 6;
}

export interface DnsServerOptions {
  /** The only source of machine data. */
  readonly view: RegistryView;
  readonly logger: Logger;
  /** Zone served authoritatively; default `machine`. */
  readonly domain?: string;
  /** TTL of synthesized records and the SOA minimum; default 0 (nss-mymachines and machined use 0). */
  readonly ttl?: number;
  /** Serve fe80::/10 and 169.254/16 addresses in A/AAAA/PTR; default false (DNS cannot carry scope). */
  readonly includeLinkLocal?: boolean;
  /** CIDRs whose addresses are left out of answers and PTR (e.g. a nested docker bridge). */
  readonly excludeNets?: readonly string[];
  /** Upstreams for names that are not ours: `ADDR[:PORT]`, `[V6]:PORT`, or `resolv.conf`. Default none. */
  readonly forward?: readonly string[];
  /** Clients we answer at all; default loopback plus the host's own addresses. Others are ignored. */
  readonly allowNets?: readonly string[];
  /** `HOST:PORT` / `[V6]:PORT`, UDP and TCP each; port 0 = a free port. Default `127.0.0.153:53` unless sockets are inherited. */
  readonly listen?: readonly string[];
  /** Already-bound sockets (socket activation). */
  readonly inherited?: readonly InheritedSocket[];
  /** Per-upstream timeout before failing over; default 2000 ms. */
  readonly forwardTimeoutMs?: number;
  /** Forwarded queries in flight at once; beyond it, SERVFAIL at once. Default 256. */
  readonly maxForwards?: number;
  /** TCP idle timeout (see `tcp.ts`); default 10000 ms. */
  readonly tcpIdleTimeoutMs?: number;
  /**
   * TCP connections at once over all listeners; default 1024. At the limit the connection idle the
   * longest is closed for a new one; if none is idle, the new one is.
   */
  readonly maxTcpConnections?: number;
  /** The event loop's share for TCP queries before UDP gets its turn; default the process's one (src/turn-share.ts). */
  readonly streamShare?: TurnShare;
  /** Where `resolv.conf` comes from; default `/etc/resolv.conf`. */
  readonly resolvConfPath?: string;
  /** The host's own addresses (for the default allowNets and loop detection); default: from the interfaces. */
  readonly hostAddresses?: readonly string[];
}

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
  readonly family: 4 | 6;
}

/** `ADDR:PORT` for an upstream; `port` defaults to 53. */
export interface Upstream {
  readonly address: string;
  readonly port: number;
  readonly family: 4 | 6;
}

export interface DnsConfig {
  readonly domain: string;
  readonly ttl: number;
  readonly includeLinkLocal: boolean;
  readonly excludeNets: readonly Net[];
  readonly allowNets: readonly Net[];
  /** Upstreams in order; `resolv.conf` stands for its nameservers, read at start in its place. */
  readonly forwardSpecs: readonly (
    { readonly kind: 'upstream'; readonly upstream: Upstream } | { readonly kind: 'resolv.conf' }
  )[];
  readonly listen: readonly ListenAddress[];
  readonly inherited: readonly InheritedSocket[];
  readonly forwardTimeoutMs: number;
  readonly maxForwards: number;
  readonly tcpIdleTimeoutMs: number;
  readonly maxTcpConnections: number;
  readonly streamShare: TurnShare;
  readonly resolvConfPath: string;
  readonly hostAddresses: readonly string[];
}

export const DEFAULT_LISTEN = '127.0.0.153:53';
/**
 * Only allowed (local) clients get a connection at all, and each costs one descriptor and a few KiB;
 * glibc opens one per truncated answer, so bursts of concurrent lookups need room.
 */
export const DEFAULT_MAX_TCP_CONNECTIONS = 1024;
export const DEFAULT_DOMAIN = 'machine';

/** `HOST:PORT` (IPv4 literal) or `[IPV6]:PORT`; no names (resolving a name to bind would be a guess). */
export function parseListenAddress(text: string): ListenAddress | undefined {
  const parsed = splitHostPort(text, false);
  return parsed && { host: parsed.address, port: parsed.port, family: parsed.family };
}

/** `ADDR`, `ADDR:PORT`, `[V6]`, `[V6]:PORT`, or a bare IPv6 literal (port 53). */
export function parseUpstream(text: string): Upstream | undefined {
  return splitHostPort(text, true);
}

function splitHostPort(text: string, portOptional: boolean): Upstream | undefined {
  let host: string;
  let portText: string | undefined;
  const bracketed = /^\[([^\]]+)\](?::(\d{1,5}))?$/.exec(text);
  if (bracketed) {
    host = bracketed[1] ?? '';
    portText = bracketed[2];
    if (isIP(host) !== 6) return undefined;
  } else if (isIP(text) === 6) {
    host = text;
  } else {
    const colon = text.lastIndexOf(':');
    host = colon < 0 ? text : text.slice(0, colon);
    portText = colon < 0 ? undefined : text.slice(colon + 1);
    if (isIP(host) !== 4) return undefined;
    if (portText !== undefined && !/^\d{1,5}$/.test(portText)) return undefined;
  }
  if (portText === undefined && !portOptional) return undefined;
  const port = portText === undefined ? 53 : Number(portText);
  if (port > 65535) return undefined;
  // A zone id only makes sense on link-local IPv6 (an upstream on a link); Node's sockets take it.
  if (host.includes('%') && !/^fe[89ab]/i.test(host)) return undefined;
  return { address: host, port, family: isIP(host) === 6 ? 6 : 4 };
}

/** glibc's reading of resolv.conf: `nameserver ADDR` lines, first three only (MAXNS). */
export function parseResolvConf(text: string): string[] {
  const servers: string[] = [];
  for (const line of text.split('\n')) {
    const m = /^\s*nameserver\s+(\S+)/.exec(line);
    if (m?.[1] && servers.length < 3) servers.push(m[1]);
  }
  return servers;
}

export function formatHostPort(address: string, port: number): string {
  return address.includes(':') ? `[${address}]:${port}` : `${address}:${port}`;
}

/** The host's own addresses, zone ids stripped. */
export function interfaceAddresses(): string[] {
  const out: string[] = [];
  for (const list of Object.values(networkInterfaces())) {
    for (const info of list ?? []) out.push(info.address.replace(/%.*$/, ''));
  }
  return out;
}

function nets(texts: readonly string[]): Net[] {
  return texts.map((text) => {
    const net = parseNet(text);
    if (!net) throw new DnsError('DNS_BAD_NET', text);
    return net;
  });
}

function positive(name: string, value: number | undefined, fallback: number): number {
  if (value === undefined) return fallback;
  if (!Number.isInteger(value) || value <= 0)
    throw new DnsError('DNS_BAD_OPTION', `${name} must be a positive integer, not ${value}`);
  return value;
}

/** Validates every option; throws `DnsError` (exit status 2) naming the first bad one. */
export function resolveConfig(options: DnsServerOptions): DnsConfig {
  const domain = (options.domain ?? DEFAULT_DOMAIN).replace(/\.$/, '').toLowerCase();
  if (domain === '' || !encodeName(domain))
    throw new DnsError('DNS_BAD_DOMAIN', JSON.stringify(options.domain ?? ''));
  const ttl = options.ttl ?? 0;
  if (!Number.isInteger(ttl) || ttl < 0 || ttl > 0x7fffffff) throw new DnsError('DNS_BAD_TTL', String(ttl));

  const forwardSpecs = (options.forward ?? []).map((text) => {
    if (text === 'resolv.conf') return { kind: 'resolv.conf' as const };
    const upstream = parseUpstream(text);
    if (!upstream) throw new DnsError('DNS_BAD_UPSTREAM', text);
    return { kind: 'upstream' as const, upstream };
  });
  const inherited = options.inherited ?? [];
  for (const s of inherited) {
    if (!Number.isInteger(s.fd) || s.fd < 0)
      throw new DnsError('DNS_BAD_OPTION', `inherited fd ${s.fd} is not a file descriptor`);
  }
  const listenTexts = options.listen ?? (inherited.length > 0 ? [] : [DEFAULT_LISTEN]);
  const listen = listenTexts.map((text) => {
    const address = parseListenAddress(text);
    if (!address) throw new DnsError('DNS_BAD_LISTEN', text);
    return address;
  });
  const hostAddresses = options.hostAddresses ?? interfaceAddresses();

  return {
    domain,
    ttl,
    includeLinkLocal: options.includeLinkLocal ?? false,
    excludeNets: nets(options.excludeNets ?? []),
    allowNets: nets(options.allowNets ?? [...LOOPBACK_NETS, ...hostAddresses]),
    forwardSpecs,
    listen,
    inherited,
    forwardTimeoutMs: positive('forwardTimeoutMs', options.forwardTimeoutMs, 2000),
    maxForwards: positive('maxForwards', options.maxForwards, 256),
    tcpIdleTimeoutMs: positive('tcpIdleTimeoutMs', options.tcpIdleTimeoutMs, 10_000),
    maxTcpConnections: positive('maxTcpConnections', options.maxTcpConnections, DEFAULT_MAX_TCP_CONNECTIONS),
    streamShare: options.streamShare ?? streamShare,
    resolvConfPath: options.resolvConfPath ?? '/etc/resolv.conf',
    hostAddresses,
  };
}
