PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup test test-fast demo clean
setup: .venv/.installed
.venv/.installed: requirements.txt pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

# pytest-xdist: three workers, a module's tests on one (its costly fixture runs once). On the 2-core
# machines this project is developed and checked on, a third worker fills the time the others wait
# on their subprocesses (BENCHMARKS.md, "Main job end to end").
PYTEST := $(PY) -m pytest -n 3 --dist loadscope

test: setup
	$(PYTEST)

# The edit loop: everything but the real multi-process runs (searches, Ray clusters, disks).
test-fast: setup
	$(PYTEST) -m "not slow"

# The main job on the embedded digits dataset: calibrate this CPU (cached), search under the
# median latency of the space, train the best feasible architecture fully, export it.
demo: setup
	$(PY) search.py run --name demo --dataset digits --target-ms p50 --epochs 3 --workers 2
	$(PY) search.py train runs/demo --trial best --epochs 12
	$(PY) search.py export runs/demo --trial best --out runs/demo/export --force

clean:
	rm -rf .venv
