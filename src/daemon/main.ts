/**
 * The `mymachinesd` command: `serve`, and the clients `list`, `resolve`, `user`, `group`.
 * Exit status: 0 success, 1 failure (unknown name, daemon not running, listener cannot bind),
 * 2 bad flags (one line on stderr).
 */
import { basename } from 'node:path';
import { VarlinkClient, VarlinkClientError, type ReceivedReply } from '../varlink/client.js';
import {
  parseArgs,
  UsageError,
  USAGE,
  type AccountConfig,
  type ListConfig,
  type ResolveConfig,
} from './config.js';
import { CONTROL_INTERFACE } from './control-service.js';
import { z } from 'zod';
import { controlMachineSchema, renderList, renderResolve } from './control.js';
import { serve, VERSION } from './serve.js';

const out = (text: string): void => void process.stdout.write(text);
const fail = (message: string): number => {
  process.stderr.write(`mymachinesd: ${message}\n`);
  return 1;
};

async function main(argv: readonly string[]): Promise<number> {
  let config;
  try {
    config = parseArgs(argv);
  } catch (err) {
    if (!(err instanceof UsageError)) throw err;
    process.stderr.write(`mymachinesd: ${err.message}\n`);
    return 2;
  }
  switch (config.command) {
    case 'help':
      out(USAGE);
      return 0;
    case 'version':
      out(`mymachinesd ${VERSION}\n`);
      return 0;
    case 'serve':
      return serve(config);
    case 'list':
      return list(config);
    case 'resolve':
      return resolve(config);
    case 'user':
    case 'group':
      return account(config);
  }
}

/** One call on a fresh connection; a daemon that is not there is a clear one-line failure. */
async function callOnce(
  path: string,
  what: string,
  method: string,
  params: Record<string, unknown>,
): Promise<ReceivedReply> {
  const [reply] = await callAll(path, what, method, params, false);
  if (!reply) throw new CliFailure(`${what}: no reply`);
  return reply;
}

/** Every reply of one call (several with `more`). */
async function callAll(
  path: string,
  what: string,
  method: string,
  params: Record<string, unknown>,
  more: boolean,
): Promise<readonly ReceivedReply[]> {
  let client: VarlinkClient;
  try {
    client = await VarlinkClient.connect(path, { timeoutMs: 5_000 });
  } catch (err) {
    const reason = err instanceof Error ? err.message : String(err);
    throw new CliFailure(`cannot reach ${what} at ${path} — is mymachinesd running? (${reason})`);
  }
  try {
    return await client.call(method, params, { timeoutMs: 10_000, more });
  } catch (err) {
    if (err instanceof VarlinkClientError) throw new CliFailure(`${what}: ${err.message}`);
    throw err;
  } finally {
    client.close();
  }
}

class CliFailure extends Error {}

const listReply = z.object({ machines: z.array(controlMachineSchema), status: z.unknown().optional() });
const resolveReply = z.object({ machine: controlMachineSchema });
const ambiguousReply = z.object({ candidates: z.array(z.string()) }).loose();
/** The fields of a user or group record that the CLI prints (reference §2.4, §2.5). */
const recordReply = z.object({
  record: z
    .object({
      userName: z.string().optional(),
      groupName: z.string().optional(),
      uid: z.number().optional(),
      gid: z.number().optional(),
      realName: z.string().optional(),
      description: z.string().optional(),
      homeDirectory: z.string().optional(),
      shell: z.string().optional(),
    })
    .loose(),
});

/**
 * Asks with `more`: the daemon sends the machines in slices (no reply near the 16 MiB a Varlink
 * message may have), the status with the last; put together here into what one reply would be.
 */
async function list(config: ListConfig): Promise<number> {
  const replies = await callAll(config.control, 'the control socket', `${CONTROL_INTERFACE}.List`, {}, true);
  const machines: z.infer<typeof controlMachineSchema>[] = [];
  let status: unknown;
  for (const reply of replies) {
    if (reply.error) return fail(`list: ${reply.error}`);
    const parsed = listReply.safeParse(reply.parameters);
    if (!parsed.success) return fail('list: the daemon sent a reply of another shape (version mismatch?)');
    machines.push(...parsed.data.machines);
    status = parsed.data.status ?? status;
  }
  if (config.json) out(`${JSON.stringify({ machines, status }, null, 2)}\n`);
  else out(renderList(machines));
  return 0;
}

async function resolve(config: ResolveConfig): Promise<number> {
  const reply = await callOnce(config.control, 'the control socket', `${CONTROL_INTERFACE}.Resolve`, {
    name: config.name,
  });
  if (reply.error === `${CONTROL_INTERFACE}.NoSuchMachine`) return fail(`no machine named "${config.name}"`);
  if (reply.error === `${CONTROL_INTERFACE}.AmbiguousName`) {
    const candidates = ambiguousReply.safeParse(reply.parameters).data?.candidates ?? [];
    return fail(`"${config.name}" is ambiguous: ${candidates.join(', ')}`);
  }
  if (reply.error) return fail(`resolve: ${reply.error}`);
  const parsed = resolveReply.safeParse(reply.parameters);
  if (!parsed.success) return fail('resolve: the daemon sent a reply of another shape (version mismatch?)');
  const machine = parsed.data.machine;
  if (config.json) out(`${JSON.stringify(machine, null, 2)}\n`);
  else out(renderResolve(machine));
  return machine.addresses.length > 0 ? 0 : 1;
}

/** Looks a user or group up on a userdb socket, as nss-systemd would (service = the socket's name). */
async function account(config: AccountConfig): Promise<number> {
  const user = config.command === 'user';
  const method = `io.systemd.UserDatabase.${user ? 'GetUserRecord' : 'GetGroupRecord'}`;
  const key =
    typeof config.key === 'number'
      ? { [user ? 'uid' : 'gid']: config.key }
      : { [user ? 'userName' : 'groupName']: config.key };
  const reply = await callOnce(config.userdb, 'the userdb socket', method, {
    ...key,
    service: basename(config.userdb),
  });
  if (reply.error === 'io.systemd.UserDatabase.NoRecordFound')
    return fail(`no ${config.command} ${String(config.key)}`);
  if (reply.error)
    return fail(
      `${config.command} ${String(config.key)}: ${reply.error} ${JSON.stringify(reply.parameters ?? {})}`,
    );
  const parsed = recordReply.safeParse(reply.parameters);
  if (!parsed.success) return fail('malformed reply: no record');
  const r = parsed.data.record;
  if (config.json) {
    out(`${JSON.stringify(r, null, 2)}\n`);
    return 0;
  }
  type Printed =
    'userName' | 'groupName' | 'uid' | 'gid' | 'realName' | 'description' | 'homeDirectory' | 'shell';
  const field = (k: Printed): string => {
    const v = r[k];
    return v === undefined ? '' : String(v);
  };
  out(
    user
      ? `${field('userName')}:x:${field('uid')}:${field('gid')}:${field('realName')}:${field('homeDirectory')}:${field('shell')}\n`
      : `${field('groupName')}:x:${field('gid')}:${field('description')}\n`,
  );
  return 0;
}

main(process.argv.slice(2)).then(
  (code) => {
    process.exitCode = code;
  },
  (err: unknown) => {
    process.exitCode =
      err instanceof CliFailure
        ? fail(err.message)
        : fail(err instanceof Error ? (err.stack ?? err.message) : String(err));
  },
);
