# LLM-Core — the front door. `make help` lists the targets.
# Everything runs inside .venv (created on first use); the CPU torch wheel is pinned by constraints.txt.

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
NBVAL_PATHS ?= chapters book/reference.ipynb
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
SELECT := $(if $(CHAPTERS),$(CHAPTERS),$(if $(MODULES),--modules $(MODULES),))

.PHONY: help install book execute html widgets-js test lint unit nbval check-pages chromium smoke pretrain robust clean

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN{FS=":.*## "}{printf "  make %-12s %s\n", $$1, $$2}'
	@echo "  variables: MODULES=mdp,overview  CHAPTERS=chapters/x/y.py  TOY=0  DEVICE=cuda  SEED=0"

install: $(STAMP) ## create .venv and install llmcore with all extras (CPU torch pinned)

$(STAMP): pyproject.toml constraints.txt
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[all]'
	$(PY) -m ipykernel install --sys-prefix --name python3 --display-name "Python 3" >/dev/null
	@touch $@

execute: install ## run chapters with papermill into their .ipynb (MODULES=/CHAPTERS=, TOY=0, DEVICE=cuda)
	$(PY) tools/execute.py $(SELECT) $(MODE) --device $(DEVICE) --seed $(SEED)
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

html: install widgets-js ## build the HTML from the committed notebooks (no execution), warnings are errors
	$(PY) tools/gen_toc.py --check
	$(VENV)/bin/jupyter-book build . --all -W -n --keep-going --builder html

book: execute html ## execute every chapter (toy) and build _build/html/index.html
	@echo "book: $(CURDIR)/_build/html/index.html"

lint: install ## ruff
	$(VENV)/bin/ruff check src tests chapters tools benchmarks run.py

unit: install ## pytest unit tests and cross-checks
	LLMCORE_NO_PROGRESS=1 $(VENV)/bin/pytest -q tests

nbval: install ## re-execute every chapter notebook and compare its checked results cells
	$(VENV)/bin/pytest -q -p no:cacheprovider --nbval-lax --nbval-current-env --nbval-cell-timeout=900 $(NBVAL_PATHS) --ignore-glob='*.py'

check-pages: html chromium ## load every page in headless Chromium: figures present, no errors, no broken links
	$(PY) tools/check_pages.py

chromium: ## install headless Chromium and CJK fonts (Debian) when missing
	@command -v chromium >/dev/null && fc-list 2>/dev/null | grep -qi 'Noto Sans CJK' || { \
	  echo "installing chromium + fonts-noto-cjk (apt-get)"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium fonts-noto-cjk >/dev/null; }

test: lint unit nbval check-pages ## everything CI runs: ruff, pytest, nbval, HTML build, page checks
	@echo "make test: all checks passed"

pretrain: install ## re-run the book LM's pretraining recipe (resumable; ~45 min on 2 CPU cores) into src/llmcore/data/book_lm
	$(PY) -m llmcore.architecture.book_lm --device $(if $(filter auto,$(DEVICE)),cpu,$(DEVICE))

robust: install ## every written module x seeds 0-4 x CPU kernel sets (native, default, avx2) -> book/robustness.md (hours; resumable)
	$(PY) tools/robustness.py $(if $(MODULES),--modules $(MODULES),)

smoke: install ## every written module's toy closed loop -> output/smoke_reports/
	$(PY) tools/smoke_test.py

clean: ## remove build outputs (keeps .venv)
	rm -rf _build output book/_widgets .pytest_cache
