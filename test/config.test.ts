import { describe, expect, test } from "bun:test";
import { homedir } from "node:os";
import { join, resolve } from "node:path";
import { parseListenAddress } from "../src/address.ts";
import { FLAGS } from "../src/cli.ts";
import {
  parseDomains,
  parseDuration,
  parseIdleTimeout,
  parseSize,
  parseUpstream,
  resolveConfig,
  type FlagValues,
  LETS_ENCRYPT_DIRECTORY,
  LETS_ENCRYPT_STAGING_DIRECTORY,
} from "../src/config.ts";
import { UserError } from "../src/errors.ts";

/** Runs `action` and returns the error it throws, so that a test can check its fields. */
function catchError(action: () => unknown): unknown {
  try {
    action();
  } catch (error) {
    return error;
  }
  throw new Error("expected the call to throw, but it returned");
}

/** Checks that `error` is a usage error (exit status 2) whose message contains every fragment. */
function expectUsageError(error: unknown, fragments: string[]): void {
  expect(error).toBeInstanceOf(UserError);
  expect((error as UserError).exitCode).toBe(2);
  for (const fragment of fragments) expect((error as UserError).message).toContain(fragment);
}

/** The flag values that citty passes when the user gives no flags, built from FLAGS. */
const DEFAULT_FLAGS: FlagValues = {
  from: FLAGS.from.default,
  to: FLAGS.to.default,
  redirectHTTP: FLAGS.redirectHTTP.default,
  httpFrom: FLAGS.httpFrom.default,
  upstreamTimeout: FLAGS.upstreamTimeout.default,
  shutdownTimeout: FLAGS.shutdownTimeout.default,
  staging: FLAGS.staging.default,
};

describe("FLAGS", () => {
  test.each([
    ["from", "127.0.0.1:4430"],
    ["to", "http://127.0.0.1:80"],
    ["redirectHTTP", false],
    ["httpFrom", ":80"],
    ["upstreamTimeout", "60s"],
    ["shutdownTimeout", "10s"],
  ] as const)("defaults -%s to %p", (name, expected) => {
    const flag = FLAGS[name];

    expect(flag.default).toBe(expected);
  });

  test.each(["cert", "key", "domain", "dataDir"] as const)("has no default for -%s", (name) => {
    const flag = FLAGS[name];

    expect("default" in flag).toBe(false);
  });
});

describe("parseListenAddress", () => {
  test.each([
    ["127.0.0.1:4430", { host: "127.0.0.1", port: 4430 }],
    [":80", { host: "0.0.0.0", port: 80 }],
    ["[::]:443", { host: "::", port: 443 }],
    ["[::1]:8443", { host: "::1", port: 8443 }],
    ["localhost:0", { host: "localhost", port: 0 }],
    ["0.0.0.0:65535", { host: "0.0.0.0", port: 65535 }],
    ["vm-1.example.edu:443", { host: "vm-1.example.edu", port: 443 }],
  ])("parses %p", (value, expected) => {
    const address = parseListenAddress("from", value);

    expect(address).toEqual(expected);
  });

  test.each([
    "127.0.0.1",
    "4430",
    "127.0.0.1:",
    "127.0.0.1:65536",
    "127.0.0.1:-1",
    "127.0.0.1:http",
    "127.0.0.1:4430 ",
    " 127.0.0.1:4430",
    "::1:443",
    "[::1]",
    "[127.0.0.1]:443",
    "[::1]443",
    "https://127.0.0.1:443",
    "bad_host:443",
    "256.1.1.1:443",
    "",
  ])("rejects %p", (value) => {
    const error = catchError(() => parseListenAddress("from", value));

    expectUsageError(error, ["-from", `"${value}"`]);
  });

  test("names the flag it parses", () => {
    const error = catchError(() => parseListenAddress("httpFrom", "80"));

    expectUsageError(error, ["-httpFrom", '"80"']);
  });
});

describe("parseUpstream", () => {
  test.each([
    ["127.0.0.1:5000", "http://127.0.0.1:5000", "", ""],
    ["localhost:5000", "http://localhost:5000", "", ""],
    ["[::1]:5000", "http://[::1]:5000", "", ""],
    ["http://127.0.0.1:5000", "http://127.0.0.1:5000", "", ""],
    ["http://127.0.0.1:5000/", "http://127.0.0.1:5000", "", ""],
    ["http://127.0.0.1:5000/app", "http://127.0.0.1:5000", "/app", ""],
    ["http://127.0.0.1:5000/app/", "http://127.0.0.1:5000", "/app/", ""],
    ["http://[::1]:5000/x?y=1", "http://[::1]:5000", "/x", "y=1"],
    ["https://127.0.0.1:8443", "https://127.0.0.1:8443", "", ""],
    ["HTTP://127.0.0.1:5000", "http://127.0.0.1:5000", "", ""],
    ["http://127.0.0.1:80", "http://127.0.0.1", "", ""],
  ])("parses %p", (value, origin, basePath, baseQuery) => {
    const upstream = parseUpstream(value);

    expect(upstream).toEqual({ origin, basePath, baseQuery });
  });

  test.each([
    ["unix:/run/app.sock", "/run/app.sock"],
    ["UNIX:/run/app.sock", "/run/app.sock"],
    ["unix:app.sock", `${process.cwd()}/app.sock`],
  ])("parses %p as a Unix socket", (value, socketPath) => {
    const upstream = parseUpstream(value);

    expect(upstream).toEqual({
      origin: "http://localhost",
      socketPath,
      basePath: "",
      baseQuery: "",
    });
  });

  test("notes the assumed http scheme", () => {
    const notices: string[] = [];

    parseUpstream("127.0.0.1:5000", notices);

    expect(notices).toHaveLength(1);
    expect(notices[0]).toContain("http://127.0.0.1:5000");
  });

  test.each(["http://127.0.0.1:5000", "https://127.0.0.1:5000"])(
    "adds no notice for %p",
    (value) => {
      const notices: string[] = [];

      parseUpstream(value, notices);

      expect(notices).toEqual([]);
    },
  );

  test.each([
    "ftp://127.0.0.1:21",
    "127.0.0.1:abc",
    "127.0.0.1:99999",
    "::1:5000",
    "http://user:secret@127.0.0.1:5000",
    "http://127.0.0.1:5000/#top",
    "http://",
    "",
    "unix:",
    "unix:/run/app.sock?x=1",
    // A bare port is a common slip for -to 127.0.0.1:5000, and the WHATWG URL parser reads
    // "5000" as the IPv4 address 0.0.19.136.
    "5000",
  ])("rejects %p", (value) => {
    const error = catchError(() => parseUpstream(value));

    expectUsageError(error, ["-to", `"${value}"`]);
  });
});

describe("parseDomains", () => {
  test.each([
    [undefined, []],
    ["vm.example.edu", ["vm.example.edu"]],
    ["VM.Example.EDU", ["vm.example.edu"]],
    ["vm.example.edu.", ["vm.example.edu"]],
    ["a.example.com,b.example.com", ["a.example.com", "b.example.com"]],
    ["a.example.com, b.example.com", ["a.example.com", "b.example.com"]],
    ["a.example.com,A.example.com", ["a.example.com"]],
  ])("parses %p", (value, expected) => {
    const domains = parseDomains(value);

    expect(domains).toEqual(expected);
  });

  test.each([
    ["", '""'],
    ["a.example.com,,b.example.com", "a.example.com,,b.example.com"],
    ["a.example.com,", "a.example.com,"],
    ["*.example.com", "*.example.com"],
    ["127.0.0.1", "127.0.0.1"],
    ["::1", "::1"],
    ["localhost", "localhost"],
    ["bad_name.example.com", "bad_name.example.com"],
    ["-a.example.com", "-a.example.com"],
    ["a..example.com", "a..example.com"],
    [`${"a".repeat(64)}.example.com`, `${"a".repeat(64)}.example.com`],
    // RFC 1123 section 2.1: a host name never has the dotted-decimal form of an IPv4 address.
    ["10.0.0.256", "10.0.0.256"],
  ])("rejects %p", (value, shown) => {
    const error = catchError(() => parseDomains(value));

    expectUsageError(error, ["-domain", shown]);
  });
});

describe("parseSize", () => {
  test.each([
    ["0", 0],
    ["512", 512],
    ["10MB", 10_000_000],
    ["1.5GiB", 1_610_612_736],
    ["64kib", 65_536],
  ])("parses %p", (value, expected) => {
    expect(parseSize("maxBodySize", value)).toBe(expected);
  });

  test.each(["", "ten", "10 potatoes", "-1MB", "1e9"])("rejects %p", (value) => {
    const error = catchError(() => parseSize("maxBodySize", value));

    expectUsageError(error, ["-maxBodySize", `"${value}"`]);
  });
});

describe("parseDuration", () => {
  test.each([
    ["0", 0],
    ["0s", 0],
    ["500ms", 500],
    ["1500ms", 1500],
    ["1.5s", 1500],
    ["60s", 60_000],
    ["0.5m", 30_000],
    ["1m30s", 90_000],
    ["2h", 7_200_000],
    ["1h2m3s", 3_723_000],
    ["3000us", 3],
    [".5s", 500],
    ["596h", 2_145_600_000],
  ])("parses %p", (value, expected) => {
    const milliseconds = parseDuration("upstreamTimeout", value);

    expect(milliseconds).toBe(expected);
  });

  test.each(["", "5", "1.5", "5x", "s", "ms", "1S", "1m 30s", " 1s", "-1s", "1e3s", "soon"])(
    "rejects %p",
    (value) => {
      const error = catchError(() => parseDuration("upstreamTimeout", value));

      expectUsageError(error, ["-upstreamTimeout", `"${value}"`]);
    },
  );

  test("rejects more than a timer can wait", () => {
    const error = catchError(() => parseDuration("upstreamTimeout", "597h"));

    expectUsageError(error, ["-upstreamTimeout", '"597h"', "596h"]);
  });

  test("names the flag it parses", () => {
    const error = catchError(() => parseDuration("shutdownTimeout", "10"));

    expectUsageError(error, ["-shutdownTimeout", '"10"']);
  });
});

describe("parseIdleTimeout", () => {
  test.each([
    ["0", 0],
    ["500ms", 1],
    ["1m", 60],
    ["255s", 255],
  ])("parses %p as %p seconds", (value, seconds) => {
    expect(parseIdleTimeout(value)).toBe(seconds);
  });

  test("rejects more than Bun.serve can wait", () => {
    const error = catchError(() => parseIdleTimeout("256s"));

    expectUsageError(error, ["-idleTimeout", '"256s"', "255s"]);
  });
});

describe("resolveConfig", () => {
  test.each([
    [{}, {}, undefined],
    [{}, { SUDO_USER: "alice" }, { name: "alice", from: "SUDO_USER" as const }],
    [{ user: "www-data" }, { SUDO_USER: "alice" }, { name: "www-data", from: "-user" as const }],
    [{ user: "root" }, {}, { name: "root", from: "-user" as const }],
  ])("serves as -user, else SUDO_USER: %p %p", (flags, env, serveAs) => {
    const config = resolveConfig({ ...DEFAULT_FLAGS, ...flags }, env);

    expect(config.serveAs).toEqual(serveAs);
  });

  test.each(["", "bob smith", "-x"])("rejects -user %p", (user) => {
    const error = catchError(() => resolveConfig({ ...DEFAULT_FLAGS, user }, {}));

    expectUsageError(error, ["-user", `"${user}"`]);
  });

  test("applies the documented defaults", () => {
    const config = resolveConfig(DEFAULT_FLAGS, {});

    expect(config).toEqual({
      listen: { host: "127.0.0.1", port: 4430 },
      upstream: { origin: "http://127.0.0.1", basePath: "", baseQuery: "" },
      certificateFiles: undefined,
      domains: [],
      redirectHTTP: false,
      httpListen: { host: "0.0.0.0", port: 80 },
      dataDir: join(homedir(), ".ssl-proxy"),
      dataDirGiven: false,
      serveAs: undefined,
      upstreamTimeoutMs: 60_000,
      idleTimeoutSeconds: 120,
      shutdownTimeoutMs: 10_000,
      acme: { directoryUrl: LETS_ENCRYPT_DIRECTORY, email: undefined, caFile: undefined },
      hsts: false,
      accessLog: false,
      upstreamCAFile: undefined,
      verifyUpstream: true,
      maxBodyBytes: 0,
    });
  });

  test("-staging selects the staging CA", () => {
    const config = resolveConfig({ ...DEFAULT_FLAGS, staging: true }, {});

    expect(config.acme.directoryUrl).toBe(LETS_ENCRYPT_STAGING_DIRECTORY);
  });

  test.each([
    [
      "-staging with -acmeDirectory",
      { staging: true, acmeDirectory: "https://127.0.0.1:1/dir" },
      ["-staging", "-acmeDirectory"],
    ],
    [
      "an http -acmeDirectory",
      { acmeDirectory: "http://127.0.0.1:14000/dir" },
      ["-acmeDirectory", "https://"],
    ],
    [
      "a -acmeDirectory that is no URL",
      { acmeDirectory: "pebble" },
      ["-acmeDirectory", '"pebble"'],
    ],
    ["a malformed -email", { email: "me at example.edu" }, ["-email", '"me at example.edu"']],
    ["an empty -acmeCA", { acmeCA: "" }, ["-acmeCA"]],
  ] as const)("rejects %s", (_, flags, fragments) => {
    const error = catchError(() => resolveConfig({ ...DEFAULT_FLAGS, ...flags }, {}));

    expectUsageError(error, [...fragments]);
  });

  test("returns a frozen config", () => {
    const config = resolveConfig(DEFAULT_FLAGS, {});

    expect(Object.isFrozen(config)).toBe(true);
  });

  test("reads every flag value", () => {
    const flags: FlagValues = {
      from: "[::1]:8443",
      to: "https://127.0.0.1:5000/app?x=1",
      cert: "chain.pem",
      key: "key.pem",
      domain: "vm.example.edu",
      redirectHTTP: true,
      httpFrom: "127.0.0.1:8080",
      dataDir: "/srv/ssl-proxy",
      upstreamTimeout: "5s",
      idleTimeout: "30s",
      shutdownTimeout: "1m",
      email: "me@example.edu",
      acmeDirectory: "https://127.0.0.1:14000/dir",
      staging: false,
      acmeCA: "pebble-ca.pem",
      hsts: true,
      accessLog: true,
      upstreamCA: "backend-ca.pem",
      upstreamInsecure: true,
      user: "www-data",
      maxBodySize: "10MB",
    };

    const config = resolveConfig(flags, {});

    expect(config).toEqual({
      listen: { host: "::1", port: 8443 },
      upstream: { origin: "https://127.0.0.1:5000", basePath: "/app", baseQuery: "x=1" },
      certificateFiles: { certPath: resolve("chain.pem"), keyPath: resolve("key.pem") },
      domains: ["vm.example.edu"],
      redirectHTTP: true,
      httpListen: { host: "127.0.0.1", port: 8080 },
      dataDir: "/srv/ssl-proxy",
      dataDirGiven: true,
      serveAs: { name: "www-data", from: "-user" },
      upstreamTimeoutMs: 5000,
      idleTimeoutSeconds: 30,
      shutdownTimeoutMs: 60_000,
      acme: {
        directoryUrl: "https://127.0.0.1:14000/dir",
        email: "me@example.edu",
        caFile: resolve("pebble-ca.pem"),
      },
      hsts: true,
      accessLog: true,
      upstreamCAFile: resolve("backend-ca.pem"),
      verifyUpstream: false,
      maxBodyBytes: 10_000_000,
    });
  });

  test("passes on the -to notice", () => {
    const notices: string[] = [];

    resolveConfig({ ...DEFAULT_FLAGS, to: "127.0.0.1:5000" }, {}, notices);

    expect(notices).toHaveLength(1);
    expect(notices[0]).toContain("http://127.0.0.1:5000");
  });

  test("reads SSL_PROXY_DATA_DIR", () => {
    const config = resolveConfig(DEFAULT_FLAGS, { SSL_PROXY_DATA_DIR: "/var/lib/from-env" });

    expect(config.dataDir).toBe("/var/lib/from-env");
  });

  test("prefers -dataDir over SSL_PROXY_DATA_DIR", () => {
    const flags = { ...DEFAULT_FLAGS, dataDir: "/var/lib/from-flag" };

    const config = resolveConfig(flags, { SSL_PROXY_DATA_DIR: "/var/lib/from-env" });

    expect(config.dataDir).toBe("/var/lib/from-flag");
  });

  test("resolves a relative -dataDir", () => {
    const config = resolveConfig({ ...DEFAULT_FLAGS, dataDir: "state" }, {});

    expect(config.dataDir).toBe(resolve("state"));
  });

  test.each([
    {
      label: "-from 127.0.0.1",
      override: { from: "127.0.0.1" },
      fragments: ["-from", '"127.0.0.1"'],
    },
    {
      label: "-to ftp://",
      override: { to: "ftp://127.0.0.1:21" },
      fragments: ["-to", '"ftp://127.0.0.1:21"'],
    },
    {
      label: "-httpFrom 80",
      override: { httpFrom: "80" },
      fragments: ["-httpFrom", '"80"'],
    },
    {
      label: "-domain *.example.com",
      override: { domain: "*.example.com" },
      fragments: ["-domain", "*.example.com"],
    },
    {
      label: "-upstreamTimeout 5",
      override: { upstreamTimeout: "5" },
      fragments: ["-upstreamTimeout", '"5"'],
    },
    {
      label: "-shutdownTimeout soon",
      override: { shutdownTimeout: "soon" },
      fragments: ["-shutdownTimeout", '"soon"'],
    },
    {
      label: "empty -dataDir",
      override: { dataDir: "" },
      fragments: ["-dataDir"],
    },
    {
      label: "-cert without -key",
      override: { cert: "chain.pem" },
      fragments: ["-cert", "chain.pem", "-key"],
    },
    {
      label: "-key without -cert",
      override: { key: "key.pem" },
      fragments: ["-key", "key.pem", "-cert"],
    },
    {
      label: "empty -key",
      override: { cert: "chain.pem", key: "" },
      fragments: ["-cert", "chain.pem", "-key"],
    },
  ] as { label: string; override: Partial<FlagValues>; fragments: string[] }[])(
    "rejects $label",
    ({ override, fragments }) => {
      const error = catchError(() => resolveConfig({ ...DEFAULT_FLAGS, ...override }, {}));

      expectUsageError(error, fragments);
    },
  );

  test("rejects an empty SSL_PROXY_DATA_DIR", () => {
    const error = catchError(() => resolveConfig(DEFAULT_FLAGS, { SSL_PROXY_DATA_DIR: "" }));

    expectUsageError(error, ["SSL_PROXY_DATA_DIR"]);
  });
});
