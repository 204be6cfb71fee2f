#!/usr/bin/env bash
# Every GPU check in one command, for a short lease on a CUDA machine. Run from the repository root:
#
#     OUT=gpu_out bash bench/gpu_checks.sh
#
# Steps (each one's output also goes to $OUT/<step>.log; a failing step does not stop the later ones):
#   pytest_gpu         the `gpu`-marked tests of the torch/ORT backends and the CUDA event clock
#   lut_cuda           smnas profile-lut --backend torch --device cuda, 3 paper-space models -> $OUT/lut_cuda.db
#   lut_cuda_graphs    the same with --cuda-graphs -> $OUT/lut_cuda_graphs.db
#   torch_cuda_timing  bench/torch_cuda_timing.py (events vs host clock vs CUDA graphs, fp32/fp16, 800x600)
#   train_cuda_speed   bench/train_cuda_speed.py (AMP training images/s at 512x512, CUDA evaluation)
# Prints one summary line per step and exits nonzero if any step failed. Expected: about 4-6 minutes on an
# H100; each step has its own time limit (SIGINT first, so profile-lut keeps its rows and the benches
# keep the JSON written so far), and together they stay under 10 minutes.
set -u -o pipefail

OUT=${OUT:-./gpu_out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export PYTHONDONTWRITEBYTECODE=1
t_start=$(date +%s)

# The package is not pip-installed on the device: import it from the tree, plus any carried wheels.
if compgen -G ".whl/*.whl" > /dev/null; then
    if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site \
            .whl/*.whl; then
        export PYTHONPATH=/tmp/site:$PWD
    else
        echo "warning: installing .whl/*.whl failed; going on without them"
        export PYTHONPATH=$PWD
    fi
else
    export PYTHONPATH=$PWD
fi

echo "== machine"
nvidia-smi -L || echo "nvidia-smi -L failed"
nvidia-smi > "$OUT/nvidia-smi.txt" 2>&1 || true
python3 --version
python3 -c 'import torch, torchvision, onnxruntime as ort
print("torch", torch.__version__, "CUDA", torch.version.cuda, "cuDNN", torch.backends.cudnn.version(),
      "available", torch.cuda.is_available(), "| torchvision", torchvision.__version__, "| onnxruntime",
      ort.__version__, ort.get_available_providers())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("card", p.name, f"sm {p.major}.{p.minor}", f"{p.total_memory / 2**30:.1f} GiB")' 2>&1 | tee "$OUT/versions.log"
python3 -c 'import xgboost' 2>/dev/null && echo "(xgboost present)" || echo "(no xgboost: none of these steps needs it)"

SMNAS=(python3 -c 'from smnas_trt.cli import main; main()')
names=()
codes=()
times=()

# run_step NAME LIMIT_S COMMAND...: run with a time limit, tee to $OUT/NAME.log, remember the exit code.
run_step() {
    local name=$1 limit=$2
    shift 2
    echo
    echo "== $name (limit ${limit} s): $*"
    local t0 rc
    t0=$(date +%s)
    timeout --signal=INT --kill-after=15 "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    rc=${PIPESTATUS[0]}
    names+=("$name")
    codes+=("$rc")
    times+=("$(( $(date +%s) - t0 ))")
    echo "== $name: exit $rc after ${times[-1]} s"
}

# test_ort_cuda_matches_cpu builds its ONNX fixture (dynamo export: onnxscript) before it can skip for a
# CPU-only onnxruntime; without both, deselect it rather than count a setup error as a failure.
pytest_extra=()
if ! python3 -c 'import onnxscript, onnxruntime as o; assert "CUDAExecutionProvider" in o.get_available_providers()' \
        2>/dev/null; then
    echo "(no onnxruntime-gpu or no onnxscript: test_ort_cuda_matches_cpu deselected)"
    pytest_extra=(--deselect tests/test_backends.py::test_ort_cuda_matches_cpu)
fi
run_step pytest_gpu 80 python3 -m pytest -m gpu -q -p no:cacheprovider ${pytest_extra[@]+"${pytest_extra[@]}"} \
    tests/test_backends.py tests/test_timing.py
rm -f "$OUT/lut_cuda.db" "$OUT/lut_cuda_graphs.db"
run_step lut_cuda 60 "${SMNAS[@]}" profile-lut --space paper --backend torch --device cuda --models 3 --no-modules \
    --budget-s 0.5 --out "$OUT/lut_cuda.db"
run_step lut_cuda_graphs 60 "${SMNAS[@]}" profile-lut --space paper --backend torch --device cuda --cuda-graphs \
    --models 3 --no-modules --budget-s 0.5 --out "$OUT/lut_cuda_graphs.db"
for db in lut_cuda lut_cuda_graphs; do
    [ -f "$OUT/$db.db" ] && "${SMNAS[@]}" lut show "$OUT/$db.db" 2>&1 | tee -a "$OUT/$db.log"
done
run_step torch_cuda_timing 100 python3 bench/torch_cuda_timing.py --size 800x600 --deadline-s 70 --out "$OUT/torch_cuda_timing.json"
run_step train_cuda_speed 150 python3 bench/train_cuda_speed.py --size 512x512 --budget-s 45 --json "$OUT/train_cuda_speed.json"

echo
echo "== summary ($(( $(date +%s) - t_start )) s in all)"
failed=0
for i in "${!names[@]}"; do
    if [ "${codes[$i]}" -eq 0 ]; then status=ok; else status="FAILED (exit ${codes[$i]})"; failed=1; fi
    printf '%-18s %-20s %4s s   log: %s\n' "${names[$i]}" "$status" "${times[$i]}" "$OUT/${names[$i]}.log"
done
exit $failed
