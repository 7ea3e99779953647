/**
 * The synthetic HostReader of bench:scale (BENCH ONLY): leaders at or above SYNTHETIC_LEADER_BASE
 * (above any pid_max, so never a real process) stand for containers with a user namespace. Machine
 * i = leader - base gets uid_map and gid_map `0 (i+2)*65536 65536` and its own user namespace, each
 * given after the same /proc read for the daemon's own pid (stat, uid_map, gid_map, ns/user, the
 * network namespace digest's ns/net, net/if_inet6 and net/fib_trie), whose
 * content is discarded, so that the cost of the real reads stays. Accounts are real files:
 * /proc/PID/root does not exist for a synthetic leader, so the machine's registered RootDirectory,
 * where bench:scale writes an etc/passwd and etc/group per machine (`writeMachineRoots`), is read as
 * its leader's root would be (until 2026-11-22 the failed /proc read and its warnings came first). Anything else is the real procHost.
 */
import { mkdir, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AccountFileCache, procHost, type HostReader } from '../../src/registry-client/host.js';
import type { IdRange } from '../../src/registry-client/view.js';

export const SYNTHETIC_LEADER_BASE = 5_000_000;
const SHIFT = 65536;

/** The uid_map/gid_map a synthetic leader gets: machine i owns host ids (i+2)·65536 … +65535. */
export function syntheticRange(leader: number): IdRange {
  return { inner: 0, outer: (leader - SYNTHETIC_LEADER_BASE + 2) * SHIFT, count: SHIFT };
}

const synthetic = (pid: number): boolean => pid >= SYNTHETIC_LEADER_BASE;
const leaderRoots = new AccountFileCache();

export const syntheticHost: HostReader = {
  async readIdMap(pid, which) {
    const real = await procHost.readIdMap(synthetic(pid) ? process.pid : pid, which);
    return synthetic(pid) ? { kind: 'ok', ranges: [syntheticRange(pid)] } : real;
  },
  userNamespace(pid) {
    const real = procHost.userNamespace?.(synthetic(pid) ? process.pid : pid);
    return synthetic(pid) ? `user:[synthetic-${pid}]` : real;
  },
  exists(pid) {
    const real = procHost.exists?.(synthetic(pid) ? process.pid : pid);
    return synthetic(pid) ? true : real;
  },
  networkState(pid) {
    const real = procHost.networkState?.(synthetic(pid) ? process.pid : pid);
    return synthetic(pid) && real !== undefined ? `${real}-synthetic-${pid}` : real;
  },
  async startTime(pid) {
    const real = await procHost.startTime(synthetic(pid) ? process.pid : pid);
    return synthetic(pid) ? 1 : real;
  },
  // A real leader's /proc/PID/root is the container's root: the files are read there at once (one
  // hardened, cached read). A synthetic leader has no /proc entry, so its registered root directory
  // stands in for that path; going through procHost would first fail on /proc/PID/root and warn
  // twice per machine (20,000 warnings at 10,000 machines), which a real daemon with
  // CAP_SYS_PTRACE never does.
  async readAccounts(pid, rootDirectory, which) {
    if (!synthetic(pid)) return procHost.readAccounts(pid, rootDirectory, which);
    const read = await leaderRoots.read(rootDirectory, which);
    return read.kind === 'ok'
      ? { kind: 'ok', accounts: read.accounts, source: 'leader-root', leaderRootProblem: undefined }
      : read;
  },
  links: () => procHost.links(),
  neighbours: (ifindexes) => procHost.neighbours(ifindexes),
};

/** Writes ROOT/NAME/etc/passwd and etc/group (root 0, bench 1000) for each machine name. */
export async function writeMachineRoots(root: string, names: readonly string[]): Promise<void> {
  for (const name of names) {
    const etc = join(root, name, 'etc');
    await mkdir(etc, { recursive: true });
    await writeFile(
      join(etc, 'passwd'),
      'root:x:0:0:root:/root:/bin/sh\nbench:x:1000:1000::/home/bench:/bin/sh\n',
    );
    await writeFile(join(etc, 'group'), 'root:x:0:\nbench:x:1000:\n');
  }
}
