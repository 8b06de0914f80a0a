# The README's two commands: `make quickstart` (main job) and `make test` (test suite). Both set up .venv first.
.PHONY: setup quickstart test test-fast test-recipes

setup:
	bash scripts/setup.sh

quickstart: setup
	.venv/bin/grpo run recipes/quickstart.yaml

test: setup
	.venv/bin/python -m pytest -q

test-fast: setup
	.venv/bin/python -m pytest -q -m "not slow"

test-recipes: setup
	.venv/bin/python -m pytest -q tests/test_recipes.py
