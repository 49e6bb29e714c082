#!/usr/bin/env bash
# mlxtriton's two set-up commands (see README):
#   ./dev.sh demo   - create/refresh .venv, install mlxtriton, run the main demo
#   ./dev.sh test   - create/refresh .venv with the test extras, run the test suite
# Extra arguments go to the demo or to pytest. MLXTRITON_VENV picks another environment folder.
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

install() {  # $1: extras beyond the backend
  local extras=$backend${1:+${backend:+,}$1}
  local spec=".${extras:+[$extras]}"
  [ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
  local stamp="$venv/.mlxtriton-installed"
  local want; want="$spec $(cksum pyproject.toml | cut -d' ' -f1)"
  if [ ! -f "$stamp" ] || [ "$(cat "$stamp")" != "$want" ]; then
    "$venv/bin/python" -m pip install -q --upgrade pip
    "$venv/bin/python" -m pip install -q -e "$spec"
    echo "$want" > "$stamp"
  fi
}

cmd=${1:-}; shift || true
case "$cmd" in
  demo) install ""; exec "$venv/bin/python" -m mlxtriton demo "$@" ;;
  test)
    install "test"
    set +e; "$venv/bin/python" -m pytest "$@"; rc=$?; set -e
    [ "$rc" -eq 5 ] && { echo "no tests collected"; rc=0; }   # pytest: 5 = nothing collected
    exit "$rc" ;;
  *) echo "usage: ./dev.sh demo|test [args]" >&2; exit 2 ;;
esac
