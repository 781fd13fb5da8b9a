# Set up a virtual environment and run the demo or the tests. Works on a fresh Debian/Ubuntu
# machine with Python 3.11 (system packages: see .ci/run, or `make system-deps` as root).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0

.PHONY: demo test test-optimum lint typecheck check system-deps bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	@# the CPU build of torch for the in-process VLM backend (the `hf` extra); on a GPU machine install the
	@# CUDA build instead (TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -e ".[dev,hf]"
	@# rapidocr-onnxruntime pulls opencv-python (GUI build, needs libGL) over the headless one: put the
	@# headless build back so exactly one working cv2 is left.
	$(BIN)/pip uninstall -q -y opencv-python || true
	$(BIN)/pip install -q --force-reinstall --no-deps "opencv-python-headless==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))')"
	$(BIN)/python -c "import cv2, av; print('cv2', cv2.__version__, '| av', av.__version__)"
	touch $(STAMP)

system-deps:
	@command -v ffmpeg >/dev/null && command -v nginx >/dev/null && test -f /usr/lib/nginx/modules/ngx_rtmp_module.so \
	  && command -v chromium >/dev/null && test -d /usr/share/fonts/opentype/noto \
	  && /usr/bin/python3 -c "import gi; gi.require_version('GstRtspServer', '1.0')" 2>/dev/null \
	  || (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ffmpeg nginx libnginx-mod-rtmp chromium fonts-noto-cjk \
	       gir1.2-gst-rtsp-server-1.0 gstreamer1.0-plugins-good python3-gi)

demo: $(STAMP)
	$(BIN)/python tools/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest

# optimum-onnx needs transformers < 4.58: its exporter path is checked in an environment of its own,
# on tiny checkpoints built by the main one
OPT := .venv-optimum
$(OPT)/.installed: pyproject.toml
	$(PY) -m venv $(OPT)
	$(OPT)/bin/pip install -q --upgrade pip
	$(OPT)/bin/pip install -q $(TORCH)
	$(OPT)/bin/pip install -q "optimum-onnx" "transformers<4.58" onnxruntime pillow scikit-image pytest pytest-timeout \
	  pydantic pydantic-settings numpy opencv-python-headless websockets prometheus-client httpx h11 tqdm
	$(OPT)/bin/pip install -q --no-deps -e .
	touch $(OPT)/.installed

test-optimum: $(STAMP) $(OPT)/.installed
	rm -rf build/tiny-encoders
	$(BIN)/python tools/tiny_encoder.py build/tiny-encoders/clip --arch clip
	$(BIN)/python tools/tiny_encoder.py build/tiny-encoders/siglip --arch siglip
	STREAMWATCH_TINY_ENCODERS=$(CURDIR)/build/tiny-encoders $(OPT)/bin/python -m pytest --noconftest tests/test_encoder_optimum.py

lint: $(STAMP)
	$(BIN)/ruff check streamwatch tests tools
	$(BIN)/ruff format --check streamwatch

typecheck: $(STAMP)
	$(BIN)/mypy streamwatch

check: lint typecheck test

bench: $(STAMP)
	$(BIN)/python tools/bench/phash.py
	$(BIN)/python tools/bench/ingest.py
	$(BIN)/python tools/bench/events.py
	$(BIN)/python tools/bench/cascade.py
	$(BIN)/python tools/bench/latency.py
	$(BIN)/python tools/bench/streams.py

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache artifacts
