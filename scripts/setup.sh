#!/usr/bin/env bash
# Installs what holyship's demo and tests need on a fresh Debian machine, idempotently:
# system packages (Docker engine, busybox-static, debootstrap, attr, restic) as root, the npm
# packages (with the native addons built), and the compiled CLI.
set -euo pipefail
cd "$(dirname "$0")/.."

need=()
command -v dockerd >/dev/null 2>&1 || need+=(docker.io)
[ -x /bin/busybox ] && /bin/busybox --list >/dev/null 2>&1 && file -L /bin/busybox 2>/dev/null | grep -q static || need+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || need+=(debootstrap)
command -v getfattr >/dev/null 2>&1 || need+=(attr)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
command -v file >/dev/null 2>&1 || need+=(file)
if [ "${#need[@]}" -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "setup: missing system packages: ${need[*]}; run as root (apt-get install -y ${need[*]})" >&2
    exit 1
  fi
  echo "setup: installing ${need[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq "${need[@]}" >/dev/null
fi

# npm packages: again whenever the lock file is newer than the install
if [ ! -f node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  echo "setup: npm ci (builds the native addons: a few minutes the first time)" >&2
  npm ci --no-audit --no-fund >/tmp/holyship-npm-ci.log 2>&1 || { tail -30 /tmp/holyship-npm-ci.log >&2; exit 1; }
fi
if ! node -e "require('better-sqlite3'); require('zstd-napi')" 2>/dev/null; then
  echo "setup: building native addons" >&2
  npm rebuild better-sqlite3 zstd-napi >/tmp/holyship-npm-rebuild.log 2>&1 || { tail -30 /tmp/holyship-npm-rebuild.log >&2; exit 1; }
fi
node -e "require('better-sqlite3'); require('zstd-napi')"

npm run --silent build
