// scripts/build.ts replaces BUILD_VERSION with package.json's version through `bun build --define`,
// so the compiled binary carries the version string alone. From source it is undeclared at run
// time, typeof returns "undefined", and package.json is read instead.
declare const BUILD_VERSION: string | undefined;

/** The version of ssl-proxy, as in package.json. */
export const VERSION: string =
  typeof BUILD_VERSION === "string"
    ? BUILD_VERSION
    : (await import("../package.json", { with: { type: "json" } })).default.version;
