import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import {
  chmodSync,
  chownSync,
  existsSync,
  mkdtempSync,
  readFileSync,
  readdirSync,
  rmSync,
  statSync,
  symlinkSync,
  writeFileSync,
} from "node:fs";
import { join, resolve } from "node:path";
import type { Server } from "bun";
import packageJson from "../package.json" with { type: "json" };
import {
  asTestUser,
  findFreePort,
  makeTempDir,
  run,
  startProxy,
  startRawBackend,
} from "./helpers.ts";

const ROOT = resolve(import.meta.dir, "..");
const INSTALL_SH = join(ROOT, "install.sh");
const EXECUTABLE = "ssl-proxy-linux-amd64";
const ARCHIVE = `${EXECUTABLE}.tar.gz`;
const VERSION_LINE = `ssl-proxy ${packageJson.version}`;
const DASH = Bun.which("dash") ?? "dash";

/** Tools install.sh runs, linked into a PATH folder that lacks one of the downloaders. */
const INSTALL_TOOLS = [
  "awk",
  "chmod",
  "cp",
  "gzip",
  "id",
  "mkdir",
  "mktemp",
  "mv",
  "rm",
  "sha256sum",
  "tar",
  "uname",
];

/** Folder under test/.tmp for all files of this test, removed afterwards: each install is 116 MB. */
let scratchDir: string;
let releaseDir: string;
let server: Server<undefined>;
let baseUrl: string;
/** Paths the release server was asked for, in order. */
const served: string[] = [];

/**
 * Serves the release folder under /release/ and install.sh at /install.sh. Under /tampered/ it
 * serves the same archive with a SHA256SUMS whose checksum belongs to other bytes.
 */
function serveRelease(port: number): Server<undefined> {
  return Bun.serve({
    hostname: "127.0.0.1",
    port,
    async fetch(req) {
      const { pathname } = new URL(req.url);
      served.push(pathname);
      if (pathname === "/install.sh") return new Response(Bun.file(INSTALL_SH));
      if (pathname === "/tampered/SHA256SUMS") {
        const hasher = new Bun.CryptoHasher("sha256").update("other bytes");
        return new Response(`${hasher.digest("hex")}  ${ARCHIVE}\n`);
      }
      const name = pathname.replace(/^\/(release|tampered)\//, "");
      const file = Bun.file(join(releaseDir, name));
      if (name.includes("/") || !(await file.exists())) return new Response("", { status: 404 });
      return new Response(file);
    },
  });
}

/** Creates an empty folder inside scratchDir. */
function makeScratchDir(prefix: string): string {
  return mkdtempSync(join(scratchDir, `${prefix}-`));
}

beforeAll(async () => {
  scratchDir = makeTempDir("release-e2e");
  // The non-root install test runs as uid 65534 (nobody), which must reach its home folder here.
  chmodSync(scratchDir, 0o755);
  releaseDir = makeScratchDir("release");
  const script = join(ROOT, "scripts/release.ts");
  const build = await run([process.execPath, script, "--outDir", releaseDir], {
    timeoutMs: 120_000,
  });
  if (build.exitCode !== 0) throw new Error(`release build failed:\n${build.stderr}`);

  server = serveRelease(await findFreePort());
  baseUrl = `http://127.0.0.1:${server.port}`;
}, 120_000);

afterAll(() => {
  server?.stop(true);
  if (scratchDir) rmSync(scratchDir, { recursive: true, force: true });
});

/** Runs `argv` in `cwd` with exactly `env` and returns its exit code and output. */
async function runIn(argv: string[], cwd: string, env: Record<string, string>) {
  const proc = Bun.spawn(argv, { cwd, env, stdin: "ignore", stdout: "pipe", stderr: "pipe" });
  const timer = setTimeout(() => proc.kill("SIGKILL"), 60_000);
  const [exitCode, stdout, stderr] = await Promise.all([
    proc.exited,
    new Response(proc.stdout).text(),
    new Response(proc.stderr).text(),
  ]);
  clearTimeout(timer);
  return { exitCode, stdout, stderr };
}

/** Runs install.sh under dash with the PATH given and the other variables in `env`. */
function runInstaller(env: Record<string, string>, path = process.env.PATH ?? "/usr/bin:/bin") {
  return runIn([DASH, INSTALL_SH], makeScratchDir("cwd"), { PATH: path, HOME: "/root", ...env });
}

/** Creates a folder that links `tools` from the current PATH, for a PATH of only those. */
function linkTools(tools: string[]): string {
  const dir = makeScratchDir("path");
  for (const tool of tools) symlinkSync(Bun.which(tool)!, join(dir, tool));
  return dir;
}

/**
 * Starts `binary` in front of a raw backend, fetches /hello through it with curl and returns
 * what the backend received and what curl printed.
 */
async function proxyThrough(binary: string) {
  const body = "hello from the backend";
  const backend = await startRawBackend(
    () => `HTTP/1.1 200 OK\r\nContent-Length: ${body.length}\r\n\r\n${body}`,
  );
  const proxy = await startProxy({ argv: [binary] }, ["-to", `127.0.0.1:${backend.port}`]);
  try {
    const url = `https://127.0.0.1:${proxy.port}/hello`;
    const curl = await run(["curl", "-sk", "--max-time", "10", url]);
    return { requests: backend.requests, curl, expectedBody: body };
  } finally {
    await proxy.stop();
    backend.close();
  }
}

describe("scripts/release.ts", () => {
  test("archive contains only the executable", async () => {
    const listing = await run(["tar", "-tvzf", join(releaseDir, ARCHIVE)]);

    const lines = listing.stdout.trimEnd().split("\n");
    expect(listing.exitCode).toBe(0);
    expect(lines).toHaveLength(1);
    expect(lines[0]).toMatch(new RegExp(`^-rwxr-xr-x 0/0 .* ${EXECUTABLE}$`));
  });

  test("SHA256SUMS matches the archive", async () => {
    const check = await runIn(["sha256sum", "--check", "SHA256SUMS"], releaseDir, {});

    expect(check.exitCode).toBe(0);
    expect(check.stdout).toBe(`${ARCHIVE}: OK\n`);
  });

  test("executable prints the embedded version", async () => {
    const cwd = makeScratchDir("version");
    writeFileSync(join(cwd, "package.json"), '{ "name": "ssl-proxy", "version": "9.9.9" }\n');

    const result = await runIn([join(releaseDir, EXECUTABLE), "-version"], cwd, {});

    expect(result.exitCode).toBe(0);
    expect(result.stdout).toBe(`${VERSION_LINE}\n`);
  });

  test("executable ignores .env and bunfig.toml in its folder", async () => {
    const cwd = makeScratchDir("stray");
    writeFileSync(join(cwd, ".env"), "SSL_PROXY_DATA_DIR=\n");
    writeFileSync(join(cwd, "bunfig.toml"), 'preload = ["./preload.js"]\n');
    writeFileSync(join(cwd, "preload.js"), 'console.log("preloaded by bunfig.toml");\n');
    const missing = join(cwd, "missing.pem");
    const argv = [join(releaseDir, EXECUTABLE), ...asTestUser(["-cert", missing, "-key", missing])];

    const result = await runIn(argv, cwd, { HOME: cwd });

    // With .env loaded, the empty SSL_PROXY_DATA_DIR would be the error instead.
    expect(result.stderr).toBe(`ssl-proxy: cannot read -cert "${missing}": no such file\n`);
    expect(result.stdout).toBe("");
    expect(result.exitCode).toBe(1);
  });
});

describe("README install commands", () => {
  test("wget | tar xvz line installs a working binary", async () => {
    const readme = readFileSync(join(ROOT, "README.md"), "utf8");
    const wgetLine = /^ {4}(wget -qO- https:\/\/github\.com\/\S+\/(\S+) \| tar xvz)$/m.exec(readme);
    const moveLine = /^ {4}sudo (mv \S+) \/usr\/local\/bin\/ssl-proxy$/m.exec(readme);
    expect(wgetLine?.[2]).toBe(ARCHIVE);
    expect(moveLine).not.toBeNull();
    const cwd = makeScratchDir("readme");
    const prefix = makeScratchDir("prefix");
    const download = wgetLine![1]!.replace(/https:\/\/\S+\//, `${baseUrl}/release/`);

    const extract = await runIn(["sh", "-c", download], cwd, { PATH: process.env.PATH! });
    const move = await runIn(["sh", "-c", `${moveLine![1]} ${prefix}/ssl-proxy`], cwd, {
      PATH: process.env.PATH!,
    });
    const through = await proxyThrough(join(prefix, "ssl-proxy"));

    expect(extract.exitCode).toBe(0);
    expect(extract.stdout).toBe(`${EXECUTABLE}\n`);
    expect(move.exitCode).toBe(0);
    expect(readdirSync(cwd)).toEqual([]);
    expect(statSync(join(prefix, "ssl-proxy")).mode & 0o777).toBe(0o755);
    expect(through.requests.map((request) => request.requestLine)).toEqual(["GET /hello HTTP/1.1"]);
    expect(through.curl.stdout).toBe(through.expectedBody);
  });
});

describe("install.sh", () => {
  test("passes shellcheck as POSIX sh", async () => {
    const result = await run(["shellcheck", "--shell=sh", INSTALL_SH]);

    expect(result.stdout).toBe("");
    expect(result.exitCode).toBe(0);
  });

  test("names the repository of package.json", () => {
    const script = readFileSync(INSTALL_SH, "utf8");

    const repository = /^REPOSITORY="([^"]+)"$/m.exec(script)?.[1];
    expect(`github:${repository}`).toBe(packageJson.repository);
  });

  test.each([
    ["curl", "wget"],
    ["wget", "curl"],
  ])("piped from %s, installs a working binary", async (downloader, absent) => {
    const tools = [...INSTALL_TOOLS, downloader, "dash"].filter((tool) => tool !== absent);
    const path = linkTools(tools);
    const installDir = join(makeScratchDir("install"), "bin");
    const fetchScript =
      downloader === "curl"
        ? `curl -fsSL ${baseUrl}/install.sh`
        : `wget -qO- ${baseUrl}/install.sh`;
    const env = {
      SSL_PROXY_DOWNLOAD_URL: `${baseUrl}/release`,
      SSL_PROXY_INSTALL_DIR: installDir,
    };

    const result = await runIn(["/bin/sh", "-c", `${fetchScript} | dash`], makeScratchDir("cwd"), {
      PATH: path,
      HOME: "/root",
      ...env,
    });
    const through = await proxyThrough(join(installDir, "ssl-proxy"));

    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain(`installed ${VERSION_LINE} as ${installDir}/ssl-proxy\n`);
    expect(readdirSync(installDir)).toEqual(["ssl-proxy"]);
    expect(statSync(join(installDir, "ssl-proxy")).mode & 0o777).toBe(0o755);
    expect(through.requests.map((request) => request.requestLine)).toEqual(["GET /hello HTTP/1.1"]);
    expect(through.curl.stdout).toBe(through.expectedBody);
  });

  test("replaces an installed ssl-proxy", async () => {
    const installDir = makeScratchDir("install");
    writeFileSync(join(installDir, "ssl-proxy"), "#!/bin/sh\necho old\n", { mode: 0o755 });

    const result = await runInstaller({
      SSL_PROXY_DOWNLOAD_URL: `${baseUrl}/release`,
      SSL_PROXY_INSTALL_DIR: installDir,
    });

    const version = await run([join(installDir, "ssl-proxy"), "-version"]);
    expect(result.exitCode).toBe(0);
    expect(readdirSync(installDir)).toEqual(["ssl-proxy"]);
    expect(version.stdout).toBe(`${VERSION_LINE}\n`);
  });

  test("installs into ~/.local/bin without root", async () => {
    const home = makeScratchDir("home");
    chmodSync(home, 0o755);
    chownSync(home, 65534, 65534);
    const setpriv = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"];
    const env = { PATH: "/usr/bin:/bin", HOME: home, SSL_PROXY_DOWNLOAD_URL: `${baseUrl}/release` };

    const result = await runIn([...setpriv, DASH, INSTALL_SH], home, env);

    const installed = join(home, ".local/bin/ssl-proxy");
    expect(result.stderr).toBe("");
    expect(result.exitCode).toBe(0);
    expect(result.stdout).toContain(`installed ${VERSION_LINE} as ${installed}\n`);
    expect(result.stdout).toContain(`  export PATH="${home}/.local/bin:$PATH"\n`);
    expect(statSync(installed).uid).toBe(65534);
    const version = await run([installed, "-version"]);
    expect(version.stdout).toBe(`${VERSION_LINE}\n`);
  });

  test.each([
    ["latest", {}, "latest/download"],
    ["v0.2.0", { SSL_PROXY_VERSION: "v0.2.0" }, "download/v0.2.0"],
    ["0.2.0", { SSL_PROXY_VERSION: "0.2.0" }, "download/v0.2.0"],
  ])("requests %s from GitHub releases", async (_name, env, folder) => {
    const path = linkTools(INSTALL_TOOLS);
    const log = join(path, "curl.log");
    // This curl only records the URL it is given, so no request leaves the machine.
    const fakeCurl = `#!/bin/sh
for arg; do url=$arg; done
echo "$url" >> ${log}
exit 7
`;
    writeFileSync(join(path, "curl"), fakeCurl, { mode: 0o755 });
    const repository = packageJson.repository.replace(/^github:/, "");

    const result = await runInstaller(
      { SSL_PROXY_INSTALL_DIR: makeScratchDir("install"), ...env },
      path,
    );

    const releases = `https://github.com/${repository}/releases`;
    expect(readFileSync(log, "utf8")).toBe(`${releases}/${folder}/${ARCHIVE}\n`);
    expect(result.stderr).toStartWith("ssl-proxy install: downloading");
    expect(result.exitCode).toBe(1);
  });

  test("rejects a malformed SSL_PROXY_VERSION", async () => {
    const servedBefore = served.length;

    const result = await runInstaller({
      SSL_PROXY_VERSION: "0.1.0;rm",
      SSL_PROXY_DOWNLOAD_URL: `${baseUrl}/release`,
      SSL_PROXY_INSTALL_DIR: makeScratchDir("install"),
    });

    expect(result.stderr).toBe(
      'ssl-proxy install: SSL_PROXY_VERSION must look like 0.1.0, got "0.1.0;rm"\n',
    );
    expect(result.exitCode).toBe(1);
    expect(served.length).toBe(servedBefore);
  });

  test("rejects a checksum mismatch", async () => {
    const installDir = makeScratchDir("install");

    const result = await runInstaller({
      SSL_PROXY_DOWNLOAD_URL: `${baseUrl}/tampered`,
      SSL_PROXY_INSTALL_DIR: installDir,
    });

    const lines = result.stderr.trimEnd().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toStartWith(`ssl-proxy install: checksum mismatch for ${ARCHIVE}`);
    expect(result.exitCode).toBe(1);
    expect(readdirSync(installDir)).toEqual([]);
  });

  test.each([
    ["SunOS", "x86_64"],
    ["Linux", "riscv64"],
    ["MINGW64_NT-10.0", "x86_64"],
  ])("rejects platform %s %s before downloading", async (os, arch) => {
    const path = linkTools(INSTALL_TOOLS.filter((tool) => tool !== "uname").concat("curl"));
    const uname = `#!/bin/sh\ncase "$1" in -s) echo ${os} ;; -m) echo ${arch} ;; esac\n`;
    writeFileSync(join(path, "uname"), uname, { mode: 0o755 });
    const installDir = makeScratchDir("install");
    const servedBefore = served.length;

    const result = await runInstaller(
      { SSL_PROXY_DOWNLOAD_URL: `${baseUrl}/release`, SSL_PROXY_INSTALL_DIR: installDir },
      path,
    );

    const lines = result.stderr.trimEnd().split("\n");
    expect(lines).toHaveLength(1);
    expect(lines[0]).toStartWith(`ssl-proxy install: no ssl-proxy release for ${os} ${arch}`);
    expect(result.exitCode).toBe(1);
    expect(served.length).toBe(servedBefore);
    expect(readdirSync(installDir)).toEqual([]);
  });

  test("fails on a refused connection", async () => {
    const closedPort = await findFreePort();
    const installDir = join(makeScratchDir("install"), "bin");
    const url = `http://127.0.0.1:${closedPort}`;

    const result = await runInstaller({
      SSL_PROXY_DOWNLOAD_URL: url,
      SSL_PROXY_INSTALL_DIR: installDir,
    });

    expect(result.stderr).toStartWith(`ssl-proxy install: downloading ${url}/${ARCHIVE} failed`);
    expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(result.exitCode).toBe(1);
    expect(existsSync(installDir)).toBe(false);
  });

  test("fails on a release that does not exist", async () => {
    const installDir = makeScratchDir("install");
    const url = `${baseUrl}/missing`;

    const result = await runInstaller({
      SSL_PROXY_DOWNLOAD_URL: url,
      SSL_PROXY_INSTALL_DIR: installDir,
    });

    expect(result.stderr).toStartWith(`ssl-proxy install: downloading ${url}/${ARCHIVE} failed`);
    expect(result.stderr.trimEnd().split("\n")).toHaveLength(1);
    expect(result.exitCode).toBe(1);
    expect(readdirSync(installDir)).toEqual([]);
  });

  test("rejects an empty SSL_PROXY_INSTALL_DIR", async () => {
    const servedBefore = served.length;

    const result = await runInstaller({
      SSL_PROXY_DOWNLOAD_URL: `${baseUrl}/release`,
      SSL_PROXY_INSTALL_DIR: "",
    });

    expect(result.stderr).toBe(
      "ssl-proxy install: SSL_PROXY_INSTALL_DIR is set but empty: unset it or give a value\n",
    );
    expect(result.exitCode).toBe(1);
    expect(served.length).toBe(servedBefore);
  });
});
