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
 * where the waiting connections are resumed with a fresh share; those still waiting after it spend
 * the next iteration's. With no datagrams coming the cost is one `performance.now()` per request
 * and a setImmediate per iteration.
 */
import { performance } from 'node:perf_hooks';

/** Stream work per event-loop iteration before it yields: 32 datagrams a turn then serve 32,000/s. */
export const STREAM_SHARE_MS = 1;

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
      const resumed = this.waiting;
      this.waiting = [];
      for (const resume of resumed) resume();
    });
  }
}

/** The one share of this process's event loop. */
export const streamShare = new TurnShare();
