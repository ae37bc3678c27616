// Running wrk and reading its summary.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { pinned } from "./system.ts";

/** A wrk run's totals. Latencies are in microseconds. */
export interface WrkResult {
  requests: number;
  durationSeconds: number;
  bytes: number;
  /** Failed connects, writes and timeouts, plus responses with a status other than 2xx or 3xx. */
  errors: number;
  /**
   * Reads that failed, as when the server closes a connection that wrk expected to stay open.
   * The response before the close was counted.
   */
  readErrors: number;
  p50Micros: number;
  p99Micros: number;
}

// wrk calls done() once at the end, and it prints the totals as one JSON line after its report.
const SUMMARY_SCRIPT = `done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format('\\nBENCH-JSON {"requests":%d,"duration":%d,"bytes":%d,"errors":%d,"read":%d,"p50":%d,"p99":%d}\\n',
    summary.requests, summary.duration, summary.bytes,
    e.connect + e.write + e.timeout + e.status, e.read,
    latency:percentile(50), latency:percentile(99)))
end
`;

/** Writes the Lua script that makes wrk print its totals as JSON, and returns its path. */
export function writeWrkScript(dir: string): string {
  const path = join(dir, "summary.lua");
  writeFileSync(path, SUMMARY_SCRIPT);
  return path;
}

/** The settings of one wrk run. */
export interface WrkRun {
  url: string;
  connections: number;
  seconds: number;
  /** Extra request headers, as "Name: value". */
  headers?: string[];
  cpus: string | undefined;
  script: string;
}

/** Runs wrk with one thread and returns its totals. Throws with wrk's output if it fails. */
export async function runWrk(run: WrkRun): Promise<WrkResult> {
  const headerArgs = (run.headers ?? []).flatMap((header) => ["-H", header]);
  const argv = [
    "wrk",
    "-t1",
    `-c${run.connections}`,
    `-d${run.seconds}s`,
    "--timeout",
    "10s",
  ].concat(headerArgs, ["-s", run.script, run.url]);
  const proc = Bun.spawn(pinned(run.cpus, argv), { stdout: "pipe", stderr: "pipe" });
  const [output, errorOutput, exitCode] = await Promise.all([
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
    proc.exited,
  ]);
  const line = /^BENCH-JSON (.+)$/m.exec(output)?.[1];
  if (exitCode !== 0 || line === undefined) {
    throw new Error(`wrk failed on ${run.url} (exit ${exitCode}): ${output}${errorOutput}`);
  }
  const totals = JSON.parse(line);
  return {
    requests: totals.requests,
    durationSeconds: totals.duration / 1e6,
    bytes: totals.bytes,
    errors: totals.errors,
    readErrors: totals.read,
    p50Micros: totals.p50,
    p99Micros: totals.p99,
  };
}
