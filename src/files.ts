import { chmod, mkdir, readFile, rename, writeFile } from "node:fs/promises";

/** Creates `folder` and its parents as needed, and makes `folder` itself private (0700). */
export async function ensurePrivateFolder(folder: string): Promise<void> {
  await mkdir(folder, { recursive: true, mode: 0o700 });
  await chmod(folder, 0o700);
}

/**
 * Writes `text` to `path` with `mode` through a temporary file and a rename, so that a reader
 * never sees half a file and a crash never leaves one.
 */
export async function writeFileAtomically(path: string, text: string, mode: number): Promise<void> {
  const temporary = `${path}.${process.pid}.tmp`;
  await writeFile(temporary, text, { mode });
  await chmod(temporary, mode);
  await rename(temporary, path);
}

/** Reads a UTF-8 file, or returns undefined when it does not exist. */
export async function readOptionalFile(path: string): Promise<string | undefined> {
  try {
    return await readFile(path, "utf8");
  } catch (error) {
    if ((error as NodeJS.ErrnoException).code === "ENOENT") return undefined;
    throw error;
  }
}
