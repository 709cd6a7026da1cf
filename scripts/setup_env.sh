# Creates and fills the project's virtual environment; sourced by the other scripts.
# Idempotent: it reinstalls only when setup.py or this file changed (stamp file).
# torch/torchvision are pinned to the builds this project is tested with.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${VENV:-$ROOT/.venv}"
PYTHON="${PYTHON:-python3}"
TORCH_PIN="torch==2.14.1 torchvision==0.29.1"
stamp="$VENV/.installed-$(cat "$ROOT/setup.py" "$ROOT/scripts/setup_env.sh" | sha1sum | cut -c1-12)"
if [ ! -f "$stamp" ]; then
    echo "[setup] creating $VENV (first run or changed requirements: a few minutes)" >&2
    [ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
    "$VENV/bin/python" -m pip install -q $TORCH_PIN 2> >(grep -v "is ignored: it is neither" >&2)
    "$VENV/bin/python" -m pip install -q -e "$ROOT[test]" 2> >(grep -v -e "is ignored: it is neither" -e "does not provide the extra" >&2)
    rm -f "$VENV"/.installed-*
    touch "$stamp"
fi
export PATH="$VENV/bin:$PATH"
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}"
cd "$ROOT"
