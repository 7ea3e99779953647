/**
 * A VarlinkServer on the first socket passed by systemd socket activation (fd 3, LISTEN_FDS=1);
 * exits 0 after a graceful close on SIGTERM. Run by varlink-server.test.ts through
 * `systemd-socket-activate`.
 */
import { createLogger } from '../../src/log.js';
import { VarlinkServer } from '../../src/varlink/server.js';

const SD_LISTEN_FDS_START = 3;

if (process.env.LISTEN_FDS !== '1') {
  process.stderr.write(`expected LISTEN_FDS=1, got ${process.env.LISTEN_FDS ?? 'nothing'}\n`);
  process.exit(2);
}
const server = new VarlinkServer({ logger: createLogger('info') });
await server.listenFd(SD_LISTEN_FDS_START);
process.once('SIGTERM', () => {
  void server.close().then(() => process.exit(0));
});
