"""Prune a model: `python prune.py [overrides]`, or a sweep: `python prune.py -m ratio=0.05,0.1 strategy=selective,reverse`."""

import hydra

from prunekit import recipes
from prunekit.cli import guarded, hydra_dirs


@hydra.main(version_base="1.3", config_path="conf", config_name="prune")
def main(cfg) -> None:
    guarded(recipes.prune, cfg, **hydra_dirs())


if __name__ == "__main__":
    main()
