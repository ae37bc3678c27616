// Fuzzes the compiled ssl-proxy for a bounded time over loopback: mutated and random HTTP/1.1
// requests over TLS, random bytes before or instead of a TLS handshake, and random HTTP/2 frames.
// Between rounds it checks that the proxy still responds correctly to a normal request and samples
// its RSS. Usage: npm run fuzz -- [--seconds 60] [--seed N] [--binary PATH]
// Exits 1 when the proxy died, sent a wrong response to a normal request, or sent a 500 for a
// fuzz case. It also exits 1 when its RSS grew by more than --maxGrowthMB (default 64) from the
// first to the last quarter of the samples. Cases of a failing round are saved under test/.tmp.
import { mkdirSync, readFileSync, writeFileSync } from "node:fs";
import { connect as connectTcp, type Socket } from "node:net";
import { join, resolve } from "node:path";
import { connect as connectTls } from "node:tls";
import { parseArgs } from "node:util";
import { startProxy, type ProxyProcess } from "../test/helpers.ts";

const ROOT = resolve(import.meta.dir, "..");
const CASES_PER_ROUND = 40;
const CONCURRENCY = 8;
// How long one case waits for the proxy to respond or close before it gives up.
const CASE_WAIT_MS = 1_500;
const HEALTH_BODY = "healthy";

/** One fuzz input: where its bytes go and the bytes themselves. */
interface FuzzCase {
  kind: "http1" | "random-tls" | "raw-tcp" | "h2";
  bytes: Buffer;
}

/** The result of one fuzz input: a status code, or how the connection ended. */
type Outcome = string;

const { values: args } = parseArgs({
  options: {
    seconds: { type: "string", default: "60" },
    seed: { type: "string" },
    binary: { type: "string" },
    maxGrowthMB: { type: "string", default: "64" },
  },
});
const seconds = Number(args.seconds);
const seed = args.seed === undefined ? Date.now() % 2 ** 31 : Number(args.seed);
const maxGrowthMB = Number(args.maxGrowthMB);
const binary =
  args.binary ?? process.env.SSL_PROXY_BINARY ?? join(ROOT, "dist/ssl-proxy-linux-amd64");
if (!(seconds > 0) || !Number.isInteger(seed) || !(maxGrowthMB > 0)) {
  console.error("--seconds and --maxGrowthMB must be positive numbers, and --seed an integer");
  process.exit(2);
}

/** mulberry32: a small seeded generator, so that a run can be repeated with --seed. */
function createRandom(initial: number) {
  let state = initial >>> 0;
  const next = () => {
    state = (state + 0x6d2b79f5) >>> 0;
    let t = state;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 2 ** 32;
  };
  const int = (max: number) => Math.floor(next() * max);
  const pick = <T>(items: readonly T[]): T => items[int(items.length)]!;
  const bytes = (length: number) => Buffer.from(Array.from({ length }, () => int(256)));
  return { next, int, pick, bytes };
}

const random = createRandom(seed);

const TEMPLATES = [
  "GET / HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
  "GET /a/b?c=d&e=%20 HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: */*\r\nCookie: a=b\r\n\r\n",
  "POST /upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 5\r\n\r\nhello",
  "POST /chunked HTTP/1.1\r\nHost: 127.0.0.1\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n",
  "GET /ws HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
  "HEAD / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n",
  "OPTIONS * HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
  "PUT /x HTTP/1.1\r\nHost: 127.0.0.1\r\nExpect: 100-continue\r\nContent-Length: 3\r\n\r\nabc",
];

const SNIPPETS = [
  "\r\n",
  "\n",
  "\r",
  "\0",
  " ",
  ":",
  ",",
  "Content-Length: 3\r\n",
  "Content-Length: 99999999999999999999\r\n",
  "Transfer-Encoding: chunked\r\n",
  "Transfer-Encoding: xchunked\r\n",
  "Host: evil.example\r\n",
  "Connection: close, host, content-length\r\n",
  "\r\n 1\r\n",
  "ffffffffffffffff\r\n",
  "GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n",
  "%00",
  "/../../../etc/passwd",
  "\u00ff\u00fe",
];

/** Applies 1 to 4 random mutations to a request template. */
function mutateRequest(template: string): Buffer {
  let bytes: Buffer = Buffer.from(template, "latin1");
  const count = 1 + random.int(4);
  for (let i = 0; i < count; i += 1) {
    const at = random.int(bytes.length + 1);
    switch (random.int(8)) {
      case 0: {
        // Flip one bit.
        const copy = Buffer.from(bytes);
        if (copy.length > 0) copy[at % copy.length]! ^= 1 << random.int(8);
        bytes = copy;
        break;
      }
      case 1:
        bytes = bytes.subarray(0, at);
        break;
      case 2:
        bytes = Buffer.concat([
          bytes.subarray(0, at),
          random.bytes(1 + random.int(16)),
          bytes.subarray(at),
        ]);
        break;
      case 3:
        bytes = Buffer.concat([
          bytes.subarray(0, at),
          Buffer.from(random.pick(SNIPPETS), "latin1"),
          bytes.subarray(at),
        ]);
        break;
      case 4: {
        const header = `X-Big: ${"a".repeat(random.pick([100, 8_000, 16_000, 17_000, 70_000]))}\r\n`;
        bytes = insertAfterRequestLine(bytes, header);
        break;
      }
      case 5: {
        const lines = Array.from(
          { length: random.pick([10, 150, 198, 199, 500]) },
          (_, n) => `X-${n}: v\r\n`,
        );
        bytes = insertAfterRequestLine(bytes, lines.join(""));
        break;
      }
      case 6: {
        // Repeat one header line of the template.
        const text = bytes.toString("latin1");
        const lines = text.split("\r\n");
        const index = 1 + random.int(Math.max(1, lines.length - 2));
        lines.splice(index, 0, lines[index] ?? "");
        bytes = Buffer.from(lines.join("\r\n"), "latin1");
        break;
      }
      default:
        // Delete a few bytes.
        bytes = Buffer.concat([bytes.subarray(0, at), bytes.subarray(at + 1 + random.int(8))]);
    }
  }
  return bytes;
}

function insertAfterRequestLine(bytes: Buffer, text: string): Buffer {
  const lineEnd = bytes.indexOf("\r\n");
  const at = lineEnd === -1 ? bytes.length : lineEnd + 2;
  return Buffer.concat([bytes.subarray(0, at), Buffer.from(text, "latin1"), bytes.subarray(at)]);
}

/** Returns random HTTP/2 frames (RFC 9113 section 4.1) after the connection preface. */
function randomHttp2(): Buffer {
  const frames = [Buffer.from("PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", "latin1")];
  // An empty SETTINGS frame first, as a client must send.
  frames.push(Buffer.from([0, 0, 0, 4, 0, 0, 0, 0, 0]));
  for (let i = 1 + random.int(6); i > 0; i -= 1) {
    const payload = random.bytes(random.int(64));
    const header = Buffer.alloc(9);
    header.writeUIntBE(random.next() < 0.9 ? payload.length : random.int(2 ** 24), 0, 3);
    header[3] = random.int(11); // DATA (0) to CONTINUATION (9), and one unknown type
    header[4] = random.int(256);
    header.writeUInt32BE(random.pick([0, 1, 3, random.int(2 ** 31)]), 5);
    frames.push(header, payload);
  }
  return Buffer.concat(frames);
}

function createCase(): FuzzCase {
  const roll = random.next();
  if (roll < 0.6) return { kind: "http1", bytes: mutateRequest(random.pick(TEMPLATES)) };
  if (roll < 0.7) return { kind: "random-tls", bytes: random.bytes(1 + random.int(2_000)) };
  if (roll < 0.85) {
    // Either pure garbage, or a TLS record header (RFC 8446 section 5.1) with a random body.
    const garbage = random.bytes(1 + random.int(600));
    if (random.next() < 0.5) garbage.set([random.pick([0x14, 0x15, 0x16, 0x17]), 3, random.int(5)]);
    return { kind: "raw-tcp", bytes: garbage };
  }
  return { kind: "h2", bytes: randomHttp2() };
}

/** Sends one case to the proxy and returns its response status, or how the connection ended. */
function sendCase(port: number, fuzzCase: FuzzCase): Promise<Outcome> {
  return new Promise((done) => {
    let socket: Socket;
    let received = "";
    const finish = (outcome: Outcome) => {
      clearTimeout(timer);
      socket.destroy();
      done(outcome);
    };
    const timer = setTimeout(() => finish(statusOf(received) ?? "no answer"), CASE_WAIT_MS);
    const write = () => socket.write(fuzzCase.bytes);
    if (fuzzCase.kind === "raw-tcp") {
      socket = connectTcp({ host: "127.0.0.1", port }, write);
    } else {
      const alpn = fuzzCase.kind === "h2" ? "h2" : "http/1.1";
      const tls = { host: "127.0.0.1", port, rejectUnauthorized: false, ALPNProtocols: [alpn] };
      socket = connectTls(tls, write);
    }
    socket.on("data", (chunk: Buffer) => {
      received += chunk.toString("latin1");
    });
    socket.on("error", () => finish(statusOf(received) ?? "error"));
    socket.on("close", () => finish(statusOf(received) ?? "closed"));
  });
}

function statusOf(received: string): string | undefined {
  if (received.startsWith("PRI") || /^\0\0.\x04/s.test(received)) return "h2 frames";
  return /^HTTP\/1\.[01] (\d{3})/.exec(received)?.[1];
}

/** Runs `tasks` with at most CONCURRENCY at a time. */
async function runLimited<T>(tasks: (() => Promise<T>)[]): Promise<T[]> {
  const results: T[] = [];
  let nextIndex = 0;
  const worker = async () => {
    while (nextIndex < tasks.length) {
      const index = nextIndex++;
      results[index] = await tasks[index]!();
    }
  };
  await Promise.all(Array.from({ length: CONCURRENCY }, worker));
  return results;
}

function residentMegabytes(pid: number): number {
  const status = readFileSync(`/proc/${pid}/status`, "utf8");
  return Number(/^VmRSS:\s+(\d+) kB/m.exec(status)![1]) / 1024;
}

/** Requests /health through the proxy and returns a description of what was wrong, if anything. */
async function checkHealth(proxy: ProxyProcess, round: number): Promise<string | undefined> {
  try {
    const res = await fetch(`https://127.0.0.1:${proxy.port}/health?round=${round}`, {
      tls: { rejectUnauthorized: false },
      signal: AbortSignal.timeout(5_000),
    });
    const body = await res.text();
    if (res.status !== 200 || body !== `${HEALTH_BODY} ${round}`) {
      return `status ${res.status}, body ${JSON.stringify(body.slice(0, 80))}`;
    }
    return undefined;
  } catch (error) {
    return `request failed: ${error instanceof Error ? error.message : String(error)}`;
  }
}

/** Saves the cases of a failing round so that they can be replayed and turned into tests. */
function saveCases(name: string, cases: FuzzCase[]): string {
  const folder = join(ROOT, "test/.tmp");
  mkdirSync(folder, { recursive: true });
  const path = join(folder, `fuzz-${seed}-${name}.json`);
  const entries = cases.map((entry) => ({
    kind: entry.kind,
    base64: entry.bytes.toString("base64"),
  }));
  writeFileSync(path, JSON.stringify(entries, null, 1));
  return path;
}

const backend = Bun.serve({
  hostname: "127.0.0.1",
  port: 0,
  development: false,
  // Any failure of its own is a 418, so that a 500 can only come from the proxy.
  error: () => new Response("backend error\n", { status: 418 }),
  async fetch(req) {
    const url = new URL(req.url);
    if (url.pathname === "/health")
      return new Response(`${HEALTH_BODY} ${url.searchParams.get("round")}`);
    // A body cut off by the client gets a 400.
    const body = await req.arrayBuffer().catch(() => undefined);
    if (!body) return new Response("incomplete body\n", { status: 400 });
    return new Response(`${req.method} ${url.pathname} ${body.byteLength}\n`);
  },
});
const proxy = await startProxy({ argv: [binary] }, ["-to", `http://127.0.0.1:${backend.port}`]);
console.log(`fuzzing ${binary} on port ${proxy.port} for ${seconds}s with --seed ${seed}`);

const outcomes = new Map<Outcome, number>();
const sentByKind = new Map<FuzzCase["kind"], number>();
const rssSamples: number[] = [residentMegabytes(proxy.proc.pid)];
const failures: string[] = [];
const deadline = performance.now() + seconds * 1_000;
let round = 0;
let sent = 0;

while (performance.now() < deadline && proxy.proc.exitCode === null) {
  round += 1;
  const cases = Array.from({ length: CASES_PER_ROUND }, createCase);
  const results = await runLimited(cases.map((entry) => () => sendCase(proxy.port, entry)));
  sent += cases.length;
  for (const [index, outcome] of results.entries()) {
    outcomes.set(outcome, (outcomes.get(outcome) ?? 0) + 1);
    const kind = cases[index]!.kind;
    sentByKind.set(kind, (sentByKind.get(kind) ?? 0) + 1);
    if (outcome === "500") {
      failures.push(
        `round ${round}: a ${kind} case got 500 (${saveCases(`500-${round}-${index}`, [cases[index]!])})`,
      );
    }
  }
  if (proxy.proc.exitCode !== null) {
    failures.push(
      `round ${round}: the proxy exited with ${proxy.proc.exitCode} (${saveCases(`exit-${round}`, cases)})`,
    );
    break;
  }
  const problem = await checkHealth(proxy, round);
  if (problem)
    failures.push(
      `round ${round}: a normal request got ${problem} (${saveCases(`health-${round}`, cases)})`,
    );
  rssSamples.push(residentMegabytes(proxy.proc.pid));
}

const alive = proxy.proc.exitCode === null;
const quarter = Math.max(1, Math.floor(rssSamples.length / 4));
const earlyPeak = Math.max(...rssSamples.slice(0, quarter));
const lateLow = Math.min(...rssSamples.slice(-quarter));
if (lateLow - earlyPeak > maxGrowthMB) {
  failures.push(
    `RSS grew from at most ${earlyPeak.toFixed(1)} MB early to at least ${lateLow.toFixed(1)} MB late`,
  );
}
const logLines = proxy.stderr().split("\n").filter(Boolean);
if (alive) await proxy.stop();
backend.stop(true);

const format = (map: Map<string, number>) =>
  [...map]
    .sort(([a], [b]) => a.localeCompare(b))
    .map(([key, count]) => `${key}: ${count}`)
    .join(", ");
console.log(`requests sent: ${sent} in ${round} rounds (${format(sentByKind)})`);
console.log(`responses: ${format(outcomes)}`);
console.log(`proxy still correct: ${alive && failures.length === 0 ? "yes" : "no"}`);
console.log(
  `RSS MB: start ${rssSamples[0]!.toFixed(1)}, peak ${Math.max(...rssSamples).toFixed(1)}, end ${rssSamples.at(-1)!.toFixed(1)}`,
);
console.log(`proxy stderr lines: ${logLines.length}`);
const distinct = new Map<string, number>();
for (const line of logLines) distinct.set(line, (distinct.get(line) ?? 0) + 1);
for (const [line, count] of [...distinct].slice(0, 10)) console.log(`  ${count} x ${line}`);
for (const failure of failures) console.log(`FAILED ${failure}`);
process.exit(failures.length === 0 ? 0 : 1);
