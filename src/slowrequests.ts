// Deferred per-request work for requests that turn out to be slow.
//
// Most proxied requests finish within a few milliseconds. Arming a timer, creating the
// request's AbortSignal and switching off Bun.serve's idle timer for every one of them cost
// about 8 % of the keep-alive rate (wrk, 50 connections, 2-core VM, Bun 1.4.5). A request that
// is still running after one tick of a shared interval gets that work then instead.

/** A request under watch: `onSlow` until the request ends, then undefined. */
export interface SlowRequestWatch {
  onSlow: (() => void) | undefined;
}

/**
 * Calls a request's `onSlow` once when it is still not done after one to two periods of
 * `periodMs`. A single interval serves every request and runs only while any are watched.
 */
export class SlowRequestTimer {
  private recent: SlowRequestWatch[] = [];
  private older: SlowRequestWatch[] = [];
  private interval: Timer | undefined;

  constructor(readonly periodMs: number) {}

  /**
   * Starts watching a request. Set the returned watch's onSlow to undefined when the request
   * ends, which also lets the request be collected before the next tick.
   */
  watch(onSlow: () => void): SlowRequestWatch {
    const watch = { onSlow };
    this.recent.push(watch);
    if (this.interval === undefined) {
      this.interval = setInterval(() => this.tick(), this.periodMs);
      this.interval.unref();
    }
    return watch;
  }

  private tick(): void {
    const due = this.older;
    this.older = this.recent;
    this.recent = [];
    // A callback that throws must not keep the others of this tick from running.
    const failures: unknown[] = [];
    for (const watch of due) {
      const onSlow = watch.onSlow;
      if (onSlow === undefined) continue;
      watch.onSlow = undefined;
      try {
        onSlow();
      } catch (error) {
        failures.push(error);
      }
    }
    if (this.older.length === 0) {
      clearInterval(this.interval);
      this.interval = undefined;
    }
    if (failures.length > 0) throw failures[0];
  }
}

/**
 * The timer that ssl-proxy's listeners and upstream clients share. A slow request's work starts
 * 100 to 200 ms after the request, so deadlines shorter than that are armed at once instead.
 */
export const slowRequests = new SlowRequestTimer(100);
