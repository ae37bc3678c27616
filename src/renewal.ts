import type { ConsolaInstance } from "consola";
import type { RenewalWindow } from "./ari.ts";
import type { StoredCertificate } from "./store.ts";

/** Returns when a certificate is due for renewal: when a third of its lifetime remains. */
export function renewalTime(cert: Pick<StoredCertificate, "notBefore" | "notAfter">): Date {
  const lifetime = cert.notAfter.getTime() - cert.notBefore.getTime();
  return new Date(cert.notAfter.getTime() - lifetime / 3);
}

/** Returns the delay before retry number `attempt` (1, 2, ...): it doubles from a base that fits the certificate's lifetime. */
export function retryDelayMs(
  cert: Pick<StoredCertificate, "notBefore" | "notAfter">,
  attempt: number,
): number {
  const lifetime = cert.notAfter.getTime() - cert.notBefore.getTime();
  const base = Math.min(60_000, Math.max(1000, lifetime / 100));
  return Math.min(base * 2 ** (attempt - 1), 3_600_000, Math.max(1000, lifetime / 10));
}

/** The maximum delay of one timer; longer waits are split, since timers cannot exceed about 24.8 days. */
const MAX_TIMER_STEP_MS = 24 * 60 * 60 * 1000;

/** Settings for scheduleRenewal. */
export interface RenewalOptions {
  /** The certificate being served now. */
  current: StoredCertificate;
  /** Gets a new certificate to replace `current` from the CA; throws when it cannot. */
  renew: (current: StoredCertificate) => Promise<StoredCertificate>;
  /** Puts a new certificate into service. */
  install: (cert: StoredCertificate) => Promise<void>;
  /** Asks the CA for a renewal window (ACME Renewal Information); undefined when it has none. */
  suggestWindow?: (cert: StoredCertificate) => Promise<RenewalWindow | undefined>;
  log: ConsolaInstance;
}

/** Picks a uniformly random time in `window`, as RFC 9773 section 4.2 requires of clients. */
export function pickTimeInWindow(window: RenewalWindow, random = Math.random()): number {
  const start = window.start.getTime();
  return start + random * (window.end.getTime() - start);
}

/**
 * Renews the certificate in the background when it is due, installs the new one, and repeats.
 * A failed renewal is logged as a warning and retried with growing delays while the current
 * certificate keeps being served. Returns a function that cancels the schedule.
 */
export function scheduleRenewal(options: RenewalOptions): () => void {
  const { renew, install, suggestWindow, log } = options;
  let current = options.current;
  let timer: ReturnType<typeof setTimeout> | undefined;
  let cancelled = false;

  // Waits in steps of at most a day; with ARI each step queries the CA again, so that a window
  // moved earlier (after a revocation, for instance) is followed.
  const waitUntil = (time: number, then: () => void) => {
    if (cancelled) return;
    const delay = time - Date.now();
    if (delay <= MAX_TIMER_STEP_MS) {
      timer = setTimeout(then, Math.max(0, delay));
    } else {
      timer = setTimeout(
        () => void plan(time).then((next) => waitUntil(next, then)),
        MAX_TIMER_STEP_MS,
      );
    }
    timer.unref?.();
  };

  // Returns the renewal time: a random point of the CA's window if it suggests one, else the
  // earlier of `planned` and the point where a third of the lifetime remains.
  const plan = async (planned: number) => {
    const window = await suggestWindow?.(current).catch((error: unknown) => {
      log.debug(`acme: no renewal information from the CA: ${error}`);
      return undefined;
    });
    if (!window) return Math.min(planned, renewalTime(current).getTime());
    if (planned >= window.start.getTime() && planned <= window.end.getTime()) return planned;
    const time = pickTimeInWindow(window);
    log.info(
      `acme: the CA suggests renewing between ${window.start.toISOString()} and ${window.end.toISOString()}; renewal at ${new Date(time).toISOString()}`,
    );
    return time;
  };

  const attempt = async (number: number) => {
    try {
      const next = await renew(current);
      await install(next);
      log.info(
        `certificate renewed: serial ${next.serialNumber}, valid until ${next.notAfter.toISOString()}, next renewal at ${renewalTime(next).toISOString()}`,
      );
      current = next;
      waitUntil(await plan(Infinity), () => attempt(1));
    } catch (error) {
      const delay = retryDelayMs(current, number);
      const message = error instanceof Error ? error.message : String(error);
      log.warn(
        `certificate renewal failed (attempt ${number}), retrying in ${Math.round(delay / 1000)}s; the current certificate stays in service until ${current.notAfter.toISOString()}: ${message}`,
      );
      waitUntil(Date.now() + delay, () => attempt(number + 1));
    }
  };

  void plan(Infinity).then((time) => waitUntil(time, () => attempt(1)));
  return () => {
    cancelled = true;
    clearTimeout(timer);
  };
}
