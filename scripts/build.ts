// Compiles ssl-proxy into one executable, dist/ssl-proxy-linux-amd64, that needs neither Bun nor Node.
import { $ } from "bun";

const outfile = process.argv[2] ?? "dist/ssl-proxy-linux-amd64";

// --bytecode starts the binary about twice as fast and needs ESM for top-level await.
// The autoload switches stop a stray .env or bunfig.toml in the user's folder from changing it.
await $`bun build src/index.ts --compile --target=bun-linux-x64 --minify --bytecode --format=esm --no-compile-autoload-dotenv --no-compile-autoload-bunfig --outfile ${outfile}`;
