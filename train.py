"""Recover a pruned model with LoRA: `python train.py model.name_or_path=<run>/model task=math lora=math`."""

import hydra

from prunekit import recipes
from prunekit.cli import guarded, hydra_dirs


@hydra.main(version_base="1.3", config_path="conf", config_name="train")
def main(cfg) -> None:
    guarded(recipes.train, cfg, **hydra_dirs())


if __name__ == "__main__":
    main()
