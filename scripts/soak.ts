// Soak run: mixed traffic through the compiled ssl-proxy for a bounded time, on loopback only.
// Prints errors and the proxy's resident memory over time, and exits 1 on any error or on a
// memory growth trend. `npm run soak -- --seconds 600` (the default), `--seconds 60` for a try.
import { readFileSync } from "node:fs";
import { mkdtemp, rm } from "node:fs/promises";
import { tmpdir } from "node:os";
import { join, resolve } from "node:path";
import { parseArgs } from "node:util";

const { values } = parseArgs({
  options: {
    seconds: { type: "string", default: "600" },
    workers: { type: "string", default: "16" },
    binary: { type: "string", default: resolve(import.meta.dir, "../dist/ssl-proxy-linux-amd64") },
  },
});
const SECONDS = Number(values.seconds);
const WORKERS = Number(values.workers);
const SAMPLE_EVERY_MS = Math.min(30_000, Math.max(2_000, (SECONDS * 1000) / 20));
/** Memory growth from the middle third to the last third of the run that counts as a trend. */
const MAX_TREND_BYTES = 16 * 2 ** 20;

const MIB = 2 ** 20;
const ONE_MIB = new Uint8Array(MIB).fill(97);
const UPLOAD = new Uint8Array(256 * 1024).fill(98);
const encoder = new TextEncoder();

function startBackend() {
  return Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 60,
    async fetch(req, server) {
      const path = new URL(req.url).pathname;
      if (path === "/ws" && server.upgrade(req, { data: undefined })) return;
      if (path === "/1m") return new Response(ONE_MIB);
      if (path === "/upload") return new Response(`${(await req.arrayBuffer()).byteLength}`);
      if (path === "/events") {
        let sent = 0;
        const events = new ReadableStream<Uint8Array>({
          async pull(controller) {
            if (sent === 3) return controller.close();
            await Bun.sleep(50);
            sent += 1;
            controller.enqueue(encoder.encode(`data: ${sent}\n\n`));
          },
        });
        return new Response(events, { headers: { "content-type": "text/event-stream" } });
      }
      return new Response("small\n");
    },
    websocket: { message: (ws, message) => void ws.send(message) },
  });
}

async function startProxy(backendUrl: string, dataDir: string) {
  const root = process.getuid?.() === 0 ? ["-user", "root"] : [];
  const proc = Bun.spawn(
    [values.binary!, ...root, "-from", "127.0.0.1:0", "-to", backendUrl, "-dataDir", dataDir],
    { stdout: "pipe", stderr: "pipe" },
  );
  const reader = proc.stdout.getReader();
  let text = "";
  while (!/^https:\/\/\S+:(\d+) -> /m.test(text)) {
    const { value, done } = await reader.read();
    if (done) throw new Error(`ssl-proxy exited: ${await new Response(proc.stderr).text()}`);
    text += new TextDecoder().decode(value);
  }
  // Keeps reading what the proxy prints, so that a full pipe never blocks it.
  void (async () => {
    while (!(await reader.read()).done);
  })();
  const stderr = new Response(proc.stderr).text();
  return { proc, port: Number(/^https:\/\/\S+:(\d+) -> /m.exec(text)![1]), stderr };
}

function residentBytes(pid: number): number {
  const kib = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "latin1"))![1];
  return Number(kib) * 1024;
}

type Kind = "small" | "new-connection" | "download" | "upload" | "events" | "websocket";
const KINDS: Kind[] = [
  "small",
  "small",
  "small",
  "new-connection",
  "download",
  "upload",
  "events",
  "websocket",
];

/** Sends one exchange of `kind` and throws when the response is not the expected one. */
async function exchange(base: string, kind: Kind): Promise<void> {
  const tls = { rejectUnauthorized: false };
  const check = (ok: boolean, what: string) => {
    if (!ok) throw new Error(`${kind}: ${what}`);
  };
  switch (kind) {
    case "small":
    case "new-connection": {
      const res = await fetch(`${base}/small`, { tls, keepalive: kind === "small" } as RequestInit);
      check(res.status === 200 && (await res.text()) === "small\n", `status ${res.status}`);
      return;
    }
    case "download": {
      const res = await fetch(`${base}/1m`, { tls } as RequestInit);
      check((await res.arrayBuffer()).byteLength === MIB, "short body");
      return;
    }
    case "upload": {
      const res = await fetch(`${base}/upload`, {
        method: "POST",
        body: UPLOAD,
        tls,
      } as RequestInit);
      check((await res.text()) === String(UPLOAD.length), "upload size");
      return;
    }
    case "events": {
      const res = await fetch(`${base}/events`, { tls } as RequestInit);
      check((await res.text()) === "data: 1\n\ndata: 2\n\ndata: 3\n\n", "events");
      return;
    }
    case "websocket": {
      const ws = new WebSocket(`${base.replace("https", "wss")}/ws`, { tls } as object);
      await new Promise<void>((done, fail) => {
        let echoed = 0;
        ws.onopen = () => ws.send("m0");
        ws.onmessage = (event) => {
          check(event.data === `m${echoed}`, "echo");
          echoed += 1;
          if (echoed === 10) ws.close();
          else ws.send(`m${echoed}`);
        };
        ws.onclose = () => (echoed === 10 ? done() : fail(new Error("websocket: closed early")));
        ws.onerror = () => fail(new Error("websocket: error"));
      });
    }
  }
}

function median(values: number[]): number {
  const sorted = [...values].sort((a, b) => a - b);
  return sorted[Math.floor(sorted.length / 2)] ?? 0;
}

const dataDir = await mkdtemp(join(tmpdir(), "ssl-proxy-soak-"));
const backend = startBackend();
const proxy = await startProxy(backend.url.href, dataDir);
const base = `https://127.0.0.1:${proxy.port}`;
const done = new Map<Kind, number>();
const errors = new Map<string, number>();
const samples: { second: number; rss: number }[] = [];
const started = performance.now();
const deadline = started + SECONDS * 1000;

console.log(
  `soak: ${SECONDS} s, ${WORKERS} workers, ssl-proxy ${values.binary} on port ${proxy.port}`,
);
const sampler = setInterval(() => {
  const second = Math.round((performance.now() - started) / 1000);
  const rss = residentBytes(proxy.proc.pid);
  samples.push({ second, rss });
  const total = [...done.values()].reduce((sum, count) => sum + count, 0);
  const failed = [...errors.values()].reduce((sum, count) => sum + count, 0);
  console.log(
    `${String(second).padStart(5)} s  ${String(total).padStart(8)} exchanges  ${failed} errors  RSS ${(rss / MIB).toFixed(1)} MiB`,
  );
}, SAMPLE_EVERY_MS);

await Promise.all(
  Array.from({ length: WORKERS }, async () => {
    while (performance.now() < deadline) {
      const kind = KINDS[Math.floor(Math.random() * KINDS.length)]!;
      try {
        await exchange(base, kind);
        done.set(kind, (done.get(kind) ?? 0) + 1);
      } catch (error) {
        const key = error instanceof Error ? error.message : String(error);
        errors.set(key, (errors.get(key) ?? 0) + 1);
      }
    }
  }),
);
clearInterval(sampler);

const alive = proxy.proc.exitCode === null;
proxy.proc.kill("SIGTERM");
const exitCode = await proxy.proc.exited;
backend.stop(true);
await rm(dataDir, { recursive: true, force: true });

const third = Math.floor(samples.length / 3);
const middle = median(samples.slice(third, 2 * third).map((sample) => sample.rss));
const last = median(samples.slice(2 * third).map((sample) => sample.rss));
const trend = last - middle;
console.log("\nexchanges by kind:", Object.fromEntries(done));
console.log("errors:", errors.size === 0 ? "none" : Object.fromEntries(errors));
console.log(
  `RSS: start ${((samples[0]?.rss ?? 0) / MIB).toFixed(1)} MiB, peak ${(Math.max(...samples.map((s) => s.rss)) / MIB).toFixed(1)} MiB, ` +
    `median of the middle third ${(middle / MIB).toFixed(1)} MiB, of the last third ${(last / MIB).toFixed(1)} MiB`,
);
console.log(`proxy alive at the end: ${alive}, exit status after SIGTERM: ${exitCode}`);
const stderr = (await proxy.stderr).trim();
if (stderr) console.log(`proxy stderr:\n${stderr}`);

const failed = errors.size > 0 || !alive || exitCode !== 0 || trend > MAX_TREND_BYTES;
console.log(failed ? "soak: FAILED" : "soak: passed (no errors, no growth trend)");
process.exit(failed ? 1 : 0);
