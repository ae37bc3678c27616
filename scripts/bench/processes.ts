// Starting, waiting for and stopping the servers of the benchmark.
import { openSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { sleep } from "./system.ts";

/** A server process the benchmark started, with its output in a log file. */
export interface ServerProcess {
  proc: Subprocess;
  /** The file that receives the process's stdout and stderr. */
  logFile: string;
  /** Sends SIGTERM, then SIGKILL after two seconds, and waits for the exit. */
  stop(): Promise<void>;
}

/** Spawns `argv` with stdout and stderr appended to `<logDir>/<name>.log`. */
export function spawnServer(
  name: string,
  argv: string[],
  logDir: string,
  env: Record<string, string> = {},
): ServerProcess {
  const logFile = join(logDir, `${name}.log`);
  const fd = openSync(logFile, "a");
  const proc = Bun.spawn(argv, {
    stdin: "ignore",
    stdout: fd,
    stderr: fd,
    env: { PATH: process.env.PATH ?? "/usr/bin:/bin", HOME: logDir, ...env },
  });
  return { proc, logFile, stop: () => stopProcess(proc) };
}

async function stopProcess(proc: Subprocess): Promise<void> {
  if (proc.exitCode !== null || proc.signalCode !== null) return;
  proc.kill("SIGTERM");
  const exited = await Promise.race([proc.exited.then(() => true), sleep(2000).then(() => false)]);
  if (!exited) {
    proc.kill("SIGKILL");
    await proc.exited;
  }
}

/** The options that let fetch accept the benchmark's self-signed certificate. */
export const INSECURE_TLS = { rejectUnauthorized: false };

/**
 * Requests `url` until it returns 200, every millisecond or so, and returns the time of the
 * first 200 from performance.now(). Throws after `timeoutMs` or when `proc` exits first.
 */
export async function waitForOk(
  url: string,
  proc: Subprocess,
  timeoutMs = 15_000,
): Promise<number> {
  const deadline = performance.now() + timeoutMs;
  let lastError = "no response";
  while (performance.now() < deadline) {
    if (proc.exitCode !== null || proc.signalCode !== null) {
      throw new Error(
        `the server exited (${proc.exitCode ?? proc.signalCode}) before ${url} responded`,
      );
    }
    try {
      const res = await fetch(url, { tls: INSECURE_TLS, keepalive: false });
      await res.arrayBuffer();
      if (res.status === 200) return performance.now();
      lastError = `status ${res.status}`;
    } catch (error) {
      lastError = error instanceof Error ? error.message : String(error);
    }
    await sleep(1);
  }
  throw new Error(`${url} did not respond with 200 within ${timeoutMs} ms (last: ${lastError})`);
}
