#!/usr/bin/env bash
# mlxtriton's two set-up commands (see README):
#   ./dev.sh demo   - the main demo
#   ./dev.sh test   - the test suite (extra arguments go to pytest)
# Both use one environment, .venv (MLXTRITON_VENV picks another folder), installed once with what
# both need: mlxtriton with MLX for this machine and the test and notebooks extras. It is
# installed again only when pyproject.toml changes. Extra arguments go to the demo or to pytest.
set -euo pipefail
cd "$(dirname "$0")"
venv=${MLXTRITON_VENV:-.venv}
python=${PYTHON:-python3}

case "$(uname -s)-$(uname -m)" in
  Darwin-arm64) backend="" ;;                     # plain mlx brings Metal
  Linux-*) if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
             backend="cuda"; else backend="cpu"; fi ;;
  *) backend="cpu" ;;
esac
spec=".[${backend:+$backend,}test,notebooks]"

install() {
  if [ ! -x "$venv/bin/python" ]; then
    if ! "$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null; then
      echo "mlxtriton needs Python >= 3.10; $python is $("$python" --version 2>&1)." \
           "Set PYTHON=/path/to/python3.x" >&2
      exit 2
    fi
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install -q --upgrade pip
  fi
  local stamp="$venv/.mlxtriton-installed"
  local want; want="$spec $(cksum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    echo "installing $spec into $venv (once; again only when pyproject.toml changes)" >&2
    "$venv/bin/python" -m pip install -q -e "$spec"
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}; shift || true
case "$cmd" in
  demo) install; exec "$venv/bin/python" -m mlxtriton demo "$@" ;;
  test)
    install
    set +e; "$venv/bin/python" -m pytest "$@"; rc=$?; set -e
    [ "$rc" -eq 5 ] && { echo "no tests collected"; rc=0; }   # pytest: 5 = nothing collected
    exit "$rc" ;;
  *) echo "usage: ./dev.sh demo|test [args]" >&2; exit 2 ;;
esac
