# Set up a virtual environment and run the demo or the tests. Works on a fresh Debian/Ubuntu machine
# with git, make and Python 3.11: `make demo` and `make test` install the system packages they need
# first (tools/system-deps.sh: as root with apt-get, else through sudo, else they stop and print the
# apt-get line to run as root).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
DEMO_STAMP := $(VENV)/.installed-demo
STAMP := $(VENV)/.installed
TORCH ?= torch==2.13.0
export PY

.PHONY: demo test test-optimum lint typecheck check system-deps bench clean constraints

# rapidocr-onnxruntime pulls opencv-python (GUI build, needs libGL) over the headless one: put the
# headless build back so exactly one working cv2 is left.
define one_cv2
	$(BIN)/pip uninstall -q -y opencv-python || true
	$(BIN)/pip install -q --force-reinstall --no-deps "opencv-python-headless==$$($(BIN)/python -c 'import importlib.metadata as m; print(m.version("opencv-python-headless"))')"
	$(BIN)/python -c "import cv2, av; print('cv2', cv2.__version__, '| av', av.__version__)"
endef

# what the demo needs: streamwatch itself + the clip generator's Pillow and scikit-image
$(DEMO_STAMP): pyproject.toml constraints.txt
	@sh tools/system-deps.sh venv
	test -x $(BIN)/pip || $(PY) -m venv --clear $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -c constraints.txt -e ".[demo]"
	$(one_cv2)
	touch $(DEMO_STAMP)
	@echo "streamwatch is installed in $(VENV)/bin: \`. $(VENV)/bin/activate\` puts it on the PATH of your shell"

# everything for the tests: + torch, transformers (the `hf` extra) and the dev tools
$(STAMP): $(DEMO_STAMP)
	@# the CPU build of torch for the in-process VLM backend (the `hf` extra); on a GPU machine install the
	@# CUDA build instead (TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128")
	$(BIN)/pip install -q $(TORCH)
	$(BIN)/pip install -q -c constraints.txt -e ".[demo,dev,hf]"
	$(one_cv2)
	touch $(STAMP)

system-deps:
	sh tools/system-deps.sh venv demo test

# system packages first (a missing one stops make before the long pip install), then the venv.
# ARGS passes options on: make demo ARGS=--hold, make test ARGS="-k cli -x"
demo:
	@sh tools/system-deps.sh venv demo
	@$(MAKE) --no-print-directory $(DEMO_STAMP)
	$(BIN)/python tools/demo.py $(ARGS)

test:
	@sh tools/system-deps.sh venv test
	@$(MAKE) --no-print-directory $(STAMP)
	$(BIN)/python -m pytest $(ARGS)

# optimum-onnx needs transformers < 4.58: its exporter path is checked in an environment of its own,
# on tiny checkpoints built by the main one
OPT := .venv-optimum
$(OPT)/.installed: pyproject.toml
	@sh tools/system-deps.sh venv
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

# after a deliberate upgrade that the whole suite passed with: pin what the venv now holds
constraints: $(STAMP)
	{ sed -n '1,3p' constraints.txt; $(BIN)/pip freeze --exclude-editable | grep -v -e '^torch==' -e '^nvidia-' -e '^triton=='; } > constraints.txt.new
	mv constraints.txt.new constraints.txt

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache artifacts
