#!/usr/bin/env bash
# Installs what the demo and the benchmarks need (system packages, npm packages with their
# native addons: the same steps as the tests, see scripts/test.sh) and builds the CLI.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/test.sh --deps-only
npm run --silent build
