#!/usr/bin/env bash
# normlab's GPU checks and benchmarks in one short run (at most 7 minutes): the CUDA tests,
# the Triton kernels and every layer against torch.nn on CUDA, every layer's speed ratio
# (eager, then compiled), training throughput with and without CUDA graphs, batch norm's
# memory bandwidth, and where the time of a call goes (host or GPU). From the repository
# root, on a machine with CUDA and torch:
#
#     PYTHON=python3 NORMLAB_DATA=/path/to/fashion-mnist tools/gpu-bench.sh [OUT_DIR]
#
# Each step has a time limit; its output goes to OUT_DIR/<step>.txt (stderr to errors.txt)
# and its last lines to the terminal. docs/results/gpu.md is written from these files.
set -u
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export TRITON_INTERPRET=0  # real Triton kernels on the GPU (the CPU suite interprets them)
py=${PYTHON:-python3}

run() {  # run NAME SECONDS COMMAND... : a step under a time limit, output to NAME.txt
  local name=$1 limit=$2 start=$SECONDS file=$out/${FILE:-$1}.txt
  shift 2
  echo "== $name: $*" | tee -a "$out/errors.txt" "$file"
  timeout "$limit" "$@" >>"$file" 2>>"$out/errors.txt"
  echo "   exit $? after $((SECONDS - start)) s (limit $limit s)"
  tail -n "${TAIL:-14}" "$file"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
    --format=csv
  "$py" -c 'import torch, triton; print("torch", torch.__version__, "cuda",
torch.version.cuda, "triton", triton.__version__); print(torch.cuda.get_device_properties(0))'
  nproc
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

TAIL=6 run tests 70 "$py" -m pytest -q -p no:cacheprovider tests/train/test_cuda_graphs.py
TAIL=30 run check 60 "$py" -m normlab check --device cuda
TAIL=60 run layers 90 "$py" -m normlab bench layers --device cuda --repeats 5 \
  --label "H200, eager" --write-results "$out/gpu-layers.md"
for graphs in "" --cuda-graphs; do
  TAIL=12 FILE=train run "train $graphs" 45 "$py" -m normlab bench train --device cuda $graphs
done
TAIL=30 FILE=layers-compiled run layers-compiled 60 "$py" -m normlab bench layers \
  --device cuda --compile --layers batch,layer,rms,group --shapes resnet,tokens --repeats 3 \
  --label "H200, compiled" --write-results "$out/gpu-layers.md"
TAIL=10 run bandwidth 25 "$py" -m normlab bench bandwidth --device cuda
TAIL=12 run triton 40 "$py" tools/gpu_triton_check.py
run profile 40 "$py" tools/gpu_profile.py
