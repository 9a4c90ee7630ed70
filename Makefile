PY := .venv/bin/python
PIP := .venv/bin/pip

.PHONY: setup test demo clean
setup: .venv/.installed
.venv/.installed: requirements.txt pyproject.toml
	python3 -m venv .venv
	$(PIP) install -q --upgrade pip
	$(PIP) install -q -r requirements.txt
	$(PIP) install -q --no-deps -e .
	touch $@

test: setup
	$(PY) -m pytest

demo: setup
	$(PY) search.py space check --n 10 --img-size 8 --in-chans 1

clean:
	rm -rf .venv
