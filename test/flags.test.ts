import { describe, expect, test } from "bun:test";
import { UserError } from "../src/errors.ts";
import { translateGoFlags, type FlagKinds } from "../src/flags.ts";

const KINDS: FlagKinds = { from: "string", to: "string", redirectHTTP: "boolean" };

/** Runs `action` and returns the error it throws, so that a test can check its fields. */
function catchError(action: () => unknown): unknown {
  try {
    action();
  } catch (error) {
    return error;
  }
  throw new Error("expected the call to throw, but it returned");
}

describe("translateGoFlags", () => {
  test.each<{ argv: string[]; expected: string[] }>([
    { argv: ["-from", "127.0.0.1:0"], expected: ["--from=127.0.0.1:0"] },
    { argv: ["-from=127.0.0.1:0"], expected: ["--from=127.0.0.1:0"] },
    { argv: ["--from", "127.0.0.1:0"], expected: ["--from=127.0.0.1:0"] },
    { argv: ["--from=127.0.0.1:0"], expected: ["--from=127.0.0.1:0"] },
    { argv: ["-to=http://127.0.0.1:5000/?a=b"], expected: ["--to=http://127.0.0.1:5000/?a=b"] },
    { argv: ["-to", "-x"], expected: ["--to=-x"] },
    { argv: ["-to="], expected: ["--to="] },
    { argv: ["-from", "a:1", "-from", "b:2"], expected: ["--from=a:1", "--from=b:2"] },
    { argv: ["-redirectHTTP", "-to", "x:1"], expected: ["--redirectHTTP", "--to=x:1"] },
    { argv: [], expected: [] },
  ])("translates $argv", ({ argv, expected }) => {
    const translated = translateGoFlags(argv, KINDS);

    expect(translated).toEqual(expected);
  });

  test.each(["-redirectHTTP", "--redirectHTTP", "-redirectHTTP=true", "--redirectHTTP=true"])(
    "turns %p on",
    (arg) => {
      const translated = translateGoFlags([arg], KINDS);

      expect(translated).toEqual(["--redirectHTTP"]);
    },
  );

  test.each(["1", "t", "T", "true", "TRUE", "True"])("reads boolean %p as true", (word) => {
    const translated = translateGoFlags([`-redirectHTTP=${word}`], KINDS);

    expect(translated).toEqual(["--redirectHTTP"]);
  });

  test.each(["0", "f", "F", "false", "FALSE", "False"])("reads boolean %p as false", (word) => {
    const translated = translateGoFlags([`-redirectHTTP=${word}`], KINDS);

    expect(translated).toEqual(["--no-redirectHTTP"]);
  });

  test.each([
    { argv: ["-bogus"], names: ["-bogus"] },
    { argv: ["--bogus=1"], names: ["-bogus"] },
    { argv: ["-From", "127.0.0.1:0"], names: ["-From"] },
    { argv: ["-from"], names: ["-from"] },
    { argv: ["--to"], names: ["-to"] },
    { argv: ["extra"], names: ["extra"] },
    { argv: ["-to", "x:1", "extra"], names: ["extra"] },
    { argv: ["-redirectHTTP", "false"], names: ["false"] },
    { argv: ["-redirectHTTP=maybe"], names: ["-redirectHTTP", "maybe"] },
    { argv: ["-redirectHTTP=yes"], names: ["-redirectHTTP", "yes"] },
    { argv: ["---from=a:1"], names: ["---from=a:1"] },
    { argv: ["-=x"], names: ["-=x"] },
    { argv: ["-"], names: ["-"] },
  ])("rejects $argv", ({ argv, names }) => {
    const error = catchError(() => translateGoFlags(argv, KINDS));

    expect(error).toBeInstanceOf(UserError);
    expect((error as UserError).exitCode).toBe(2);
    for (const name of names) expect((error as UserError).message).toContain(name);
  });

  test("points unknown flags to -help", () => {
    const error = catchError(() => translateGoFlags(["-bogus"], KINDS));

    expect((error as UserError).message).toContain("-help");
  });

  test("shows the form of a missing value", () => {
    const error = catchError(() => translateGoFlags(["-from"], KINDS));

    expect((error as UserError).message).toContain("-from=");
  });
});
