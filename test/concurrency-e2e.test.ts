import { describe, expect, test } from "bun:test";
import { writeFileSync } from "node:fs";
import { Agent, request } from "node:https";
import { join } from "node:path";
import { createSelfSignedCertificate } from "../src/certs.ts";
import { PROXY_COMMANDS, makeTempDir, startProxy } from "./helpers.ts";

// More than the 256 requests at a time that Bun's fetch runs by default, which a backend client
// built on fetch would hold back.
const CONCURRENT = 300;

/** TLS settings for a backend over https, and the extra flags that make ssl-proxy trust it. */
async function backendTls() {
  const pair = await createSelfSignedCertificate(["127.0.0.1"]);
  const ca = join(makeTempDir("backend-ca"), "ca.pem");
  writeFileSync(ca, pair.cert);
  return { tls: { cert: pair.cert, key: pair.key }, flags: ["-upstreamCA", ca] };
}

/**
 * Starts a backend that delays every response until `count` requests are open at once, as long
 * polls do, then responds to them all. Behind a proxy that runs fewer at a time, none completes.
 */
function startGatheringBackend(count: number, tls: { cert: string; key: string } | undefined) {
  const gathered = Promise.withResolvers<void>();
  let open = 0;
  const server = Bun.serve({
    hostname: "127.0.0.1",
    port: 0,
    idleTimeout: 60,
    ...(tls ? { tls } : {}),
    async fetch() {
      open += 1;
      if (open === count) gathered.resolve();
      await gathered.promise;
      return new Response("released\n");
    },
  });
  return { url: server.url.href, stop: () => server.stop(true), open: () => open };
}

/** Sends one GET through the proxy with node:https, whose client has no such limit. */
function get(port: number, agent: Agent): Promise<string> {
  return new Promise((resolve, reject) => {
    const outgoing = request(
      { host: "127.0.0.1", port, path: "/poll", agent, rejectUnauthorized: false },
      (incoming) => {
        let body = "";
        incoming.on("data", (chunk) => (body += chunk));
        incoming.on("end", () => resolve(body));
      },
    );
    outgoing.on("error", reject);
    outgoing.end();
  });
}

describe.each(PROXY_COMMANDS)("concurrency ($name)", (command) => {
  test.each(["http", "https"])(
    `holds ${CONCURRENT} long requests to an %s backend open at once`,
    async (scheme) => {
      const secure = scheme === "https" ? await backendTls() : undefined;
      const backend = startGatheringBackend(CONCURRENT, secure?.tls);
      const proxy = await startProxy(command, ["-to", backend.url, ...(secure?.flags ?? [])]);
      const agent = new Agent({ keepAlive: true, maxSockets: Infinity });
      try {
        const answers = Promise.all(
          Array.from({ length: CONCURRENT }, () => get(proxy.port, agent)),
        );
        const outcome = await Promise.race([answers, Bun.sleep(20_000).then(() => "stalled")]);

        expect({ outcome, open: backend.open() }).toEqual({
          outcome: Array(CONCURRENT).fill("released\n"),
          open: CONCURRENT,
        });
      } finally {
        agent.destroy();
        await proxy.stop();
        backend.stop();
      }
    },
    40_000,
  );
});
