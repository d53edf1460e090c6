#!/usr/bin/env bash
# The paper's own model, offline: Qwen2.5-Coder-1.5B-Instruct (pip GGUF) on the paper's code mix from local
# files (task=code_local), HumanEval pass@1 on all 164 problems + traps, one job at a time (~9 GB each).
# Long (an hour or more per job on 2 CPU cores): run it in the background; every job resumes (finished jobs are
# skipped, a killed evaluation continues from its journal), so re-running the same command picks up where it stopped.
#   nohup bash benchmarks/fidelity_qwen.sh > qwen.log 2>&1 &
#   JOBS="original selective:0.05" bash benchmarks/fidelity_qwen.sh      # a subset, in this order
#   RUNS=... bash benchmarks/fidelity_qwen.sh task.target.n=800           # extra arguments: overrides for every job
# Results: $RUNS/<job>/metrics.json; `python -m prunekit.report $RUNS` tabulates them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
RUNS=${RUNS:-${PRUNEKIT_RUNS:-$HOME/prunekit-runs}/qwen-code}
DTYPE=${DTYPE:-bfloat16}
PARTS=${PARTS:-[task,traps]}
JOBS=${JOBS:-"original selective:0.05 random_s42:0.05 reverse:0.05 random_s33:0.05 selective:0.1 selective:0.15"}
common=(model=qwen2.5-coder-1.5b-gguf task=code_local model.dtype="$DTYPE" wandb.mode=offline "eval.parts=$PARTS" "$@")
for job in $JOBS; do
  start=$(date +%s)
  if [ "$job" = original ]; then
    "$PY" evaluate.py "${common[@]}" hydra.run.dir="$RUNS/original"
  else
    strategy=${job%%:*}; ratio=${job##*:}; seed=42
    case $strategy in random_s*) seed=${strategy#random_s}; strategy=random ;; esac
    "$PY" prune.py "${common[@]}" strategy="$strategy" ++strategy.seed="$seed" ratio="$ratio" \
      hydra.run.dir="$RUNS/${job/:/_r}"
  fi
  echo "job $job done in $(( $(date +%s) - start )) s"
done
