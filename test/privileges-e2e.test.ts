import { afterAll, beforeAll, describe, expect, test } from "bun:test";
import { chmodSync, chownSync, readFileSync, statSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { createSelfSignedCertificate } from "../src/certs.ts";
import {
  PROXY_COMMANDS,
  makeTempDir,
  run,
  runToExit,
  servedFingerprint,
  startProxy,
} from "./helpers.ts";

const NOBODY = 65534;
/** CAP_NET_BIND_SERVICE is capability 10 (linux/capability.h). */
const NET_BIND_SERVICE_ONLY = (1n << 10n).toString(16).padStart(16, "0");

let backend: ReturnType<typeof Bun.serve>;

beforeAll(() => {
  backend = Bun.serve({ hostname: "127.0.0.1", port: 0, fetch: () => new Response("ok\n") });
});

afterAll(() => backend.stop(true));

/** Makes a folder under test/.tmp with mode 0755, so that the nobody account can enter it. */
function openFolder(prefix: string): string {
  const folder = makeTempDir(prefix);
  chmodSync(folder, 0o755);
  return folder;
}

/** Reads a line such as "Uid:" or "CapEff:" of /proc/PID/status. */
function processStatus(pid: number, field: string): string {
  const line = readFileSync(`/proc/${pid}/status`, "latin1")
    .split("\n")
    .find((entry) => entry.startsWith(`${field}:`));
  return line!.slice(field.length + 1).trim();
}

async function writePairFor(owner: number, files: { cert: string; key: string }) {
  const pair = await createSelfSignedCertificate(["127.0.0.1"]);
  writeFileSync(files.cert, pair.cert);
  writeFileSync(files.key, pair.key, { mode: 0o600 });
  chownSync(files.key, owner, owner);
}

const rootOnly =
  process.getuid?.() === 0 ? describe.each(PROXY_COMMANDS) : describe.skip.each(PROXY_COMMANDS);

rootOnly("started as root ($name)", (command) => {
  test("serves as SUDO_USER with only CAP_NET_BIND_SERVICE, in a data folder it owns", async () => {
    const dataDir = join(openFolder("priv"), "data");
    const proxy = await startProxy(command, ["-to", backend.url.href, "-dataDir", dataDir], {
      env: { SUDO_USER: "nobody" },
    });
    try {
      const reply = await run(["curl", "-sk", `https://127.0.0.1:${proxy.port}/`]);

      expect(reply.stdout).toBe("ok\n");
      expect(processStatus(proxy.proc.pid, "Uid").split(/\s+/)).toEqual(Array(4).fill(`${NOBODY}`));
      expect(processStatus(proxy.proc.pid, "Gid").split(/\s+/)).toEqual(Array(4).fill(`${NOBODY}`));
      expect(processStatus(proxy.proc.pid, "CapEff")).toBe(NET_BIND_SERVICE_ONLY);
      const folder = statSync(dataDir);
      expect([folder.uid, folder.mode & 0o777]).toEqual([NOBODY, 0o700]);
      const key = statSync(join(dataDir, "self-signed/127.0.0.1/key.pem"));
      expect([key.uid, key.mode & 0o777]).toEqual([NOBODY, 0o600]);
      expect(proxy.stderr()).toBe("");
    } finally {
      await proxy.stop();
    }
  });

  test("serves port 443 as -user and swaps the certificate there on SIGHUP", async () => {
    const folder = openFolder("priv");
    const files = { cert: join(folder, "cert.pem"), key: join(folder, "key.pem") };
    await writePairFor(NOBODY, files);
    const args = ["-user", "nobody", "-from", "127.0.0.1:443", "-to", backend.url.href];
    const proxy = await startProxy(command, [...args, "-cert", files.cert, "-key", files.key]);
    try {
      const before = await servedFingerprint(443);

      await writePairFor(NOBODY, files);
      proxy.proc.kill("SIGHUP");
      for (let tries = 0; !proxy.stdout().includes("SIGHUP received: reloaded"); tries++) {
        if (tries > 250) throw new Error(`no reload:\n${proxy.stdout()}\n${proxy.stderr()}`);
        await Bun.sleep(20);
      }

      expect(processStatus(proxy.proc.pid, "Uid").split(/\s+/)[1]).toBe(`${NOBODY}`);
      expect(await servedFingerprint(443)).not.toBe(before);
      // The swap may warn about Linux's tcp_migrate_req setting, and nothing else.
      const otherLines = proxy
        .stderr()
        .split("\n")
        .filter((line) => line !== "" && !line.includes("net.ipv4.tcp_migrate_req"));
      expect(otherLines).toEqual([]);
    } finally {
      await proxy.stop();
    }
  });

  test("stays root with -user root, and says so", async () => {
    const proxy = await startProxy(command, ["-user", "root", "-to", backend.url.href]);
    try {
      // stderr is read apart from stdout, so the warning may trail the start-up line a little.
      for (let tries = 0; tries < 100 && proxy.stderr() === ""; tries++) await Bun.sleep(20);

      expect(processStatus(proxy.proc.pid, "Uid").split(/\s+/)[1]).toBe("0");
      expect(proxy.stderr()).toContain("warning: serving as root (-user root)");
    } finally {
      await proxy.stop();
    }
  });

  test("refuses to run as root without sudo or -user", async () => {
    const result = await runToExit(command, ["-to", backend.url.href], { env: { SUDO_USER: "" } });

    expect(result.exitCode).toBe(2);
    expect(result.stderr).toBe(
      "ssl-proxy: ssl-proxy was started as root without sudo: give -user NAME to serve as NAME once the ports are bound, or -user root to stay root\n",
    );
  });

  test("rejects a -user that does not exist", async () => {
    const result = await runToExit(command, ["-user", "no-such-user", "-to", backend.url.href]);

    expect(result.exitCode).toBe(2);
    expect(result.stderr).toBe('ssl-proxy: -user "no-such-user" is not a user on this machine\n');
  });

  test("refuses a -dataDir the user cannot write", async () => {
    const dataDir = openFolder("root-owned");

    const result = await runToExit(command, ["-user", "nobody", "-dataDir", dataDir]);

    expect(result.exitCode).not.toBe(0);
    expect(result.stderr).toBe(
      `ssl-proxy: -dataDir "${dataDir}" is not writable by nobody, whom ssl-proxy serves as: chown it to nobody, or choose another folder\n`,
    );
  });
});
