#!/usr/bin/env bash
# Makes sure Fashion-MNIST is on this machine (used by `make data`, `make run`, `make test`).
# 1. already present in one of the places normlab looks -> nothing to do;
# 2. else Debian's package dataset-fashion-mnist, when apt-get and root are available;
# 3. else a clear message: `normlab data download` fetches the official files into the cache.
set -uo pipefail

if [[ -n ${NORMLAB_DATA:-} && ! -d $NORMLAB_DATA ]]; then
  echo "Fashion-MNIST: NORMLAB_DATA=$NORMLAB_DATA is not a folder; unset it, or point it to" \
       "a folder holding the four IDX files." >&2
  exit 1
fi

places=(
  "${NORMLAB_DATA:-}"
  "${NORMLAB_DATA:+$NORMLAB_DATA/fashion-mnist}"
  /usr/share/datasets/fashion-mnist
  ./data/FashionMNIST/raw
  "$HOME/.cache/normlab/fashion-mnist"
)
for dir in "${places[@]}"; do
  [[ -n $dir ]] || continue
  for name in train-images-idx3-ubyte.gz train-images-idx3-ubyte; do
    if [[ -f $dir/$name ]]; then
      echo "Fashion-MNIST: found in $dir"
      exit 0
    fi
  done
done

if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
  echo "Fashion-MNIST: installing Debian's dataset-fashion-mnist"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    && exit 0
  echo "Fashion-MNIST: apt-get failed" >&2
fi

echo "Fashion-MNIST: not found. Run '.venv/bin/normlab data download' (needs internet)," \
     "or set NORMLAB_DATA to a folder holding the four IDX files." >&2
exit 1
