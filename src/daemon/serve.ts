/**
 * `mymachinesd serve`: wires the registry, the userdb and control Varlink servers, the DNS stub
 * and (optionally) the systemd-resolved registration, with the CLI contract's logs, exit codes and
 * signals (DESIGN.md §3).
 *
 * Start-up order, and why:
 * 1. userdb and control listen first, before any D-Bus traffic. dbus-daemon resolves users through
 *    NSS, and nss-systemd asks every socket in /run/systemd/userdb — ours too. With socket
 *    activation the socket already exists; if we waited on D-Bus before accepting on it, dbus-daemon
 *    would wait on us and we on it (systemd #40562). Until the first sync they answer from an empty
 *    view, which is the truth as far as we know.
 * 2. The registry's first sync (bounded: every D-Bus call has a deadline).
 * 3. The DNS stub, so that it never answers NXDOMAIN for a machine that exists only because it
 *    started before it knew the machines (activated DNS sockets simply queue queries until then).
 * 4. The first attempt at the resolved registration (bounded), so that once a unit ordered after
 *    ours starts, or `systemctl start` returns, `resolvectl query web1.machine` already works.
 * 5. `ready` (and READY=1 under systemd).
 */
import { mkdir } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { createLogger, withPrefix as prefixed, type Logger } from '../log.js';
import type { MachineRecord } from '../registry-client/view.js';
import { Registry } from '../registry-client/sync.js';
import { DnsServer, isDnsError, type BoundListener } from '../resolver/index.js';
import { userDatabaseInterfaces } from '../userdb/service.js';
import { userdbNameProblem } from '../userdb/records.js';
import { VarlinkServer } from '../varlink/server.js';
import { ActivationError, inheritedSockets, type InheritedSocket } from './activation.js';
import type { ServeConfig } from './config.js';
import { controlInterface } from './control-service.js';
import { describeSettledHeap, settleHeap } from './heap.js';
import { notify } from './notify.js';
import { ResolvedRegistration } from './resolved.js';

export const VERSION = '0.1.0';

/** How long `ready` waits for the first resolved registration (it goes on in the background). */
const RESOLVED_START_DEADLINE_MS = 5_000;

/** Waits for `work`, but no longer than `ms`; calls `onTimeout` if it gave up waiting. */
async function within(ms: number, work: Promise<unknown>, onTimeout: () => void): Promise<void> {
  const late = Symbol('late');
  let timer: NodeJS.Timeout | undefined;
  const deadline = new Promise<typeof late>((resolve) => (timer = setTimeout(() => resolve(late), ms)));
  try {
    if ((await Promise.race([work, deadline])) === late) onTimeout();
  } finally {
    clearTimeout(timer);
  }
}

/** A listener that could not be set up: exit 1 with a line naming it. */
class ListenerFailure extends Error {
  override readonly name = 'ListenerFailure';
}

interface Running {
  readonly registry: Registry;
  readonly varlink: VarlinkServer[];
  dns: DnsServer | undefined;
  resolved: ResolvedRegistration | undefined;
}

/** Runs the daemon until SIGTERM/SIGINT; resolves to the process exit status. */
export async function serve(
  config: ServeConfig,
  logger: Logger = createLogger(config.logLevel),
): Promise<number> {
  let inherited: InheritedSocket[];
  try {
    inherited = inheritedSockets();
  } catch (err) {
    logger.error(`socket activation: ${err instanceof ActivationError ? err.message : String(err)}`);
    return 1;
  }
  for (const s of inherited)
    if (!['dns', 'userdb', 'control'].includes(s.name))
      logger.warn(
        `socket activation: ignoring fd ${s.fd} named "${s.name}" (known names: dns, userdb, control)`,
      );

  const registry = new Registry({
    busAddress: config.busAddress,
    logger,
    refreshIntervalMs: config.refreshSeconds * 1000,
    refreshRate: config.refreshRate,
    fullRefreshRounds: config.refreshFullRounds,
  });
  const running: Running = { registry, varlink: [], dns: undefined, resolved: undefined };

  let stopRequested: (signal: NodeJS.Signals) => void = () => undefined;
  const stopSignal = new Promise<NodeJS.Signals>((resolve) => (stopRequested = resolve));
  let signals = 0;
  const onSignal = (signal: NodeJS.Signals): void => {
    signals++;
    if (signals > 1) {
      logger.warn(`${signal} again: exiting at once`);
      process.exit(1);
    }
    stopRequested(signal);
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);

  try {
    // 1. userdb and control: from memory, never waiting on D-Bus (see the file comment)
    if (config.userdb !== undefined) {
      const service = userdbService(config.userdb, inherited, logger);
      const server = new VarlinkServer({
        logger: prefixed(logger, 'userdb: '),
        info: { product: 'mymachinesd (userdb)', version: VERSION },
      });
      for (const iface of userDatabaseInterfaces(registry.view, service)) server.addInterface(iface);
      await listenVarlink(server, 'userdb', config.userdb, inherited, 0o666);
      running.varlink.push(server);
    }
    if (config.control !== undefined) {
      const server = new VarlinkServer({
        logger: prefixed(logger, 'control: '),
        info: { product: 'mymachinesd (control)', version: VERSION },
      });
      server.addInterface(
        controlInterface({
          view: registry.view,
          status: () => registry.status(),
          domain: config.domain,
          userdbProblem: (m) => userdbNameProblem(m)?.message,
        }),
      );
      await listenVarlink(server, 'control', config.control, inherited, 0o666);
      running.varlink.push(server);
    }
    warnAboutNamelessContainers(registry, logger);

    // 2. the first sync
    await Promise.race([registry.start(), stopSignal]);

    // 3. DNS
    let bound: readonly BoundListener[] = [];
    if (config.dnsEnabled) {
      const dnsFds = inherited.flatMap((s) =>
        s.name === 'dns' && (s.kind.type === 'udp' || s.kind.type === 'tcp')
          ? [{ fd: s.fd, kind: s.kind.type, family: s.kind.family }]
          : [],
      );
      const dns = new DnsServer({
        view: registry.view,
        logger, // the stub names itself in its lines
        domain: config.domain,
        ttl: config.ttl,
        includeLinkLocal: config.includeLinkLocal,
        excludeNets: config.excludeNets,
        forward: config.forward,
        ...(config.allowNets ? { allowNets: config.allowNets } : {}),
        // a passed socket replaces the flag's own binds
        listen: dnsFds.length > 0 ? [] : config.dns,
        inherited: dnsFds,
      });
      running.dns = dns;
      bound = await dns.start();
    }

    // 4. resolved
    if (config.resolvedLink !== undefined) {
      const servers = bound
        .filter((l) => l.transport === 'udp')
        .map((l) => ({ host: l.address, port: l.port }));
      running.resolved = new ResolvedRegistration({
        busAddress: config.busAddress,
        link: config.resolvedLink,
        domain: config.domain,
        servers,
        logger,
      });
      const registered = running.resolved.start().catch((err: unknown) => {
        logger.error(
          `systemd-resolved registration: ${err instanceof Error ? err.message : String(err)}; serving without it`,
        );
      });
      await within(RESOLVED_START_DEADLINE_MS, Promise.race([registered, stopSignal]), () =>
        logger.warn('systemd-resolved registration is slow; ready without it for now'),
      );
    }

    // 5. ready, on a heap brought back to its live data, whose growth is limited from now on
    // (heap.ts: not during the first sync and the first zone, where it only grows)
    logger.info(describeSettledHeap(settleHeap()));
    logger.info('ready');
    await notify('READY=1', logger);

    const signal = await stopSignal;
    logger.info(`${signal}: stopping`);
    await notify('STOPPING=1', logger);
    await shutdown(running);
    logger.info('stopped');
    return 0;
  } catch (err) {
    await shutdown(running).catch(() => undefined);
    if (isDnsError(err)) {
      logger.error(`dns: ${err.message}`);
      return err.exitStatus;
    }
    if (err instanceof ListenerFailure) {
      logger.error(err.message);
      return 1;
    }
    throw err;
  } finally {
    process.off('SIGTERM', onSignal);
    process.off('SIGINT', onSignal);
  }
}

/** Stop accepting everywhere, let in-flight answers finish, revert what we registered. */
async function shutdown(running: Running): Promise<void> {
  await Promise.all([
    ...running.varlink.map((s) => s.close()),
    running.dns?.close(),
    running.resolved?.close(),
  ]);
  await running.registry.stop();
}

async function listenVarlink(
  server: VarlinkServer,
  what: 'userdb' | 'control',
  path: string,
  inherited: readonly InheritedSocket[],
  mode: number,
): Promise<void> {
  const passed = inherited.find((s) => s.name === what);
  try {
    if (passed) {
      if (passed.kind.type !== 'unix-stream') throw new Error(`fd ${passed.fd} is not a unix stream socket`);
      await server.listenFd(passed.fd, passed.kind.path || undefined);
    } else {
      await mkdir(dirname(path), { recursive: true, mode: 0o755 });
      await server.listen(path, { mode });
    }
  } catch (err) {
    throw new ListenerFailure(
      `${what}: cannot listen on ${passed ? `fd ${passed.fd}` : path}: ${err instanceof Error ? err.message : String(err)}`,
    );
  }
}

/**
 * The userdb service name clients must send: the basename of the socket they connected to (that is
 * how nss-systemd and userdbctl name it). With socket activation that is the socket unit's path,
 * whatever --userdb says.
 */
function userdbService(flag: string, inherited: readonly InheritedSocket[], logger: Logger): string {
  const passed = inherited.find((s) => s.name === 'userdb');
  const path = passed?.kind.type === 'unix-stream' ? passed.kind.path : '';
  if (path === '' || basename(path) === basename(flag)) return basename(flag);
  logger.info(`userdb: the passed socket is ${path}, not ${flag}: answering as service ${basename(path)}`);
  return basename(path);
}

/** machined silently gives such containers no names; we say so, once per machine. */
function warnAboutNamelessContainers(registry: Registry, logger: Logger): void {
  const warned = new Set<string>();
  const check = (m: MachineRecord): void => {
    if (warned.has(m.name)) return;
    const problem = userdbNameProblem(m);
    if (!problem) return;
    warned.add(m.name);
    logger.warn(`userdb: ${problem.message}`);
  };
  registry.view.onChange((change) => {
    if (change.kind === 'reset') registry.view.all().forEach(check);
    else if (change.kind !== 'removed') check(change.machine);
  });
}
