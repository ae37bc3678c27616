// Compiles ssl-proxy into one executable that needs neither Bun nor Node. Run directly, it builds
// dist/ssl-proxy-linux-amd64 (or the path given as its argument) for the host's linux-x64.
import { $ } from "bun";
import { join } from "node:path";
import packageJson from "../package.json" with { type: "json" };

/**
 * Compiles src/index.ts for `target` (a `bun build --target`, such as "bun-linux-arm64") into
 * `outfile`, with package.json's version embedded. Targets other than the host's download
 * that target's Bun runtime on first use.
 */
export async function compileBinary(target: string, outfile: string): Promise<void> {
  // --bytecode starts the binary about twice as fast and needs ESM for top-level await.
  const speed = ["--minify", "--bytecode", "--format=esm"];
  // A stray .env, bunfig.toml, tsconfig.json or package.json in the user's folder must not
  // change the binary, so none of them is read at start-up.
  const isolation = [
    "--no-compile-autoload-dotenv",
    "--no-compile-autoload-bunfig",
    "--no-compile-autoload-tsconfig",
    "--no-compile-autoload-package-json",
  ];
  const version = `BUILD_VERSION=${JSON.stringify(packageJson.version)}`;
  const entry = join(import.meta.dir, "../src/index.ts");
  await $`${process.execPath} build ${entry} --compile --target=${target} ${speed} ${isolation} --define ${version} --outfile ${outfile}`;
}

if (import.meta.main) {
  await compileBinary("bun-linux-x64", process.argv[2] ?? "dist/ssl-proxy-linux-amd64");
}
