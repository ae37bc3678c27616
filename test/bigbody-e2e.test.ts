import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { readFileSync } from "node:fs";
import { truncate } from "node:fs/promises";
import { join } from "node:path";
import { PROXY_COMMANDS, makeTempDir, run, startProxy, type ProxyProcess } from "./helpers.ts";

const GIB = 2 ** 30;
/** How much the proxy's resident memory may grow while a 1 GiB body passes through. */
const MAX_GROWTH_BYTES = 64 * 2 ** 20;
const PIECE = new Uint8Array(256 * 1024).fill(120);

let backend: ReturnType<typeof Bun.serve>;
/** A sparse 1 GiB file: reading it costs no disk. */
let bigFile: string;

beforeAll(async () => {
  bigFile = join(makeTempDir("big"), "1GiB.bin");
  await Bun.write(bigFile, "");
  await truncate(bigFile, GIB);
  backend = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 120,
    maxRequestBodySize: 2 * GIB,
    async fetch(req) {
      if (req.method === "GET") {
        let sent = 0;
        const body = new ReadableStream<Uint8Array>({
          pull(controller) {
            if (sent >= GIB) return controller.close();
            controller.enqueue(PIECE);
            sent += PIECE.length;
          },
        });
        return new Response(body);
      }
      let received = 0;
      for await (const chunk of req.body!) received += chunk.length;
      return new Response(`received ${received} bytes\n`);
    },
  });
});

afterAll(() => backend.stop(true));

function residentBytes(pid: number): number {
  const kib = /VmRSS:\s+(\d+) kB/.exec(readFileSync(`/proc/${pid}/status`, "latin1"))?.[1];
  return Number(kib) * 1024;
}

/** Runs curl against the proxy while sampling the proxy's memory; returns curl's result and the growth. */
async function measure(proxy: ProxyProcess, curlArgs: string[]) {
  const url = `https://127.0.0.1:${proxy.port}/big`;
  await run(["curl", "-sk", "-o", "/dev/null", url]); // warm up the pools before the baseline
  const baseline = residentBytes(proxy.proc.pid);
  let peak = baseline;
  const sampler = setInterval(() => {
    peak = Math.max(peak, residentBytes(proxy.proc.pid));
  }, 50);
  try {
    const result = await run(["curl", "-sSk", ...curlArgs, url], { timeoutMs: 120_000 });
    return { result, growth: peak - baseline };
  } finally {
    clearInterval(sampler);
  }
}

describe.each(PROXY_COMMANDS)("1 GiB bodies ($name)", (command) => {
  let proxy: ProxyProcess;

  beforeAll(async () => {
    proxy = await startProxy(command, ["-to", backend.url.href]);
  });

  afterAll(() => proxy.stop());

  test("streams a 1 GiB download in bounded memory", async () => {
    const { result, growth } = await measure(proxy, ["-o", "/dev/null", "-w", "%{size_download}"]);

    expect(result.stdout).toBe(String(GIB));
    expect(growth).toBeLessThan(MAX_GROWTH_BYTES);
  }, 120_000);

  test("streams a 1 GiB upload with Content-Length in bounded memory", async () => {
    const { result, growth } = await measure(proxy, ["-T", bigFile]);

    expect(result.stdout).toBe(`received ${GIB} bytes\n`);
    expect(growth).toBeLessThan(MAX_GROWTH_BYTES);
  }, 120_000);

  test("streams a 1 GiB chunked upload in bounded memory", async () => {
    const { result, growth } = await measure(proxy, [
      "-H",
      "Transfer-Encoding: chunked",
      "-T",
      bigFile,
    ]);

    expect(result.stdout).toBe(`received ${GIB} bytes\n`);
    expect(growth).toBeLessThan(MAX_GROWTH_BYTES);
  }, 120_000);
});
