# `make demo` and `make test` are the two commands: each creates .venv and installs first.
PY      := .venv/bin/python
STAMP   := .venv/.installed
export VAE_EXPORT_DATA ?= $(abspath ../shared/data)

.PHONY: install install-gpu demo test artifacts bench clean

install: $(STAMP)

# Re-installs only when pyproject.toml or package-lock.json changes (a second `make install` does nothing).
$(STAMP): pyproject.toml package-lock.json
	test -x $(PY) || python3 -m venv .venv
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -e '.[train,dev,runtimes]'
	if command -v npm >/dev/null; then npm ci --ignore-scripts --no-audit --no-fund; else echo "npm not found: skipping onnxruntime-web (vae-export web and its tests need Node.js)"; fi
	touch $(STAMP)

# Swap the CPU onnxruntime for onnxruntime-gpu (same module name: never both at once).
install-gpu: $(STAMP)
	$(PY) -m pip uninstall --quiet -y onnxruntime
	$(PY) -m pip install --quiet --force-reinstall onnxruntime-gpu

demo: $(STAMP)
	bash scripts/demo.sh

test: $(STAMP)
	.venv/bin/ruff check vae_export training tests benchmarks examples
	$(PY) -m pytest -q

artifacts: $(STAMP)
	bash scripts/make_artifacts.sh

# The figures in docs/benchmarks.md and the closing notes; run on a quiet machine.
bench: $(STAMP)
	$(PY) benchmarks/train_speed.py
	$(PY) benchmarks/sample_speed.py
	.venv/bin/vae-export bench --out runs/bench.json --plot runs/bench.png

clean:
	rm -rf .venv build *.egg-info runs
