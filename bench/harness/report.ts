/**
 * One benchmark run's report: printed as it goes, then appended to BENCHMARKS.md as a dated section
 * (command, commit, machine, versions, raw numbers), with the run's rows replacing that benchmark's
 * rows in the summary table at the top. The summary always shows the latest run of each benchmark;
 * older sections stay below, so every number in the file comes from a run that is written down.
 */
import { existsSync } from 'node:fs';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { machineLine, REPO, versionsLine, type MachineInfo } from './machine.js';
import { foreignCpu } from './processes.js';
import { share } from './quiet.js';

export const BENCHMARKS_MD = join(REPO, 'BENCHMARKS.md');

/** Summary rows are kept in this order of benchmarks. */
export const BENCH_NAMES = ['dns', 'getaddrinfo', 'userdb', 'propagation', 'scale', 'micro'] as const;
export type BenchName = (typeof BENCH_NAMES)[number];

export interface SummaryRow {
  readonly measurement: string;
  readonly ours: string;
  readonly anchor: string;
  readonly ratio: string;
  readonly target: string;
  /** undefined: no target to meet (informative row). */
  readonly met: boolean | undefined;
}

const BEGIN = '<!-- summary:begin -->';
const END = '<!-- summary:end -->';
const SUMMARY_HEADER = [
  '| bench | measurement | ours | anchor | ratio | target | met? | run |',
  '|---|---|---|---|---|---|---|---|',
];

const PREAMBLE = `# Benchmarks

Written by the scripts in \`bench/\` (\`npm run bench\`, or \`npm run bench:<name>\` for one); see
\`bench/README.md\` for what each measures and how. The summary shows the latest run of each
benchmark; every run appends a dated section below with its command, commit, machine, versions and
raw numbers. Figures are medians over repeated runs with their range in parentheses.

## Summary (latest run of each benchmark)

${BEGIN}
${SUMMARY_HEADER.join('\n')}
${END}

## Runs
`;

export function cell(text: string): string {
  return text.replace(/\|/g, '\\|').replace(/\n/g, ' ');
}

export function markdownTable(header: readonly string[], rows: readonly (readonly string[])[]): string {
  return [
    `| ${header.map(cell).join(' | ')} |`,
    `|${header.map(() => '---').join('|')}|`,
    ...rows.map((r) => `| ${r.map(cell).join(' | ')} |`),
  ].join('\n');
}

export class BenchReport {
  private readonly blocks: string[] = [];
  private readonly rows: SummaryRow[] = [];
  readonly startedAt = new Date();
  private readonly others = foreignCpu();
  private readonly t0 = performance.now();

  /** The command that reproduces this run: the BENCH_* knobs set, then the npm script. */
  readonly command: string;

  constructor(
    readonly bench: BenchName,
    readonly machine: MachineInfo,
    /** Where progress, paragraphs and the summary are printed as the run goes (a test: nowhere). */
    private readonly out: (text: string) => void = (text) => process.stdout.write(text),
  ) {
    const knobs = Object.entries(process.env)
      .filter(([k]) => k.startsWith('BENCH_'))
      .map(([k, v]) => `${k}=${v ?? ''} `)
      .join('');
    this.command = `${knobs}npm run bench:${bench}`;
  }

  get runLabel(): string {
    return `${this.bench} ${this.startedAt.toISOString().slice(0, 16).replace('T', ' ')}Z`;
  }

  /** A progress line: printed, not written to the file. */
  progress(text: string): void {
    this.out(`[bench:${this.bench}] ${text}\n`);
  }

  paragraph(text: string): void {
    this.blocks.push(text);
    this.out(`${text}\n\n`);
  }

  table(header: readonly string[], rows: readonly (readonly string[])[]): void {
    this.paragraph(markdownTable(header, rows));
  }

  summary(row: SummaryRow): void {
    this.rows.push(row);
  }

  private static cells(r: SummaryRow, bold: boolean): string[] {
    const met = r.met === undefined ? '—' : r.met ? 'yes' : 'no';
    return [
      r.measurement,
      r.ours,
      r.anchor,
      r.ratio,
      r.target,
      bold && r.met !== undefined ? `**${met}**` : met,
    ];
  }

  /** This run's rows as lines of the summary table (bench first, run label last). */
  private summaryLines(): string[] {
    return this.rows.map(
      (r) => `| ${[this.bench, ...BenchReport.cells(r, true), this.runLabel].map(cell).join(' | ')} |`,
    );
  }

  /**
   * Prints the summary and appends the section (and the summary rows) to `file`: BENCHMARKS.md
   * unless a test gives another.
   */
  async write(file = BENCHMARKS_MD): Promise<void> {
    const m = this.machine;
    const header = ['measurement', 'ours', 'anchor', 'ratio', 'target', 'met?'];
    const section = [
      `### bench:${this.bench} — ${this.startedAt.toISOString().slice(0, 16).replace('T', ' ')} UTC`,
      '',
      `- command: \`${this.command}\``,
      `- commit: ${m.commit}`,
      `- machine: ${machineLine(m)}`,
      `- versions: ${versionsLine(m)}`,
      `- other processes on this (shared) VM took ${share(this.others() / (performance.now() - this.t0))} of one core on average during the run`,
      '',
      markdownTable(
        header,
        this.rows.map((r) => BenchReport.cells(r, true)),
      ),
      '',
      ...this.blocks.flatMap((b) => [b, '']),
    ].join('\n');
    this.out(
      `\n${markdownTable(
        header,
        this.rows.map((r) => BenchReport.cells(r, false)),
      )}\n`,
    );

    let text = existsSync(file) ? await readFile(file, 'utf8') : PREAMBLE;
    const begin = text.indexOf(BEGIN);
    const end = text.indexOf(END);
    if (begin < 0 || end < begin) throw new Error(`${file}: no summary markers ${BEGIN} … ${END}`);
    const kept = text
      .slice(begin + BEGIN.length, end)
      .split('\n')
      .filter((l) => l.startsWith('| ') && !SUMMARY_HEADER.includes(l))
      .map((l) => ({ line: l, bench: l.split('|')[1]?.trim() ?? '' }))
      .filter((r) => r.bench !== this.bench);
    const mine = this.summaryLines().map((line) => ({ line, bench: this.bench }));
    const order = (b: string): number => {
      const i = (BENCH_NAMES as readonly string[]).indexOf(b);
      return i < 0 ? BENCH_NAMES.length : i;
    };
    // stable: rows of one benchmark keep their order
    const rows = [...kept, ...mine].sort((a, b) => order(a.bench) - order(b.bench)).map((r) => r.line);
    text = `${text.slice(0, begin + BEGIN.length)}\n${[...SUMMARY_HEADER, ...rows].join('\n')}\n${text.slice(end)}`;
    text = `${text.trimEnd()}\n\n${section.trimEnd()}\n`;
    await writeFile(file, text);
    this.out(`\nappended to ${file}\n`);
  }
}
