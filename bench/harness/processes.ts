/**
 * What a server costs, read from /proc as perf-anchors did: CPU time (user + system, all threads,
 * plus reaped children) before and after a load run, divided by the queries answered; resident
 * memory now (VmRSS) and at its peak (VmHWM). Also pinning of processes we started, and the CPU
 * other processes on the machine took meanwhile.
 */
import { execFileSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/PID/stat (USER_HZ; 100 on every Linux this runs on). */
const USER_HZ = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

export interface CpuTime {
  readonly userMs: number;
  readonly systemMs: number;
}

/** The numeric fields of a stat(5) file after the comm field (field 3, state, is index 0). */
function statFields(path: string): number[] {
  const stat = readFileSync(path, 'utf8');
  return stat
    .slice(stat.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number);
}

/** utime + cutime and stime + cstime of a process, in milliseconds. */
export function cpuTime(pid: number): CpuTime {
  const f = statFields(`/proc/${pid}/stat`);
  // fields 14..17 of stat(5) are at 11..14 after the comm field
  const tick = 1000 / USER_HZ;
  return {
    userMs: ((f[11] ?? 0) + (f[13] ?? 0)) * tick,
    systemMs: ((f[12] ?? 0) + (f[14] ?? 0)) * tick,
  };
}

export function cpuSince(pid: number, before: CpuTime): CpuTime {
  const now = cpuTime(pid);
  return { userMs: now.userMs - before.userMs, systemMs: now.systemMs - before.systemMs };
}

/**
 * What the threads of a process did: how often its main thread was preempted (nonvoluntary context
 * switches: another thread or process took its CPU while it could run) and the CPU its other threads
 * (V8's and libuv's) took. On a server pinned to one CPU both delay answers.
 */
export interface ThreadActivity {
  readonly mainPreempted: number;
  readonly otherThreadsCpuMs: number;
}

function taskCpuMs(pid: number, tid: string): number {
  const f = statFields(`/proc/${pid}/task/${tid}/stat`);
  return ((f[11] ?? 0) + (f[12] ?? 0)) * (1000 / USER_HZ);
}

export function threadMark(pid: number): { preempted: number; cpu: Map<string, number> } {
  const status = readFileSync(`/proc/${pid}/task/${pid}/status`, 'utf8');
  const preempted = Number(/^nonvoluntary_ctxt_switches:\s+(\d+)/m.exec(status)?.[1] ?? NaN);
  const cpu = new Map<string, number>();
  for (const tid of readdirSync(`/proc/${pid}/task`)) {
    if (tid === String(pid)) continue;
    try {
      cpu.set(tid, taskCpuMs(pid, tid));
    } catch {
      // the thread ended between the listing and the read
    }
  }
  return { preempted, cpu };
}

export type ThreadMark = ReturnType<typeof threadMark>;

/** Since `before`; a thread started since counts in full, one that ended since not at all. */
export function threadActivitySince(pid: number, before: ThreadMark): ThreadActivity {
  const now = threadMark(pid);
  let other = 0;
  for (const [tid, ms] of now.cpu) other += ms - (before.cpu.get(tid) ?? 0);
  return { mainPreempted: now.preempted - before.preempted, otherThreadsCpuMs: other };
}

export interface Memory {
  readonly rssMiB: number;
  readonly peakMiB: number;
}

export function memory(pid: number): Memory {
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const kib = (key: string): number =>
    Number(new RegExp(`^${key}:\\s+(\\d+) kB`, 'm').exec(status)?.[1] ?? NaN);
  return { rssMiB: kib('VmRSS') / 1024, peakMiB: kib('VmHWM') / 1024 };
}

/** Pins every thread of a process we started to one CPU (`taskset -a -p -c`), and checks it took. */
export function pin(pid: number, cpu: number): void {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
  const status = readFileSync(`/proc/${pid}/status`, 'utf8');
  const allowed = /^Cpus_allowed_list:\s*(\S+)/m.exec(status)?.[1];
  if (allowed !== String(cpu)) throw new Error(`process ${pid} runs on CPUs ${allowed}, not ${cpu}`);
}

/** Parent of every process in /proc. */
function parents(): Map<number, number> {
  const out = new Map<number, number>();
  for (const entry of readdirSync('/proc')) {
    if (!/^\d+$/.test(entry)) continue;
    const stat = readStat(Number(entry));
    if (stat) out.set(Number(entry), stat.ppid);
  }
  return out;
}

/** The processes that descend from `root` (itself included). */
function tree(all: ReadonlyMap<number, number>, root: number): Set<number> {
  const members = new Set<number>([root]);
  for (let grew = true; grew;) {
    grew = false;
    for (const [pid, ppid] of all)
      if (!members.has(pid) && members.has(ppid)) {
        members.add(pid);
        grew = true;
      }
  }
  return members;
}

function readStat(pid: number): { ppid: number; own: number; reaped: number } | undefined {
  try {
    const f = statFields(`/proc/${pid}/stat`);
    return { ppid: f[1] ?? 0, own: (f[11] ?? 0) + (f[12] ?? 0), reaped: (f[13] ?? 0) + (f[14] ?? 0) };
  } catch {
    return undefined; // gone between readdir and read
  }
}

/** user + nice + system ticks of the whole machine (/proc/stat). */
function machineBusyTicks(): number {
  const [, user = 0, nice = 0, system = 0] = (readFileSync('/proc/stat', 'utf8').split('\n')[0] ?? '')
    .trim()
    .split(/\s+/)
    .map(Number);
  return user + nice + system;
}

/** Ticks of our tree (with the children it reaped) and of kernel threads (kthreadd's, pid 2). */
function accountedTicks(): number {
  const all = parents();
  let ticks = 0;
  for (const pid of tree(all, process.pid)) {
    const s = readStat(pid);
    if (s) ticks += s.own + s.reaped;
  }
  for (const pid of tree(all, 2)) ticks += readStat(pid)?.own ?? 0;
  return ticks;
}

/**
 * CPU time (ms) that processes other than ours took over an interval: the machine's user + system
 * time minus that of this benchmark's process tree and of kernel threads. This VM may be shared
 * (other sessions' test suites ran on it during our runs), and a run during which others took a
 * core is not comparable with one during which they did not.
 */
export function foreignCpu(): () => number {
  const busy = machineBusyTicks();
  const accounted = accountedTicks();
  return () => {
    const other = machineBusyTicks() - busy - (accountedTicks() - accounted);
    return (Math.max(0, other) * 1000) / USER_HZ;
  };
}
