#!/usr/bin/env bash
# Full test run: system packages for the private Docker engines, npm dependencies (with their
# native addons), the TypeScript build, then every vitest project (unit + integration).
#
#   scripts/test.sh                 everything
#   scripts/test.sh --deps-only     only install what is missing (system packages, node_modules)
#   scripts/test.sh -- <args>       extra arguments for `vitest run`
#
# Integration tests start real dockerd/containerd pairs in their own network namespaces (see
# test/harness/engine.ts): they need root. The postgres test image is built once per machine
# (debootstrap, cached under /var/cache/holyship-test) and imported by the global setup.
set -euo pipefail
cd "$(dirname "$0")/.."

# non-login shells (CI) may lack the sbin dirs where dockerd, ip and iptables live
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

deps_only=0
vitest_args=()
while [ $# -gt 0 ]; do
  case "$1" in
    --deps-only) deps_only=1 ;;
    --) shift; vitest_args+=("$@"); break ;;
    *) vitest_args+=("$1") ;;
  esac
  shift
done

log() { printf '\n==> %s\n' "$*" >&2; }

# --- system packages ------------------------------------------------------------------------------
pkgs=()
{ command -v dockerd && command -v containerd && command -v runc; } >/dev/null 2>&1 || pkgs+=(docker.io)
# the busybox test image needs the *static* busybox at /bin/busybox
dpkg-query -W -f='${Status}\n' busybox-static 2>/dev/null | grep -q 'install ok installed' || pkgs+=(busybox-static)
command -v debootstrap >/dev/null 2>&1 || pkgs+=(debootstrap)
command -v setfattr >/dev/null 2>&1 || pkgs+=(attr)
command -v ip >/dev/null 2>&1 || pkgs+=(iproute2)
command -v nsenter >/dev/null 2>&1 || pkgs+=(util-linux)
command -v iptables >/dev/null 2>&1 || pkgs+=(iptables)

if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing system packages: ${pkgs[*]}" >&2
    echo "       install them as root:  apt-get update && apt-get install -y ${pkgs[*]}" >&2
    echo "       (the integration tests also need root to start their private Docker engines)" >&2
    exit 1
  fi
  log "installing system packages: ${pkgs[*]}"
  # keep a freshly installed docker.io from starting the machine's own dockerd (systemd hosts)
  own_policy=0
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod 755 /usr/sbin/policy-rc.d
    own_policy=1
  fi
  trap '[ "$own_policy" = 1 ] && rm -f /usr/sbin/policy-rc.d' EXIT
  DEBIAN_FRONTEND=noninteractive apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
  if [ "$own_policy" = 1 ]; then rm -f /usr/sbin/policy-rc.d; fi
  trap - EXIT
fi
if [ "$(id -u)" != 0 ]; then
  echo "warning: not root: the integration tests (private Docker engines) will fail" >&2
fi

# --- node_modules ---------------------------------------------------------------------------------
native_ok() { node -e "require('better-sqlite3'); require('zstd-napi')" >/dev/null 2>&1; }

if [ ! -d node_modules ] || [ ! -e node_modules/.package-lock.json ] || [ package-lock.json -nt node_modules/.package-lock.json ]; then
  log "npm ci"
  # install scripts of better-sqlite3 and zstd-napi run because package.json's allowScripts approves
  # them; with no prebuilt binaries reachable they compile with node-gyp (python3, make, g++)
  npm ci
fi
if ! native_ok; then
  log "native addons do not load: npm rebuild better-sqlite3 zstd-napi"
  npm rebuild better-sqlite3 zstd-napi
  if ! native_ok; then
    node -e "require('better-sqlite3'); require('zstd-napi')" || true
    echo "error: better-sqlite3 / zstd-napi native addons still do not load (see above)" >&2
    exit 1
  fi
fi

if [ "$deps_only" = 1 ]; then
  exit 0
fi

# --- build + tests --------------------------------------------------------------------------------
log "npm run build"
npm run build

log "vitest run"
report="$(mktemp /tmp/holyship-vitest-XXXXXX.json)"
status=0
npx vitest run --reporter=default --reporter=json --outputFile.json="$report" "${vitest_args[@]}" || status=$?
# one plain summary line for CI logs: "tests: N passed, N failed, N skipped"
node -e '
  const r = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8"))
  console.log(`tests: ${r.numPassedTests} passed, ${r.numFailedTests} failed, ${r.numPendingTests + r.numTodoTests} skipped`)
' "$report" 2>/dev/null || echo "tests: no vitest report (exit $status)"
rm -f "$report"
exit "$status"
