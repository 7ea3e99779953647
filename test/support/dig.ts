/**
 * Runs the real `dig` (BIND 9) and `kdig` (Knot) against a stub on loopback and reads their text
 * output, so tests see our answers the way operators and other implementations do.
 */
import { execFile } from 'node:child_process';

export interface DigResult {
  status: string;
  flags: string[];
  /** `name ttl type data` for every answer line, names as printed (with the trailing dot). */
  answers: string[];
  authority: string[];
  /** The whole output, for assertion messages and for lines such as "Truncated, retrying in TCP mode". */
  text: string;
  exitCode: number;
}

export function runTool(
  tool: 'dig' | 'kdig',
  server: string,
  port: number,
  args: string[],
): Promise<DigResult> {
  // A timeout on every call: a broken stub must fail the test, not hang it.
  const common = tool === 'dig' ? ['+time=2', '+tries=1'] : ['+time=2', '+retry=0'];
  return new Promise((resolve) => {
    execFile(
      tool,
      [`@${server}`, '-p', String(port), ...common, ...args],
      { timeout: 15_000 },
      (error, stdout) => {
        const exitCode = error ? (typeof error.code === 'number' ? error.code : -1) : 0;
        resolve({ ...parseDigOutput(stdout), text: stdout, exitCode });
      },
    );
  });
}

export const dig = (server: string, port: number, ...args: string[]): Promise<DigResult> =>
  runTool('dig', server, port, args);
export const kdig = (server: string, port: number, ...args: string[]): Promise<DigResult> =>
  runTool('kdig', server, port, args);

export function parseDigOutput(text: string): Omit<DigResult, 'text' | 'exitCode'> {
  // dig: "status: NOERROR, id: 1" / "flags: qr aa rd;"; kdig: "status: NOERROR; id: 1" / "Flags: qr aa rd;".
  // With a TCP retry dig prints two headers: the last one is the answer.
  const statuses = [...text.matchAll(/status: ([A-Z]+)/g)];
  const flagLines = [...text.matchAll(/^;; [Ff]lags: ([a-z ]*);/gm)];
  return {
    status: statuses.at(-1)?.[1] ?? '',
    flags: (flagLines.at(-1)?.[1] ?? '').split(' ').filter(Boolean),
    answers: section(text, 'ANSWER'),
    authority: section(text, 'AUTHORITY'),
  };
}

function section(text: string, name: string): string[] {
  const lines = text.split('\n');
  const starts = lines.flatMap((l, i) => (l.startsWith(`;; ${name} SECTION:`) ? [i] : []));
  const start = starts.at(-1);
  if (start === undefined) return [];
  const out: string[] = [];
  for (const line of lines.slice(start + 1)) {
    if (line.trim() === '' || line.startsWith(';;')) break;
    const [owner = '', ttl = '', , type = '', ...data] = line.trim().split(/\s+/);
    out.push(`${owner} ${ttl} ${type} ${data.join(' ')}`);
  }
  return out;
}
