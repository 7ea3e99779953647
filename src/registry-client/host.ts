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
import { createHash } from 'node:crypto';
import { closeSync, constants, openSync, readlinkSync, readSync, type Stats } from 'node:fs';
import { lstat, open } from 'node:fs/promises';
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
  /**
   * Identity of the process's user namespace (`/proc/<pid>/ns/user`: `user:[INODE]`), undefined when
   * unreadable. A namespace's uid_map and gid_map can be written only once: while the identity
   * stays, maps read before (non-empty) still hold. Without this, maps are read every time.
   */
  userNamespace?(pid: number): string | undefined;
  /**
   * Whether a process exists (signal 0: one syscall, no parsing), or undefined when that cannot be
   * told. Cheaper than startTime, but blind to a pid reused by another process: the leader check
   * uses it between full checks. Without it, every check reads the start time.
   */
  exists?(pid: number): boolean | undefined;
  /**
   * A digest of what machined's GetMachineAddresses reads for a container, taken without machined:
   * the identity of the leader's network namespace (`/proc/<pid>/ns/net`), its IPv6 addresses with
   * their flags (`/proc/<pid>/net/if_inet6`) and its routing tables (`/proc/<pid>/net/fib_trie`),
   * whose LOCAL entries are its IPv4 addresses, on links up or down. A different digest: something
   * changed, ask machined. The same digest: nothing machined would answer differently, as far as
   * these files tell (the refresh still asks machined in each container's turn). undefined when a part cannot
   * be read or is too large; without this, machined is asked every time.
   */
  networkState?(pid: number): string | undefined;
  /** Accounts in the container's passwd or group file, and where they came from. */
  readAccounts(pid: number, rootDirectory: string, which: 'passwd' | 'group'): Promise<AccountsRead>;
  /** ifindex → name for every link in the daemon's network namespace. */
  links(): Promise<ReadonlyMap<number, string>>;
  /** Usable neighbour entries on the given links. */
  neighbours(ifindexes: ReadonlySet<number>): Promise<Neighbour[]>;
}

/** Files larger than this inside a container are not read (a hostile container cannot make us OOM). */
const ACCOUNT_FILE_MAX = 4 * 1024 * 1024;

/**
 * Room for any /proc file read here: a uid_map has at most 340 lines of 33 bytes (user_namespaces(7)),
 * a stat line is well under 1 KiB.
 */
const PROC_FILE_MAX = 64 * 1024;
const procScratch = Buffer.allocUnsafe(PROC_FILE_MAX);

/**
 * Reads a file the kernel generates on read (/proc/PID/stat, uid_map, gid_map) synchronously into
 * one reused buffer. Such files never wait for storage, so the event loop is not held up; the
 * thread pool instead cost four round trips per file and a fresh 64 KiB buffer (they report size
 * 0), which at 10,000 machines was most of the registry's CPU and memory churn (BENCHMARKS.md,
 * bench:scale). Files inside a container (readAccounts) stay asynchronous: they may sit on any
 * filesystem, FUSE or NFS included.
 */
export function readProcFile(
  path: string,
): { readonly ok: true; readonly text: string } | { readonly ok: false; readonly reason: string } {
  const read = readProcBytes(path);
  return typeof read === 'number'
    ? { ok: true, text: procScratch.toString('utf8', 0, read) }
    : { ok: false, reason: read };
}

/**
 * Reads a /proc file into `procScratch`: how many bytes it has, or why it could not be read ('too
 * large' beyond PROC_FILE_MAX). The bytes stay valid until the next read.
 */
function readProcBytes(path: string): number | string {
  let fd: number;
  try {
    fd = openSync(path, 'r');
  } catch (err) {
    return errorCode(err);
  }
  try {
    let end = 0;
    for (;;) {
      const n = readSync(fd, procScratch, end, PROC_FILE_MAX - end, null);
      if (n === 0) return end;
      end += n;
      if (end === PROC_FILE_MAX) return 'too large';
    }
  } catch (err) {
    return errorCode(err); // e.g. ESRCH: the process exited after the open
  } finally {
    closeSync(fd);
  }
}

/**
 * Field 22 of a /proc/PID/stat line, the start time in clock ticks since boot, or undefined. `comm`
 * (field 2) may hold spaces and parentheses, so fields are counted from the last ')'. Scanned in
 * place: splitting the line made about 50 strings per read (14 MB of the first sync's allocations at
 * 10,000 machines, where the leader check's full checks then read 1,000 start times a second).
 */
export function statStartTime(line: string): number | undefined {
  const close = line.lastIndexOf(')');
  if (close < 0) return undefined;
  let from = close + 2; // field 3, after ") "
  for (let field = 3; field < 22; field++) {
    const space = line.indexOf(' ', from);
    if (space < 0) return undefined;
    from = space + 1;
  }
  let end = from;
  while (end < line.length && line.charCodeAt(end) >= 0x30 && line.charCodeAt(end) <= 0x39) end++;
  // Digits, ended by the next field, the line's newline or its end.
  if (end === from || (end < line.length && line[end] !== ' ' && line[end] !== '\n')) return undefined;
  return Number(line.slice(from, end));
}

/** What networkState hashes after the namespace, each file after its separator. */
const NET_STATE_FILES = ['if_inet6', 'fib_trie'].map((name) => ({
  name,
  separator: Buffer.from(`\0${name}\0`),
}));

export const procHost: HostReader = {
  exists(pid) {
    try {
      process.kill(pid, 0);
      return true;
    } catch (err) {
      const code = errorCode(err);
      return code === 'ESRCH' ? false : code === 'EPERM' ? true : undefined;
    }
  },

  userNamespace(pid) {
    try {
      return readlinkSync(`/proc/${pid}/ns/user`);
    } catch {
      return undefined;
    }
  },

  networkState(pid) {
    let namespace: string;
    try {
      namespace = readlinkSync(`/proc/${pid}/ns/net`);
    } catch {
      return undefined;
    }
    const digest = createHash('sha256').update(namespace);
    for (const file of NET_STATE_FILES) {
      const end = readProcBytes(`/proc/${pid}/net/${file.name}`);
      if (typeof end !== 'number') return undefined;
      // The bytes as read: decoding them to text first cost a string per file and machine.
      digest.update(file.separator).update(procScratch.subarray(0, end));
    }
    return digest.digest('base64');
  },

  readIdMap(pid, which) {
    const file = readProcFile(`/proc/${pid}/${which}_map`);
    if (!file.ok) return Promise.resolve({ kind: 'unreadable', reason: file.reason });
    const parsed = parseIdMap(file.text);
    return Promise.resolve(
      parsed.ok
        ? { kind: 'ok', ranges: parsed.ranges }
        : { kind: 'unreadable', reason: `malformed line ${parsed.line}` },
    );
  },

  startTime(pid) {
    const file = readProcFile(`/proc/${pid}/stat`);
    return Promise.resolve(file.ok ? statStartTime(file.text) : undefined);
  },

  async readAccounts(pid, rootDirectory, which) {
    // The leader's view of its root first (what the container really sees), then the registered
    // root directory: /proc/PID/root needs ptrace access to the leader (CAP_SYS_PTRACE, or root).
    const fromLeader = await accountFiles.read(`/proc/${pid}/root`, which);
    if (fromLeader.kind === 'unreadable' && (fromLeader.reason === 'EACCES' || fromLeader.reason === 'EPERM'))
      fromLeader.reason += ": reading another process's root needs CAP_SYS_PTRACE";
    if (fromLeader.kind === 'ok')
      return {
        kind: 'ok',
        accounts: fromLeader.accounts,
        source: 'leader-root',
        leaderRootProblem: undefined,
      };
    if (!rootDirectory.startsWith('/'))
      return {
        kind: 'unreadable',
        reason: `/proc/${pid}/root: ${fromLeader.reason}; no root directory registered`,
      };
    const fromRoot = await accountFiles.read(rootDirectory.replace(/\/+$/, ''), which);
    if (fromRoot.kind === 'ok')
      return {
        kind: 'ok',
        accounts: fromRoot.accounts,
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

/** What one container file gave: its accounts, or why it could not be read. */
type ContainerFileRead =
  | { readonly kind: 'ok'; readonly accounts: InnerAccount[] }
  | { readonly kind: 'unreadable'; reason: string };

/**
 * Reads `<root>/etc/<which>` of a container with care: its tree belongs to the container, whose root
 * may have put anything there. `etc` must be a real directory and the file a regular file of at most
 * ACCOUNT_FILE_MAX bytes, opened without following a symlink (an absolute link would be resolved in
 * OUR root — through /proc/PID/root too — and read a host file, or open a device) and without
 * blocking (opening a FIFO for reading waits for a writer for ever, and would hold one of libuv's
 * four threadpool threads, which every file read of the daemon shares).
 *
 * A file read before whose signature (lstat: the link itself, never its target) is unchanged is not
 * read again: an unchanged file costs two `lstat`s instead of open, stat, read and close, which for
 * every container on every refresh round was most of the registry's idle CPU at 10,000 machines
 * (BENCHMARKS.md, bench:scale). A changed or replaced file (another inode: a new container behind a
 * reused PID, or a symlink put in its place) is read again, with every check above. Bounded like the
 * stub's answer cache: cleared when full.
 */
export class AccountFileCache {
  private readonly entries = new Map<
    string,
    { readonly signature: FileSignature; readonly accounts: InnerAccount[] }
  >();

  constructor(private readonly limit = 65_536) {}

  async read(root: string, which: 'passwd' | 'group'): Promise<ContainerFileRead> {
    const path = `${root}/etc/${which}`;
    const known = this.entries.get(path);
    if (known !== undefined) {
      const [etc, file] = await Promise.all([
        lstat(`${root}/etc`).catch(() => undefined),
        lstat(path).catch(() => undefined),
      ]);
      if (etc?.isDirectory() && file?.isFile() && sameSignature(known.signature, file))
        return { kind: 'ok', accounts: known.accounts };
      this.entries.delete(path);
    }
    let handle;
    try {
      const etc = await lstat(`${root}/etc`);
      if (!etc.isDirectory()) return { kind: 'unreadable', reason: 'etc is not a directory' };
      handle = await open(
        path,
        constants.O_RDONLY | constants.O_NOFOLLOW | constants.O_NONBLOCK | constants.O_NOCTTY,
      );
      const st = await handle.stat();
      if (!st.isFile()) return { kind: 'unreadable', reason: `etc/${which} is not a regular file` };
      if (st.size > ACCOUNT_FILE_MAX) return { kind: 'unreadable', reason: `etc/${which} is too large` };
      const text = await handle.readFile('utf8');
      if (text.length > ACCOUNT_FILE_MAX) return { kind: 'unreadable', reason: `etc/${which} is too large` };
      const accounts = parseAccounts(text);
      if (this.entries.size >= this.limit) this.entries.clear();
      this.entries.set(path, { signature: fileSignature(st), accounts });
      return { kind: 'ok', accounts };
    } catch (err) {
      // ELOOP: the file is a symlink (O_NOFOLLOW)
      return { kind: 'unreadable', reason: errorCode(err) };
    } finally {
      await handle?.close();
    }
  }
}

const accountFiles = new AccountFileCache();

/**
 * What changes whenever a file's content may have: ctime cannot be set from user space. Numbers, not
 * a string: 20,000 signatures built as template strings held about 17 MB at 10,000 containers
 * (12 MB of concatenated strings and the number strings in them; a heap snapshot, BENCHMARKS.md).
 */
interface FileSignature {
  readonly dev: number;
  readonly ino: number;
  readonly size: number;
  readonly mtimeMs: number;
  readonly ctimeMs: number;
}

function fileSignature(st: Stats): FileSignature {
  return { dev: st.dev, ino: st.ino, size: st.size, mtimeMs: st.mtimeMs, ctimeMs: st.ctimeMs };
}

function sameSignature(a: FileSignature, st: Stats): boolean {
  return (
    a.dev === st.dev &&
    a.ino === st.ino &&
    a.size === st.size &&
    a.mtimeMs === st.mtimeMs &&
    a.ctimeMs === st.ctimeMs
  );
}

function errorCode(err: unknown): string {
  if (err instanceof Error && 'code' in err && typeof err.code === 'string') return err.code;
  return err instanceof Error ? err.message : String(err);
}
