/**
 * Bounded slices of the event loop for the registry's own work between D-Bus replies.
 *
 * A fetch continues when machined's reply arrives: it reads /proc, builds the record, and asks for
 * the addresses. Replies come many to one socket read, and every continuation they resolve runs in
 * that same turn of the loop, so with `concurrency` fetches in flight one turn could do the work of
 * dozens of machines while DNS and userdb queries waited. Each continuation first asks `next()`:
 * while the turn's slice lasts it goes on at once; after that it waits for a later turn, after the
 * loop has polled its sockets. A turn starts with the first continuation that asks in it and ends
 * in that turn's check phase.
 */
import { performance } from 'node:perf_hooks';

export class Slices {
  /** performance.now() when the current turn's first continuation asked; -1 between turns. */
  private turnStarted = -1;
  /** Continuations sent to a later turn (statistics and tests). */
  deferrals = 0;

  constructor(private readonly sliceMs: number) {}

  /**
   * undefined while this turn's slice lasts: go on at once, without awaiting (an await would let
   * every other continuation ask before any of them worked, and all of them would be let through);
   * else a promise that resolves in the first later turn with room.
   */
  next(): Promise<void> | undefined {
    if (this.allows()) return undefined;
    this.deferrals++;
    return this.later();
  }

  private async later(): Promise<void> {
    do await new Promise<void>((resolve) => setImmediate(resolve));
    while (!this.allows());
  }

  private allows(): boolean {
    const now = performance.now();
    if (this.turnStarted < 0) {
      this.turnStarted = now;
      setImmediate(() => {
        this.turnStarted = -1;
      });
      return true;
    }
    return now - this.turnStarted < this.sliceMs;
  }
}
