#!/bin/sh
# Installs the ssl-proxy executable from a GitHub release, after checking it against the
# release's SHA256SUMS:
#
#   curl -fsSL https://raw.githubusercontent.com/OWNER_TO_BE_DECIDED/ssl-proxy/main/install.sh | sh
#
# Environment:
#   SSL_PROXY_VERSION       release to install, such as 0.1.0 (default: the latest release)
#   SSL_PROXY_DOWNLOAD_URL  folder URL to fetch the archive and SHA256SUMS from (mirrors, tests)
#   SSL_PROXY_INSTALL_DIR   folder to install into (default: /usr/local/bin as root, else ~/.local/bin)
#
# Written for POSIX sh, so it runs under dash. Each failure it checks for prints one line, exits 1
# and leaves no file in the install folder.
set -eu

# TODO(release): replace OWNER_TO_BE_DECIDED with the GitHub owner once it is chosen, here, in
# the usage line above and in package.json's "repository".
REPOSITORY="OWNER_TO_BE_DECIDED/ssl-proxy"

fail() {
  printf 'ssl-proxy install: %s\n' "$1" >&2
  exit 1
}

# Sets setting to the environment variable named $1, which may be unset but not empty.
read_setting() {
  is_set=""
  eval "is_set=\${$1+set} setting=\${$1-}"
  if [ "$is_set" = set ] && [ -z "$setting" ]; then
    fail "$1 is set but empty: unset it or give a value"
  fi
}

# Sets platform to GOOS-GOARCH, the suffix of the release's asset names.
detect_platform() {
  os=$(uname -s)
  arch=$(uname -m)
  case "$os" in
    Linux) goos=linux ;;
    Darwin) goos=darwin ;;
    *) goos="" ;;
  esac
  case "$arch" in
    x86_64 | amd64) goarch=amd64 ;;
    aarch64 | arm64) goarch=arm64 ;;
    *) goarch="" ;;
  esac
  if [ -z "$goos" ] || [ -z "$goarch" ]; then
    fail "no ssl-proxy release for $os $arch: there are builds for Linux and macOS on x86_64 and arm64, and a .zip for Windows x86_64 on the release page"
  fi
  platform="$goos-$goarch"
}

# Sets download_tool and hash_tool, or fails when no tool for a step is installed.
find_tools() {
  if command -v curl >/dev/null 2>&1; then
    download_tool=curl
  elif command -v wget >/dev/null 2>&1; then
    download_tool=wget
  else
    fail "neither curl nor wget is installed: install one of them and run this again"
  fi
  if command -v sha256sum >/dev/null 2>&1; then
    hash_tool=sha256sum
  elif command -v shasum >/dev/null 2>&1; then
    hash_tool="shasum -a 256"
  else
    fail "neither sha256sum nor shasum is installed, so the download cannot be checked"
  fi
  command -v tar >/dev/null 2>&1 || fail "tar is not installed: install it and run this again"
}

# Downloads URL $1 to file $2. curl -s and wget -q print no error of their own, so the line from
# fail is the only error output.
download() {
  if [ "$download_tool" = curl ]; then
    curl -fsL -o "$2" "$1" || download_failed "$1"
  else
    wget -q -O "$2" "$1" || download_failed "$1"
  fi
}

download_failed() {
  fail "downloading $1 failed: check the network connection and that the release exists (SSL_PROXY_VERSION, SSL_PROXY_DOWNLOAD_URL)"
}

# Fails unless file $1 has the SHA-256 that the SHA256SUMS file $2 lists for the name $3.
verify_checksum() {
  expected=$(awk -v name="$3" '$2 == name || $2 == "*" name { print $1; exit }' "$2")
  [ -n "$expected" ] || fail "SHA256SUMS lists no checksum for $3, so it cannot be checked"
  actual=$($hash_tool "$1" | awk '{ print $1 }')
  if [ "$actual" != "$expected" ]; then
    fail "checksum mismatch for $3: SHA256SUMS lists $expected but the download hashes to $actual (nothing was installed; try again or use another mirror)"
  fi
}

# Sets install_dir from SSL_PROXY_INSTALL_DIR, or to the default for this user.
choose_install_dir() {
  read_setting SSL_PROXY_INSTALL_DIR
  install_dir=$setting
  if [ -z "$install_dir" ] && [ "$(id -u)" = 0 ]; then
    install_dir=/usr/local/bin
  elif [ -z "$install_dir" ]; then
    [ -n "${HOME:-}" ] || fail "HOME is not set: set SSL_PROXY_INSTALL_DIR to the install folder"
    install_dir="$HOME/.local/bin"
  fi
  if [ -e "$install_dir" ] && ! [ -d "$install_dir" ]; then
    fail "install folder $install_dir is not a folder: set SSL_PROXY_INSTALL_DIR to another one"
  fi
  if [ -d "$install_dir" ] && ! [ -w "$install_dir" ]; then
    fail "cannot write to $install_dir: run as root (curl ... | sudo sh) or set SSL_PROXY_INSTALL_DIR"
  fi
  if [ -d "$install_dir/ssl-proxy" ]; then
    fail "$install_dir/ssl-proxy is a folder: move it away or set SSL_PROXY_INSTALL_DIR"
  fi
}

# Sets base_url, the folder that holds the release's assets.
choose_base_url() {
  read_setting SSL_PROXY_VERSION
  version=${setting#v}
  case "$version" in
    *[!0-9A-Za-z.+-]*) fail "SSL_PROXY_VERSION must look like 0.1.0, got \"$version\"" ;;
  esac
  read_setting SSL_PROXY_DOWNLOAD_URL
  if [ -n "$setting" ]; then
    base_url=${setting%/}
  elif [ -n "$version" ]; then
    base_url="https://github.com/$REPOSITORY/releases/download/v$version"
  else
    base_url="https://github.com/$REPOSITORY/releases/latest/download"
  fi
}

detect_platform
find_tools
choose_install_dir
choose_base_url

executable="ssl-proxy-$platform"
archive="$executable.tar.gz"
work_dir=$(mktemp -d)
staged=""
trap 'rm -rf "$work_dir"; [ -z "$staged" ] || rm -f "$staged"' EXIT
trap 'exit 1' HUP INT TERM

echo "downloading $base_url/$archive"
download "$base_url/$archive" "$work_dir/$archive"
download "$base_url/SHA256SUMS" "$work_dir/SHA256SUMS"
verify_checksum "$work_dir/$archive" "$work_dir/SHA256SUMS" "$archive"

tar -xzf "$work_dir/$archive" -C "$work_dir" "$executable" 2>/dev/null ||
  fail "$archive does not contain $executable: the release is broken, report it"

# The new binary is copied next to its final name and run there, because /tmp may be mounted
# noexec. The rename within one folder is atomic, so the old binary stays whole until replaced.
mkdir -p "$install_dir" || fail "cannot create $install_dir: set SSL_PROXY_INSTALL_DIR"
install_dir=$(cd "$install_dir" && pwd)
staged="$install_dir/.ssl-proxy.new.$$"
cp "$work_dir/$executable" "$staged" || fail "cannot write to $install_dir"
chmod 0755 "$staged"
installed_version=$("$staged" -version 2>/dev/null) ||
  fail "the downloaded ssl-proxy does not run on this machine ($platform): report it with the output of uname -a"
mv -f "$staged" "$install_dir/ssl-proxy"
staged=""

echo "installed $installed_version as $install_dir/ssl-proxy"
case ":$PATH:" in
  *":$install_dir:"*) ;;
  *)
    echo "$install_dir is not on your PATH; add it with this line (and put it in ~/.profile to keep it):"
    echo "  export PATH=\"$install_dir:\$PATH\""
    ;;
esac
