/**
 * The command line (DESIGN.md §3): parsing and validation, pure. Any problem is a `UsageError`
 * with a one-line reason; `main.ts` prints it and exits 2.
 */
import { systemBusAddress } from '../registry-client/bus.js';
import { DEFAULT_LISTEN, parseListenAddress, parseUpstream } from '../resolver/config.js';
import { parseNet } from '../resolver/nets.js';
import { isLogLevel, type LogLevel } from '../log.js';

export class UsageError extends Error {
  override readonly name = 'UsageError';
}

export interface ServeConfig {
  readonly command: 'serve';
  readonly busAddress: string;
  /** `HOST:PORT` / `[V6]:PORT` as given (validated); empty with --no-dns. */
  readonly dns: readonly string[];
  readonly dnsEnabled: boolean;
  readonly domain: string;
  /** `ADDR[:PORT]`, `[V6]:PORT` or `resolv.conf`, as given (validated). */
  readonly forward: readonly string[];
  readonly ttl: number;
  readonly includeLinkLocal: boolean;
  /** CIDRs as given (validated). */
  readonly excludeNets: readonly string[];
  /** undefined = the stub's default (loopback and the host's own addresses). */
  readonly allowNets: readonly string[] | undefined;
  readonly userdb: string | undefined;
  readonly control: string | undefined;
  readonly logLevel: LogLevel;
  readonly refreshSeconds: number;
  /** At most this many machines' addresses re-read per second (stretches rounds beyond refreshSeconds). */
  readonly refreshRate: number;
  /** Machined is asked for each container at least once in N refresh rounds, whatever its network namespace shows. */
  readonly refreshFullRounds: number;
  /** Register the stub with systemd-resolved for the domain on this link (undefined = do not). */
  readonly resolvedLink: string | undefined;
}

export interface ListConfig {
  readonly command: 'list';
  readonly json: boolean;
  readonly control: string;
}

export interface ResolveConfig {
  readonly command: 'resolve';
  readonly name: string;
  readonly json: boolean;
  readonly control: string;
}

export interface AccountConfig {
  readonly command: 'user' | 'group';
  /** A name, or a numeric id. */
  readonly key: string | number;
  readonly json: boolean;
  readonly userdb: string;
}

export type Config =
  | ServeConfig
  | ListConfig
  | ResolveConfig
  | AccountConfig
  | { readonly command: 'help' }
  | { readonly command: 'version' };

export const DEFAULT_DNS = DEFAULT_LISTEN;
export const DEFAULT_DOMAIN = 'machine';
export const DEFAULT_USERDB = '/run/systemd/userdb/io.mymachinesd.Machine';
export const DEFAULT_CONTROL = '/run/mymachinesd/io.mymachinesd.Control';
export const DEFAULT_REFRESH_SECONDS = 10;
export const DEFAULT_REFRESH_RATE = 100;
export const DEFAULT_REFRESH_FULL_ROUNDS = 6;
export const DEFAULT_RESOLVED_LINK = 'mymachines0';

export const USAGE = `usage:
  mymachinesd serve [options]
      --bus ADDRESS          machined's bus (default: $DBUS_SYSTEM_BUS_ADDRESS, else the system bus)
      --dns HOST:PORT        DNS listen address, UDP and TCP; repeatable; [::1]:PORT for IPv6;
                             port 0 = any free port (default ${DEFAULT_DNS})
      --no-dns               serve no DNS
      --domain NAME          zone served authoritatively (default "${DEFAULT_DOMAIN}")
      --forward SPEC         upstream for other names: ADDR[:PORT], [ADDR6]:PORT (repeatable) or
                             "resolv.conf"; default none (REFUSED)
      --ttl SECONDS          TTL of synthesized records (default 0)
      --include-link-local   also answer link-local addresses (DNS cannot carry their scope)
      --exclude-net CIDR     never answer addresses in CIDR (repeatable)
      --allow-net CIDR       clients allowed to query (repeatable; default loopback and the
                             host's own addresses)
      --userdb PATH          io.systemd.UserDatabase socket; the service name is its basename
                             (default ${DEFAULT_USERDB})
      --no-userdb            serve no userdb
      --control PATH         control socket for list/resolve (default ${DEFAULT_CONTROL})
      --no-control           serve no control socket
      --refresh SECONDS      re-read machine addresses this often (default ${DEFAULT_REFRESH_SECONDS})
      --refresh-rate N       but re-read at most N machines per second (default ${DEFAULT_REFRESH_RATE});
                             beyond SECONDS × N machines a round takes machines / N seconds
      --refresh-full N       ask machined for a container when its network namespace (/proc)
                             changed, and anyway once in N rounds, staggered
                             (default ${DEFAULT_REFRESH_FULL_ROUNDS}; 1: ask every round)
      --register-resolved[=LINK]
                             route the domain to this stub in systemd-resolved, on LINK
                             (default ${DEFAULT_RESOLVED_LINK})
      --log-level LEVEL      error|warn|info|debug (default info)
  mymachinesd list [--json] [--control PATH]
  mymachinesd resolve NAME [--json] [--control PATH]
  mymachinesd user NAME|UID [--json] [--userdb PATH]
  mymachinesd group NAME|GID [--json] [--userdb PATH]
  mymachinesd --help | --version
`;

// Addresses and prefixes are checked with the stub's own parsers: one definition of what it accepts.
function listenAddress(text: string): string {
  if (!parseListenAddress(text)) throw new UsageError(`--dns "${text}": expected IPV4:PORT or [IPV6]:PORT`);
  return text;
}

function upstream(text: string): string {
  if (text !== 'resolv.conf' && !parseUpstream(text))
    throw new UsageError(`--forward "${text}": expected ADDR[:PORT], [IPV6]:PORT or resolv.conf`);
  return text;
}

function net(flag: string, text: string): string {
  if (!parseNet(text))
    throw new UsageError(`${flag} "${text}": expected ADDRESS/PREFIX (e.g. 10.0.0.0/8, fd00::/8)`);
  return text;
}

/** A DNS domain: labels of letters, digits, `-` and `_`, 1–63 bytes, 253 in all; trailing dot dropped. */
export function parseDomain(text: string): string {
  const domain = text.endsWith('.') ? text.slice(0, -1) : text;
  const labels = domain.split('.');
  if (
    domain.length === 0 ||
    domain.length > 253 ||
    labels.some((l) => l.length === 0 || l.length > 63 || !/^[A-Za-z0-9_-]+$/.test(l))
  )
    throw new UsageError(`"${text}": not a valid domain name`);
  return domain.toLowerCase();
}

function parseSeconds(flag: string, text: string, min: number): number {
  if (!/^\d{1,10}$/.test(text) || Number(text) > 0x7fffffff || Number(text) < min)
    throw new UsageError(
      `${flag} "${text}": expected a whole number of seconds${min > 0 ? ` ≥ ${min}` : ''}`,
    );
  return Number(text);
}

/** A tiny argv reader: `--flag VALUE` and `--flag=VALUE`, positional arguments in order. */
class Args {
  private i = 0;
  constructor(private readonly argv: readonly string[]) {}

  next(): { flag: string; inline: string | undefined } | { positional: string } | undefined {
    const arg = this.argv[this.i++];
    if (arg === undefined) return undefined;
    if (arg.startsWith('--') && arg.length > 2) {
      const eq = arg.indexOf('=');
      return eq < 0
        ? { flag: arg, inline: undefined }
        : { flag: arg.slice(0, eq), inline: arg.slice(eq + 1) };
    }
    if (arg.startsWith('-') && arg !== '-' && !/^-\d/.test(arg)) return { flag: arg, inline: undefined };
    return { positional: arg };
  }

  value(flag: string, inline: string | undefined): string {
    if (inline !== undefined) return inline;
    const v = this.argv[this.i++];
    if (v === undefined) throw new UsageError(`${flag} needs a value`);
    return v;
  }
}

function noValue(flag: string, inline: string | undefined): void {
  if (inline !== undefined) throw new UsageError(`${flag} takes no value`);
}

export function parseArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): Config {
  const [command, ...rest] = argv;
  switch (command) {
    case undefined:
      throw new UsageError('a command is required (serve, list, resolve, user, group; see --help)');
    case '--help':
    case '-h':
    case 'help':
      return { command: 'help' };
    case '--version':
      return { command: 'version' };
    case 'serve':
      return parseServe(rest, env);
    case 'list':
    case 'resolve':
      return parseClient(command, rest);
    case 'user':
    case 'group':
      return parseAccount(command, rest);
    default:
      throw new UsageError(`unknown command "${command}" (serve, list, resolve, user, group; see --help)`);
  }
}

function parseServe(argv: readonly string[], env: NodeJS.ProcessEnv): ServeConfig {
  const args = new Args(argv);
  let busAddress = systemBusAddress(env);
  const dns: string[] = [];
  let dnsEnabled = true;
  let domain = DEFAULT_DOMAIN;
  const forward: string[] = [];
  let ttl = 0;
  let includeLinkLocal = false;
  const excludeNets: string[] = [];
  let allowNets: string[] | undefined;
  let userdb: string | undefined = DEFAULT_USERDB;
  let control: string | undefined = DEFAULT_CONTROL;
  let logLevel: LogLevel = 'info';
  let refreshSeconds = DEFAULT_REFRESH_SECONDS;
  let refreshRate = DEFAULT_REFRESH_RATE;
  let refreshFullRounds = DEFAULT_REFRESH_FULL_ROUNDS;
  let resolvedLink: string | undefined;
  for (let a = args.next(); a; a = args.next()) {
    if ('positional' in a) throw new UsageError(`serve: unexpected argument "${a.positional}"`);
    const { flag, inline } = a;
    switch (flag) {
      case '--bus':
        busAddress = args.value(flag, inline);
        if (!/^[a-z]+:/.test(busAddress))
          throw new UsageError(
            `--bus "${busAddress}": expected a D-Bus address like unix:path=/run/dbus/system_bus_socket`,
          );
        break;
      case '--dns':
        dns.push(listenAddress(args.value(flag, inline)));
        break;
      case '--no-dns':
        noValue(flag, inline);
        dnsEnabled = false;
        break;
      case '--domain':
        domain = parseDomain(args.value(flag, inline));
        break;
      case '--forward':
        forward.push(upstream(args.value(flag, inline)));
        break;
      case '--ttl':
        ttl = parseSeconds(flag, args.value(flag, inline), 0);
        break;
      case '--include-link-local':
        noValue(flag, inline);
        includeLinkLocal = true;
        break;
      case '--exclude-net':
        excludeNets.push(net(flag, args.value(flag, inline)));
        break;
      case '--allow-net':
        (allowNets ??= []).push(net(flag, args.value(flag, inline)));
        break;
      case '--userdb':
        userdb = absolutePath(flag, args.value(flag, inline));
        break;
      case '--no-userdb':
        noValue(flag, inline);
        userdb = undefined;
        break;
      case '--control':
        control = absolutePath(flag, args.value(flag, inline));
        break;
      case '--no-control':
        noValue(flag, inline);
        control = undefined;
        break;
      case '--log-level': {
        const level = args.value(flag, inline);
        if (!isLogLevel(level))
          throw new UsageError(`--log-level "${level}": expected error, warn, info or debug`);
        logLevel = level;
        break;
      }
      case '--refresh':
        refreshSeconds = parseSeconds(flag, args.value(flag, inline), 1);
        break;
      case '--refresh-rate': {
        const text = args.value(flag, inline);
        if (!/^\d{1,7}$/.test(text) || Number(text) < 1)
          throw new UsageError(`${flag} "${text}": expected a whole number of machines per second ≥ 1`);
        refreshRate = Number(text);
        break;
      }
      case '--refresh-full': {
        const text = args.value(flag, inline);
        if (!/^\d{1,7}$/.test(text) || Number(text) < 1)
          throw new UsageError(`${flag} "${text}": expected a whole number of rounds ≥ 1`);
        refreshFullRounds = Number(text);
        break;
      }
      case '--register-resolved':
        resolvedLink = inline ?? DEFAULT_RESOLVED_LINK;
        if (!/^[A-Za-z0-9_.:-]{1,15}$/.test(resolvedLink))
          throw new UsageError(`--register-resolved "${resolvedLink}": not a valid link name`);
        break;
      default:
        throw new UsageError(`serve: unknown option ${flag}`);
    }
  }
  if (!dnsEnabled && dns.length > 0) throw new UsageError('--dns and --no-dns contradict each other');
  if (!dnsEnabled && (forward.length > 0 || resolvedLink !== undefined))
    throw new UsageError('--forward and --register-resolved need the DNS stub (remove --no-dns)');
  return {
    command: 'serve',
    busAddress,
    dns: dnsEnabled ? (dns.length > 0 ? dns : [DEFAULT_DNS]) : [],
    dnsEnabled,
    domain,
    forward,
    ttl,
    includeLinkLocal,
    excludeNets,
    allowNets,
    userdb,
    control,
    logLevel,
    refreshSeconds,
    refreshRate,
    refreshFullRounds,
    resolvedLink,
  };
}

function absolutePath(flag: string, path: string): string {
  if (!path.startsWith('/')) throw new UsageError(`${flag} "${path}": an absolute path is required`);
  if (Buffer.byteLength(path) > 107)
    throw new UsageError(`${flag} "${path}": longer than a unix socket path may be (107 bytes)`);
  return path;
}

/** The options every client command has: `--json`, one socket path flag, positional arguments. */
function parseClientArgs(
  command: string,
  argv: readonly string[],
  pathFlag: '--control' | '--userdb',
  defaultPath: string,
): { json: boolean; path: string; positional: string[] } {
  const args = new Args(argv);
  let json = false;
  let path = defaultPath;
  const positional: string[] = [];
  for (let a = args.next(); a; a = args.next()) {
    if ('positional' in a) positional.push(a.positional);
    else if (a.flag === '--json') {
      noValue(a.flag, a.inline);
      json = true;
    } else if (a.flag === pathFlag) path = absolutePath(a.flag, args.value(a.flag, a.inline));
    else throw new UsageError(`${command}: unknown option ${a.flag}`);
  }
  return { json, path, positional };
}

function parseClient(command: 'list' | 'resolve', argv: readonly string[]): ListConfig | ResolveConfig {
  const { json, path: control, positional } = parseClientArgs(command, argv, '--control', DEFAULT_CONTROL);
  if (command === 'list') {
    if (positional.length > 0) throw new UsageError(`list: unexpected argument "${positional[0] ?? ''}"`);
    return { command, json, control };
  }
  const [name, extra] = positional;
  if (name === undefined || name === '') throw new UsageError('resolve: a machine name is required');
  if (extra !== undefined) throw new UsageError(`resolve: unexpected argument "${extra}"`);
  return { command, name, json, control };
}

function parseAccount(command: 'user' | 'group', argv: readonly string[]): AccountConfig {
  const { json, path: userdb, positional } = parseClientArgs(command, argv, '--userdb', DEFAULT_USERDB);
  const [key, extra] = positional;
  if (key === undefined || key === '') throw new UsageError(`${command}: a name or numeric id is required`);
  if (extra !== undefined) throw new UsageError(`${command}: unexpected argument "${extra}"`);
  if (/^\d+$/.test(key)) {
    const id = Number(key);
    if (id > 0xfffffffe) throw new UsageError(`${command}: ${key} is not a valid id`);
    return { command, key: id, json, userdb };
  }
  return { command, key, json, userdb };
}
