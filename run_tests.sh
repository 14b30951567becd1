#!/usr/bin/env bash
# Runs the lint and the whole test suite (unit, graph and integration tests against a
# real relay process and the emulator on 127.0.0.1). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")"
source tools/ensure_venv.sh
python -m ruff check .
exec python -m pytest -o addopts="-p no:cacheprovider" -q "$@"
