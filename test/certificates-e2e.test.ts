import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import { copyFileSync, readdirSync, readFileSync, rmSync, statSync, utimesSync } from "node:fs";
import { connect } from "node:net";
import { hostname } from "node:os";
import { basename, dirname, join } from "node:path";
import {
  PROXY_COMMANDS,
  findFreePort,
  makeTempDir,
  run,
  runToExit,
  startProxy,
  startRawBackend,
} from "./helpers.ts";
import {
  type Fixtures,
  makeFixtures,
  openssl,
  opensslAltNames,
  opensslFingerprint,
  opensslValidity,
} from "./openssl.ts";

setDefaultTimeout(30_000);

const DAY_MS = 24 * 60 * 60 * 1000;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const PRINTED_FINGERPRINT = /SHA256 Fingerprint: ([0-9A-F]{2}(?: [0-9A-F]{2}){31})$/m;

/** Returns the PEM certificates that a TLS server on `host:port` sends, leaf first. */
async function fetchServedChain(host: string, port: number): Promise<string[]> {
  const argv = ["openssl", "s_client", "-connect", `${host}:${port}`, "-showcerts"];
  const result = await run(argv, { stdin: "" });
  return result.stdout.match(PEM_CERTIFICATE) ?? [];
}

async function fetchServedLeaf(host: string, port: number): Promise<string> {
  const chain = await fetchServedChain(host, port);
  if (chain.length === 0) throw new Error(`no certificate served on ${host}:${port}`);
  return chain[0]!;
}

/** Strips the line breaks so that two PEM encodings of one certificate compare equal. */
function compactPem(pem: string): string {
  return pem.replace(/\s+/g, "");
}

/** Returns the path of a .pem file under `folder` that the output mentions. */
function findPrintedPath(output: string, folder: string): string {
  const escaped = folder.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
  const match = new RegExp(`${escaped}/\\S+\\.pem`).exec(output);
  if (!match) throw new Error(`no certificate path under ${folder} in the output:\n${output}`);
  return match[0];
}

/** Lists every file under `folder`, recursively. */
function listFiles(folder: string): string[] {
  return readdirSync(folder, { recursive: true, encoding: "utf8" })
    .map((name) => join(folder, name))
    .filter((path) => statSync(path).isFile());
}

/** Lists every file under `folder` that contains a PEM private key. */
function listKeyFiles(folder: string): string[] {
  return listFiles(folder).filter((path) => readFileSync(path, "utf8").includes("PRIVATE KEY"));
}

/** Tells whether anything accepts TCP connections on 127.0.0.1:`port`. */
function acceptsConnections(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = connect({ host: "127.0.0.1", port });
    socket.once("connect", () => {
      socket.destroy();
      resolve(true);
    });
    socket.once("error", () => resolve(false));
  });
}

let fixtures: Fixtures;
let backend: Awaited<ReturnType<typeof startRawBackend>>;
const backendBody = `backend ${crypto.randomUUID()}`;

beforeAll(async () => {
  fixtures = await makeFixtures("certs-e2e", { expiredIssuer: "root" });
  const response = `HTTP/1.1 200 OK\r\nContent-Length: ${backendBody.length}\r\n\r\n${backendBody}`;
  backend = await startRawBackend(() => response);
});

afterAll(() => {
  backend.close();
  rmSync(fixtures.folder, { recursive: true, force: true });
});

describe.each(PROXY_COMMANDS)("ssl-proxy certificates ($name)", (command) => {
  const backendArgs = () => ["-to", `http://127.0.0.1:${backend.port}`];

  describe("-cert and -key", () => {
    const startWithChain = () => {
      const certificateArgs = ["-cert", fixtures.chain, "-key", fixtures.leafKey];
      return startProxy(command, [...backendArgs(), ...certificateArgs]);
    };

    test("serves the whole chain", async () => {
      const proxy = await startWithChain();
      try {
        const served = await fetchServedChain("127.0.0.1", proxy.port);

        const leaf = readFileSync(fixtures.leaf, "utf8");
        const intermediate = readFileSync(fixtures.intermediate, "utf8");
        expect(served.length).toBe(2);
        expect(compactPem(served[0]!)).toBe(compactPem(leaf));
        expect(compactPem(served[1]!)).toBe(compactPem(intermediate));
      } finally {
        await proxy.stop();
      }
    });

    test("verifies against the root CA", async () => {
      const proxy = await startWithChain();
      try {
        const url = `https://localhost:${proxy.port}/`;
        const resolve = `localhost:${proxy.port}:127.0.0.1`;

        const argv = ["curl", "-sS", "--cacert", fixtures.root, "--resolve", resolve, url];
        const result = await run(argv);

        expect(result.stderr).toBe("");
        expect(result.exitCode).toBe(0);
        expect(result.stdout).toBe(backendBody);
      } finally {
        await proxy.stop();
      }
    });

    test("prints the certificate path", async () => {
      const proxy = await startWithChain();
      try {
        expect(proxy.stdout()).toContain(fixtures.chain);
      } finally {
        await proxy.stop();
      }
    });

    test("prints the served fingerprint", async () => {
      const proxy = await startWithChain();
      try {
        const served = await fetchServedLeaf("127.0.0.1", proxy.port);

        const printed = PRINTED_FINGERPRINT.exec(proxy.stdout())?.[1];
        expect(printed).toBe(await opensslFingerprint(served));
      } finally {
        await proxy.stop();
      }
    });

    const missing = () => join(fixtures.folder, "missing.pem");
    const rejected: {
      label: string;
      files: () => [string, string];
      culprit: () => string;
      problem: RegExp;
    }[] = [
      {
        label: "a missing certificate",
        files: () => [missing(), fixtures.leafKey],
        culprit: missing,
        problem: /no such file|not found|does not exist/i,
      },
      {
        label: "a missing key",
        files: () => [fixtures.chain, missing()],
        culprit: missing,
        problem: /no such file|not found|does not exist/i,
      },
      {
        label: "a folder as certificate",
        files: () => [fixtures.folder, fixtures.leafKey],
        culprit: () => fixtures.folder,
        problem: /folder|directory/i,
      },
      {
        label: "a folder as key",
        files: () => [fixtures.chain, fixtures.folder],
        culprit: () => fixtures.folder,
        problem: /folder|directory/i,
      },
      {
        label: "a DER certificate",
        files: () => [fixtures.derCertificate, fixtures.leafKey],
        culprit: () => fixtures.derCertificate,
        problem: /PEM/,
      },
      {
        label: "a certificate as key",
        files: () => [fixtures.chain, fixtures.leaf],
        culprit: () => fixtures.leaf,
        problem: /PEM|private key/i,
      },
      {
        label: "a mismatched key",
        files: () => [fixtures.chain, fixtures.otherKey],
        culprit: () => fixtures.otherKey,
        problem: /does not match/i,
      },
      {
        label: "an expired certificate",
        files: () => [fixtures.expired, fixtures.expiredKey],
        culprit: () => fixtures.expired,
        problem: /expired/i,
      },
    ];

    test.each(rejected)("rejects $label", async ({ files, culprit, problem }) => {
      const [certPath, keyPath] = files();
      const port = await findFreePort();
      const dataDir = makeTempDir("data");
      const args = [...backendArgs(), "-from", `127.0.0.1:${port}`, "-dataDir", dataDir];

      const result = await runToExit(command, [...args, "-cert", certPath, "-key", keyPath]);

      expect(result.exitCode).not.toBe(0);
      const lines = result.stderr.trimEnd().split("\n");
      expect(lines).toHaveLength(1);
      expect(lines[0]).toContain(culprit());
      expect(lines[0]).toMatch(problem);
      expect(result.stdout).not.toContain("https://");
      expect(await acceptsConnections(port)).toBe(false);
    });
  });

  describe("-cert or -key alone", () => {
    const cases = [
      { flag: "-cert", other: "-key", source: () => fixtures.chain },
      { flag: "-key", other: "-cert", source: () => fixtures.leafKey },
    ];
    const past = new Date("2001-01-01T00:00:00Z");

    /** Runs ssl-proxy with only `flag`, given a fresh copy of `source` whose mtime is in 2001. */
    async function runWithOneFile(flag: string, source: string) {
      const folder = makeTempDir("given");
      const givenPath = join(folder, basename(source));
      copyFileSync(source, givenPath);
      utimesSync(givenPath, past, past);
      const cwd = makeTempDir("cwd");
      const dataDir = makeTempDir("data");
      const args = [...backendArgs(), "-from", "127.0.0.1:0", "-dataDir", dataDir, flag, givenPath];

      const result = await runToExit(command, args, { cwd });

      return { result, givenPath, cwd, dataDir };
    }

    test.each(cases)("rejects $flag without $other", async ({ flag, other, source }) => {
      const { result } = await runWithOneFile(flag, source());

      expect(result.exitCode).not.toBe(0);
      expect(result.stderr).toContain(other);
      expect(result.stdout).not.toContain("https://");
    });

    test.each(cases)("$flag alone writes no files", async ({ flag, source }) => {
      const { givenPath, cwd, dataDir } = await runWithOneFile(flag, source());

      expect(readdirSync(cwd)).toEqual([]);
      expect(readdirSync(dataDir)).toEqual([]);
      expect(readdirSync(dirname(givenPath))).toEqual([basename(givenPath)]);
    });

    test.each(cases)("$flag alone keeps the file unchanged", async ({ flag, source }) => {
      const { givenPath } = await runWithOneFile(flag, source());

      expect(readFileSync(givenPath)).toEqual(readFileSync(source()));
      expect(statSync(givenPath).mtimeMs).toBe(past.getTime());
    });
  });

  describe("self-signed certificate", () => {
    const expectedNames = ["127.0.0.1", "localhost", "::1", hostname().toLowerCase()];

    test("uses an ECDSA P-256 key", async () => {
      const proxy = await startProxy(command, backendArgs());
      try {
        const served = await fetchServedLeaf("127.0.0.1", proxy.port);

        const text = await openssl(["x509", "-noout", "-text"], served);
        expect(text).toContain("Public Key Algorithm: id-ecPublicKey");
        expect(text).toContain("NIST CURVE: P-256");
      } finally {
        await proxy.stop();
      }
    });

    test("is valid for one year", async () => {
      const proxy = await startProxy(command, backendArgs());
      try {
        const served = await fetchServedLeaf("127.0.0.1", proxy.port);

        const { notBefore, notAfter } = await opensslValidity(served);
        expect(notBefore).toBeLessThanOrEqual(Date.now());
        expect(notAfter - notBefore).toBeGreaterThanOrEqual(365 * DAY_MS);
        expect(notAfter - notBefore).toBeLessThanOrEqual(366 * DAY_MS);
      } finally {
        await proxy.stop();
      }
    });

    test("covers the host and loopback names", async () => {
      const proxy = await startProxy(command, backendArgs());
      try {
        const served = await fetchServedLeaf("127.0.0.1", proxy.port);

        const names = await opensslAltNames(served);
        for (const name of expectedNames) expect(names).toContain(name);
      } finally {
        await proxy.stop();
      }
    });

    test.each(["127.0.0.2", "localhost"])("covers -from host %s", async (host) => {
      const dataDir = makeTempDir("data");
      const first = await startProxy(command, [...backendArgs(), "-dataDir", dataDir]);
      await first.stop();
      const args = [...backendArgs(), "-dataDir", dataDir, "-from", `${host}:0`];
      const proxy = await startProxy(command, args);
      try {
        const served = await fetchServedLeaf(host, proxy.port);

        expect(await opensslAltNames(served)).toContain(host);
      } finally {
        await proxy.stop();
      }
    });

    test("stores the certificate it serves", async () => {
      const proxy = await startProxy(command, backendArgs());
      try {
        const served = await fetchServedLeaf("127.0.0.1", proxy.port);

        const stored = readFileSync(findPrintedPath(proxy.stdout(), proxy.dataDir), "utf8");
        expect(compactPem(stored.match(PEM_CERTIFICATE)![0])).toBe(compactPem(served));
      } finally {
        await proxy.stop();
      }
    });

    test("stores the key with mode 0600", async () => {
      const proxy = await startProxy(command, backendArgs());
      await proxy.stop();

      const keyFiles = listKeyFiles(proxy.dataDir);

      expect(keyFiles).toHaveLength(1);
      expect(statSync(keyFiles[0]!).mode & 0o777).toBe(0o600);
    });

    test("keeps the key in a 0700 folder", async () => {
      const proxy = await startProxy(command, backendArgs());
      await proxy.stop();

      const keyFiles = listKeyFiles(proxy.dataDir);

      expect(keyFiles).toHaveLength(1);
      expect(statSync(dirname(keyFiles[0]!)).mode & 0o777).toBe(0o700);
    });

    test("writes nothing to the working directory", async () => {
      const cwd = makeTempDir("cwd");

      const proxy = await startProxy(command, backendArgs(), { cwd });
      await proxy.stop();

      expect(readdirSync(cwd)).toEqual([]);
    });

    test("stores it under SSL_PROXY_DATA_DIR", async () => {
      const dataDir = makeTempDir("data-env");
      const home = makeTempDir("home");
      const env = { SSL_PROXY_DATA_DIR: dataDir, HOME: home };

      const proxy = await startProxy(command, backendArgs(), { env });
      await proxy.stop();

      expect(statSync(findPrintedPath(proxy.stdout(), dataDir)).isFile()).toBe(true);
      expect(listFiles(home).filter((path) => path.endsWith(".pem"))).toEqual([]);
    });

    test("prints the served fingerprint", async () => {
      const proxy = await startProxy(command, backendArgs());
      try {
        const served = await fetchServedLeaf("127.0.0.1", proxy.port);

        const printed = PRINTED_FINGERPRINT.exec(proxy.stdout())?.[1];
        expect(printed).toBe(await opensslFingerprint(served));
      } finally {
        await proxy.stop();
      }
    });

    test("reuses the certificate after a restart", async () => {
      const first = await startProxy(command, backendArgs());
      const firstServed = await fetchServedLeaf("127.0.0.1", first.port);
      const certPath = findPrintedPath(first.stdout(), first.dataDir);
      const firstBytes = readFileSync(certPath);
      await first.stop();

      const second = await startProxy(command, [...backendArgs(), "-dataDir", first.dataDir]);
      try {
        const secondServed = await fetchServedLeaf("127.0.0.1", second.port);

        expect(await opensslFingerprint(secondServed)).toBe(await opensslFingerprint(firstServed));
        expect(readFileSync(certPath)).toEqual(firstBytes);
      } finally {
        await second.stop();
      }
    });

    test("prints the fingerprint after a restart", async () => {
      const first = await startProxy(command, backendArgs());
      await first.stop();

      const second = await startProxy(command, [...backendArgs(), "-dataDir", first.dataDir]);
      try {
        const served = await fetchServedLeaf("127.0.0.1", second.port);

        const printed = PRINTED_FINGERPRINT.exec(second.stdout())?.[1];
        expect(printed).toBe(await opensslFingerprint(served));
        expect(second.stdout()).toContain(findPrintedPath(first.stdout(), first.dataDir));
      } finally {
        await second.stop();
      }
    });
  });
});
