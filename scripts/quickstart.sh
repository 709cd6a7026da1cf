#!/usr/bin/env bash
# Offline quickstart: ConvPrompt vs sequential fine-tuning on a synthetic class-incremental stream.
# Extra arguments go to examples/quickstart.py (see --help).
source "$(dirname "${BASH_SOURCE[0]}")/setup_env.sh"
exec python examples/quickstart.py "$@"
