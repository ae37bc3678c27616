/**
 * An error the user can fix: a bad flag, an unreadable file, a port in use.
 * The entry point prints its message as one line, without a stack, and exits with `exitCode`.
 */
export class UserError extends Error {
  readonly exitCode: number;

  constructor(message: string, options: { exitCode?: number; cause?: unknown } = {}) {
    super(message, { cause: options.cause });
    this.name = "UserError";
    this.exitCode = options.exitCode ?? 1;
  }
}

/** Exit status for bad command-line input, as Go's flag package uses. */
export const USAGE_EXIT_CODE = 2;

/** Creates a UserError for bad command-line input, which exits with status 2. */
export function usageError(message: string): UserError {
  return new UserError(message, { exitCode: USAGE_EXIT_CODE });
}
