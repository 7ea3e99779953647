/**
 * Machine leaders for tests that register machines with FakeMachined (TEST DOUBLE) rather than the
 * real machined: a process in a user namespace of its own with a written uid_map/gid_map, so that
 * the daemon finds the maps under /proc/PID like for a real container. Stopped by the World.
 */
import { once } from 'node:events';
import { writeFile } from 'node:fs/promises';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';
import type { ChildProcess } from 'node:child_process';
import type { World } from './world.js';

const LEADER_PY = fileURLToPath(new URL('../../../test/support/leader.py', import.meta.url));

export interface Leader {
  readonly pid: number;
  readonly child: ChildProcess;
}

/**
 * A leader in a new user namespace whose uid_map and gid_map are `idMap` (e.g. `0 300000 65536`);
 * with `root`, that directory is its root (/proc/PID/root), as a container's tree would be.
 */
export async function startUsernsLeader(
  world: World,
  idMap: string,
  opts: { root?: string } = {},
): Promise<Leader> {
  const args = [LEADER_PY, '--user', '--become-root', ...(opts.root ? [`--root=${opts.root}`] : [])];
  const child = await world.spawn('/usr/bin/python3', args, { stdin: 'pipe' });
  const pid = child.pid;
  if (pid === undefined || !child.stdout || !child.stdin) throw new Error('leader did not start');
  const lines = createInterface({ input: child.stdout });
  const [first] = (await Promise.race([once(lines, 'line'), once(child, 'exit')])) as [unknown];
  lines.close();
  if (first !== 'unshared') throw new Error(`leader failed: ${String(first)}`);
  await writeFile(`/proc/${pid}/uid_map`, `${idMap}\n`);
  await writeFile(`/proc/${pid}/gid_map`, `${idMap}\n`);
  child.stdin.write('go\n');
  return { pid, child };
}
