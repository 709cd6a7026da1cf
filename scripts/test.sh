#!/usr/bin/env bash
# The whole test suite (CPU): lint (ruff.toml), then pytest. Extra arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
ruff check .
exec python -m pytest -q "$@"
