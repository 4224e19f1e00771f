# One set of task commands: the README names these targets and CI runs them.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# processes make test spreads the tests over (pytest-xdist, a file's tests in one of them;
# `auto` is one per core); 1 runs them all in this process, in order
TEST_WORKERS ?= 2
# MLflow sends usage telemetry unless told not to; mlnb's own commands stay on this machine
export DO_NOT_TRACK = true

.PHONY: setup lab-build lab-check lab-link demo test lint check bench clean

$(BIN)/mlnb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,team,lab]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mlnb)"
	$(MAKE) lab-link
	touch $@

# The JupyterLab extension: TypeScript in lab/, built (Node.js 20, npm, from the committed lock)
# into mlnb/lab/labextension/, which is committed so that pip users need no Node.js. A wheel
# ships it as data files; the editable install here links it into the venv instead.
LAB_EXT = $(VENV)/share/jupyter/labextensions/mlnb-lab
LAB_CONF = $(VENV)/etc/jupyter/jupyter_server_config.d

lab/node_modules/.package-lock.json: lab/package-lock.json
	cd lab && npm ci --no-audit --no-fund --loglevel=error

lab-build: setup lab/node_modules/.package-lock.json ## rebuild the JupyterLab extension from lab/
	cd lab && PATH="$(CURDIR)/$(BIN):$$PATH" npm run --silent build > /dev/null
	$(BIN)/python scripts/lab_sources.py --write > /dev/null

# make test builds a copy of lab/ in reports/lab-check, so a checkout's committed bundle is left
# as it is: tests/lab/test_bundle.py then checks that it was stamped from these very sources.
LAB_CHECK = reports/lab-check

lab-check: setup lab/node_modules/.package-lock.json ## build lab/ aside: the TypeScript compiles
	rm -rf $(LAB_CHECK) && mkdir -p $(LAB_CHECK)/lab
	cp -R lab/src lab/style lab/package.json lab/tsconfig.json lab/install.json $(LAB_CHECK)/lab/
	ln -s $(CURDIR)/lab/node_modules $(LAB_CHECK)/lab/node_modules
	cd $(LAB_CHECK)/lab && PATH="$(CURDIR)/$(BIN):$$PATH" npm run --silent build > /dev/null
	test -f $(LAB_CHECK)/mlnb/lab/labextension/package.json

lab-link:
	mkdir -p $(dir $(LAB_EXT)) $(LAB_CONF)
	ln -sfn $(CURDIR)/mlnb/lab/labextension $(LAB_EXT)
	cp jupyter-config/jupyter_server_config.d/mlnb.json $(LAB_CONF)/mlnb.json

setup: $(BIN)/mlnb ## create .venv with mlnb and its test tools

demo: setup ## the continuous-training story on a fresh project demo/ (embedded store demo/mlflow.db)
	$(BIN)/mlnb check pipelines notebooks
	$(BIN)/python scripts/demo.py

lint: setup ## ruff, mypy, import-layer contracts, mlnb's own check
	$(BIN)/ruff check mlnb tests benchmarks scripts
	$(BIN)/ruff format --check mlnb tests benchmarks scripts
	$(BIN)/mypy
	$(BIN)/lint-imports
	$(BIN)/mlnb check pipelines notebooks

test: lab-check lint ## every test (real kernels, real SQLite MLflow stores), then mlnb test on the example
	$(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS))
	$(BIN)/mlnb test --junit-xml reports/mlnb-test.xml

bench: setup ## benchmarks, each printed side by side with its baseline tool
	$(BIN)/python benchmarks/bench_run.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_shadow.py
	$(BIN)/python benchmarks/bench_monitor.py
	$(BIN)/python benchmarks/bench_dask.py
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf .mlnb mlflow.db mlartifacts data dist demo reports .pytest_cache
