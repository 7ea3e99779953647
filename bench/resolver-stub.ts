/**
 * The DNS stub over a fixed fixture, for load generators (dnsperf) on loopback.
 *
 *   node dist/bench/resolver-stub.js [PORT] [null]
 *
 * Fixture as in shared/reference/perf-anchors.md: machines c0001..c0100, each with one A
 * (192.0.2.N) and one AAAA (fd42::N). With `null` it instead runs the Node ceiling the stub is
 * compared with: a dgram server that answers every datagram with the query bytes and QR set, using
 * the same literal-address lookup. Prints the port, serves until SIGTERM/SIGINT.
 */
import dgram from 'node:dgram';
import { createLogger } from '../src/log.js';
import { MachineTable } from '../src/registry-client/registry.js';
import { DnsServer } from '../src/resolver/index.js';
import { machineRecord } from '../test/support/records.js';

const port = Number(process.argv[2] ?? '5310');

if (process.argv[3] === 'null') {
  const socket = dgram.createSocket({
    type: 'udp4',
    lookup: (
      address: string,
      _options: unknown,
      callback: (error: null, address: string, family: number) => void,
    ) => {
      callback(null, address, 4);
    },
  });
  socket.on('message', (message: Buffer, peer: dgram.RemoteInfo) => {
    message[2] = (message[2] ?? 0) | 0x80;
    socket.send(message, peer.port, peer.address);
  });
  socket.bind(port, '127.0.0.1', () => {
    process.stdout.write(`null ${socket.address().port}\n`);
  });
  const stop = (): void => {
    socket.close();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
} else {
  const table = new MachineTable();
  for (let n = 1; n <= 100; n++) {
    const name = `c${String(n).padStart(4, '0')}`;
    table.upsert(machineRecord({ name, addresses: [`192.0.2.${n}`, `fd42::${n.toString(16)}`] }));
  }
  const server = new DnsServer({ view: table, logger: createLogger('warn'), listen: [`127.0.0.1:${port}`] });
  const listeners = await server.start();
  process.stdout.write(`stub ${listeners[0]?.port ?? 0}\n`);
  const stop = (): void => {
    void server.close();
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}
