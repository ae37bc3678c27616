// Starts Pebble, the test ACME CA, with pebble-challtestsrv as its DNS server, all on loopback.
// Checked against the Debian packages of Pebble 2.4.0 in /usr/bin.
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import type { Subprocess } from "bun";
import { findFreePort, makeTempDir, run } from "./helpers.ts";

/** A running Pebble and pebble-challtestsrv pair. */
export interface Pebble {
  /** The ACME directory URL, as in https://127.0.0.1:PORT/dir. */
  directoryUrl: string;
  /** The CA certificate (PEM file) that Pebble's own HTTPS certificate chains to, for -acmeCA. */
  caFile: string;
  /** The port that Pebble's validator connects to for HTTP-01 challenges. */
  httpPort: number;
  /** The port that Pebble's validator connects to for TLS-ALPN-01 challenges. */
  tlsPort: number;
  /** Fetches the root that issued certificates chain to, writes it to rootFile() and returns it. */
  rootPem(): Promise<string>;
  /** The PEM file that rootPem() writes. startPebble() has written it once already. */
  rootFile(): string;
  /** Makes the DNS server answer A queries for `name` with `address`, a 127.0.0.0/8 address. */
  pointName(name: string, address: string): Promise<void>;
  /** Makes `name` resolve to the default 127.0.0.1 again. */
  resetName(name: string): Promise<void>;
  /** Counts the orders that Pebble has created so far, failed ones included, from its log. */
  orderCount(): number;
  /** Counts the certificates that Pebble has issued so far, from its log. */
  issuedCount(): number;
  /** Pebble's stdout and stderr so far. */
  log(): string;
  /** Stops both processes and waits until they exit. Later calls return the same promise. */
  stop(): Promise<void>;
}

export interface PebbleOptions {
  /** The lifetime of issued certificates, in seconds. Pebble's default is about five years. */
  validitySeconds?: number;
  /** The HTTP-01 validation port. A free port of 127.0.0.1 unless given. */
  httpPort?: number;
  /** The TLS-ALPN-01 validation port. A free port of 127.0.0.1 unless given. */
  tlsPort?: number;
}

const READY_TIMEOUT_MS = 9_000;
const POLL_INTERVAL_MS = 50;
const STOP_TIMEOUT_MS = 3_000;
const MAX_START_ATTEMPTS = 3;

// Pebble 2.4.0 prints one such line for each new order, including orders that later fail.
const ORDER_LINE = /Added order "[^"]*" to the db/g;
const ISSUED_LINE = /Issued certificate serial \S+ for order/g;

// Instances that have not been stopped yet. They are killed when the test process exits, so a
// test that fails before its stop() leaves no servers behind.
const running = new Set<Subprocess>();
process.on("exit", () => {
  for (const proc of running) proc.kill("SIGKILL");
});

/**
 * Starts pebble-challtestsrv and Pebble on free loopback ports and waits until Pebble's directory
 * responds over HTTPS that chains to caFile. Rejects with both processes' output if either exits
 * or the directory does not respond within 9 s.
 */
export async function startPebble(options: PebbleOptions = {}): Promise<Pebble> {
  const folder = makeTempDir("pebble");
  const caFile = await writeServerCertificate(folder);
  const deadline = Date.now() + READY_TIMEOUT_MS;
  for (let attempt = 1; ; attempt++) {
    try {
      return await startOnce(folder, caFile, options, deadline);
    } catch (error) {
      // findFreePort() closes its socket before returning, so another process can take the port
      // before Pebble binds it. Fresh ports fix that case.
      const portTaken = error instanceof Error && /address already in use/.test(error.message);
      if (!portTaken || attempt === MAX_START_ATTEMPTS) throw error;
    }
  }
}

/** Writes a throwaway CA and a certificate for 127.0.0.1 and localhost, and returns the CA file. */
async function writeServerCertificate(folder: string): Promise<string> {
  const caKey = join(folder, "ca.key");
  const caFile = join(folder, "ca.pem");
  const extensions = join(folder, "server-ext.cnf");
  writeFileSync(
    extensions,
    [
      "basicConstraints = critical,CA:FALSE",
      "keyUsage = critical,digitalSignature",
      "extendedKeyUsage = serverAuth",
      "subjectAltName = DNS:localhost,IP:127.0.0.1",
      "",
    ].join("\n"),
  );
  const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-noenc"];
  const steps = [
    ["openssl", "req", "-x509", ...newKey, "-keyout", caKey, "-out", caFile, "-days", "2"]
      .concat(["-subj", "/CN=ssl-proxy test CA for Pebble HTTPS"])
      .concat(["-addext", "basicConstraints=critical,CA:TRUE"])
      .concat(["-addext", "keyUsage=critical,keyCertSign,cRLSign"]),
    ["openssl", "req", ...newKey, "-keyout", join(folder, "server.key")].concat([
      "-out",
      join(folder, "server.csr"),
      "-subj",
      "/CN=localhost",
    ]),
    ["openssl", "x509", "-req", "-in", join(folder, "server.csr"), "-days", "2"]
      .concat(["-CA", caFile, "-CAkey", caKey, "-CAcreateserial"])
      .concat(["-extfile", extensions, "-out", join(folder, "server.pem")]),
  ];
  for (const argv of steps) {
    const result = await run(argv);
    if (result.exitCode !== 0) {
      throw new Error(
        `${argv.slice(0, 2).join(" ")} failed (${result.exitCode}):\n${result.stderr}`,
      );
    }
  }
  return caFile;
}

/** Returns `count` distinct ports of 127.0.0.1 that were free a moment ago. */
async function findFreePorts(count: number, exclude: number[]): Promise<number[]> {
  const ports = new Set<number>();
  while (ports.size < count) {
    const port = await findFreePort();
    if (!exclude.includes(port)) ports.add(port);
  }
  return [...ports];
}

function collectOutput(stream: ReadableStream<Uint8Array>, sink: { text: string }): void {
  const decoder = new TextDecoder();
  (async () => {
    for await (const chunk of stream) sink.text += decoder.decode(chunk, { stream: true });
  })();
}

async function startOnce(
  folder: string,
  caFile: string,
  options: PebbleOptions,
  deadline: number,
): Promise<Pebble> {
  const given = [options.httpPort, options.tlsPort].filter((port) => port !== undefined);
  const free = await findFreePorts(6, given);
  const [acmePort, managementPort, dnsPort, dnsManagementPort] = free as [
    number,
    number,
    number,
    number,
  ];
  const httpPort = options.httpPort ?? free[4]!;
  const tlsPort = options.tlsPort ?? free[5]!;

  const configFile = join(folder, "pebble-config.json");
  const config: Record<string, unknown> = {
    listenAddress: `127.0.0.1:${acmePort}`,
    managementListenAddress: `127.0.0.1:${managementPort}`,
    certificate: join(folder, "server.pem"),
    privateKey: join(folder, "server.key"),
    httpPort,
    tlsPort,
    ocspResponderURL: "",
    externalAccountBindingRequired: false,
  };
  if (options.validitySeconds !== undefined) {
    config.certificateValidityPeriod = options.validitySeconds;
  }
  writeFileSync(configFile, JSON.stringify({ pebble: config }, null, 2));

  const env = {
    PATH: process.env.PATH ?? "/usr/bin:/bin",
    // Validate challenges at once instead of after a random delay.
    PEBBLE_VA_NOSLEEP: "1",
    // Accept every valid nonce, so clients see no random badNonce errors.
    PEBBLE_WFE_NONCEREJECT: "0",
    // Create a new authorization for every order, so every order runs a validation.
    PEBBLE_AUTHZREUSE: "0",
  };
  const dnsOutput = { text: "" };
  const dns = Bun.spawn(
    ["pebble-challtestsrv", "-management", `127.0.0.1:${dnsManagementPort}`]
      .concat(["-dns01", `127.0.0.1:${dnsPort}`])
      // The proxy under test serves the challenge responses, so challtestsrv serves none itself.
      .concat(["-http01", "", "-https01", "", "-tlsalpn01", ""])
      .concat(["-defaultIPv4", "127.0.0.1", "-defaultIPv6", ""]),
    { stdin: "ignore", stdout: "pipe", stderr: "pipe", cwd: folder, env },
  );
  running.add(dns);
  collectOutput(dns.stdout, dnsOutput);
  collectOutput(dns.stderr, dnsOutput);

  const pebbleOutput = { text: "" };
  const pebble = Bun.spawn(
    ["pebble", "-config", configFile, "-dnsserver", `127.0.0.1:${dnsPort}`],
    { stdin: "ignore", stdout: "pipe", stderr: "pipe", cwd: folder, env },
  );
  running.add(pebble);
  collectOutput(pebble.stdout, pebbleOutput);
  collectOutput(pebble.stderr, pebbleOutput);

  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= Promise.all([stopProcess(pebble), stopProcess(dns)]).then(() => {});
    return stopping;
  };

  const ca = await Bun.file(caFile).text();
  const directoryUrl = `https://127.0.0.1:${acmePort}/dir`;
  const managementUrl = `https://127.0.0.1:${managementPort}`;
  const dnsManagementUrl = `http://127.0.0.1:${dnsManagementPort}`;
  const rootFile = join(folder, "root.pem");

  try {
    await waitUntilReady({ pebble, dns, directoryUrl, dnsManagementUrl, ca, deadline });
  } catch (error) {
    await stop();
    const reason = error instanceof Error ? error.message : String(error);
    throw new Error(
      `${reason}\npebble output:\n${pebbleOutput.text}\npebble-challtestsrv output:\n${dnsOutput.text}`,
    );
  }

  const postToDns = async (path: string, body: object) => {
    const response = await fetch(`${dnsManagementUrl}${path}`, {
      method: "POST",
      body: JSON.stringify(body),
    });
    if (!response.ok) {
      throw new Error(
        `pebble-challtestsrv ${path} failed: ${response.status} ${await response.text()}`,
      );
    }
  };
  const fullyQualified = (name: string) => (name.endsWith(".") ? name : `${name}.`);

  const instance: Pebble = {
    directoryUrl,
    caFile,
    httpPort,
    tlsPort,
    async rootPem() {
      const response = await fetch(`${managementUrl}/roots/0`, { tls: { ca } });
      const pem = await response.text();
      if (!response.ok || !pem.includes("-----BEGIN CERTIFICATE-----")) {
        throw new Error(`GET ${managementUrl}/roots/0 failed: ${response.status} ${pem}`);
      }
      writeFileSync(rootFile, pem);
      return pem;
    },
    rootFile: () => rootFile,
    async pointName(name, address) {
      // Only loopback targets, so that no validation request leaves this machine.
      if (!/^127\.\d{1,3}\.\d{1,3}\.\d{1,3}$/.test(address)) {
        throw new Error(`pointName: ${address} is not an IPv4 loopback address (127.0.0.0/8)`);
      }
      await postToDns("/add-a", { host: fullyQualified(name), addresses: [address] });
    },
    async resetName(name) {
      await postToDns("/clear-a", { host: fullyQualified(name) });
    },
    orderCount: () => pebbleOutput.text.match(ORDER_LINE)?.length ?? 0,
    issuedCount: () => pebbleOutput.text.match(ISSUED_LINE)?.length ?? 0,
    log: () => pebbleOutput.text,
    stop,
  };
  try {
    await instance.rootPem();
  } catch (error) {
    await stop();
    throw error;
  }
  return instance;
}

/**
 * Polls until Pebble's directory responds over HTTPS that verifies against `ca` and challtestsrv's
 * management API responds. Verifying against `ca` makes sure that the response comes from this
 * Pebble and not from another one on the same port.
 */
async function waitUntilReady(target: {
  pebble: Subprocess;
  dns: Subprocess;
  directoryUrl: string;
  dnsManagementUrl: string;
  ca: string;
  deadline: number;
}): Promise<void> {
  let lastError = "no attempt yet";
  for (;;) {
    if (target.dns.exitCode !== null || target.dns.signalCode !== null) {
      throw new Error(
        `pebble-challtestsrv exited with ${target.dns.exitCode ?? target.dns.signalCode}`,
      );
    }
    if (target.pebble.exitCode !== null || target.pebble.signalCode !== null) {
      throw new Error(`pebble exited with ${target.pebble.exitCode ?? target.pebble.signalCode}`);
    }
    try {
      const remaining = target.deadline - Date.now();
      const signal = AbortSignal.timeout(Math.max(100, Math.min(1_000, remaining)));
      // Any HTTP status means that the management API is listening.
      await fetch(target.dnsManagementUrl, { signal });
      const response = await fetch(target.directoryUrl, { tls: { ca: target.ca }, signal });
      const directory = (await response.json()) as { newOrder?: string };
      if (response.ok && directory.newOrder) return;
      lastError = `GET ${target.directoryUrl} returned ${response.status}`;
    } catch (error) {
      lastError = error instanceof Error ? error.message : String(error);
    }
    if (Date.now() > target.deadline) {
      throw new Error(`timed out waiting for Pebble at ${target.directoryUrl}: ${lastError}`);
    }
    await Bun.sleep(POLL_INTERVAL_MS);
  }
}

/** Sends SIGTERM, then SIGKILL if the process is still running after 3 s, and awaits the exit. */
async function stopProcess(proc: Subprocess): Promise<void> {
  if (proc.exitCode === null && proc.signalCode === null) proc.kill("SIGTERM");
  const timer = setTimeout(() => proc.kill("SIGKILL"), STOP_TIMEOUT_MS);
  await proc.exited;
  clearTimeout(timer);
  running.delete(proc);
}
