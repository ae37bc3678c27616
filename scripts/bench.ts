// Benchmarks ssl-proxy (the compiled binary) against nginx and Caddy as TLS reverse proxies in
// front of the same backend on loopback, and against the backend reached directly.
// Usage: bun scripts/bench.ts [--quick] [--rounds N] [--seconds S] [--json FILE]
//        [--binary FILE] [--no-pin] [--only ID,ID] [--proxy-args "FLAGS"]
import { existsSync, mkdirSync, mkdtempSync, rmSync, truncateSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join, resolve } from "node:path";
import { parseArgs } from "node:util";
import { createCertificate, startAuxBackend, startNginxBackend } from "./bench/backends.ts";
import { CONTENDER_NAMES, startContender, type ContenderName } from "./bench/contenders.ts";
import { formatTable, summarize, type Samples } from "./bench/report.ts";
import {
  SCENARIOS,
  type Scenario,
  type ScenarioContext,
  type Settings,
} from "./bench/scenarios.ts";
import {
  findMissingTools,
  choosePinning,
  pickLine,
  pinSelf,
  readCommandOutput,
  readMachineInfo,
  type Pinning,
} from "./bench/system.ts";
import { writeWrkScript } from "./bench/wrk.ts";

const ROOT = resolve(import.meta.dir, "..");

const { values: args } = parseArgs({
  options: {
    quick: { type: "boolean", default: false },
    rounds: { type: "string" },
    seconds: { type: "string" },
    json: { type: "string", default: join(ROOT, "dist/bench.json") },
    binary: { type: "string" },
    "no-pin": { type: "boolean", default: false },
    only: { type: "string" },
    "proxy-args": { type: "string", default: "" },
    soak: { type: "string" },
  },
});

const settings: Settings = args.quick
  ? {
      seconds: 2,
      warmupSeconds: 1,
      uploadBytes: 256 * 1024 ** 2,
      idleConnections: 1000,
      startupRepeats: 3,
    }
  : {
      seconds: 5,
      warmupSeconds: 1,
      uploadBytes: 1024 ** 3,
      idleConnections: 1000,
      startupRepeats: 7,
    };
if (args.seconds !== undefined) settings.seconds = positiveNumber("--seconds", args.seconds);
const rounds = positiveNumber("--rounds", args.rounds ?? (args.quick ? "1" : "3"));
if (!Number.isInteger(rounds)) fail(`--rounds must be a whole number, got "${args.rounds}"`);
const scenarios = selectScenarios(args.only);

const missingTools = findMissingTools();
if (missingTools !== undefined) fail(missingTools);
if (args.binary !== undefined && !existsSync(args.binary)) {
  fail(`--binary: file "${args.binary}" not found (build one with "npm run build")`);
}
const binary = args.binary ? resolve(args.binary) : buildBinary();
const machine = readMachineInfo();
const pinning = choosePinning(machine.cores, !args["no-pin"]);
pinSelf(pinning.load);
const versions = readVersions(binary);

printHeader(pinning);
const dir = mkdtempSync(join(tmpdir(), "ssl-proxy-bench-"));
try {
  const samples = await runScenarios(dir);
  const rows = summarize(samples, scenarios);
  console.log(`\n${formatTable(rows)}\n`);
  const report = { date: new Date().toISOString(), machine, versions, pinning, settings, rounds };
  mkdirSync(dirname(resolve(args.json)), { recursive: true });
  writeFileSync(args.json, `${JSON.stringify({ ...report, summary: rows, samples }, null, 2)}\n`);
  console.log(`results written to ${args.json}`);
} finally {
  rmSync(dir, { recursive: true, force: true });
}
if (args.soak !== undefined) {
  const seconds = String(positiveNumber("--soak", args.soak));
  console.log(`\nsoak run of ${seconds} s (scripts/soak.ts)`);
  const soak = Bun.spawnSync(
    [process.execPath, join(ROOT, "scripts/soak.ts"), "--seconds", seconds, "--binary", binary],
    { stdout: "inherit", stderr: "inherit" },
  );
  process.exitCode = soak.exitCode;
}

async function runScenarios(dir: string): Promise<Samples> {
  const certificate = createCertificate(dir);
  const uploadPath = join(dir, "upload.bin");
  writeFileSync(uploadPath, "");
  // A sparse file: it reads as zeros and takes no disk space.
  truncateSync(uploadPath, settings.uploadBytes);
  const backends = {
    nginx: await startNginxBackend(dir, pinning.load),
    aux: await startAuxBackend(dir, pinning.load),
  };
  const proxyArgs = args["proxy-args"].split(" ").filter((arg) => arg !== "");
  const samples: Samples = {};
  try {
    for (const scenario of scenarios) {
      const backendPort = backends[scenario.backend].port;
      const context: ScenarioContext = {
        settings,
        loadCpus: pinning.load,
        wrkScript: writeWrkScript(dir),
        uploadPath,
        start: (name) =>
          startContender(name, {
            backendPort,
            certificate,
            dir,
            cpus: pinning.proxy,
            binary,
            proxyArgs,
          }),
      };
      samples[scenario.id] = await runScenario(scenario, context);
    }
  } finally {
    await Promise.all([backends.nginx.server.stop(), backends.aux.server.stop()]);
  }
  return samples;
}

/** Runs every contender of `scenario` once per round, rotating their order each round. */
async function runScenario(scenario: Scenario, context: ScenarioContext) {
  console.log(`\n${scenario.title}`);
  const names = CONTENDER_NAMES.filter((name) => scenario.direct || name !== "direct");
  const byContender: Samples[string] = {};
  for (let round = 0; round < rounds; round++) {
    const order = names.map((_, i) => names[(i + round) % names.length]!);
    for (const name of order) {
      const values = await scenario.run(context, name);
      const entry = (byContender[name] ??= {});
      for (const [key, value] of Object.entries(values)) (entry[key] ??= []).push(value);
      console.log(`  round ${round + 1} ${name.padEnd(9)} ${describeValues(scenario, values)}`);
    }
  }
  return byContender;
}

function describeValues(scenario: Scenario, values: Record<string, number>): string {
  return scenario.metrics
    .filter((metric) => values[metric.key] !== undefined)
    .map((metric) => `${metric.label} ${values[metric.key]!.toFixed(2)} ${metric.unit}`.trim())
    .join(", ");
}

function buildBinary(): string {
  const outfile = join(ROOT, "dist/ssl-proxy-linux-amd64");
  console.log("building dist/ssl-proxy-linux-amd64 (pass --binary FILE to use another build)");
  const result = Bun.spawnSync([process.execPath, join(ROOT, "scripts/build.ts"), outfile], {
    cwd: ROOT,
    stdout: "ignore",
    stderr: "pipe",
  });
  if (result.exitCode !== 0) throw new Error(`build failed: ${result.stderr.toString()}`);
  return outfile;
}

function readVersions(binary: string): Record<string, string> {
  const bunPackage = Bun.spawnSync([process.execPath, "--version"]).stdout.toString().trim();
  const commit = readCommandOutput(["git", "-C", ROOT, "describe", "--always", "--dirty"]);
  return {
    "ssl-proxy": `${readCommandOutput([binary, "--version"])} (commit ${commit}, Bun ${bunPackage})`,
    nginx: readCommandOutput(["nginx", "-v"]).replace(/^nginx version: /, ""),
    caddy: readCommandOutput(["caddy", "version"]),
    wrk: pickLine(readCommandOutput(["wrk", "-v"]), /^wrk /),
    curl: pickLine(readCommandOutput(["curl", "--version"]), /^curl /),
    openssl: readCommandOutput(["openssl", "version"]),
  };
}

function printHeader(pinning: Pinning): void {
  console.log(`machine: ${machine.cores} cores, ${machine.cpuModel}, Linux ${machine.kernel}`);
  console.log(`load average at start: ${machine.loadAverage} (other work may be running)`);
  for (const [name, version] of Object.entries(versions)) console.log(`${name}: ${version}`);
  const pinText =
    pinning.proxy === undefined
      ? "not pinned"
      : `proxy on CPU ${pinning.proxy}; wrk, curl, the clients of this script and the backends on CPU ${pinning.load} (taskset)`;
  console.log(`pinning: ${pinText}`);
  console.log(
    `settings: ${rounds} round(s), ${settings.seconds} s per load run after a ${settings.warmupSeconds} s warm-up, ` +
      `upload ${settings.uploadBytes / 1024 ** 2} MiB, ${settings.idleConnections} idle connections, ` +
      `start-up median of ${settings.startupRepeats}`,
  );
}

function selectScenarios(only: string | undefined): Scenario[] {
  if (only === undefined) return SCENARIOS;
  const ids = only.split(",");
  const unknown = ids.filter((id) => !SCENARIOS.some((scenario) => scenario.id === id));
  if (unknown.length > 0) {
    const known = SCENARIOS.map((scenario) => scenario.id).join(", ");
    fail(`--only: unknown scenario "${unknown.join(",")}" (choose from ${known})`);
  }
  return SCENARIOS.filter((scenario) => ids.includes(scenario.id));
}

function positiveNumber(flag: string, value: string): number {
  const number = Number(value);
  if (!Number.isFinite(number) || number <= 0)
    fail(`${flag} must be a positive number, got "${value}"`);
  return number;
}

function fail(message: string): never {
  console.error(message);
  process.exit(1);
}
