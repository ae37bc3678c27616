// The seven scenarios of the benchmark and the metrics each one records.
import { openIdleConnections, runWebSocketEcho, uploadFile } from "./clients.ts";
import { type ContenderName, type RunningContender } from "./contenders.ts";
import { sleep, sumCpuMillis, sumMemory } from "./system.ts";
import { runWrk } from "./wrk.ts";

/** Durations and sizes of one benchmark run. */
export interface Settings {
  /** Length of each measured load run, in seconds. */
  seconds: number;
  /** Length of the warm-up before each measured wrk or WebSocket run, in seconds. */
  warmupSeconds: number;
  uploadBytes: number;
  idleConnections: number;
  startupRepeats: number;
}

/** The inputs that a scenario runs with. */
export interface ScenarioContext {
  settings: Settings;
  /** CPU list of the load generators, or undefined. */
  loadCpus: string | undefined;
  wrkScript: string;
  /** A file of settings.uploadBytes bytes. */
  uploadPath: string;
  /** Starts a contender in front of the scenario's backend. */
  start(name: ContenderName): Promise<RunningContender>;
}

/** One measured value of a scenario. */
export interface Metric {
  key: string;
  label: string;
  unit: string;
  better: "higher" | "lower";
}

/** A scenario: the metrics it records and how to measure one contender. */
export interface Scenario {
  id: string;
  title: string;
  /** The backend that the contenders proxy to. */
  backend: "nginx" | "aux";
  /** Whether the backend reached directly is measured too. */
  direct: boolean;
  metrics: Metric[];
  run(context: ScenarioContext, name: ContenderName): Promise<Record<string, number>>;
}

const MIB = 1024 * 1024;

/** Starts a contender, runs `measure` on it and stops it, also when measure throws. */
async function withContender<T>(
  context: ScenarioContext,
  name: ContenderName,
  measure: (running: RunningContender) => Promise<T>,
): Promise<T> {
  const running = await context.start(name);
  try {
    return await measure(running);
  } finally {
    await running.stop();
  }
}

/**
 * Runs a short wrk warm-up and then the measured wrk run with the same load. Returns wrk's
 * totals and the CPU time in ms that the proxy's processes used during the measured run.
 */
async function warmAndRunWrk(
  context: ScenarioContext,
  running: RunningContender,
  path: string,
  connections: number,
  headers: string[] = [],
) {
  const url = `${running.origin}${path}`;
  const common = { url, connections, headers, cpus: context.loadCpus, script: context.wrkScript };
  await runWrk({ ...common, seconds: context.settings.warmupSeconds });
  const cpuBefore = sumCpuMillis(running.pids());
  const result = await runWrk({ ...common, seconds: context.settings.seconds });
  const cpuMillis = sumCpuMillis(running.pids()) - cpuBefore;
  if (result.errors > 0)
    console.warn(`  ${url}: ${result.errors} failed requests during the wrk run`);
  // After "Connection: close", a server that closes without sending "Connection: close" back
  // (Bun.serve 1.4.5 does so) makes wrk count a read error before it reconnects.
  const closing = headers.includes("Connection: close");
  if (result.readErrors > 0 && !closing) {
    console.warn(`  ${url}: ${result.readErrors} read errors during the wrk run`);
  }
  return { ...result, cpuMillis };
}

// CPU time per unit of work depends less than a rate on other programs sharing the machine.
const cpuMetric = (per: string, unit: string): Metric => ({
  key: "cpu",
  label: `proxy CPU time per ${per}`,
  unit,
  better: "lower",
});

const keepAlive: Scenario = {
  id: "keep-alive",
  title: "1. keep-alive, small response (wrk, 50 connections)",
  backend: "nginx",
  direct: true,
  metrics: [
    { key: "rps", label: "requests/s", unit: "req/s", better: "higher" },
    { key: "p50", label: "p50 latency", unit: "ms", better: "lower" },
    { key: "p99", label: "p99 latency", unit: "ms", better: "lower" },
    cpuMetric("request", "us"),
  ],
  run: (context, name) =>
    withContender(context, name, async (running) => {
      const result = await warmAndRunWrk(context, running, "/small", 50);
      const values: Record<string, number> = {
        rps: result.requests / result.durationSeconds,
        p50: result.p50Micros / 1000,
        p99: result.p99Micros / 1000,
      };
      if (name !== "direct") values.cpu = (result.cpuMillis * 1000) / result.requests;
      return values;
    }),
};

// wrk reconnects after each "Connection: close" response and offers the previous TLS session,
// so these are resumed handshakes where the server allows it, as a returning browser's are.
const handshakes: Scenario = {
  id: "new-connection",
  title: "2. new TLS connection per request (wrk, 16 connections, Connection: close)",
  backend: "nginx",
  direct: true,
  metrics: [
    { key: "handshakes", label: "handshakes/s", unit: "/s", better: "higher" },
    cpuMetric("handshake", "us"),
  ],
  run: (context, name) =>
    withContender(context, name, async (running) => {
      const result = await warmAndRunWrk(context, running, "/small", 16, ["Connection: close"]);
      const values: Record<string, number> = {
        handshakes: result.requests / result.durationSeconds,
      };
      if (name !== "direct") values.cpu = (result.cpuMillis * 1000) / result.requests;
      return values;
    }),
};

const download: Scenario = {
  id: "download",
  title: "3. 1 MiB downloads (wrk, 8 connections)",
  backend: "nginx",
  direct: true,
  metrics: [
    { key: "mbps", label: "1 MiB downloads", unit: "MB/s", better: "higher" },
    cpuMetric("MB", "ms"),
  ],
  run: (context, name) =>
    withContender(context, name, async (running) => {
      const result = await warmAndRunWrk(context, running, "/large.bin", 8);
      const values: Record<string, number> = {
        mbps: result.bytes / result.durationSeconds / 1e6,
      };
      if (name !== "direct") values.cpu = result.cpuMillis / (result.bytes / 1e6);
      return values;
    }),
};

const upload: Scenario = {
  id: "upload",
  title: "4. one large upload (curl -T, Content-Length)",
  backend: "aux",
  direct: true,
  metrics: [
    { key: "mbps", label: "upload", unit: "MB/s", better: "higher" },
    { key: "peakRss", label: "peak RSS", unit: "MiB", better: "lower" },
  ],
  run: (context, name) =>
    withContender(context, name, async (running) => {
      const { uploadBytes } = context.settings;
      const url = `${running.origin}/upload`;
      const result = await uploadFile(url, context.uploadPath, uploadBytes, context.loadCpus);
      // VmHWM is each process's peak since it started, and every scenario starts a fresh one.
      const peak = sumMemory(running.pids(), "VmHWM");
      const values: Record<string, number> = { mbps: result.bytesPerSecond / 1e6 };
      if (name !== "direct") values.peakRss = peak / MIB;
      return values;
    }),
};

const idle: Scenario = {
  id: "idle",
  title: "5. idle keep-alive connections, each after one request",
  backend: "nginx",
  direct: false,
  metrics: [
    { key: "rss", label: "RSS with idle connections", unit: "MiB", better: "lower" },
    { key: "answered", label: "connections answered", unit: "", better: "higher" },
  ],
  run: (context, name) =>
    withContender(context, name, async (running) => {
      const count = context.settings.idleConnections;
      const connections = await openIdleConnections(running.origin, "/small", count);
      await sleep(1000);
      const rss = sumMemory(running.pids(), "VmRSS");
      connections.close();
      return { rss: rss / MIB, answered: connections.answered };
    }),
};

const webSocket: Scenario = {
  id: "websocket",
  title: "6. WebSocket echo (16 connections, one 64-byte message in flight each)",
  backend: "aux",
  direct: true,
  metrics: [{ key: "messages", label: "echoes/s", unit: "msg/s", better: "higher" }],
  run: (context, name) =>
    withContender(context, name, async (running) => {
      const url = `${running.origin.replace(/^http/, "ws")}/ws`;
      await runWebSocketEcho(url, 16, context.settings.warmupSeconds);
      return { messages: await runWebSocketEcho(url, 16, context.settings.seconds) };
    }),
};

const startup: Scenario = {
  id: "startup",
  title: "7. start-up: spawn to first proxied 200",
  backend: "nginx",
  direct: false,
  metrics: [{ key: "ms", label: "start-up (median)", unit: "ms", better: "lower" }],
  async run(context, name) {
    const times: number[] = [];
    for (let i = 0; i < context.settings.startupRepeats; i++) {
      const running = await context.start(name);
      times.push(running.startupMs);
      await running.stop();
    }
    return { ms: median(times) };
  },
};

/** The scenarios in the order they run and print. */
export const SCENARIOS: Scenario[] = [
  keepAlive,
  handshakes,
  download,
  upload,
  idle,
  webSocket,
  startup,
];

/** Returns the median of `values`, or NaN for none. */
export function median(values: number[]): number {
  if (values.length === 0) return Number.NaN;
  const sorted = [...values].sort((a, b) => a - b);
  const middle = Math.floor(sorted.length / 2);
  return sorted.length % 2 === 1 ? sorted[middle]! : (sorted[middle - 1]! + sorted[middle]!) / 2;
}
