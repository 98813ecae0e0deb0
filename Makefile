# LLM-Core — the front door. `make help` lists the targets.
# Everything runs inside .venv (created on first use). constraints.txt pins the torch release we test with;
# on Linux `make install` takes it from PyTorch's CPU wheel index (TORCH_INDEX) so a laptop does not
# download the multi-GB CUDA build, and falls back to pip's own configuration when that index is unreachable.

SHELL       := /bin/bash
PYTHON      ?= python3
VENV        := .venv
PY          := $(VENV)/bin/python
STAMP       := $(VENV)/.installed
TOY         ?= 1
DEVICE      ?= auto
SEED        ?= 0
MODULES     ?=
CHAPTERS    ?=
# worker processes for make unit / make nbval (pytest-xdist; 0 = one process). Every llmcore run fixes torch at
# 2 threads (seed_everything), yet a chapter keeps 2 cores only ~1.45 busy on average (Python between small ops),
# so 2 workers on a 2-core laptop cut the wall time by ~20-35% (measured side by side: book/benchmarks.md)
JOBS        ?= 2
NBVAL_PATHS ?= chapters book/reference.ipynb
# PyTorch's CPU-only wheels, asked for torch alone (Linux); `make install TORCH_INDEX=` skips this step
TORCH_INDEX ?= https://download.pytorch.org/whl/cpu
# the Python the committed notebooks are executed with (pyproject.toml); `make book ANY_PYTHON=1` allows another
BOOK_PYTHON := $(shell sed -n 's/^book-python = "\(.*\)"$$/\1/p' pyproject.toml)
ANY_PYTHON  ?=
# the Python that runs everything: the venv's once it exists, else the one that will create it
RUN_PY       = $(if $(wildcard $(PY)),$(PY),$(PYTHON))
# prints the first headless-capable browser: PATH names, then the macOS app bundles (tools/check_pages.py agrees)
FIND_BROWSER = { for b in chromium chromium-browser google-chrome google-chrome-stable; do command -v $$b && break; done; \
  for b in /Applications/Chromium.app/Contents/MacOS/Chromium "/Applications/Google Chrome.app/Contents/MacOS/Google Chrome"; \
  do [ -x "$$b" ] && echo "$$b"; done; } | head -n1
NO_BROWSER  := skipping the page checks: no Chromium or Chrome found, and only root installs it here \
  (Debian: sudo apt-get install chromium fonts-noto-cjk; macOS: brew install --cask chromium)
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export MPLBACKEND := Agg
export PYDEVD_DISABLE_FILE_VALIDATION := 1

ifeq ($(TOY),0)
MODE := --full
else
MODE := --toy
endif
# loadscope: all cells of one notebook (all tests of one module) run in order on one worker. OMP_WAIT_POLICY:
# idle OpenMP threads sleep instead of spinning, so with JOBS workers x 2 threads on 2 cores a waiting thread
# does not steal the core the other worker computes on (results do not change: the thread count stays 2)
XDIST  := $(if $(filter 0,$(JOBS)),,-n $(JOBS) --dist loadscope)
TESTENV := LLMCORE_NO_PROGRESS=1 $(if $(filter 0,$(JOBS)),,OMP_WAIT_POLICY=PASSIVE)
SELECT := $(if $(CHAPTERS),$(CHAPTERS),$(if $(MODULES),--modules $(MODULES),))

.PHONY: help prereqs prereqs-book prereqs-execute prereqs-test install torch-cpu book execute html widgets-js \
        test lint unit nbval check-pages chromium smoke pretrain robust clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: MODULES=mdp,overview  CHAPTERS=chapters/x/y.py  TOY=0  DEVICE=cuda  SEED=0  JOBS=2 (test workers)"
	@echo "             PYTHON=python3.11  TORCH_INDEX=<url or empty>  ANY_PYTHON=1"

# --- prerequisites: checked first, so a long run never fails at its end for a missing tool ---
prereqs: ## check Python >= 3.10 and its venv module (every target that installs runs this first)
	@$(RUN_PY) -c 'import sys; sys.exit(sys.version_info < (3, 10))' 2>/dev/null || { \
	  echo "error: $(RUN_PY) is missing or older than Python 3.10 (make PYTHON=/path/to/python3.11 ...)"; exit 2; }
	@test -x $(PY) || $(PYTHON) -c 'import ensurepip, venv' 2>/dev/null || { \
	  echo "error: $(PYTHON) cannot create a virtual environment (Debian/Ubuntu: sudo apt-get install python3-venv)"; exit 2; }

prereqs-book: prereqs
	@test -f book/_widgets/.fetched || { command -v node && command -v npm; } >/dev/null || { \
	  echo "error: node and npm are needed to fetch the widget JS of the HTML book (Debian: sudo apt-get install nodejs npm; macOS: brew install node)"; exit 2; }

prereqs-execute: prereqs
	@have=$$($(RUN_PY) -c 'import sys; print("%d.%d" % sys.version_info[:2])'); \
	if [ "$$have" != "$(BOOK_PYTHON)" ] && [ -z "$(ANY_PYTHON)" ]; then \
	  echo "error: the book is executed with Python $(BOOK_PYTHON) (pyproject.toml book-python), $(RUN_PY) is $$have: trained numbers would differ from the committed ones (make PYTHON=python$(BOOK_PYTHON), or ANY_PYTHON=1 to execute anyway)"; exit 2; fi

prereqs-test: prereqs-book
	@[ -n "$$($(FIND_BROWSER))" ] || [ "$$(id -u)" = 0 ] || echo "note: $(NO_BROWSER)"

install: prereqs $(STAMP) ## create .venv and install llmcore with all extras (CPU torch pinned)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	@$(MAKE) --no-print-directory torch-cpu
	$(PY) -m pip install -q --no-compile -c constraints.txt -e '.[all]'
	@# bytecode for everything installed, on every core (pip compiles file by file on one: ~45 s of a fresh
	@# install); files that are not valid Python 3 source (test fixtures of newer Pythons) are skipped as pip does
	$(PY) -c "import compileall, sysconfig; compileall.compile_dir(sysconfig.get_paths()['purelib'], quiet=2, workers=0)"
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@touch $@

torch-cpu: ## (Linux) install the pinned torch from PyTorch's CPU wheel index, else leave it to pip's configuration
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	@if [ "$$(uname -s)" = Linux ] && [ -n "$(TORCH_INDEX)" ]; then \
	  $(PY) -m pip install -q --no-deps --no-compile --retries 0 --timeout 20 -c constraints.txt --index-url $(TORCH_INDEX) torch \
	    >$(VENV)/torch-cpu.log 2>&1 \
	  || echo "note: torch not taken from $(TORCH_INDEX) (unreachable?); pip's own configuration provides it, which on Linux is PyPI's CUDA build unless configured otherwise (see $(VENV)/torch-cpu.log)"; \
	fi

execute: prereqs-execute install ## run chapters with papermill into their .ipynb (MODULES=/CHAPTERS=, TOY=0, DEVICE=cuda)
	$(PY) tools/execute.py $(SELECT) $(MODE) --device $(DEVICE) --seed $(SEED) $(if $(ANY_PYTHON),--any-python,)
	$(PY) tools/gen_toc.py

widgets-js: book/_widgets/.fetched ## fetch the ipywidgets HTML manager and MathJax from npm (static book, offline)

book/_widgets/.fetched:
	@command -v npm >/dev/null || { echo "error: npm is needed to fetch the widget manager (apt-get install -y npm)"; exit 2; }
	mkdir -p output/npm book/_widgets/mathjax
	cd output/npm && npm install --no-audit --no-fund --silent @jupyter-widgets/html-manager@1 requirejs@2 mathjax@3
	cp output/npm/node_modules/requirejs/require.js book/_widgets/require.min.js
	cd output/npm/node_modules/@jupyter-widgets/html-manager/dist && cp $$(ls | grep -v '\.map$$' | grep -v LICENSE) $(CURDIR)/book/_widgets/
	cd output/npm/node_modules/mathjax/es5 && cp -r tex-chtml.js output input ui a11y $(CURDIR)/book/_widgets/mathjax/
	@touch $@

html: prereqs-book install widgets-js ## build the HTML from the committed notebooks (no execution), warnings are errors
	$(PY) tools/gen_toc.py --check
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going --builder html

book: prereqs-book prereqs-execute execute html ## execute every chapter (toy) and build _build/html/index.html
	@echo "book: $(CURDIR)/_build/html/index.html"

lint: install ## ruff
	$(VENV)/bin/ruff check src tests chapters tools benchmarks run.py conftest.py

unit: install ## pytest unit tests and cross-checks
	$(TESTENV) $(VENV)/bin/pytest -q tests $(XDIST) --durations=15

nbval: install ## re-execute every chapter notebook and compare its checked results cells
	@# no progress bars: their widget messages can flood the kernel's output channel past ZMQ's high-water
	@# mark, and nbval then waits in vain for the cell's last messages ("Timeout ... waiting for output")
	$(TESTENV) $(VENV)/bin/pytest -q -p no:cacheprovider $(XDIST) --nbval-lax --nbval-current-env --nbval-cell-timeout=900 $(NBVAL_PATHS) --ignore-glob='*.py' --durations=25

check-pages: html chromium ## load every page in headless Chromium: figures present, no errors, no broken links
	@browser="$$($(FIND_BROWSER))"; \
	if [ -z "$$browser" ]; then echo "$(NO_BROWSER)"; else CHROMIUM="$$browser" $(PY) tools/check_pages.py; fi

chromium: ## find Chromium/Chrome; as root on Debian, install chromium + CJK fonts when missing (else skip the page checks)
	@browser="$$($(FIND_BROWSER))"; fonts=1; \
	if command -v fc-list >/dev/null && ! fc-list 2>/dev/null | grep -qi 'Noto Sans CJK'; then fonts=0; fi; \
	if [ -n "$$browser" ] && [ $$fonts = 1 ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	  echo "installing chromium + fonts-noto-cjk (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; \
	elif [ -n "$$browser" ]; then \
	  echo "note: no Noto Sans CJK font: Chinese text in the page screenshots may show as boxes (sudo apt-get install fonts-noto-cjk)"; \
	fi

test: prereqs-test lint unit nbval check-pages ## everything CI runs: ruff, pytest, nbval, HTML build, page checks
	@if [ -n "$$($(FIND_BROWSER))" ]; then echo "make test: all checks passed"; \
	else echo "make test: all checks passed except the page checks (skipped: no browser)"; fi

pretrain: install ## re-run the book LM's pretraining recipe (resumable; ~45 min on 2 CPU cores) into src/llmcore/data/book_lm
	$(PY) -m llmcore.architecture.book_lm --device $(if $(filter auto,$(DEVICE)),cpu,$(DEVICE))

robust: install ## every written module x seeds 0-4 x CPU kernel sets (native, default, avx2) -> book/robustness.md (hours; resumable)
	@# JOBS cells side by side (the page's runs used 2 on 2 cores); results do not depend on it: each cell fixes its
	@# own thread count, and idle OpenMP threads sleep instead of spinning on the core the other cell computes on
	OMP_WAIT_POLICY=PASSIVE $(PY) tools/robustness.py --jobs $(if $(filter 0,$(JOBS)),1,$(JOBS)) $(if $(MODULES),--modules $(MODULES),)

smoke: install ## every written module's toy closed loop -> output/smoke_reports/
	$(PY) tools/smoke_test.py

clean: ## remove build outputs (keeps .venv)
	rm -rf _build output book/_widgets .pytest_cache
