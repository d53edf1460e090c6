"""The three jobs, one recipe each, read top to bottom (setup, run, cleanup): ``prune`` (prune.py), ``evaluate``
(evaluate.py), ``train`` (train.py). They share one lifecycle (``_job.run_job``): checks before any weights
load, skip if complete with the same settings, a tracked W&B run, the records and the completion marker last.

Each is called as ``recipes.prune(cfg, run_dir, sweep_dir=None)`` and returns the job's metrics. (The function
names shadow their modules as attributes of this package: import from ``prunekit.recipes.prune`` by name.)
"""

from prunekit.recipes._job import plain, release_memory
from prunekit.recipes.evaluate import evaluate
from prunekit.recipes.prune import prune
from prunekit.recipes.train import train

__all__ = ["evaluate", "plain", "prune", "release_memory", "train"]
