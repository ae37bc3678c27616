import { afterAll, beforeAll, describe, expect, setDefaultTimeout, test } from "bun:test";
import {
  copyFileSync,
  readdirSync,
  readFileSync,
  rmSync,
  statSync,
  utimesSync,
  writeFileSync,
} from "node:fs";
import { connect, isIPv6 } from "node:net";
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

setDefaultTimeout(30_000);

const DAY_MS = 24 * 60 * 60 * 1000;
const PEM_CERTIFICATE = /-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g;
const PRINTED_FINGERPRINT = /SHA256 Fingerprint: ([0-9A-F]{2}(?: [0-9A-F]{2}){31})$/m;

// Extensions for the throwaway CAs, and an `openssl ca` setup that can backdate a certificate.
// `openssl ca -startdate` also works in OpenSSL 3.0, which lacks the -not_before option of
// `openssl req` and `x509` (added in 3.4, as its CHANGES file says).
function opensslConfig(folder: string): string {
  return `[req]
distinguished_name = dn
prompt = no
[dn]
CN = unused
[root_ext]
basicConstraints = critical,CA:TRUE
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
[intermediate_ext]
basicConstraints = critical,CA:TRUE,pathlen:0
keyUsage = critical,keyCertSign,cRLSign
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
[leaf_ext]
basicConstraints = critical,CA:FALSE
keyUsage = critical,digitalSignature
extendedKeyUsage = serverAuth
subjectAltName = DNS:localhost,IP:127.0.0.1
authorityKeyIdentifier = keyid
[ca]
default_ca = backdated_ca
[backdated_ca]
database = ${folder}/index.txt
new_certs_dir = ${folder}
serial = ${folder}/serial
default_md = sha256
policy = any_name
unique_subject = no
[any_name]
commonName = supplied
`;
}

/** Runs the openssl CLI and returns its stdout. Throws an error with its stderr if it fails. */
async function openssl(args: string[], stdin?: string): Promise<string> {
  const result = await run(["openssl", ...args], stdin === undefined ? {} : { stdin });
  if (result.exitCode !== 0) throw new Error(`openssl ${args.join(" ")} failed:\n${result.stderr}`);
  return result.stdout;
}

/** Throwaway PKI: root CA -> intermediate -> leaf for localhost, plus broken variants. */
interface Fixtures {
  folder: string;
  root: string;
  intermediate: string;
  leaf: string;
  leafKey: string;
  chain: string;
  otherKey: string;
  expired: string;
  expiredKey: string;
  derCertificate: string;
}

async function makeFixtures(): Promise<Fixtures> {
  const folder = makeTempDir("certs-e2e");
  const file = (name: string) => join(folder, name);
  const config = file("openssl.cnf");
  writeFileSync(config, opensslConfig(folder));
  writeFileSync(file("index.txt"), "");
  writeFileSync(file("serial"), "01\n");
  const newKey = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"];
  const request = (name: string, subject: string) => [
    ...["req", "-new", ...newKey, "-config", config, "-subj", subject],
    ...["-keyout", file(`${name}.key`), "-out", file(`${name}.csr`)],
  ];
  const sign = (name: string, issuer: string, serial: string, extensions: string) => [
    ...["x509", "-req", "-in", file(`${name}.csr`), "-out", file(`${name}.pem`)],
    ...["-CA", file(`${issuer}.pem`), "-CAkey", file(`${issuer}.key`), "-set_serial", serial],
    ...["-days", "2", "-extfile", config, "-extensions", extensions],
  ];

  await openssl([
    ...["req", "-x509", "-new", ...newKey, "-config", config, "-extensions", "root_ext"],
    ...["-subj", "/CN=ssl-proxy test root", "-days", "2"],
    ...["-keyout", file("root.key"), "-out", file("root.pem")],
  ]);
  await openssl(request("intermediate", "/CN=ssl-proxy test intermediate"));
  await openssl(sign("intermediate", "root", "2", "intermediate_ext"));
  await openssl(request("leaf", "/CN=localhost"));
  await openssl(sign("leaf", "intermediate", "3", "leaf_ext"));
  const leaf = readFileSync(file("leaf.pem"), "utf8");
  writeFileSync(file("chain.pem"), leaf + readFileSync(file("intermediate.pem"), "utf8"));
  const curve = ["-algorithm", "EC", "-pkeyopt", "ec_paramgen_curve:P-256"];
  await openssl(["genpkey", ...curve, "-out", file("other.key")]);

  await openssl(request("expired", "/CN=localhost"));
  await openssl([
    ...["ca", "-batch", "-notext", "-config", config, "-extensions", "leaf_ext"],
    ...["-cert", file("root.pem"), "-keyfile", file("root.key"), "-in", file("expired.csr")],
    ...["-startdate", "20200101000000Z", "-enddate", "20210101000000Z"],
    ...["-out", file("expired.pem")],
  ]);
  await openssl(["x509", "-in", file("leaf.pem"), "-outform", "DER", "-out", file("leaf.der")]);

  return {
    folder,
    root: file("root.pem"),
    intermediate: file("intermediate.pem"),
    leaf: file("leaf.pem"),
    leafKey: file("leaf.key"),
    chain: file("chain.pem"),
    otherKey: file("other.key"),
    expired: file("expired.pem"),
    expiredKey: file("expired.key"),
    derCertificate: file("leaf.der"),
  };
}

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

/** Returns the SHA-256 fingerprint of the first certificate in `pem`, as "AB CD ...". */
async function opensslFingerprint(pem: string): Promise<string> {
  const output = await openssl(["x509", "-noout", "-fingerprint", "-sha256"], pem);
  return output.trim().replace(/^.*=/, "").replaceAll(":", " ");
}

/** Returns the subjectAltName entries of a certificate as lower-case names and compressed IPv6. */
async function opensslAltNames(pem: string): Promise<string[]> {
  const output = await openssl(["x509", "-noout", "-ext", "subjectAltName"], pem);
  const entries = output.split("\n").slice(1).join("").trim().split(/,\s*/);
  return entries.map((entry) => {
    const name = entry.replace(/^(DNS|IP Address):/, "");
    return isIPv6(name) ? new URL(`http://[${name}]/`).hostname.slice(1, -1) : name.toLowerCase();
  });
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
  fixtures = await makeFixtures();
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

        const datesArgs = ["x509", "-noout", "-dateopt", "iso_8601", "-startdate", "-enddate"];
        const dates = await openssl(datesArgs, served);
        const notBefore = Date.parse(/notBefore=(.+)/.exec(dates)![1]!);
        const notAfter = Date.parse(/notAfter=(.+)/.exec(dates)![1]!);
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
