/**
 * What a benchmark ran on and with: the machine (CPU, vCPUs, memory, kernel, Debian), the versions
 * of every program measured or used as load, and the commit of the code. Printed with every run
 * and written into its BENCHMARKS.md section, so no number stands without its context.
 */
import { execFileSync } from 'node:child_process';
import { readFileSync } from 'node:fs';
import os from 'node:os';
import { fileURLToPath } from 'node:url';

export const REPO = fileURLToPath(new URL('../../../', import.meta.url));

export interface MachineInfo {
  readonly cpu: string;
  readonly vcpus: number;
  readonly memoryGiB: number;
  readonly kernel: string;
  readonly debian: string;
  readonly node: string;
  /** Debian package → version, for the packages named by the benchmark. */
  readonly packages: ReadonlyMap<string, string>;
  /** Short commit, with `+changes` when tracked files under bench/, src/ or test/ differ from it. */
  readonly commit: string;
}

function output(cmd: string, args: readonly string[]): string {
  try {
    return execFileSync(cmd, args, {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'ignore'],
      cwd: REPO,
    }).trim();
  } catch {
    return '';
  }
}

export function describeMachine(packages: readonly string[]): MachineInfo {
  const cpuinfo = readFileSync('/proc/cpuinfo', 'utf8');
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? 'unknown CPU';
  const versions = new Map<string, string>();
  for (const p of packages)
    versions.set(p, output('dpkg-query', ['-W', '-f=${Version}', p]) || 'not installed');
  const dirty = output('git', ['status', '--porcelain', '--', 'bench', 'src', 'test', 'package.json']) !== '';
  return {
    cpu: model,
    vcpus: os.cpus().length,
    memoryGiB: Math.round(os.totalmem() / 2 ** 30),
    kernel: os.release(),
    debian: readFileSync('/etc/debian_version', 'utf8').trim(),
    node: process.version,
    packages: versions,
    commit: `${output('git', ['rev-parse', '--short', 'HEAD']) || 'unknown'}${dirty ? '+changes' : ''}`,
  };
}

export function machineLine(m: MachineInfo): string {
  return `${m.cpu}, ${m.vcpus} vCPU, ${m.memoryGiB} GiB, kernel ${m.kernel}, Debian ${m.debian}`;
}

export function versionsLine(m: MachineInfo): string {
  return [`node ${m.node}`, ...[...m.packages].map(([p, v]) => `${p} ${v}`)].join(', ');
}

/** Fails early, naming the set-up to run, when a program the benchmark needs is missing. */
export function requirePrograms(programs: readonly string[]): void {
  if (process.getuid?.() !== 0)
    throw new Error('benchmarks need root (private namespaces, taskset of servers)');
  const missing = programs.filter((p) => output('sh', ['-c', `command -v ${p}`]) === '');
  if (missing.length > 0)
    throw new Error(
      `missing ${missing.join(', ')}: run through npm run bench:… (scripts/setup.sh --with-bench)`,
    );
}
