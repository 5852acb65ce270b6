#!/usr/bin/env bash
# Installs everything the tests need on a fresh machine, then runs them.
# Usage: bash tests/run.sh [--python PYTHON] [--venv DIR] [--constraints FILE] [pytest arguments]
#   --python       the interpreter that makes the venv (default python3)
#   --venv         where the venv lives (default .venv); one per Python, since a venv is tied to its interpreter
#   --constraints  a pip constraints file, e.g. constraints/lowest.txt (the floors setup.cfg claims)
set -euo pipefail
cd "$(dirname "$0")/.."

python=python3
venv=.venv
constraints=()
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python="$2"; shift 2 ;;
    --venv) venv="$2"; shift 2 ;;
    --constraints) constraints=(-c "$2"); shift 2 ;;
    *) break ;;
  esac
done

sudo=""
[ "$(id -u)" -eq 0 ] || sudo="sudo"
missing=()
command -v redis-server >/dev/null || missing+=(redis-server)
command -v chromium >/dev/null || missing+=(chromium)
command -v nginx >/dev/null || [ -x /usr/sbin/nginx ] || missing+=(nginx)
command -v node >/dev/null || missing+=(nodejs)
command -v npm >/dev/null || missing+=(npm)
command -v gcc >/dev/null || missing+=(gcc libc6-dev)  # the C load client of the budget test (benchmarks/loadclient.c)
[ -e /usr/include/zlib.h ] || missing+=(zlib1g-dev)  # which it links, to inflate permessage-deflate
if [ ${#missing[@]} -gt 0 ]; then
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check "${constraints[@]}" -e '.[test]' --config-settings editable_mode=compat
if [ -f tests/js/package-lock.json ]; then
  (cd tests/js && npm ci --no-audit --no-fund --loglevel=error)
fi

echo "tests/run.sh: $("$venv/bin/python" --version) in $venv${constraints[*]:+ with ${constraints[1]}}"
# four workers on two cores: most tests wait on sockets and processes (see tests/conftest.py)
exec "$venv/bin/python" -m pytest -n "${TEST_WORKERS:-4}" "$@"
