#!/usr/bin/env bash
# The main job end to end on private Docker engines: see scripts/demo.ts.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec npx --no-install tsx scripts/demo.ts
