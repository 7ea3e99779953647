/**
 * Counts calls of a hook the code under test makes (a host read, a check) and wakes a test waiting
 * for a count, without polling.
 */
export class EventCount {
  private n = 0;
  private waiters: { readonly at: number; readonly resolve: () => void }[] = [];

  get value(): number {
    return this.n;
  }

  bump(): void {
    this.n++;
    this.waiters = this.waiters.filter((w) => (w.at <= this.n ? (w.resolve(), false) : true));
  }

  /** Resolves once `value` reaches `at`, or after `timeoutMs` anyway: the caller asserts the count. */
  reach(at: number, timeoutMs = 10_000): Promise<void> {
    if (this.n >= at) return Promise.resolve();
    return new Promise((resolve) => {
      const timer = setTimeout(done, timeoutMs);
      const waiter = { at, resolve: done };
      function done(): void {
        clearTimeout(timer);
        resolve();
      }
      this.waiters.push(waiter);
    });
  }
}
