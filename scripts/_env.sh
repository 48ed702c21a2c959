# Shared by scripts/test.sh and scripts/demo.sh: make a virtual environment with uv.
# Usage: source scripts/_env.sh; make_venv DIR  (sets $PY to DIR's python)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PYTHON="${PYTHON:-$(command -v python3.11 || command -v python3)}"
TOOLS="$ROOT/.venvs/tools"

if [ ! -x "$TOOLS/bin/uv" ]; then
  "$PYTHON" -m venv "$TOOLS"
  "$TOOLS/bin/pip" install --quiet --disable-pip-version-check uv
fi
UV="$TOOLS/bin/uv"

make_venv() {
  rm -rf "$1"
  "$UV" venv --quiet --python "$PYTHON" "$1"
  PY="$1/bin/python"
}
