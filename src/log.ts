/**
 * Logging to stderr with sd-daemon(3) priority prefixes (`<3>` … `<7>`), so the journal keeps the
 * level of every line. One logger per process; modules take a `Logger` so tests can capture lines.
 */
export type LogLevel = 'error' | 'warn' | 'info' | 'debug';

const PRIORITY: Record<LogLevel, number> = { error: 3, warn: 4, info: 6, debug: 7 };
export const LOG_LEVELS: readonly LogLevel[] = ['error', 'warn', 'info', 'debug'];

export interface Logger {
  readonly level: LogLevel;
  /** True when a line at this level would be written: guard expensive debug formatting with it. */
  enabled(level: LogLevel): boolean;
  error(message: string): void;
  warn(message: string): void;
  info(message: string): void;
  debug(message: string): void;
}

export function isLogLevel(value: string): value is LogLevel {
  return (LOG_LEVELS as readonly string[]).includes(value);
}

/** A logger writing `<N>message\n` lines to `write` (default: stderr). */
export function createLogger(
  level: LogLevel,
  write: (line: string) => void = (l) => process.stderr.write(l),
): Logger {
  const threshold = PRIORITY[level];
  const emit =
    (lvl: LogLevel) =>
    (message: string): void => {
      if (PRIORITY[lvl] <= threshold) write(`<${PRIORITY[lvl]}>${message.replace(/\n/g, ' ')}\n`);
    };
  return {
    level,
    enabled: (lvl) => PRIORITY[lvl] <= threshold,
    error: emit('error'),
    warn: emit('warn'),
    info: emit('info'),
    debug: emit('debug'),
  };
}

/** A logger that keeps lines in memory (tests), and can wait for a line. */
export function memoryLogger(
  level: LogLevel = 'debug',
): Logger & { readonly lines: string[]; waitFor(pattern: RegExp, timeoutMs?: number): Promise<string> } {
  const lines: string[] = [];
  const waiters = new Set<(line: string) => void>();
  const logger = createLogger(level, (l) => {
    const line = l.trimEnd();
    lines.push(line);
    for (const w of [...waiters]) w(line);
  });
  const waitFor = (pattern: RegExp, timeoutMs = 10_000): Promise<string> => {
    const seen = lines.find((l) => pattern.test(l));
    if (seen !== undefined) return Promise.resolve(seen);
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        waiters.delete(check);
        reject(new Error(`no log line matching ${String(pattern)}`));
      }, timeoutMs);
      const check = (line: string): void => {
        if (!pattern.test(line)) return;
        clearTimeout(timer);
        waiters.delete(check);
        resolve(line);
      };
      waiters.add(check);
    });
  };
  return Object.assign(logger, { lines, waitFor });
}

/** The same logger with every message prefixed (e.g. `dns: `), so each line names its part. */
export function withPrefix(logger: Logger, prefix: string): Logger {
  return {
    level: logger.level,
    enabled: (level) => logger.enabled(level),
    error: (m) => logger.error(prefix + m),
    warn: (m) => logger.warn(prefix + m),
    info: (m) => logger.info(prefix + m),
    debug: (m) => logger.debug(prefix + m),
  };
}

export const silentLogger: Logger = createLogger('error', () => undefined);
