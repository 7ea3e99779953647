/**
 * Routing the zone to our stub in systemd-resolved (D-Bus `org.freedesktop.resolve1`), on a link
 * of our own: resolved refuses loopback ("Link lo is loopback device.") and links managed by
 * networkd. The quirks of resolved 252 that shape this (../shared/lab/README.md, resolved section):
 * - order: domains and DefaultRoute=no first, DNS servers last, else the link is briefly a default
 *   route for every name;
 * - `(domain, false)` = search and routing domain, so `ssh web1` becomes `web1.machine`;
 * - settings live per ifindex and are lost when resolved loses its state or the link is deleted:
 *   re-apply whenever resolved gets a new bus owner, and re-create the link (new ifindex) when it
 *   is deleted (`ip -o monitor link`);
 * - its own stub 127.0.0.53 is refused as a server; a loopback address like 127.0.0.153 is fine.
 */
import { execFile, spawn } from 'node:child_process';
import { isIP } from 'node:net';
import { createInterface } from 'node:readline';
import { z } from 'zod';
import { BusConnection, isBusError, nameOwnerRule, type BusSignal } from '../registry-client/bus.js';
import { parseAddress, AF_INET, AF_INET6 } from '../registry-client/address.js';
import type { Logger } from '../log.js';

export const RESOLVE1_NAME = 'org.freedesktop.resolve1';
const RESOLVE1_PATH = '/org/freedesktop/resolve1';
const RESOLVE1_MANAGER = 'org.freedesktop.resolve1.Manager';
const NO_SUCH_LINK = 'org.freedesktop.resolve1.NoSuchLink';

export interface StubServer {
  readonly host: string;
  readonly port: number;
}

export interface ResolvedRegistrationOptions {
  readonly busAddress: string;
  readonly link: string;
  readonly domain: string;
  /** Our DNS listeners (wildcard addresses are registered as loopback). */
  readonly servers: readonly StubServer[];
  readonly logger: Logger;
}

/** Runs `ip`; rejects with its stderr. */
function ip(args: readonly string[]): Promise<string> {
  return new Promise((resolve, reject) => {
    execFile('ip', args, { timeout: 5_000 }, (err, stdout, stderr) => {
      if (err) reject(new Error(stderr.trim() || err.message));
      else resolve(stdout);
    });
  });
}

/** The address given to a link we create, so resolved considers it (see ensureLink). */
export const LINK_ADDRESS = '169.254.53.53/32';

const linkJson = z.array(z.object({ ifindex: z.number().int() }).loose());

/**
 * The link's ifindex, creating it (dummy, or ifb where the kernel has no dummy driver) if needed.
 * A link that already exists is used as it is: it must be up and carry an address resolved counts.
 */
export async function ensureLink(name: string, logger: Logger): Promise<number> {
  const existing = await ip(['-j', 'link', 'show', name]).then(
    (out) => linkJson.safeParse(JSON.parse(out)).data?.[0]?.ifindex,
    () => undefined,
  );
  if (existing !== undefined) return existing;
  try {
    await ip(['link', 'add', name, 'type', 'dummy']);
  } catch (err) {
    logger.debug(
      `cannot create dummy link ${name} (${err instanceof Error ? err.message : String(err)}); trying ifb`,
    );
    await ip(['link', 'add', name, 'type', 'ifb']);
  }
  // resolved gives a link a DNS scope only when it is up and has a "relevant" address; the kernel's
  // fe80:: is not one, an IPv4 link-local /32 is (checked against resolved 252). Nothing routes to it.
  await ip(['addr', 'add', LINK_ADDRESS, 'dev', name]);
  await ip(['link', 'set', name, 'up']);
  logger.info(`created link ${name} (${LINK_ADDRESS}) for the resolved registration`);
  const out = linkJson.parse(JSON.parse(await ip(['-j', 'link', 'show', name])));
  const ifindex = out[0]?.ifindex;
  if (ifindex === undefined) throw new Error(`link ${name} vanished`);
  return ifindex;
}

/**
 * Calls `onDeleted` whenever the link `name` is deleted, following `ip -o monitor link` (lines
 * `Deleted 5: mymachines0: <…>`). Returns the function that stops watching. The monitor is started
 * with a parent-death signal (setpriv, util-linux): if the daemon is killed outright it goes too,
 * where it would otherwise live on until its next write to the closed pipe.
 */
function watchLinkDeletion(name: string, onDeleted: () => void, logger: Logger): () => void {
  const monitor = spawn('setpriv', ['--pdeathsig', 'KILL', '--', 'ip', '-o', 'monitor', 'link'], {
    stdio: ['ignore', 'pipe', 'ignore'],
  });
  let stopped = false;
  monitor.on('error', (err) => {
    logger.warn(`cannot watch link ${name} (${err.message}): if it is deleted, restart the daemon`);
  });
  monitor.on('exit', (code, signal) => {
    if (!stopped)
      logger.warn(`ip monitor link ended (${signal ?? String(code)}): a deleted ${name} will not be noticed`);
  });
  createInterface({ input: monitor.stdout }).on('line', (line) => {
    if (/^Deleted \d+: ([^:@\s]+)/.exec(line)?.[1] === name) onDeleted();
  });
  return () => {
    stopped = true;
    monitor.kill();
  };
}

/** The servers as resolved takes them: (family, bytes, port, SNI). A wildcard listener means loopback. */
export function resolvedServers(servers: readonly StubServer[]): [number, Buffer, number, string][] {
  return servers.map((s) => {
    const host = s.host === '0.0.0.0' ? '127.0.0.1' : s.host === '::' ? '::1' : s.host;
    const bytes = parseAddress(host);
    if (!bytes || isIP(host) === 0) throw new Error(`cannot register DNS server ${host}`);
    return [bytes.length === 4 ? AF_INET : AF_INET6, bytes, s.port, ''];
  });
}

/**
 * Keeps the registration in place while the daemon runs: applies it now (if resolved runs), again
 * whenever resolved gets a new owner or the link has to be created again, and reverts it on
 * `close()`.
 */
export class ResolvedRegistration {
  private conn: BusConnection | undefined;
  private ifindex = 0;
  private applied = false;
  private closed = false;
  /** Applications run one after the other (resolved's restart and a link's deletion may coincide). */
  private queue: Promise<void> = Promise.resolve();
  private stopWatching: (() => void) | undefined;

  constructor(private readonly opts: ResolvedRegistrationOptions) {}

  async start(): Promise<void> {
    this.ifindex = await ensureLink(this.opts.link, this.opts.logger);
    this.stopWatching = watchLinkDeletion(
      this.opts.link,
      () => {
        if (this.closed) return;
        this.applied = false;
        this.opts.logger.info(`link ${this.opts.link} was deleted; creating it again`);
        void this.apply();
      },
      this.opts.logger,
    );
    // a few calls each time resolved appears: not worth a second connection to the bus
    const conn = await BusConnection.open(this.opts.busAddress, { directCalls: false });
    this.conn = conn;
    conn.onSignal((s) => this.onSignal(s));
    conn.onClose((reason) => {
      if (!this.closed) this.opts.logger.warn(`resolved registration: bus connection lost (${reason})`);
    });
    await conn.addMatch(nameOwnerRule(RESOLVE1_NAME));
    if (await conn.getNameOwner(RESOLVE1_NAME)) await this.apply();
    else this.opts.logger.info('systemd-resolved is not running; will register when it appears');
  }

  private onSignal(s: BusSignal): void {
    if (s.member !== 'NameOwnerChanged') return;
    const [name, , owner] = s.body;
    if (name !== RESOLVE1_NAME || typeof owner !== 'string') return;
    if (owner === '') {
      this.applied = false;
      this.opts.logger.info('systemd-resolved left the bus');
      return;
    }
    this.opts.logger.info('systemd-resolved (re)appeared; re-applying the registration');
    void this.apply();
  }

  /** Applies the settings in the order resolved 252 needs (see the file comment), after any pending. */
  apply(): Promise<void> {
    this.queue = this.queue.then(() => this.applyNow());
    return this.queue;
  }

  private async applyNow(): Promise<void> {
    const conn = this.conn;
    if (!conn || this.closed) return;
    try {
      // the link may have been deleted and created again (a new ifindex) meanwhile
      this.ifindex = await ensureLink(this.opts.link, this.opts.logger);
      const call = (member: string, signature: string, body: unknown[]): Promise<unknown[]> =>
        conn.call({
          destination: RESOLVE1_NAME,
          path: RESOLVE1_PATH,
          interface: RESOLVE1_MANAGER,
          member,
          signature,
          body,
        });
      await call('SetLinkDomains', 'ia(sb)', [this.ifindex, [[this.opts.domain, false]]]);
      await call('SetLinkDefaultRoute', 'ib', [this.ifindex, false]);
      await call('SetLinkDNSEx', 'ia(iayqs)', [this.ifindex, resolvedServers(this.opts.servers)]);
      this.applied = true;
      const where = this.opts.servers.map((s) =>
        s.host.includes(':') ? `[${s.host}]:${s.port}` : `${s.host}:${s.port}`,
      );
      this.opts.logger.info(
        `registered with systemd-resolved: ~${this.opts.domain} and search ${this.opts.domain} → ${where.join(' ')} on ${this.opts.link} (ifindex ${this.ifindex})`,
      );
    } catch (err) {
      this.opts.logger.error(
        `registration with systemd-resolved failed: ${err instanceof Error ? err.message : String(err)}`,
      );
    }
  }

  /** Reverts the link's settings (RevertLink) and closes the connection. */
  async close(): Promise<void> {
    this.closed = true;
    this.stopWatching?.();
    await this.queue;
    const conn = this.conn;
    if (!conn) return;
    if (this.applied && !conn.closed) {
      try {
        await conn.call({
          destination: RESOLVE1_NAME,
          path: RESOLVE1_PATH,
          interface: RESOLVE1_MANAGER,
          member: 'RevertLink',
          signature: 'i',
          body: [this.ifindex],
          noAutoStart: true,
          timeoutMs: 3_000,
        });
        this.opts.logger.info('removed the registration from systemd-resolved');
      } catch (err) {
        // resolved gone, or the link gone (its settings went with it): nothing left to revert
        if (!isBusError(err, 'ServiceUnknown') && !(isBusError(err) && err.dbusName === NO_SUCH_LINK))
          this.opts.logger.warn(
            `reverting the resolved registration failed: ${err instanceof Error ? err.message : String(err)}`,
          );
      }
    }
    conn.close();
  }
}
