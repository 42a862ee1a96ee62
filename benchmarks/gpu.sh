#!/usr/bin/env bash
# The GPU figures in one run (at most 8 minutes on one H100/H200: five steps under time limits, 470 s in all): the real SmolVLM-256M architecture (random
# weights), bf16, unsplit and split pages.
#   1. the HF engine, batch 64, 2,000 pages, per-stage ms per image;
#   2. the same engine beside the previous Predictor ("before") and the one-sample loop, on fewer pages;
#   3. the vLLM engine (continuous batching), 2,000 pages, where vLLM imports in $VLLM_PYTHON.
#
#   bash benchmarks/gpu.sh                 # on a GPU machine, from the repository root, after make install
#   bash benchmarks/gpu.sh --cpu-smoke     # the same commands on the CPU with tiny sizes (checks the script)
#
# Env: PYTHON (default .venv/bin/python), VLLM_PYTHON (default .venv-vllm/bin/python, else $PYTHON),
# MODEL (default random:<SmolVLM-256M-Instruct config folder>), OUT (default benchmarks/gpu-results).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-.venv/bin/python}
VLLM_PYTHON=${VLLM_PYTHON:-$([ -x .venv-vllm/bin/python ] && echo .venv-vllm/bin/python || echo "$PYTHON")}
SMOLVLM=${ECGVLM_SMOLVLM_DIR:-$(cd .. && pwd)/shared/models/SmolVLM-256M-Instruct}
MODEL=${MODEL:-random:$SMOLVLM}
OUT=${OUT:-benchmarks/gpu-results}
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
mkdir -p "$OUT"

if [ "${1:-}" = "--cpu-smoke" ]; then
    DEV=(--device cpu --threads 2); DTYPE=float32; ROWS=4; BATCH=2; CMP_ROWS=2; LOOP_ROWS=1; DISTINCT=2
    TOKENS=2; VISION=32; L_OFF=900; L_ON=900; L_CMP=900; L_VLLM=900
else
    nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
    DEV=(--device cuda); DTYPE=bfloat16; ROWS=2000; BATCH=64; CMP_ROWS=128; LOOP_ROWS=32; DISTINCT=64
    TOKENS=8; VISION=256; L_OFF=60; L_ON=120; L_CMP=90; L_VLLM=100
fi
COMMON=(--model "$MODEL" --dtypes "$DTYPE" --new-tokens "$TOKENS" --distinct "$DISTINCT" --rounds 1
        --vision-batch "$VISION" "${DEV[@]}")

step() {  # step NAME SECONDS PYTHON ARGS...: one benchmark under a time limit, its table kept in $OUT/NAME.txt
    local name=$1 limit=$2 py=$3; shift 3
    echo "== $name (limit ${limit}s)"
    if timeout "$limit" "$py" benchmarks/stages.py "$@" > "$OUT/$name.txt" 2> "$OUT/$name.log"; then
        sed -n '/^model /,$p' "$OUT/$name.txt"
    else
        echo "$name failed or ran out of time (rc $?); last lines of $OUT/$name.log:"; tail -5 "$OUT/$name.log"
    fi
}

# limits in seconds per step on the GPU (sum 470 s): one process each, so a step that runs out loses only itself
for split in off on; do
    step hf-$DTYPE-batch$BATCH-split-$split "$([ $split = off ] && echo "$L_OFF" || echo "$L_ON")" "$PYTHON" \
        "${COMMON[@]}" --engines ours --splitting $split --rows "$ROWS" --batch-size "$BATCH"
done
step hf-before-after "$L_CMP" "$PYTHON" "${COMMON[@]}" --engines loop,before,ours --splitting off,on \
    --rows "$CMP_ROWS" --batch-size "$BATCH" --loop-rows "$LOOP_ROWS"
if "$VLLM_PYTHON" -c "import vllm" 2> /dev/null; then
    for split in off on; do  # one process per engine: vLLM does not hand its GPU memory back within a process
        step vllm-split-$split "$L_VLLM" "$VLLM_PYTHON" "${COMMON[@]}" --engines vllm --splitting $split \
            --rows "$ROWS" --batch-size "$BATCH"
    done
else
    echo "== vllm: not installed for $VLLM_PYTHON (pip install 'ecgvlm[vllm]' in its own environment), skipped"
fi
echo "tables in $OUT/"
