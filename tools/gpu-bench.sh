#!/usr/bin/env bash
# normlab's GPU checks and benchmarks in one run: parity against torch.nn on CUDA, batch
# norm's achieved memory bandwidth, where the time goes (host or GPU), every layer's speed
# ratio, training throughput and the tutorial. Run from the repository root on a machine
# with CUDA and torch:
#
#     PYTHON=python3 NORMLAB_DATA=/path/to/fashion-mnist tools/gpu-bench.sh [OUT_DIR]
#
# Each step has a time limit; its output goes to OUT_DIR/<step>.txt (stderr to errors.txt)
# and its last lines to the terminal. The README's GPU tables come from these files.
set -u
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
py=${PYTHON:-python3}

step() {  # step NAME SECONDS ARGS... : run `normlab ARGS...` under a time limit
  local name=$1 limit=$2 start=$SECONDS file=$out/${FILE:-$1}.txt
  shift 2
  echo "== $name: normlab $*" | tee -a "$out/errors.txt" "$file"
  timeout "$limit" "$py" -m normlab "$@" >>"$file" 2>>"$out/errors.txt"
  echo "   exit $? after $((SECONDS - start)) s (limit $limit s)"
  tail -n "${TAIL:-14}" "$file"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
    --format=csv
  "$py" -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda)
print(torch.cuda.get_device_properties(0))'
  nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

echo "== triton: tools/gpu_triton_check.py" | tee -a "$out/machine.txt"
timeout 100 "$py" tools/gpu_triton_check.py >>"$out/machine.txt" 2>>"$out/errors.txt"
echo "   exit $?"; tail -n 44 "$out/machine.txt"
echo "== profile: tools/gpu_profile.py" | tee -a "$out/profile.txt"
timeout 120 "$py" tools/gpu_profile.py >>"$out/profile.txt" 2>>"$out/errors.txt"
echo "   exit $?"; grep -v "^       " "$out/profile.txt" | tail -n 40
TAIL=40 step check 100 check --device cuda
step bandwidth 60 bench bandwidth --device cuda
FILE=bandwidth TAIL=8 step bandwidth-bf16 40 bench bandwidth --device cuda --dtype bfloat16
for layers in "batch,instance" "layer,group" "rms,lrn"; do  # one process each: one failure
  FILE=layers TAIL=24 step "layers: $layers" 60 bench layers --device cuda --repeats 7 --layers $layers
done
step train 60 bench train --device cuda
TAIL=8 step tutorial 80 tutorial --device cuda --no-progress --out "$out/runs"
rm -rf "$out/runs"
