/**
 * A "world" for integration tests: a private mount and network namespace with its own tmpfs on
 * /run and, optionally, bind-mounted /etc/nsswitch.conf, /etc/resolv.conf and /etc/hosts. Daemons
 * (dbus-daemon, the real systemd-machined, mymachinesd) and clients (getent, dig, userdbctl) run
 * inside it through nsenter, so nothing on the host changes: no file under the host's /run, no link
 * or address in the root network namespace, no host resolver configuration.
 *
 * Processes started in the world are recorded with their start time. `dispose()` stops them by PID;
 * if the test process dies instead, the holder sees its stdin close and stops them itself, and a
 * janitor in the host's mount namespace removes the world's directory once the holder (and with it
 * the namespaces) is gone.
 */
import { spawn, type ChildProcess } from 'node:child_process';
import { once } from 'node:events';
import { appendFile, chmod, mkdtemp, readFile, rm, rmdir, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

export interface WorldOptions {
  /** Contents for /etc/nsswitch.conf inside the world. */
  nsswitch?: string;
  /** Contents for /etc/resolv.conf inside the world. */
  resolvConf?: string;
  /** Contents for /etc/hosts inside the world. */
  hosts?: string;
  /** More files to replace inside the world: absolute path (must exist on the host) → contents. */
  files?: Record<string, string>;
  /** Directories to hide under an empty tmpfs inside the world (skipped if absent). */
  emptyDirs?: string[];
}

export interface ExecResult {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
}

export interface ExecOptions {
  env?: NodeJS.ProcessEnv;
  input?: string;
  timeoutMs?: number;
  /** Run only in the world's mount namespace, not its network namespace (rarely wanted). */
  mountOnly?: boolean;
}

// The holder keeps the namespaces alive. When its stdin reaches EOF (the test process ended, with or
// without dispose()), it kills every recorded process whose start time still matches, removes the
// recorded cgroups, and exits.
// The janitor runs in the test's own mount namespace, so that removing the world's directory never
// descends into a mount made inside the world (a bind of a host directory into a container root).
// When its stdin reaches EOF it waits until the holder (PID and start time) is gone, then removes it.
const JANITOR_SCRIPT = `
while read -r _line; do :; done
starttime() { s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=\${s##*) }; set -- $s; echo "\${20}"; }
while [ "$(starttime "$W_HOLDER")" = "$W_HOLDER_START" ]; do sleep 0.1; done
case "$W_DIR" in "$W_TMP"/mmd-world-*) rm -rf -- "$W_DIR" ;; esac
`;

const HOLDER_SCRIPT = `
set -e
mount -t tmpfs -o mode=0755 tmpfs /run
mkdir -p /run/dbus /run/systemd /run/netns
[ -z "$W_NSSWITCH" ] || mount --bind "$W_NSSWITCH" /etc/nsswitch.conf
[ -z "$W_RESOLV" ] || mount --bind "$W_RESOLV" /etc/resolv.conf
[ -z "$W_HOSTS" ] || mount --bind "$W_HOSTS" /etc/hosts
if [ -f "$W_DIR/binds" ]; then
  while read -r src dst; do mount --bind "$src" "$dst"; done < "$W_DIR/binds"
fi
for d in $W_EMPTY_DIRS; do [ -d "$d" ] && mount -t tmpfs -o mode=0755 tmpfs "$d"; done
ip link set lo up
set +e
echo ready
while read -r _line; do :; done
starttime() { s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1; s=\${s##*) }; set -- $s; echo "\${20}"; }
if [ -f "$W_DIR/pids" ]; then
  tac "$W_DIR/pids" | while read -r pid st; do
    [ "$(starttime "$pid")" = "$st" ] && kill -KILL "$pid" 2>/dev/null
  done
fi
if [ -f "$W_DIR/cgroups" ]; then
  for _i in 1 2 3 4 5 6 7 8 9 10; do
    left=0
    for cg in $(tac "$W_DIR/cgroups"); do [ -d "$cg" ] && { rmdir "$cg" 2>/dev/null || left=1; }; done
    [ "$left" = 0 ] && break
    sleep 0.1
  done
fi
exit 0
`;

export class World {
  private readonly started = new Map<number, ChildProcess>();
  private disposed = false;

  private constructor(
    readonly dir: string,
    private readonly holder: ChildProcess,
    readonly holderPid: number,
    private readonly janitor: ChildProcess,
  ) {}

  static async create(opts: WorldOptions = {}): Promise<World> {
    const dir = await mkdtemp(join(tmpdir(), 'mmd-world-'));
    await chmod(dir, 0o755); // leaders in user namespaces read their files from here
    const env: NodeJS.ProcessEnv = {
      ...process.env,
      W_DIR: dir,
      W_NSSWITCH: '',
      W_RESOLV: '',
      W_HOSTS: '',
      W_EMPTY_DIRS: (opts.emptyDirs ?? []).join(' '),
    };
    const binds: string[] = [];
    for (const [i, [target, content]] of Object.entries(opts.files ?? {}).entries()) {
      const src = join(dir, `file-${i}`);
      await writeFile(src, content, { mode: 0o644 });
      binds.push(`${src} ${target}\n`);
    }
    if (binds.length > 0) await writeFile(join(dir, 'binds'), binds.join(''));
    for (const [key, file, content] of [
      ['W_NSSWITCH', 'nsswitch.conf', opts.nsswitch],
      ['W_RESOLV', 'resolv.conf', opts.resolvConf],
      ['W_HOSTS', 'hosts', opts.hosts],
    ] as const) {
      if (content === undefined) continue;
      const path = join(dir, file);
      await writeFile(path, content, { mode: 0o644 });
      env[key] = path;
    }
    const holder = spawn(
      'unshare',
      ['--mount', '--net', '--propagation', 'private', 'sh', '-c', HOLDER_SCRIPT],
      {
        env,
        stdio: ['pipe', 'pipe', 'pipe'],
      },
    );
    const stderr: string[] = [];
    holder.stderr.on('data', (d: Buffer) => stderr.push(d.toString()));
    const lines = createInterface({ input: holder.stdout });
    const ready = new Promise<void>((resolve, reject) => {
      lines.once('line', (line) =>
        line === 'ready' ? resolve() : reject(new Error(`world holder said ${line}: ${stderr.join('')}`)),
      );
      holder.once('exit', (code) => reject(new Error(`world holder exited (${code}): ${stderr.join('')}`)));
    });
    try {
      await ready;
    } catch (err) {
      // The holder never got ready (a bind target missing, say): no janitor watches this World yet.
      // Once the holder is gone its mount namespace is gone too, so removing the directory from
      // here cannot reach into anything bound inside it.
      if (holder.exitCode === null && holder.signalCode === null) {
        const exited = once(holder, 'exit');
        holder.kill('SIGKILL');
        await exited;
      }
      await rm(dir, { recursive: true, force: true });
      throw new Error(`${err instanceof Error ? err.message : String(err)} (its directory ${dir} removed)`, {
        cause: err,
      });
    }
    if (holder.pid === undefined) throw new Error('world holder has no pid');
    const janitor = spawn('sh', ['-c', JANITOR_SCRIPT], {
      env: {
        PATH: process.env.PATH,
        W_DIR: dir,
        W_TMP: tmpdir(),
        W_HOLDER: String(holder.pid),
        W_HOLDER_START: String(await startTime(holder.pid)),
      },
      stdio: ['pipe', 'ignore', 'ignore'],
      detached: true, // not hit by a signal to the test's process group
    });
    janitor.stdin?.on('error', () => undefined);
    return new World(dir, holder, holder.pid, janitor);
  }

  /** A path inside the world's mount namespace, seen from the host (through /proc/PID/root). */
  hostPath(inner: string): string {
    return `/proc/${this.holderPid}/root${inner}`;
  }

  private nsenterArgs(cmd: string, args: readonly string[], mountOnly = false): string[] {
    return ['-t', String(this.holderPid), '-m', ...(mountOnly ? [] : ['-n']), '--', cmd, ...args];
  }

  /** Runs a command to completion inside the world. */
  async exec(cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<ExecResult> {
    const child = spawn('nsenter', this.nsenterArgs(cmd, args, opts.mountOnly), {
      env: opts.env ?? process.env,
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    const out: Buffer[] = [];
    const err: Buffer[] = [];
    child.stdout.on('data', (d: Buffer) => out.push(d));
    child.stderr.on('data', (d: Buffer) => err.push(d));
    // a command that exits without reading its input makes the write fail with EPIPE: not an error here
    child.stdin.on('error', () => undefined);
    child.stdin.end(opts.input ?? '');
    const timer = setTimeout(() => child.kill('SIGKILL'), opts.timeoutMs ?? 30_000);
    const [code, signal] = (await once(child, 'close')) as [number | null, NodeJS.Signals | null];
    clearTimeout(timer);
    return { code, signal, stdout: Buffer.concat(out).toString(), stderr: Buffer.concat(err).toString() };
  }

  /** Like exec, but throws unless the command exits 0. */
  async run(cmd: string, args: readonly string[] = [], opts: ExecOptions = {}): Promise<string> {
    const r = await this.exec(cmd, args, opts);
    if (r.code !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.code ?? r.signal}): ${r.stderr}`);
    return r.stdout;
  }

  /**
   * Starts a long-running process inside the world; it is stopped by dispose(). `onSpawn` gets the
   * child before anything is awaited: a process that exits at once (a CLI refusing its flags) may
   * have exited, its 'exit' and 'close' events gone, by the time the PID is recorded.
   */
  async spawn(
    cmd: string,
    args: readonly string[] = [],
    opts: {
      env?: NodeJS.ProcessEnv;
      mountOnly?: boolean;
      stdin?: 'pipe' | 'ignore';
      onSpawn?: (child: ChildProcess) => void;
    } = {},
  ): Promise<ChildProcess> {
    const child = spawn('nsenter', this.nsenterArgs(cmd, args, opts.mountOnly), {
      env: opts.env ?? process.env,
      stdio: [opts.stdin ?? 'ignore', 'pipe', 'pipe'],
      detached: true, // own process group: a test's Ctrl-C does not hit it before dispose does
    });
    if (child.pid === undefined) throw new Error(`cannot start ${cmd}`);
    opts.onSpawn?.(child);
    await this.track(child.pid);
    this.started.set(child.pid, child);
    child.once('exit', () => this.started.delete(child.pid ?? -1));
    return child;
  }

  /** Records a PID started by other means (e.g. a leader that forked) for cleanup. */
  async track(pid: number): Promise<void> {
    const st = await startTime(pid);
    if (st !== undefined) await appendFile(join(this.dir, 'pids'), `${pid} ${st}\n`);
  }

  /** Records a cgroup directory for removal at the end. */
  async trackCgroup(path: string): Promise<void> {
    await appendFile(join(this.dir, 'cgroups'), `${path}\n`);
  }

  /** Stops one process started with spawn(), waiting for it to exit. */
  async stop(child: ChildProcess, signal: NodeJS.Signals = 'SIGTERM', graceMs = 3_000): Promise<void> {
    if (child.exitCode !== null || child.signalCode !== null) return;
    const exited = once(child, 'exit');
    child.kill(signal);
    const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
    await exited;
    clearTimeout(timer);
  }

  async dispose(): Promise<void> {
    if (this.disposed) return;
    this.disposed = true;
    await Promise.all([...this.started.values()].map((c) => this.stop(c, 'SIGTERM', 2_000)));
    // Then anything else recorded (leaders that were not spawned by us directly).
    const recorded = await readFile(join(this.dir, 'pids'), 'utf8').catch(() => '');
    for (const line of recorded.split('\n').reverse()) {
      const [pid, st] = line.split(' ').map(Number);
      if (pid && st && (await startTime(pid)) === st) {
        try {
          process.kill(pid, 'SIGKILL');
        } catch {
          // already gone between the check and the kill
        }
      }
    }
    const exited = once(this.holder, 'exit');
    this.holder.stdin?.end(); // the holder removes recorded cgroups and exits
    await exited;
    const cgroups = await readFile(join(this.dir, 'cgroups'), 'utf8').catch(() => '');
    for (const cg of cgroups.split('\n').filter(Boolean).reverse()) await rmdir(cg).catch(() => undefined);
    await rm(this.dir, { recursive: true, force: true });
    this.janitor.stdin?.end(); // nothing left for it: the holder is gone
  }
}

/** Field 22 of /proc/PID/stat (start time in clock ticks), or undefined when the process is gone. */
export async function startTime(pid: number): Promise<number | undefined> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8').catch(() => undefined);
  if (stat === undefined) return undefined;
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const value = Number(fields[19]);
  return Number.isFinite(value) ? value : undefined;
}
