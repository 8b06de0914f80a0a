# The README's two commands: `make quickstart` (a GRPO run on the bundled model) and `make test` (the test
# suite, what CI runs). Both set up .venv first; scripts/setup.sh skips the install while pyproject.toml
# and setup.sh are unchanged (FORCE=1 make setup reinstalls).
.PHONY: setup quickstart test test-fast test-recipes

QUICKSTART_DIR := runs/quickstart

setup:
	@bash scripts/setup.sh

# Each quickstart starts afresh (--overwrite deletes the previous quickstart's files), then draws its plots.
quickstart: setup
	.venv/bin/grpo run recipes/quickstart.yaml --overwrite --set run.output_dir=$(QUICKSTART_DIR)
	.venv/bin/grpo plot $(QUICKSTART_DIR)

test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

test-recipes: setup
	.venv/bin/python -m pytest -q tests/test_recipes.py
