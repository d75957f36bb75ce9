#!/usr/bin/env bash
# normlab's GPU checks and benchmarks in one short run (about 6 minutes). From the
# repository root, on a machine with CUDA and torch:
#
#     PYTHON=python3 NORMLAB_DATA=/path/to/fashion-mnist tools/gpu-bench.sh [OUT_DIR]
#
# STEPS="profile train" (say) runs only those steps (the CPU library is built in any case).
#
# First the checks, side by side (correctness only): the Triton kernels against torch.nn in
# float64 while the CPU library builds (it defines the C++ autograd operators that the
# Triton kernels implement on CUDA); then `normlab check --device cuda` and the tests that
# need a GPU or the registration (CUDA graphs; the operators through Triton's interpreter).
# Then the timings, one at a time on the idle machine: where the time of a call goes
# (tools/gpu_profile.py), every layer's speed ratio, training throughput with and without
# CUDA graphs, and batch norm's memory bandwidth. Each step has a time limit; its output
# goes to OUT_DIR/<step>.txt, ending with a line of its exit status and seconds.
# docs/results/gpu.md is written from these files.
set -u
out=${1:-${OUT:-gpu-results}}
mkdir -p "$out"
export PYTHONPATH=$PWD/src${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 MPLBACKEND=Agg
export TRITON_INTERPRET=0 TQDM_DISABLE=1  # real Triton kernels; no progress bars in logs
py=${PYTHON:-python3}

step() {  # step NAME SECONDS COMMAND... : a step under a time limit, output to NAME.txt
  local name=$1 limit=$2 start=$SECONDS
  shift 2
  case " ${STEPS:-$name} " in *" $name "*) ;; *) return 0 ;; esac
  {
    echo "== $name: $*"
    timeout "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - start)) s (limit $limit s)"
  } >"$out/$name.txt" 2>&1
  tail -n 2 "$out/$name.txt"
}

{
  nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm,clocks.max.mem \
    --format=csv
  "$py" -c 'import torch, triton; print("torch", torch.__version__, "cuda",
torch.version.cuda, "triton", triton.__version__); print(torch.cuda.get_device_properties(0))'
  nproc
  g++ --version | head -n 1
} >"$out/machine.txt" 2>&1
cat "$out/machine.txt"

# checks, side by side
step triton 90 "$py" tools/gpu_triton_check.py &
STEPS=build step build 180 "$py" -m normlab.kernels.cpu --cache
cat "$out/build.txt" >>"$out/machine.txt" && rm "$out/build.txt"  # (at most 8 files return)
step check 200 "$py" -m normlab check --device cuda &
step tests 200 "$py" -m pytest -q -p no:cacheprovider tests/train/test_cuda_graphs.py \
  tests/kernels/test_triton_operators.py &
wait

# timings, one at a time
step profile 120 "$py" tools/gpu_profile.py
step layers 150 "$py" -m normlab bench layers --device cuda --repeats 5 \
  --label "H200, eager" --write-results "$out/gpu-layers.md"
step train 120 bash -c "$py -m normlab bench train --device cuda &&
  $py -m normlab bench train --device cuda --cuda-graphs"
step bandwidth 45 "$py" -m normlab bench bandwidth --device cuda
