// Machine facts, tool checks, CPU pinning, and CPU time and memory readings for the benchmark.
import { readFileSync } from "node:fs";
import { cpus } from "node:os";
import { createServer } from "node:net";

/** A program the benchmark runs, with the Debian package that installs it. */
interface Tool {
  command: string;
  debianPackage: string;
}

const TOOLS: Tool[] = [
  { command: "nginx", debianPackage: "nginx-light" },
  { command: "caddy", debianPackage: "caddy" },
  { command: "wrk", debianPackage: "wrk" },
  { command: "curl", debianPackage: "curl" },
  { command: "openssl", debianPackage: "openssl" },
  { command: "taskset", debianPackage: "util-linux" },
];

/**
 * Returns an error message with the apt-get line to run when a program that the benchmark
 * needs is not on PATH, or undefined when all are there.
 */
export function findMissingTools(): string | undefined {
  const missing = TOOLS.filter((tool) => Bun.which(tool.command) === null);
  if (missing.length === 0) return undefined;
  const names = missing.map((tool) => tool.command).join(", ");
  const packages = [...new Set(missing.map((tool) => tool.debianPackage))].join(" ");
  return `missing ${names}: install with "apt-get install -y ${packages}" (as root)`;
}

/** The machine the numbers come from. */
export interface MachineInfo {
  cores: number;
  cpuModel: string;
  kernel: string;
  /** The 1-minute load average when the run started, as a hint of other work on the machine. */
  loadAverage: number;
}

/** Reads the core count and CPU model from /proc/cpuinfo, and the kernel and load average. */
export function readMachineInfo(): MachineInfo {
  const cpuinfo = readFileSync("/proc/cpuinfo", "utf8");
  const model = /^model name\s*:\s*(.+)$/m.exec(cpuinfo)?.[1] ?? cpus()[0]?.model ?? "unknown";
  const cores = (cpuinfo.match(/^processor\s*:/gm) ?? []).length || cpus().length;
  const kernel = readFileSync("/proc/sys/kernel/osrelease", "utf8").trim();
  const loadAverage = Number(readFileSync("/proc/loadavg", "utf8").split(" ")[0]);
  return { cores, cpuModel: model.trim(), kernel, loadAverage };
}

/** Runs `argv` and returns its stdout and stderr together, trimmed; "unknown" if it fails to start. */
export function readCommandOutput(argv: string[]): string {
  try {
    const result = Bun.spawnSync(argv, { stdout: "pipe", stderr: "pipe" });
    return `${result.stdout.toString()}${result.stderr.toString()}`.trim();
  } catch {
    return "unknown";
  }
}

/** Returns the first line of `text` that matches `pattern`, or the first line. */
export function pickLine(text: string, pattern: RegExp): string {
  return text.split("\n").find((line) => pattern.test(line)) ?? text.split("\n")[0] ?? "";
}

/** The CPUs that the load generators and the proxy run on. An undefined entry is not pinned. */
export interface Pinning {
  /** CPU list (taskset syntax) for the proxy under test. */
  proxy: string | undefined;
  /** CPU list for the load generators and the backends. */
  load: string | undefined;
}

/**
 * Chooses the pinning: with two or more cores and pinning requested, the proxy runs on CPU 0,
 * and the load generators, this script and the backends share CPU 1. Other programs on the
 * machine are not moved.
 */
export function choosePinning(cores: number, requested: boolean): Pinning {
  if (!requested || cores < 2) return { proxy: undefined, load: undefined };
  return { proxy: "0", load: "1" };
}

/** Prefixes `argv` with taskset when `cpus` is set. */
export function pinned(cpus: string | undefined, argv: string[]): string[] {
  return cpus === undefined ? argv : ["taskset", "-c", cpus, ...argv];
}

/** Moves this process (its threads included) to `cpus`, for the clients it runs itself. */
export function pinSelf(cpus: string | undefined): void {
  if (cpus === undefined) return;
  Bun.spawnSync(["taskset", "-a", "-p", "-c", cpus, String(process.pid)], { stdout: "ignore" });
}

/** Returns the process ids of `pid` and all its descendants, from /proc. */
export function processTree(pid: number): number[] {
  const tree = [pid];
  for (let i = 0; i < tree.length; i++) {
    for (const child of readChildren(tree[i]!)) tree.push(child);
  }
  return tree;
}

function readChildren(pid: number): number[] {
  try {
    const text = readFileSync(`/proc/${pid}/task/${pid}/children`, "utf8").trim();
    return text === "" ? [] : text.split(/\s+/).map(Number);
  } catch {
    return [];
  }
}

/**
 * Sums a /proc/PID/status memory field, in bytes, over `pids`: VmRSS for the resident set now,
 * VmHWM for each process's peak resident set since it started.
 */
export function sumMemory(pids: number[], field: "VmRSS" | "VmHWM"): number {
  let total = 0;
  for (const pid of pids) {
    try {
      const status = readFileSync(`/proc/${pid}/status`, "utf8");
      const kib = new RegExp(`^${field}:\\s+(\\d+) kB`, "m").exec(status)?.[1];
      total += Number(kib ?? 0) * 1024;
    } catch {
      // The process exited between listing and reading, so it uses no memory any more.
    }
  }
  return total;
}

/**
 * Sums the CPU time (user and system, all threads) that `pids` have used since they started, in
 * milliseconds, from /proc/PID/stat. The kernel counts it in clock ticks, 10 ms each here.
 */
export function sumCpuMillis(pids: number[]): number {
  const msPerTick = 1000 / CLOCK_TICKS_PER_SECOND;
  let total = 0;
  for (const pid of pids) {
    try {
      // The fields after the command name, which is in brackets and may contain spaces.
      const fields = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1]!.split(" ");
      total += (Number(fields[11]) + Number(fields[12])) * msPerTick;
    } catch {
      // The process exited between listing and reading.
    }
  }
  return total;
}

// USER_HZ, which Linux fixes at 100 on x86-64 (getconf CLK_TCK).
const CLOCK_TICKS_PER_SECOND = 100;

/** Returns a TCP port on 127.0.0.1 that was free a moment ago. */
export async function findFreePort(): Promise<number> {
  const server = createServer();
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done));
  const port = (server.address() as { port: number }).port;
  await new Promise((done) => server.close(done));
  return port;
}

/** Resolves after `ms` milliseconds. */
export function sleep(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}
