/**
 * What a server costs, read from /proc as perf-anchors did: CPU time (user + system, all threads,
 * plus reaped children) before and after a load run, divided by the queries answered; resident
 * memory now (VmRSS) and at its peak (VmHWM). Also pinning of processes we started.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';

/** Clock ticks per second of /proc/PID/stat (USER_HZ; 100 on every Linux this runs on). */
const USER_HZ = Number(execFileSync('getconf', ['CLK_TCK'], { encoding: 'utf8' }).trim()) || 100;

export interface CpuTime {
  readonly userMs: number;
  readonly systemMs: number;
}

/** utime + cutime and stime + cstime of a process, in milliseconds. */
export function cpuTime(pid: number): CpuTime {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const f = stat
    .slice(stat.lastIndexOf(')') + 2)
    .split(' ')
    .map(Number);
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

/** Pins every thread of a process we started to one CPU (`taskset -a -p -c`). */
export function pin(pid: number, cpu: number): void {
  execFileSync('taskset', ['-a', '-p', '-c', String(cpu), String(pid)], { stdio: 'ignore' });
}
