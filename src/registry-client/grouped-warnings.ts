/**
 * Warnings of one kind about many machines, told a few times in full and then counted.
 *
 * A daemon without CAP_SYS_PTRACE cannot read any container's /proc/PID/root: at start it warned
 * twice per container, 20,000 lines at 10,000 containers, every one saying the same thing. Now the
 * first `individually` warnings of a kind are logged as they come; later ones are counted and told
 * in one line per window (`windowMs`), with the first few machine names. A window without any
 * returns the kind to its first state, so a problem that comes back is told in full again.
 *
 * `kind` is the warning without what is particular to a machine (its name, leader PID, root
 * directory); `message` is the whole warning.
 */
import type { Logger } from '../log.js';

export interface GroupedWarningsOptions {
  /** Warnings of a kind logged in full before they are counted. */
  readonly individually?: number;
  /** How long counted warnings gather before their line is logged. */
  readonly windowMs?: number;
  /** Machine names shown in a counted line. */
  readonly namesShown?: number;
}

interface KindState {
  told: number;
  counted: number;
  names: string[];
  timer: NodeJS.Timeout | undefined;
}

export class GroupedWarnings {
  private readonly kinds = new Map<string, KindState>();
  private readonly individually: number;
  private readonly windowMs: number;
  private readonly namesShown: number;

  constructor(
    private readonly logger: Logger,
    options: GroupedWarningsOptions = {},
  ) {
    this.individually = options.individually ?? 3;
    this.windowMs = options.windowMs ?? 5_000;
    this.namesShown = options.namesShown ?? 5;
  }

  warn(kind: string, machine: string, message: string): void {
    let state = this.kinds.get(kind);
    if (!state) {
      state = { told: 0, counted: 0, names: [], timer: undefined };
      this.kinds.set(kind, state);
    }
    if (state.told < this.individually) {
      state.told++;
      this.logger.warn(`machine ${machine}: ${message}`);
      if (state.told === this.individually) this.arm(kind, state);
      return;
    }
    state.counted++;
    if (state.names.length < this.namesShown) state.names.push(machine);
  }

  /** Logs what is counted now (the daemon is stopping) and forgets every kind. */
  flush(): void {
    for (const [kind, state] of this.kinds) {
      clearTimeout(state.timer);
      this.tell(kind, state);
    }
    this.kinds.clear();
  }

  private arm(kind: string, state: KindState): void {
    state.timer = setTimeout(() => {
      if (state.counted === 0) {
        this.kinds.delete(kind); // a quiet window: the next one is told in full again
        return;
      }
      this.tell(kind, state);
      this.arm(kind, state);
    }, this.windowMs);
    state.timer.unref();
  }

  private tell(kind: string, state: KindState): void {
    if (state.counted === 0) return;
    const more = state.counted > state.names.length ? ', …' : '';
    this.logger.warn(
      `${state.counted} more machine(s) with the same problem: ${kind} (${state.names.join(', ')}${more})`,
    );
    state.counted = 0;
    state.names = [];
  }
}
