#!/usr/bin/env bash
# burst_attention.torch vs ring-attention-pytorch 0.5.20 on CPU: 2 processes (mpirun),
# 1 thread each, gloo. Installs the peer (--no-deps, so torch is never touched) and its
# pure-Python dependencies if missing, builds the library, runs
# bench/peer_ring_attention.py with all arguments passed through.
#   bench/run_peer.sh                                  # the full run (~10 min)
#   bench/run_peer.sh --n 4096 --causal on --repeats 1 --jsonl /tmp/x.jsonl
# Without --jsonl the JSON lines go to docs/peer_ring_attention.jsonl (overwritten).
# --no-build (first argument) skips ./scripts/build.sh.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

orig_args="$*"
build=1
if [[ ${1:-} == --no-build ]]; then build=0; shift; fi

# torch must already be the CPU wheel: a plain `pip install torch` pulls the CUDA build.
tv=$(python3 -c 'import torch; print(torch.__version__)' 2>/dev/null || true)
if [[ $tv != 2.13.0+cpu ]]; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q torch==2.13.0+cpu
fi
if ! python3 -c 'import importlib.metadata as m, sys; sys.exit(m.version("ring-attention-pytorch") != "0.5.20")' 2>/dev/null; then
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q --no-deps ring-attention-pytorch==0.5.20
fi
python3 -c 'import einops, beartype, jaxtyping' 2>/dev/null ||
  PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q einops beartype jaxtyping
python3 -c 'import mpi4py' 2>/dev/null || PIP_ROOT_USER_ACTION=ignore python3 -m pip install -q mpi4py
python3 -c 'import torch, sys; sys.exit(torch.__version__ != "2.13.0+cpu")' ||
  { echo "run_peer.sh: torch is not 2.13.0+cpu after the installs" >&2; exit 1; }

if ((build)); then ./scripts/build.sh >&2; fi

export PYTHONPATH="$ROOT/bindings/python${PYTHONPATH:+:$PYTHONPATH}"
export BURST_ATTENTION_LIBRARY="$ROOT/build/install/lib/libburst_attention.so"
export MASTER_ADDR=127.0.0.1
export MASTER_PORT=${MASTER_PORT:-$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')}
# one compute thread per rank; nothing else may start threads behind our back
export OMP_NUM_THREADS=1 MKL_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

args=("$@")
has_jsonl=0
for a in "${args[@]}"; do [[ $a == --jsonl || $a == --jsonl=* ]] && has_jsonl=1; done
((has_jsonl)) || args+=(--jsonl "$ROOT/docs/peer_ring_attention.jsonl")

export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
exec mpirun --oversubscribe --bind-to none -n 2 \
  -x PYTHONPATH -x BURST_ATTENTION_LIBRARY -x MASTER_ADDR -x MASTER_PORT \
  -x OMP_NUM_THREADS -x MKL_NUM_THREADS -x OPENBLAS_NUM_THREADS \
  python3 bench/peer_ring_attention.py --command "bench/run_peer.sh $orig_args" "${args[@]}"
