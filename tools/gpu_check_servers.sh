# shellcheck shell=bash disable=SC2154
# The real-server path of tools/gpu_check.sh (sourced by it; see its header): vLLM or SGLang on the GPU
# machine, tools/bench/vlm.py --router against it, and `streamwatch eval` on a generated set.
# Uses from gpu_check.sh: $PY, $out (hence SC2154 off). Every step that fails says which, with the log's tail, and returns 1.

server_pid=""

fail() {  # fail STEP [LOG]: say it loudly, with the log's tail
  echo "gpu_check: FAILED: $1" >&2
  if [ -n "${2:-}" ] && [ -s "$2" ]; then
    echo "---- last 40 lines of $2 ----" >&2
    tail -n 40 "$2" >&2
    echo "----" >&2
  fi
  return 1
}

step() {  # step NAME LOG COMMAND...: run COMMAND with its output to LOG and the terminal
  local name=$1 log=$2
  shift 2
  echo "gpu_check: $name"
  if ! "$@" 2>&1 | tee "$log"; then
    fail "$name (exit ${PIPESTATUS[0]})" "$log"
    return 1
  fi
}

stop_server() {
  if [ -n "$server_pid" ] && kill -0 "$server_pid" 2>/dev/null; then
    kill "$server_pid" 2>/dev/null
    for _ in $(seq 1 30); do kill -0 "$server_pid" 2>/dev/null || break; sleep 1; done
    kill -9 "$server_pid" 2>/dev/null
    wait "$server_pid" 2>/dev/null
    echo "gpu_check: server stopped"
  fi
  server_pid=""
}

wait_ready() {  # wait_ready URL LOG SECONDS: the server's /health answers 200, or a loud failure
  local url=$1 log=$2 limit=$3 t=0
  while [ "$t" -lt "$limit" ]; do
    if ! kill -0 "$server_pid" 2>/dev/null; then
      fail "the server exited while starting" "$log"
      return 1
    fi
    if "$PY" -c 'import sys, urllib.request; sys.exit(0 if urllib.request.urlopen(sys.argv[1], timeout=3).status == 200 else 1)' \
      "$url" 2>/dev/null; then
      echo "gpu_check: server ready after ${t}s"
      return 0
    fi
    sleep 3
    t=$((t + 3))
  done
  fail "the server did not answer $url within ${limit}s" "$log"
}

server_path() {
  local kind="" work model port base log rc=0
  if "$PY" -c 'import vllm' >/dev/null 2>&1; then
    kind=vllm
  elif "$PY" -c 'import sglang' >/dev/null 2>&1; then
    kind=sglang
  else
    echo "gpu_check: real-server path skipped: neither vllm nor sglang is importable by $PY"
    return 0
  fi
  local lack
  lack=$("$PY" -c '
import importlib.util, sys
print(" ".join(m for m in sys.argv[1:] if importlib.util.find_spec(m) is None))' httpx pydantic_settings numpy cv2 PIL skimage segno)
  if [ -n "$lack" ]; then
    fail "the real-server path needs: $lack (pip install them, or tools/gpu_check.sh --fetch-wheels and carry .whl/)"
    return 1
  fi
  mkdir -p "$out" || { fail "cannot create $out"; return 1; }
  work=$(mktemp -d /tmp/gpu-check-servers.XXXXXX)
  log="$out/$kind-server.log"
  model=${GPU_CHECK_VLM_MODEL:-}
  if [ -z "$model" ]; then
    model="$work/tiny-qwen3vl"
    step "build a tiny random-weight Qwen3-VL ($model)" "$work/tiny.log" "$PY" tools/tiny_vlm.py "$model" || return 1
  elif [ ! -e "$model" ]; then
    fail "GPU_CHECK_VLM_MODEL=$model does not exist"
    return 1
  fi
  port=$("$PY" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  base="http://127.0.0.1:$port"
  local mem=${GPU_CHECK_GPU_MEM:-0.6}
  echo "gpu_check: starting $kind on $model (port $port, log $log)"
  if [ "$kind" = vllm ]; then
    "$PY" -m vllm.entrypoints.openai.api_server --model "$model" --served-model-name gpu-check --host 127.0.0.1 \
      --port "$port" --max-model-len 8192 --gpu-memory-utilization "$mem" >"$log" 2>&1 &
  else
    "$PY" -m sglang.launch_server --model-path "$model" --served-model-name gpu-check --host 127.0.0.1 \
      --port "$port" --mem-fraction-static "$mem" >"$log" 2>&1 &
  fi
  server_pid=$!
  trap stop_server EXIT
  if ! wait_ready "$base/health" "$log" "${GPU_CHECK_SERVER_WAIT_S:-420}"; then
    stop_server
    return 1
  fi
  export PYTHONPATH=$PWD${PYTHONPATH:+:$PYTHONPATH}
  step "tools/bench/vlm.py --router against $kind" "$out/vlm-bench.txt" \
    "$PY" tools/bench/vlm.py --router --url "$base/v1" --model gpu-check --server "$kind" \
    --requests "${GPU_CHECK_REQUESTS:-30}" --timeout-s 30 --max-tokens 256 || rc=1
  if [ "$rc" = 0 ]; then
    step "generate the eval set" "$work/set.log" "$PY" tools/make_eval_set.py "$work/eval-set" --frames 12 || rc=1
  fi
  if [ "$rc" = 0 ]; then
    local analyzers
    analyzers=$("$PY" -c '
import importlib.util, json
mods = {"nudity": "nudenet", "ocr": "rapidocr_onnxruntime", "qr": "zxingcpp"}
print(json.dumps([a for a, m in mods.items() if importlib.util.find_spec(m) is not None]))')
    printf '{"models": [{"id": "gpu-check", "backend": "openai", "endpoint": "%s/v1", "model_name": "gpu-check", "server": "%s", "capabilities": ["compliance"], "timeout_s": 60}]}\n' \
      "$base" "$kind" >"$work/registry.json"
    local cascade=()
    if [ "$analyzers" = "[]" ]; then
      echo "gpu_check: no local analyzer is installed (nudenet, rapidocr-onnxruntime, zxing-cpp): the eval scores the model only"
      cascade=(--no-cascade)
      analyzers='["qr"]'
    fi
    printf '[vlm]\nregistry = "%s"\n[analysis]\nanalyzers = %s\n' "$work/registry.json" "$analyzers" >"$work/eval.toml"
    step "streamwatch eval on the generated set" "$out/eval.txt" \
      "$PY" -m streamwatch eval "$work/eval-set" --models gpu-check "${cascade[@]}" -c "$work/eval.toml" -o "$out/eval.html" || rc=1
  fi
  stop_server
  trap - EXIT
  rm -rf "$work"
  if [ "$rc" = 0 ]; then
    echo "gpu_check: real-server path passed ($kind): $out/vlm-bench.txt, $out/eval.txt"
  fi
  return "$rc"
}
