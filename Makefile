# Quick start:  make demo   (set up .venv, reconstruct the demo photo, write out/demo/*)
#               make test   (set up the environments, run both test lanes; CI runs this)
#
# Test lanes (README "Tests"):
#   make test-py311   Python 3.11 with bpy 5.0.1 (.venv); the oldest claimed Blender,
#                     bpy 4.2.0, registers the add-on from a small venv beside it (.venv-bpy42)
#   make test-py313   Python 3.13 with bpy 5.3.0 and Debian's Blender 4.3 in a Debian 13
#                     chroot (scripts/lane313.sh; needs root; cached under /var/cache/headsplat)
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.headsplat-installed
VENV42 ?= .venv-bpy42
BPY_OLDEST ?= 4.2.0
STAMP42 := $(VENV42)/.headsplat-installed-$(BPY_OLDEST)
PYTEST_ARGS ?= tests

.PHONY: setup demo test test-py311 test-py313 setup-py313 bench clean models export-tools

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[dev]'
	touch $(STAMP)

# the face models (our own torch weights, converted once into ~/.cache/headsplat; quick when done)
models: $(STAMP)
	$(PY) -m avatar_core fetch-models

# bpy 4.2 LTS (the manifest's blender_version_min) over the main venv's other packages:
# only bpy is installed here; a .pth adds .venv's site-packages after its own
$(STAMP42): $(STAMP)
	rm -rf $(VENV42)
	python3 -m venv $(VENV42)
	$(VENV42)/bin/python -m pip install -q --no-deps 'bpy==$(BPY_OLDEST)'
	echo "import site; site.addsitedir('$(abspath $(VENV))/lib/python3.11/site-packages')" \
		> $$($(VENV42)/bin/python -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')/headsplat-main-venv.pth
	touch $(STAMP42)

setup: $(STAMP) models

setup-py313:
	scripts/lane313.sh setup

demo: $(STAMP) models
	$(PY) scripts/demo.py --out out/demo

# both lanes, even when the first fails; the exit status is the worse of the two
test: $(STAMP) $(STAMP42)
	@status=0; \
	$(MAKE) --no-print-directory test-py311 || status=1; \
	$(MAKE) --no-print-directory test-py313 || status=1; \
	exit $$status

# the export checks' tools: Khronos' glTF validator and three.js (npm, pinned by tests/js's lock
# file) and Debian's Chromium; where one cannot be installed, its tests skip with the reason
JS_STAMP := tests/js/node_modules/.headsplat-installed
$(JS_STAMP): tests/js/package.json tests/js/package-lock.json
	@if command -v npm >/dev/null; then npm ci --prefix tests/js --no-audit --no-fund --loglevel=error && touch $@; \
	else echo "npm not found: the glTF validator and three.js checks will be skipped"; fi

export-tools: $(JS_STAMP)
	@command -v chromium >/dev/null || { [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null && \
		{ apt-get install -y -q chromium >/dev/null 2>&1 || { apt-get update -q >/dev/null && apt-get install -y -q chromium >/dev/null; }; }; } || \
		echo "Chromium could not be installed: the browser check of the GLB export will be skipped"

test-py311: $(STAMP) $(STAMP42) models export-tools
	@echo "== lane py311: Python 3.11, bpy 5.0.1 (oldest Blender: bpy $(BPY_OLDEST))"
	HEADSPLAT_BPY_OLDEST='$(abspath $(VENV42))/bin/python' $(PY) -m pytest -q $(PYTEST_ARGS)

test-py313:
	@echo "== lane py313: Python 3.13, bpy 5.3.0, Debian 13's Blender 4.3 (chroot)"
	scripts/lane313.sh test $(PYTEST_ARGS)

bench: $(STAMP)
	$(PY) -m avatar_core bench render --device cpu

clean:
	rm -rf out build dist *.egg-info
