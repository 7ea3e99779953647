/**
 * A stub under test on loopback, port 0, over a MachineTable; closed by the test's teardown.
 */
import type { ExecutionContext } from 'ava';
import { memoryLogger } from '../../src/log.js';
import { MachineTable } from '../../src/registry-client/registry.js';
import { DnsServer, type BoundListener, type DnsServerOptions } from '../../src/resolver/index.js';
import { machineRecord, type RecordSpec } from './records.js';

export interface RunningStub {
  server: DnsServer;
  table: MachineTable;
  logger: ReturnType<typeof memoryLogger>;
  /** The IPv4 port (UDP and TCP share it) and the IPv6 one. */
  port: number;
  port6: number;
  listeners: readonly BoundListener[];
}

export type StubOptions = Partial<Omit<DnsServerOptions, 'view' | 'logger'>>;

export async function startStub(
  t: ExecutionContext,
  machines: RecordSpec[],
  options: StubOptions = {},
): Promise<RunningStub> {
  const table = new MachineTable();
  for (const spec of machines) table.upsert(machineRecord(spec));
  const logger = memoryLogger('debug');
  const server = new DnsServer({ view: table, logger, listen: ['127.0.0.1:0', '[::1]:0'], ...options });
  t.teardown(() => server.close());
  const listeners = await server.start();
  const port = listeners.find((l) => l.family === 4)?.port ?? 0;
  const port6 = listeners.find((l) => l.family === 6)?.port ?? 0;
  return { server, table, logger, port, port6, listeners };
}
