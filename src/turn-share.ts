/**
 * Stream requests (DNS over TCP, Varlink) yield to datagrams.
 *
 * libuv reads at most 32 datagrams from a UDP socket per event-loop iteration, but hands every
 * ready stream socket's data to its handler in that same iteration. With 2,000 stream clients
 * asking at once an iteration took hundreds of milliseconds, UDP was served 32 datagrams at a
 * time, and the kernel dropped what its receive buffer could not hold (reliability-load: 163–1,816
 * of 600,000 queries lost at 10,000 q/s). So the stream handlers ask one shared TurnShare before
 * each request: once the current iteration has spent its share on stream requests, the rest waits
 * for a later one (setImmediate, first come first served), and the loop gets back to its other
 * sockets, the UDP one among them, within about `shareMs`.
 *
 * A turn starts with the first request asked about and ends in the check phase of that iteration,
 * where the waiting connections are resumed in order while a fresh share lasts; the others keep
 * their places for the next iteration's. With no datagrams coming the cost is one
 * `performance.now()` per request and a setImmediate per iteration.
 */
import { performance } from 'node:perf_hooks';

/**
 * Stream work per event-loop iteration before it yields: 32 datagrams a turn then serve 128,000/s,
 * and the listening sockets, from which libuv (since 1.45, libuv#3696) accepts one connection a
 * turn, keep up: with 1 ms, 1,000 Varlink connections opened at once during reliability-load's
 * burst waited up to 2.2 s to be accepted (docs/reliability.md).
 */
export const STREAM_SHARE_MS = 0.25;

export class TurnShare {
  /** performance.now() when the current turn's first request was asked about; -1 between turns. */
  private turnStarted = -1;
  private waiting: (() => void)[] = [];
  private resetQueued = false;
  /** Requests sent to a later turn (a test and statistics hook). */
  deferrals = 0;

  constructor(private readonly shareMs: number = STREAM_SHARE_MS) {}

  /** May one more stream request be handled in this turn? */
  allows(): boolean {
    const now = performance.now();
    if (this.turnStarted < 0) {
      this.turnStarted = now;
      this.queueReset();
      return true;
    }
    return now - this.turnStarted < this.shareMs;
  }

  /** Calls `resume` in a later turn, after the loop has polled its sockets again or is about to. */
  later(resume: () => void): void {
    this.deferrals++;
    this.waiting.push(resume);
    this.queueReset();
  }

  private queueReset(): void {
    if (this.resetQueued) return;
    this.resetQueued = true;
    setImmediate(() => {
      this.resetQueued = false;
      this.turnStarted = -1;
      const waiting = this.waiting;
      this.waiting = [];
      // Resumed in order while the new turn's share lasts; the rest keep their places for the next
      // turn without being called. Calling every one, each only to be sent back (most of them when
      // thousands wait), cost about as much as the share itself: the loop's turns took twice as
      // long, and a listening socket, accepted from once a turn, fell behind (docs/reliability.md).
      let next = 0;
      while (next < waiting.length && !this.spent()) waiting[next++]?.();
      if (next < waiting.length) {
        this.waiting = waiting.slice(next).concat(this.waiting);
        this.queueReset();
      }
    });
  }

  /** The current turn has started and used up its share. */
  private spent(): boolean {
    return this.turnStarted >= 0 && performance.now() - this.turnStarted >= this.shareMs;
  }
}

/** The one share of this process's event loop. */
export const streamShare = new TurnShare();
