import { usageError } from "./errors.ts";

/** The kind of each flag, which decides whether it takes a value. */
export type FlagKinds = Record<string, "string" | "boolean">;

const TRUE_WORDS = new Set(["1", "t", "T", "true", "TRUE", "True"]);
const FALSE_WORDS = new Set(["0", "f", "F", "false", "FALSE", "False"]);

/**
 * Translates Go-style flags (`-from x`, `-from=x`, `--from x`, `--from=x`, `-redirectHTTP=false`)
 * into the `--name=value`, `--name` and `--no-name` forms that citty parses.
 *
 * Flag names are case-sensitive, as in Go. Boolean values are those of Go's strconv.ParseBool.
 * An unknown flag, a missing value, a bad boolean or a positional argument throws a usage error.
 */
export function translateGoFlags(argv: readonly string[], kinds: FlagKinds): string[] {
  const out: string[] = [];
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i]!;
    const match = /^--?([^-=][^=]*)(?:=([\s\S]*))?$/.exec(arg);
    if (!match) {
      throw usageError(
        `unexpected argument "${arg}": flags start with "-", as in -to 127.0.0.1:5000`,
      );
    }

    const name = match[1]!;
    const inlineValue = match[2];
    const kind = kinds[name];
    if (kind === undefined) {
      throw usageError(`unknown flag "-${name}" (run ssl-proxy -help to list the flags)`);
    }

    if (kind === "boolean") {
      out.push(translateBoolean(name, inlineValue));
      continue;
    }

    let value = inlineValue;
    if (value === undefined) {
      value = argv[++i];
      if (value === undefined) {
        throw usageError(`flag -${name} needs a value, as in -${name}=VALUE`);
      }
    }
    out.push(`--${name}=${value}`);
  }
  return out;
}

function translateBoolean(name: string, value: string | undefined): string {
  if (value === undefined || TRUE_WORDS.has(value)) return `--${name}`;
  if (FALSE_WORDS.has(value)) return `--no-${name}`;
  throw usageError(
    `invalid value "${value}" for -${name}: use -${name}, -${name}=true or -${name}=false`,
  );
}
