// Builds the release assets for package.json's version, laid out like the Go original's: for each
// target an archive whose only member is the executable, at the top level, plus SHA256SUMS.
//
//   bun scripts/release.ts                 linux-amd64 only, into dist/ (needs no download)
//   bun scripts/release.ts --all           every target, which the release workflow builds
//   bun scripts/release.ts --outDir DIR    into DIR instead of dist/
import { $ } from "bun";
import { chmod, mkdir, rm, stat } from "node:fs/promises";
import { join } from "node:path";
import { parseArgs } from "node:util";
import packageJson from "../package.json" with { type: "json" };
import { compileBinary } from "./build.ts";

/** One release asset: the Bun compile target and the executable's name inside the archive. */
interface ReleaseTarget {
  bunTarget: string;
  executable: string;
  archive: "tar.gz" | "zip";
}

/** Every target Bun compiles for, named GOOS-GOARCH as the original's assets are. */
const RELEASE_TARGETS: readonly ReleaseTarget[] = [
  { bunTarget: "bun-linux-x64", executable: "ssl-proxy-linux-amd64", archive: "tar.gz" },
  { bunTarget: "bun-linux-arm64", executable: "ssl-proxy-linux-arm64", archive: "tar.gz" },
  { bunTarget: "bun-darwin-x64", executable: "ssl-proxy-darwin-amd64", archive: "tar.gz" },
  { bunTarget: "bun-darwin-arm64", executable: "ssl-proxy-darwin-arm64", archive: "tar.gz" },
  { bunTarget: "bun-windows-x64", executable: "ssl-proxy-windows-amd64.exe", archive: "zip" },
];

/** Writes `target`'s archive into `outDir`, next to its executable, and returns its file name. */
async function archiveExecutable(target: ReleaseTarget, outDir: string): Promise<string> {
  const name = `${target.executable}.${target.archive}`;
  // zip adds to an existing archive instead of replacing it.
  await rm(join(outDir, name), { force: true });
  if (target.archive === "zip") {
    await $`zip -q -X -j ${join(outDir, name)} ${join(outDir, target.executable)}`;
    return name;
  }

  // Owner 0 keeps `sudo tar x` from giving the file to whatever uid built the release.
  const owner = ["--owner=0", "--group=0", "--numeric-owner"];
  await $`tar -czf ${join(outDir, name)} ${owner} -C ${outDir} ${target.executable}`;
  return name;
}

/** Returns the SHA256SUMS text for `files` in `outDir`, in the format `sha256sum -c` reads. */
async function hashFiles(files: string[], outDir: string): Promise<string> {
  const lines: string[] = [];
  for (const file of files) {
    const hasher = new Bun.CryptoHasher("sha256");
    for await (const chunk of Bun.file(join(outDir, file)).stream()) hasher.update(chunk);
    lines.push(`${hasher.digest("hex")}  ${file}\n`);
  }
  return lines.join("");
}

/** Builds the executables and archives of `targets` into `outDir`, then writes SHA256SUMS. */
async function buildRelease(targets: readonly ReleaseTarget[], outDir: string) {
  await mkdir(outDir, { recursive: true });
  const archives: string[] = [];
  for (const target of targets) {
    const executable = join(outDir, target.executable);
    await compileBinary(target.bunTarget, executable);
    await chmod(executable, 0o755);
    archives.push(await archiveExecutable(target, outDir));
  }
  await Bun.write(join(outDir, "SHA256SUMS"), await hashFiles(archives, outDir));
  return archives;
}

function parseReleaseArgs(args: string[]) {
  const options = { all: { type: "boolean", default: false }, outDir: { type: "string" } } as const;
  try {
    return parseArgs({ args, options }).values;
  } catch (error) {
    console.error(`release: ${(error as Error).message} (use --all and --outDir DIR)`);
    process.exit(2);
  }
}

if (import.meta.main) {
  const values = parseReleaseArgs(process.argv.slice(2));
  const outDir = values.outDir ?? "dist";
  const host = RELEASE_TARGETS.filter((target) => target.bunTarget === "bun-linux-x64");
  const targets = values.all ? RELEASE_TARGETS : host;
  const archives = await buildRelease(targets, outDir);

  console.log(`ssl-proxy ${packageJson.version} release assets in ${outDir}/:`);
  for (const name of archives) {
    const { size } = await stat(join(outDir, name));
    console.log(`  ${name} (${(size / 1e6).toFixed(1)} MB)`);
  }
  console.log("  SHA256SUMS");
}
