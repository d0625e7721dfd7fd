#!/usr/bin/env bash
# Benchmarks (GitHub issue 6): holyship against restic and `tar | zstd` on the same data, on a
# private Docker engine (never the machine's own). See scripts/bench.ts for what is measured.
#
#   npm run bench                          the comparison, ~670 MB data set, 3 interleaved runs
#   npm run bench -- --small --runs 1      a quick check (~1/10 of the data, one run)
#   npm run bench -- --profile             also a CPU profile of holyship's snapshots
#   npm run bench -- --push                also push to a local S3 (s3rver): holyship push vs restic copy
#   npm run bench -- --scale [--files N] [--big-size 5G]   only the scale runs (opt-in, long)
#   npm run bench -- --help
set -euo pipefail
cd "$(dirname "$0")/.."
export PATH="$PATH:/usr/local/sbin:/usr/sbin:/sbin"

case " $* " in
  *" --help "* | *" -h "*) exec npx --no-install tsx scripts/bench.ts --help ;;
esac

bash scripts/setup.sh

pkgs=()
command -v restic >/dev/null 2>&1 || pkgs+=(restic)
[ -x /usr/bin/time ] || pkgs+=(time)
command -v zstd >/dev/null 2>&1 || pkgs+=(zstd)
command -v du >/dev/null 2>&1 || pkgs+=(coreutils)
if [ ${#pkgs[@]} -gt 0 ]; then
  if [ "$(id -u)" != 0 ]; then
    echo "error: missing packages: ${pkgs[*]} (apt-get install -y ${pkgs[*]} as root)" >&2
    exit 1
  fi
  printf '\n==> installing %s\n' "${pkgs[*]}" >&2
  DEBIAN_FRONTEND=noninteractive apt-get update
  DEBIAN_FRONTEND=noninteractive apt-get install -y "${pkgs[@]}"
fi

exec npx --no-install tsx scripts/bench.ts "$@"
