#!/usr/bin/env bash
# Runs the main job on the embedded local stack (relay + migration API emulator + sample
# data). Extra arguments go to the stack (--n, --work-dir, --relays, --keep, --status,
# --down) or the pipeline. By default the stack is started for the run and stopped after
# it; --keep leaves it up under .local/stack/ for the next runs, --down stops it.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
exec python -m devstack.stack "$@"
