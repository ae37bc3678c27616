import { spawnSync } from "node:child_process";
import { readFileSync } from "node:fs";
import { chown, lstat, mkdir, readdir } from "node:fs/promises";
import { join } from "node:path";
import type { ProxyConfig } from "./config.ts";
import { UserError, usageError } from "./errors.ts";

/** An account from the system's user database. */
export interface Account {
  name: string;
  uid: number;
  gid: number;
  home: string;
}

/**
 * Looks up `name` (or a numeric uid) in /etc/passwd, then through getent for users from LDAP or
 * other NSS sources. Deno runs without permission to start getent, so there only the file counts.
 */
export function lookupAccount(name: string): Account | undefined {
  const local = readFileSync("/etc/passwd", "utf8")
    .split("\n")
    .map((line) => line.split(":"))
    .find((fields) => fields[0] === name || fields[2] === name);
  const result = local ? undefined : spawnSync("getent", ["passwd", name], { encoding: "utf8" });
  const fields = local ?? (result?.status === 0 ? result.stdout.trim().split(":") : []);
  if (fields.length < 7) return undefined;
  return { name: fields[0]!, uid: Number(fields[2]), gid: Number(fields[3]), home: fields[5]! };
}

/**
 * Makes sure ssl-proxy does not serve as root. Started as root, it starts itself again through
 * util-linux setpriv as the -user (or SUDO_USER) account, keeping only CAP_NET_BIND_SERVICE,
 * which binding ports below 1024 and the second listener of a certificate swap need. Nothing
 * has been bound at that point. Returns when the process may go on as it is: not root, or
 * root by `-user root`, in which case it returns the warning to print once ssl-proxy serves.
 */
export async function leaveRoot(config: Readonly<ProxyConfig>): Promise<string | undefined> {
  const uid = process.getuid?.();
  if (uid === undefined) return;
  const requested = config.serveAs;
  if (uid !== 0) {
    const current = lookupAccount(String(uid));
    if (requested?.from === "-user" && requested.name !== current?.name) {
      throw usageError(
        `-user "${requested.name}" needs ssl-proxy to be started as root (it runs as ${current?.name ?? `uid ${uid}`})`,
      );
    }
    return;
  }
  if (!requested) {
    throw usageError(
      "ssl-proxy was started as root without sudo: give -user NAME to serve as NAME once the ports are bound, or -user root to stay root",
    );
  }
  const account = lookupAccount(requested.name);
  if (!account) {
    throw usageError(`${requested.from} "${requested.name}" is not a user on this machine`);
  }
  if (account.uid === 0) {
    return `serving as root (${requested.from} ${requested.name}): a fault in ssl-proxy would give an attacker root; prefer -user NAME`;
  }
  if (typeof Bun === "undefined") {
    throw usageError(
      `serving as ${account.name} after starting as root needs the Bun runtime: run ssl-proxy as ${account.name}, or give -user root`,
    );
  }
  const setpriv = Bun.which("setpriv");
  if (!setpriv) {
    throw new UserError(
      `cannot serve as ${account.name}: setpriv is missing (install util-linux), or give -user root to stay root`,
    );
  }
  // With -cert and -key nothing is written to the data folder.
  if (!config.certificateFiles) {
    const dataDir = config.dataDirGiven ? config.dataDir : join(account.home, ".ssl-proxy");
    await prepareDataDir(dataDir, account, !config.dataDirGiven);
  }

  const env: Record<string, string | undefined> = {
    ...process.env,
    HOME: account.home,
    USER: account.name,
    LOGNAME: account.name,
  };
  return process.execve!(
    setpriv,
    [
      "setpriv",
      `--reuid=${account.uid}`,
      `--regid=${account.gid}`,
      "--init-groups",
      "--inh-caps=+net_bind_service",
      "--ambient-caps=+net_bind_service",
      "--",
      process.execPath,
      ...ownArgv().slice(1),
    ],
    env,
  );
}

/**
 * Gives the data folder to `account`. A new folder is made for it with mode 0700. ssl-proxy's
 * default folder is handed over whole, because an earlier run as root may have filled it. A
 * folder the user named must already be writable by the account, since it may contain other files.
 */
async function prepareDataDir(folder: string, account: Account, ownDefault: boolean) {
  const existing = await lstat(folder).catch(() => undefined);
  if (!existing) {
    await mkdir(folder, { recursive: true, mode: 0o700 });
    await chown(folder, account.uid, account.gid);
    return;
  }
  if (ownDefault) {
    await chownTree(folder, account);
    return;
  }
  if (!writableBy(existing, account)) {
    throw new UserError(
      `-dataDir "${folder}" is not writable by ${account.name}, whom ssl-proxy serves as: chown it to ${account.name}, or choose another folder`,
    );
  }
}

function writableBy(stats: { uid: number; gid: number; mode: number }, account: Account) {
  if (stats.uid === account.uid) return (stats.mode & 0o300) === 0o300;
  if (stats.gid === account.gid) return (stats.mode & 0o030) === 0o030;
  return (stats.mode & 0o003) === 0o003;
}

async function chownTree(path: string, account: Account): Promise<void> {
  const stats = await lstat(path);
  if (stats.isSymbolicLink()) return;
  await chown(path, account.uid, account.gid);
  if (!stats.isDirectory()) return;
  for (const entry of await readdir(path)) await chownTree(join(path, entry), account);
}

/** Builds the argument vector that starts this program again with the same arguments, for setpriv. */
function ownArgv(): string[] {
  // In a compiled executable argv[1] is the embedded entry point, which Bun adds by itself.
  const [first = process.execPath, entry = "", ...args] = process.argv;
  return entry.startsWith("/$bunfs/") ? [first, ...args] : [first, entry, ...args];
}
