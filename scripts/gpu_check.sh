#!/bin/bash
# Issue 21's GPU checks in one call of the device tool, after scripts/gpu_prepare.sh:
#
#   run(command="bash scripts/gpu_check.sh", carry=[".whl", ".official"], timeout_s=540)
#
# 1. the GPU-only tests (the decoding loop and the training step free of host synchronisations, CUDA data paths);
# 2. `benchmark` of ENAT-L and AutoNAT-L at batch 256, T = 8, bf16 autocast, eager, beside the official ENAT and
#    AutoNAT loops, plus a training step: the README's GPU table;
# 3. the same with torch.compile (default and freeze) and CUDA graphs (compilation takes minutes; last, so that 1
#    and 2 come back first).
# Each phase has its own time limit and writes under $OUT (the device tool returns it) or runs/gpu_check.
# BATCH, ARCHS and EXTRA (more benchmark options, e.g. --device cpu --arch_overrides ...) rehearse it elsewhere.
set -o pipefail
cd "$(dirname "$0")/.."
out=${OUT:-runs/gpu_check}
mkdir -p "$out"
if [ -d .whl ]; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu_site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/gpu_site:$PWD${PYTHONPATH:+:$PYTHONPATH}
fi
export PYTHONUNBUFFERED=1
batch=${BATCH:-256}
read -r -a archs <<< "${ARCHS:-enat-l autonat-l}"
read -r -a extra <<< "${EXTRA:-}"
(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv || echo "no nvidia-smi") | tee "$out/card.txt"
python3 -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name() if torch.cuda.is_available() else 'no CUDA')" | tee -a "$out/card.txt"

echo "== 1. GPU-only tests"
timeout 150 python3 -m pytest -q -m gpu -p no:cacheprovider tests/test_gpu_sync.py tests/generation/test_decoding.py \
    tests/data/test_tokenize.py 2>&1 | tee "$out/gpu_tests.log" | tail -15

official=()
[ -d .official/ENAT ] && official+=(--official_enat .official/ENAT)
[ -d .official/ImprovedNAT ] && official+=(--official_autonat .official/ImprovedNAT)
echo "== 2. benchmark, eager, beside the official loops"
timeout 200 python3 -m lit_nat benchmark --arch "${archs[@]}" --cases matmul sampling train --batch "$batch" \
    --steps 8 --dtype bf16 --reuse true --repeats 3 "${official[@]}" "${extra[@]}" --out "$out/benchmark_eager.jsonl" \
    2>&1 | grep -v "^benchmark:" | tee "$out/benchmark_eager.log" | tail -12

echo "== 3. benchmark, torch.compile and CUDA graphs"
timeout 200 python3 -m lit_nat benchmark --arch "${archs[@]}" --cases sampling --batch "$batch" --steps 8 \
    --dtype bf16 --reuse true --compile true freeze cuda_graphs --repeats 3 "${extra[@]}" --out "$out/benchmark_compiled.jsonl" \
    2>&1 | grep -v "^benchmark:" | tee "$out/benchmark_compiled.log" | tail -8
