# One set of task commands: the README names these targets and CI runs them.
PYTHON ?= python3
VENV   ?= .venv
BIN     = $(VENV)/bin
# processes make test spreads the tests over (pytest-xdist, a file's tests in one of them;
# `auto` is one per core); 1 runs them all in this process, in order
TEST_WORKERS ?= 2
# MLflow sends usage telemetry unless told not to; mlnb's own commands stay on this machine
export DO_NOT_TRACK = true

.PHONY: setup demo test lint check bench clean

$(BIN)/mlnb: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev,team]"
	$(BIN)/python -m ipykernel install --sys-prefix --name python3 --display-name "Python 3 (mlnb)"
	touch $@

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

test: lint ## every test (real kernels, real SQLite MLflow stores), then mlnb test on the example
	$(BIN)/python -m pytest $(if $(filter-out 1,$(TEST_WORKERS)),-n $(TEST_WORKERS))
	$(BIN)/mlnb test --junit-xml reports/mlnb-test.xml

bench: setup ## benchmarks, each printed side by side with its baseline tool
	$(BIN)/python benchmarks/bench_run.py
	$(BIN)/python benchmarks/bench_serve.py
	$(BIN)/python benchmarks/bench_monitor.py
	$(BIN)/python benchmarks/bench_dask.py
	$(BIN)/python benchmarks/bench_sweep.py

clean:
	rm -rf .mlnb mlflow.db mlartifacts data dist demo reports .pytest_cache
