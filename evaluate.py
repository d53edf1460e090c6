"""Evaluate any checkpoint: `python evaluate.py model.name_or_path=<run>/model task=math`;
re-score a generations file without a model: `python evaluate.py task=math generations=<file.jsonl>`."""

import hydra

from prunekit import recipes
from prunekit.cli import guarded, hydra_dirs


@hydra.main(version_base="1.3", config_path="conf", config_name="evaluate")
def main(cfg) -> None:
    guarded(recipes.evaluate, cfg, **hydra_dirs())


if __name__ == "__main__":
    main()
