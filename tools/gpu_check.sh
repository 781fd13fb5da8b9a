#!/usr/bin/env bash
# GPU check: every CUDA path streamwatch has that a GPU machine with torch can run offline, in one go
# (well under 8 minutes), with its figures written to a file. See tools/gpu_check.py for what is checked.
#
#   tools/gpu_check.sh [--out DIR]     figures to DIR/figures.md + figures.json (default: $OUT, else
#                                      artifacts/gpu-check); exit 0 pass, 1 a check failed, 2 no CUDA
#   tools/gpu_check.sh --device cpu    the same code paths on a CPU machine, to try the script (no figures)
#   tools/gpu_check.sh --fetch-wheels  (on a machine with PyPI access) download into .whl/ the few pure
#                                      packages a torch-only GPU image lacks (pydantic and its needs,
#                                      CPython 3.12 manylinux); carry .whl/ (git ignores it) to the GPU machine
#   tools/gpu_check.sh --servers-only  only the real-server path below; --no-servers: without it
#
# The real-server path (after the CUDA checks), when vllm or sglang is importable by $PY: it starts that
# server on $GPU_CHECK_VLM_MODEL (a model folder; default: a tiny random-weight Qwen3-VL built here by
# tools/tiny_vlm.py), runs tools/bench/vlm.py --router against it (p50/p95 per request, tokens/s, failures
# by kind) and `streamwatch eval` on a generated set (tools/make_eval_set.py: the local cascade beside the
# model), writes vlm-bench.txt, eval.txt, eval.html and the server's log to the out folder, and stops the
# server. Any step that fails stops the path with "gpu_check: FAILED: <step>" and the log's tail (exit 1).
# Knobs: GPU_CHECK_VLM_MODEL, GPU_CHECK_GPU_MEM (fraction of GPU memory for the server, 0.6),
# GPU_CHECK_SERVER_WAIT_S (start-up limit, 420), GPU_CHECK_REQUESTS (30).
#
# Python: $PY, else .venv/bin/python when its torch sees CUDA, else python3. Wheels in .whl/ are
# installed to a private folder (never into that Python) when a module the check needs is missing.
set -uo pipefail
cd "$(dirname "$0")/.." || exit 1

WHEELS=(pydantic==2.14.4 pydantic-core==2.50.5 annotated-types==0.8.0 typing-inspection==0.4.5
  pydantic-settings==2.16.3 python-dotenv==1.2.4 segno==1.6.6)
NEEDED=(pydantic cv2 numpy torch transformers tokenizers onnx onnxscript onnxruntime skimage PIL)

if [ "${1:-}" = "--fetch-wheels" ]; then
  mkdir -p .whl
  plats=()
  for n in 17 27 28 31 34; do plats+=(--platform "manylinux_2_${n}_x86_64"); done
  exec "${PY:-python3}" -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${plats[@]}" --platform manylinux2014_x86_64 -d .whl "${WHEELS[@]}"
fi

cpu_trial=0
case " $* " in *" --device cpu "*) cpu_trial=1 ;; esac  # try the script's code paths without a GPU (no figures)
servers=auto
args=()
out=${OUT:-artifacts/gpu-check}
prev=""
for arg in "$@"; do
  case $arg in
    --servers-only) servers=only ;;
    --no-servers) servers=no ;;
    *) args+=("$arg") ;;
  esac
  case $prev in --out) out=$arg ;; esac
  case $arg in --out=*) out=${arg#--out=} ;; esac
  prev=$arg
done

if [ "$cpu_trial" = 0 ] && { ! command -v nvidia-smi >/dev/null 2>&1 || ! nvidia-smi -L >/dev/null 2>&1; }; then
  echo "gpu_check: no NVIDIA GPU here (nvidia-smi missing or sees no device): run this on a CUDA machine" >&2
  exit 2
fi
[ "$cpu_trial" = 0 ] && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

has_cuda() { "$1" -c 'import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; }
if [ -z "${PY:-}" ]; then
  if [ -x .venv/bin/python ] && has_cuda .venv/bin/python; then PY=.venv/bin/python; else PY=python3; fi
fi
if [ "$cpu_trial" = 0 ] && ! has_cuda "$PY"; then
  echo "gpu_check: $PY has no torch that sees CUDA ($("$PY" -c 'import torch; print("torch", torch.__version__)' 2>&1 | tail -1))" >&2
  echo "gpu_check: install the CUDA build of torch (see the Makefile's TORCH) or set PY=" >&2
  exit 2
fi

missing() { "$PY" -c "
import importlib.util, sys
print(' '.join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))" "${NEEDED[@]}"; }
lack=$(missing)
if [ -n "$lack" ] && ls .whl/*.whl >/dev/null 2>&1; then
  echo "gpu_check: installing carried wheels for: $lack"
  "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/gpu-check-site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/gpu-check-site${PYTHONPATH:+:$PYTHONPATH}
  lack=$(missing)
fi
if [ -n "$lack" ]; then
  echo "gpu_check: $PY lacks: $lack (tools/gpu_check.sh --fetch-wheels on a networked machine, then carry .whl/)" >&2
  exit 1
fi

export PYTHONUNBUFFERED=1
rc=0
if [ "$servers" != only ]; then
  timeout 450 "$PY" tools/gpu_check.py "${args[@]}" || rc=$?
fi
if [ "$servers" != no ]; then
  # shellcheck source=tools/gpu_check_servers.sh
  . tools/gpu_check_servers.sh
  server_path || rc=1
fi
exit "$rc"
