#!/usr/bin/env bash
# The whole test suite (CPU). Extra arguments go to pytest.
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python -m pytest -q "$@"
