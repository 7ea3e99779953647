/**
 * A stub in a process of its own, for tests that need one: inherited sockets (socket activation) and
 * glibc's getaddrinfo inside private namespaces.
 *
 *   node dist/test/support/stub-child.js '{"machines":[…],"options":{…},"probes":[["getent","ahosts","x"]]}'
 *
 * Starts the server and prints one JSON line `{"listeners":[…]}`. With `probes`, it then runs each
 * command (inside whatever namespaces it was started in), prints `{"probes":[{code,stdout}…]}`,
 * closes and exits; without, it serves until SIGTERM, then closes and exits 0.
 */
import { execFile } from 'node:child_process';
import { z } from 'zod';
import { createLogger } from '../../src/log.js';
import { MachineTable } from '../../src/registry-client/registry.js';
import { DnsServer } from '../../src/resolver/index.js';
import { machineRecord } from './records.js';

const Config = z.object({
  machines: z.array(z.object({ name: z.string(), addresses: z.array(z.string()).optional() })),
  options: z.object({
    listen: z.array(z.string()).optional(),
    inherited: z
      .array(
        z.object({
          fd: z.number().int(),
          kind: z.enum(['udp', 'tcp']),
          family: z.union([z.literal(4), z.literal(6)]),
        }),
      )
      .optional(),
    allowNets: z.array(z.string()).optional(),
  }),
  probes: z.array(z.array(z.string()).min(1)).optional(),
});

function run(command: string[]): Promise<{ code: number; stdout: string }> {
  const [file = '', ...args] = command;
  return new Promise((resolve) => {
    execFile(file, args, { timeout: 20_000 }, (error, stdout) => {
      resolve({ code: error ? (typeof error.code === 'number' ? error.code : -1) : 0, stdout });
    });
  });
}

async function main(): Promise<void> {
  const config = Config.parse(JSON.parse(process.argv[2] ?? '{}'));
  const table = new MachineTable();
  for (const m of config.machines)
    table.upsert(machineRecord({ name: m.name, addresses: m.addresses ?? [] }));
  const { listen, inherited, allowNets } = config.options;
  const server = new DnsServer({
    view: table,
    logger: createLogger('warn'),
    ...(listen ? { listen } : {}),
    ...(inherited ? { inherited } : {}),
    ...(allowNets ? { allowNets } : {}),
  });
  const listeners = await server.start();
  process.stdout.write(`${JSON.stringify({ listeners })}\n`);
  if (config.probes) {
    const results = [];
    for (const probe of config.probes) results.push(await run(probe));
    process.stdout.write(`${JSON.stringify({ probes: results })}\n`);
    await server.close();
    return;
  }
  process.once('SIGTERM', () => {
    void server.close().then(() => process.exit(0));
  });
}

main().catch((error: unknown) => {
  process.stderr.write(`${String(error)}\n`);
  process.exit(1);
});
