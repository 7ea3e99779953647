/**
 * What the registry reads from the host itself rather than from machined: a leader's uid/gid maps
 * and start time (/proc), the accounts inside a container (its /etc/passwd and /etc/group through
 * /proc/<leader>/root), link names, and neighbour entries (VM addresses). Behind an interface so
 * tests can inject faults (unreadable maps, stalls) and benchmarks synthetic data.
 *
 * Privileges: /proc/PID/uid_map, gid_map and stat are readable by anyone; /proc/PID/root is not
 * (ptrace access: CAP_SYS_PTRACE or the same user). Without it, accounts come from the registered
 * root directory if there is one and it is readable, else only inner id 0 is enumerated.
 */
import { execFile } from 'node:child_process';
import { constants } from 'node:fs';
import { lstat, open, readFile } from 'node:fs/promises';
import { z } from 'zod';
import { isLinkLocal, parseAddress } from './address.js';
import { isValidUnixId, parseIdMap } from './idmap.js';
import type { IdRange, InnerAccount } from './view.js';

export type MapRead =
  | { readonly kind: 'ok'; readonly ranges: readonly IdRange[] }
  /** The file could not be read (leader gone, no permission) or was malformed. */
  | { readonly kind: 'unreadable'; readonly reason: string };

/** Where a container's accounts came from, or why they could not be read. */
export type AccountsRead =
  | {
      readonly kind: 'ok';
      readonly accounts: InnerAccount[];
      /** `leader-root`: /proc/PID/root (what the container sees); `root-directory`: the registered root. */
      readonly source: 'leader-root' | 'root-directory';
      /** Why /proc/PID/root could not be used, when the registered root directory stood in. */
      readonly leaderRootProblem: string | undefined;
    }
  | { readonly kind: 'unreadable'; readonly reason: string };

export interface Neighbour {
  readonly ifindex: number;
  readonly address: Buffer;
}

export interface HostReader {
  /** `/proc/<pid>/uid_map` or `gid_map`. */
  readIdMap(pid: number, which: 'uid' | 'gid'): Promise<MapRead>;
  /** Start time of a process (clock ticks since boot), undefined when it does not exist. */
  startTime(pid: number): Promise<number | undefined>;
  /** Accounts in the container's passwd or group file, and where they came from. */
  readAccounts(pid: number, rootDirectory: string, which: 'passwd' | 'group'): Promise<AccountsRead>;
  /** ifindex → name for every link in the daemon's network namespace. */
  links(): Promise<ReadonlyMap<number, string>>;
  /** Usable neighbour entries on the given links. */
  neighbours(ifindexes: ReadonlySet<number>): Promise<Neighbour[]>;
}

/** Files larger than this inside a container are not read (a hostile container cannot make us OOM). */
const ACCOUNT_FILE_MAX = 4 * 1024 * 1024;

export const procHost: HostReader = {
  async readIdMap(pid, which) {
    try {
      const parsed = parseIdMap(await readFile(`/proc/${pid}/${which}_map`, 'utf8'));
      return parsed.ok
        ? { kind: 'ok', ranges: parsed.ranges }
        : { kind: 'unreadable', reason: `malformed line ${parsed.line}` };
    } catch (err) {
      return { kind: 'unreadable', reason: errorCode(err) };
    }
  },

  async startTime(pid) {
    const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
    if (stat === undefined) return undefined;
    // comm may contain spaces and parentheses: fields start after the last ')'
    const value = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[19]);
    return Number.isFinite(value) ? value : undefined;
  },

  async readAccounts(pid, rootDirectory, which) {
    // The leader's view of its root first (what the container really sees), then the registered
    // root directory: /proc/PID/root needs ptrace access to the leader (CAP_SYS_PTRACE, or root).
    const fromLeader = await readContainerFile(`/proc/${pid}/root`, which);
    if (fromLeader.kind === 'unreadable' && (fromLeader.reason === 'EACCES' || fromLeader.reason === 'EPERM'))
      fromLeader.reason += ": reading another process's root needs CAP_SYS_PTRACE";
    if (fromLeader.kind === 'ok')
      return {
        kind: 'ok',
        accounts: parseAccounts(fromLeader.text),
        source: 'leader-root',
        leaderRootProblem: undefined,
      };
    if (!rootDirectory.startsWith('/'))
      return {
        kind: 'unreadable',
        reason: `/proc/${pid}/root: ${fromLeader.reason}; no root directory registered`,
      };
    const fromRoot = await readContainerFile(rootDirectory.replace(/\/+$/, ''), which);
    if (fromRoot.kind === 'ok')
      return {
        kind: 'ok',
        accounts: parseAccounts(fromRoot.text),
        source: 'root-directory',
        leaderRootProblem: fromLeader.reason,
      };
    return {
      kind: 'unreadable',
      reason: `/proc/${pid}/root: ${fromLeader.reason}; ${rootDirectory}: ${fromRoot.reason}`,
    };
  },

  async links() {
    const out = await runJson(['-j', 'link', 'show'], linkList);
    return new Map((out ?? []).map((l) => [l.ifindex, l.ifname]));
  },

  async neighbours(ifindexes) {
    if (ifindexes.size === 0) return [];
    const links = await this.links();
    const byName = new Map([...links].filter(([i]) => ifindexes.has(i)).map(([i, n]) => [n, i]));
    const out = await runJson(['-j', 'neigh', 'show'], neighbourList);
    const result: Neighbour[] = [];
    for (const n of out ?? []) {
      const ifindex = byName.get(n.dev);
      if (ifindex === undefined || !n.lladdr) continue;
      // FAILED/INCOMPLETE entries are addresses nobody answered for; NOARP ones are not machines.
      if ((n.state ?? []).some((s) => s === 'FAILED' || s === 'INCOMPLETE' || s === 'NOARP')) continue;
      const address = parseAddress(n.dst);
      if (!address || isMulticast(address)) continue;
      result.push({ ifindex, address });
    }
    return result;
  },
};

/** passwd/group lines `name:x:id:…`; entries with invalid names or ids are skipped. */
export function parseAccounts(text: string): InnerAccount[] {
  const accounts: InnerAccount[] = [];
  const seen = new Set<number>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#') || line.startsWith('+') || line.startsWith('-')) continue;
    const [name, , idText] = line.split(':');
    if (!name || idText === undefined || !/^(0|[1-9]\d{0,9})$/.test(idText)) continue;
    const id = Number(idText);
    if (!isValidUnixId(id) || seen.has(id)) continue;
    seen.add(id);
    accounts.push({ name, id });
  }
  return accounts;
}

/**
 * Sorts addresses the way machined does for containers (reference §5.2): IPv4 first, then by scope
 * (global before link), then ifindex, then bytes. Neighbour entries carry no metric.
 */
export function sortLikeMachined<T extends { readonly bytes: Buffer; readonly scope: number }>(
  list: T[],
): T[] {
  return list.sort(
    (a, b) =>
      a.bytes.length - b.bytes.length ||
      Number(isLinkLocal(a.bytes)) - Number(isLinkLocal(b.bytes)) ||
      a.scope - b.scope ||
      Buffer.compare(a.bytes, b.bytes),
  );
}

function isMulticast(address: Buffer): boolean {
  return address.length === 4 ? (address[0] ?? 0) >= 224 : address[0] === 0xff;
}

const linkList = z.array(z.object({ ifindex: z.number().int(), ifname: z.string() }).loose());
const neighbourList = z.array(
  z
    .object({
      dst: z.string(),
      dev: z.string(),
      lladdr: z.string().optional(),
      state: z.array(z.string()).optional(),
    })
    .loose(),
);

function runJson<T extends z.ZodType>(args: readonly string[], schema: T): Promise<z.infer<T> | undefined> {
  return new Promise((resolve) => {
    execFile('ip', args, { timeout: 5_000, maxBuffer: 16 * 1024 * 1024 }, (err, stdout) => {
      if (err) {
        resolve(undefined);
        return;
      }
      try {
        const parsed = schema.safeParse(JSON.parse(stdout === '' ? '[]' : stdout));
        resolve(parsed.success ? parsed.data : undefined);
      } catch {
        resolve(undefined); // not JSON: an `ip` too old for -j; treated like no data
      }
    });
  });
}

/**
 * `<root>/etc/<which>` of a container, read with care: its tree belongs to the container, whose root
 * may have put anything there. `etc` must be a real directory and the file a regular file of at most
 * ACCOUNT_FILE_MAX bytes, opened without following a symlink (an absolute link would be resolved in
 * OUR root — through /proc/PID/root too — and read a host file, or open a device) and without
 * blocking (opening a FIFO for reading waits for a writer for ever, and would hold one of libuv's
 * four threadpool threads, which every file read of the daemon shares).
 */
async function readContainerFile(
  root: string,
  which: 'passwd' | 'group',
): Promise<{ readonly kind: 'ok'; readonly text: string } | { readonly kind: 'unreadable'; reason: string }> {
  let handle;
  try {
    const etc = await lstat(`${root}/etc`);
    if (!etc.isDirectory()) return { kind: 'unreadable', reason: 'etc is not a directory' };
    handle = await open(
      `${root}/etc/${which}`,
      constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
    );
    const st = await handle.stat();
    if (!st.isFile()) return { kind: 'unreadable', reason: `etc/${which} is not a regular file` };
    if (st.size > ACCOUNT_FILE_MAX) return { kind: 'unreadable', reason: `etc/${which} is too large` };
    const text = await handle.readFile('utf8');
    return text.length > ACCOUNT_FILE_MAX
      ? { kind: 'unreadable', reason: `etc/${which} is too large` }
      : { kind: 'ok', text };
  } catch (err) {
    // ELOOP: the file is a symlink (O_NOFOLLOW)
    return { kind: 'unreadable', reason: errorCode(err) };
  } finally {
    await handle?.close();
  }
}

function errorCode(err: unknown): string {
  if (err instanceof Error && 'code' in err && typeof err.code === 'string') return err.code;
  return err instanceof Error ? err.message : String(err);
}
