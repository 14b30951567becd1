#!/usr/bin/env bash
# Runs the main job on the embedded local stack (relay + migration API emulator + sample
# data). Extra arguments go to the stack (--n, --work-dir, --relays) or the pipeline.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
exec python -m devstack.stack "$@"
