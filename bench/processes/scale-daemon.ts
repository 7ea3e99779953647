/**
 * BENCH-ONLY entry point for bench:scale: the daemon's parts (Registry, userdb Varlink server, DNS
 * stub), wired in the order `serve` uses (src/daemon/serve.ts: userdb listens, first sync, DNS,
 * `ready`), but with a synthetic HostReader, because 10,000 real user namespaces are too heavy for a
 * benchmark. Not a product entry point: no control socket, no socket activation, no resolved.
 *
 *   node scale-daemon.bundle.mjs --bus ADDRESS --dns HOST:PORT --userdb PATH [--no-polling]
 *
 * bench:scale starts the bundle scripts/bundle.mjs makes of this file, as bin/mymachinesd starts
 * the daemon's (dist/mymachinesd.mjs): the same start-up as the shipped daemon.
 *
 * The synthetic HostReader: ../harness/synthetic-host.ts.
 */
import { mkdir } from 'node:fs/promises';
import { basename, dirname } from 'node:path';
import { parseArgs } from 'node:util';
import { describeSettledHeap, settleHeap } from '../../src/daemon/heap.js';
import { createLogger, withPrefix } from '../../src/log.js';
import { Registry } from '../../src/registry-client/sync.js';
import { DnsServer } from '../../src/resolver/index.js';
import { userDatabaseInterfaces } from '../../src/userdb/service.js';
import { VarlinkServer } from '../../src/varlink/server.js';
import { syntheticHost } from '../harness/synthetic-host.js';

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      bus: { type: 'string' },
      dns: { type: 'string' },
      userdb: { type: 'string' },
      // informative runs only: no address refresh and no leader check, to show what polling costs
      'no-polling': { type: 'boolean' },
    },
  });
  const { bus, dns: listen, userdb: userdbPath } = values;
  if (bus === undefined || listen === undefined || userdbPath === undefined)
    throw new Error('usage: scale-daemon.js --bus ADDRESS --dns HOST:PORT --userdb PATH');
  const logger = createLogger('info');
  const hour = 3_600_000;
  const registry = new Registry({
    busAddress: bus,
    logger,
    host: syntheticHost,
    ...(values['no-polling'] === true ? { refreshIntervalMs: hour, leaderCheckIntervalMs: hour } : {}),
  });

  const userdb = new VarlinkServer({
    logger: withPrefix(logger, 'userdb: '),
    info: { product: 'mymachinesd (bench:scale)', version: '0' },
  });
  for (const iface of userDatabaseInterfaces(registry.view, basename(userdbPath))) userdb.addInterface(iface);
  await mkdir(dirname(userdbPath), { recursive: true, mode: 0o755 });
  await userdb.listen(userdbPath, { mode: 0o666 });

  await registry.start();
  const dns = new DnsServer({ view: registry.view, logger, listen: [listen] });
  await dns.start();
  logger.info(describeSettledHeap(settleHeap())); // as serve() does
  logger.info('ready');

  await new Promise<void>((resolve) => {
    process.once('SIGTERM', resolve);
    process.once('SIGINT', resolve);
  });
  await Promise.all([userdb.close(), dns.close()]);
  await registry.stop();
}

main().catch((err: unknown) => {
  process.stderr.write(`scale-daemon: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`);
  process.exitCode = 1;
});
