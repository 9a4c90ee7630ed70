PY := .venv/bin/python
UV := .venv/bin/uv

# uv installs the pinned requirements in seconds where pip takes minutes. It does not read pip's
# configuration, so it is handed the indexes, local wheels and constraints pip is set up with
# (pip config), and it weighs all indexes as pip does. It compiles the bytecode as pip does: where
# PYTHONDONTWRITEBYTECODE is set, as on this project's machines, every process would otherwise
# compile what it imports, twice as slow (BENCHMARKS.md, "Main job end to end").
pip_setting = $(sort $(shell python3 -m pip config list 2>/dev/null | sed -n "s/^[^.]*\.$(1)='\(.*\)'$$/\1/p"))
PIP_SOURCES := $(addprefix --index-url=,$(call pip_setting,index-url)) \
	$(addprefix --extra-index-url=,$(call pip_setting,extra-index-url)) \
	$(addprefix --find-links=,$(call pip_setting,find-links)) \
	$(addprefix --constraints=,$(call pip_setting,constraint)) --index-strategy unsafe-best-match

.PHONY: setup test test-fast demo clean
setup: .venv/.installed
.venv/.installed: requirements.txt pyproject.toml
	python3 -m venv .venv
	.venv/bin/pip install -q uv==0.13.9
	$(UV) pip install -q --compile-bytecode --python $(PY) $(PIP_SOURCES) -r requirements.txt
	$(UV) pip install -q --python $(PY) --no-deps -e .
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
