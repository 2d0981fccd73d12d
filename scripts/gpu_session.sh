#!/usr/bin/env bash
# The CUDA tests and GPU measurements, as one command for a bare GPU machine (e.g. one reached through the
# `device` tool: a machine with PyTorch and Triton but no basicsr, no network, one call of at most
# 10 minutes, 15 minutes of device time in all). In order of importance, each step time-limited, all within
# about 9 minutes (a step that would start with less than a minute left is skipped):
#   1. tests/archs/test_window_kernels.py on CUDA (the fused attention kernels in float32, float16, bfloat16,
#      whole networks, autocast);
#   2. `elan bench --train` at the paper recipes' steps, float32 and bf16: ELAN-light (batch 64 of 64x64 LR
#      patches) and ELAN (batch 32 of 48x48): reference arithmetic, fast path (1x1 convolutions kept as cuDNN's
#      on CUDA), fast path with fused attention (elan_arch/archs/window_kernels.py);
#   3. scripts/attention_speed.py: the attention alone (training and inference), bmm form vs the kernels at
#      blocks of 16/32/64;
#   4. scripts/recipe_speed.py: s/iteration of train_ELAN_light_x4.yml through `basicsr train`, data included,
#      reference vs fused attention, float32 and bf16;
#   5. `elan bench` inference, float32 and float16, with and without fused attention;
#   6. `elan upscale` of a folder of 50 photos of 480x640, each image in turn and pipelined (images/s, I/O share);
#   7. tests/cuda/test_cuda.py (AMP training, resume, NCCL torchrun, inference; passed on an H100 before);
#   8. `elan bench --compile reduce-overhead` (CUDA graphs) against eager on 64x64 tiles in float16.
#
# Here, once (downloads what the GPU image lacks, basicsr and lmdb, into .whl/, which git ignores):
#   scripts/gpu_session.sh wheels
# Then through the device tool, carrying .whl:
#   run(command="bash scripts/gpu_session.sh run", carry=[".whl"], timeout_s=600)
# Everything it prints is also written under $OUT (./gpu_results without one).
set -uo pipefail
cd "$(dirname "$0")/.."

if [ "${1:-}" = wheels ]; then
    set -e
    mkdir -p .whl
    python3 -m pip wheel --quiet --no-deps --no-build-isolation -w .whl basicsr==1.4.2
    python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        -d .whl lmdb==3.0.0
    ls -l .whl
    exit 0
fi
[ "${1:-}" = run ] || { echo "usage: $0 wheels | run" >&2; exit 2; }

export OUT="${OUT:-gpu_results}"
mkdir -p "$OUT"
exec > >(tee "$OUT/gpu_session.log") 2>&1
export PYTHONUNBUFFERED=1
python3 -c 'import importlib.util as u, sys; sys.exit(u.find_spec("basicsr") is None)' || {
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH=/tmp/site
}
export PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$PWD"
START=$SECONDS
# step NAME SECONDS COMMAND...: runs COMMAND with a time limit, unless less than a minute of the 9 is left
step() {
    local name=$1 limit=$2; shift 2
    local left=$((540 - (SECONDS - START)))
    if [ "$left" -lt 60 ]; then echo "=== [$((SECONDS - START))s] $name: skipped, $left s left"; return; fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== [$((SECONDS - START))s] $name (limit ${limit}s)"
    timeout "$limit" "$@"
    local status=$?
    echo "=== [$((SECONDS - START))s] $name: exit $status"
    return $status
}

nvidia-smi -L
python3 -c 'import torch, triton; print("torch", torch.__version__, "triton", triton.__version__, torch.cuda.get_device_name())'
# if the kernels fail on this GPU, the benchmarks still measure the reference and the fast path without them
# (a time-out, 124, is no verdict: they stay in)
step kernel-tests 120 python3 -m pytest -q -p no:cacheprovider -x tests/archs/test_window_kernels.py
status=$?
if [ $status -eq 0 ] || [ $status -eq 124 ]; then
    LIGHT_FUSED=elan-light-fused ELAN_FUSED=elan-fused RECIPE_FUSED="fp32+fused bf16+fused"
else
    LIGHT_FUSED= ELAN_FUSED= RECIPE_FUSED=
    echo "=== the fused kernels failed their tests: left out of the measurements below"
fi
for amp in fp32 bf16; do
    step "train-bench-light-$amp" 60 python3 -m elan_arch bench --train --device cuda --batch 64 --patch 64 --runs 8 \
        --warmup 3 $([ $amp = bf16 ] && echo --amp bf16) --models elan-light elan-light-ref $LIGHT_FUSED \
        --output-dir "$OUT" --force --quiet
done
for amp in fp32 bf16; do
    step "train-bench-elan-$amp" 60 python3 -m elan_arch bench --train --device cuda --batch 32 --patch 48 --runs 6 \
        --warmup 2 $([ $amp = bf16 ] && echo --amp bf16) --models elan elan-ref $ELAN_FUSED --output-dir "$OUT" --force --quiet
done
step attention-speed 90 bash -c 'python3 scripts/attention_speed.py --iters 20 | tee "$OUT/attention_speed.md"'
step recipe-speed 150 python3 scripts/recipe_speed.py --options options/train_ELAN_light_x4.yml --iters 50 \
    --warmup 15 --variants fp32 bf16 $RECIPE_FUSED --root /tmp/recipe_speed
cp /tmp/recipe_speed/*.md "$OUT"/ 2>/dev/null
step infer-bench 45 python3 -m elan_arch bench --device cuda --models elan-light $LIGHT_FUSED elan $ELAN_FUSED \
    --output-dir "$OUT" --force --quiet
step infer-bench-half 45 python3 -m elan_arch bench --device cuda --half --models elan-light $LIGHT_FUSED elan \
    $ELAN_FUSED --output-dir "$OUT" --force --quiet
step folder-upscale 60 python3 scripts/benchmark.py --device cuda --skip-bench --skip-upscale --folder 50 480x640 \
    --output-dir "$OUT"
step cuda-tests 150 python3 -m pytest -q -p no:cacheprovider tests/cuda/test_cuda.py
for mode in eager reduce-overhead; do
    step "tile-bench-$mode" 60 python3 -m elan_arch bench --device cuda --half --size 64x64 --runs 30 \
        $([ $mode = eager ] || echo --compile $mode) --models elan-light elan-light-ref --output-dir "$OUT/tile64-$mode" \
        --force --quiet
done
echo "=== done in $((SECONDS - START)) s; the tables:"
for table in "$OUT"/bench_train_*.md "$OUT"/attention_speed.md "$OUT"/recipe_speed*.md "$OUT"/bench_cuda*.md \
             "$OUT"/folder_cuda.md "$OUT"/tile64-*/bench_cuda*.md; do
    [ -f "$table" ] && { echo "--- $table"; cat "$table"; }
done
