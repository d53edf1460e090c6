"""The top-level recipes the entry scripts call: read top to bottom, one stage per step.

Each recipe takes the composed config (an OmegaConf DictConfig or anything with the same keys) and the run
directory; Hydra itself stays in the entry scripts.
"""

import gc
import logging
import time
from pathlib import Path

import torch
from omegaconf import OmegaConf

from prunekit import capture, data, models, scoring, slicing, strategies
from prunekit.checkpoint import atomic_write_json, atomic_write_text, save_model
from prunekit.mlp import check_architecture

log = logging.getLogger(__name__)


def _plain(node):
    """OmegaConf node -> plain Python containers (library functions take plain values)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def release_memory() -> None:
    """Collect freed models between jobs of an in-process multirun (call after dropping references)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def capture_sets(task) -> tuple[dict[str, list[str]], dict]:
    """Prompt sets keyed ``target`` and ``distractor/<name>``, and their specs (for the cache key)."""
    prompts = data.prompt_sets(task)
    sets = {"target": prompts["target"]}
    sets.update({f"distractor/{name}": p for name, p in prompts["distractors"].items()})
    specs = {"target": data.spec_fingerprint(task["target"])}
    specs.update({f"distractor/{n}": data.spec_fingerprint(s) for n, s in task["distractors"].items()})
    return sets, specs


def activation_statistics(model, tokenizer, sets, key, settings, cache_dir) -> tuple[dict, bool]:
    """Statistics for ``key`` from the on-disk cache, or captured now and cached. Returns (stats, was_cached)."""
    path = Path(cache_dir).expanduser() / f"{key}.pt"
    stats = capture.load_cached(path)
    if stats is not None:
        return stats, True
    log.info("capturing activations (cache key %s)", key)
    stats = capture.statistics(model, tokenizer, sets, settings)
    capture.save_cached(path, stats)
    return stats, False


def prune(cfg, run_dir: str | Path) -> dict:
    """capture -> selectivity -> choose -> physical pruning -> stock checkpoint, pruning.json, metrics.json."""
    run_dir = Path(run_dir)
    timings = {}
    t = time.perf_counter()

    # 1. Check everything cheap before any weight is loaded.
    strategy = _plain(cfg.strategy)
    strategies.check_strategy(strategy["name"])
    slicing.pruned_count(1, cfg.ratio)  # range check of ratio before anything else
    settings = capture.CaptureSettings(**{k: cfg.capture[k] for k in ("max_length", "batch_size", "chat_template")})
    source = models.resolve(cfg.model.name_or_path)
    task = _plain(cfg.task)
    needs_scores = strategy["name"] in strategies.SCORE_STRATEGIES
    sets, specs = capture_sets(task) if needs_scores else ({}, {})
    config = models.load_config(source, cfg.model.cache_dir, cfg.model.revision)
    check_architecture(config)
    d_ff, n_layers = config.intermediate_size, config.num_hidden_layers
    n_prune = slicing.check_ratio(d_ff, cfg.ratio)
    timings["time/checks_s"] = time.perf_counter() - t

    # 2. Load the model.
    t = time.perf_counter()
    model, tokenizer = models.load(source, cfg.model.cache_dir, dtype=cfg.model.dtype, device_map=cfg.model.device_map,
                                   revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)
    params_before = count_parameters(model)
    timings["time/load_s"] = time.perf_counter() - t
    try:
        # 3. Activation statistics (cached by model + prompt sets + settings) and selectivity.
        t = time.perf_counter()
        scores, key, cached = None, None, None
        if needs_scores:
            dtype = str(next(model.parameters()).dtype)
            key = capture.cache_key(models.identity(source, cfg.model.revision), sets, specs, settings, dtype)
            stats, cached = activation_statistics(model, tokenizer, sets, key, settings, cfg.capture.cache_dir)
            scores = scoring.selectivity(stats["target"], [s for n, s in stats.items() if n != "target"])
        timings["time/capture_s"] = time.perf_counter() - t

        # 4. Choose the neurons to keep and remove the rest physically.
        t = time.perf_counter()
        kept = strategies.choose(strategy["name"], scores, n_prune, d_ff=d_ff, layers=n_layers,
                                 seed=strategy.get("seed", cfg.seed))
        slicing.prune_mlp(model, kept)
        params_after = count_parameters(model)
        timings["time/prune_s"] = time.perf_counter() - t

        # 5. Save a stock checkpoint and the run records (atomic writes).
        t = time.perf_counter()
        save_model(model, tokenizer, run_dir / "model")
        timings["time/save_s"] = time.perf_counter() - t
        record = {
            "source_model": cfg.model.name_or_path,
            "model_identity": models.identity(source, cfg.model.revision),
            "strategy": strategy["name"],
            "seed": strategy.get("seed", cfg.seed),
            "ratio": cfg.ratio,
            "real_ratio": n_prune / d_ff,
            "d_ff": d_ff,
            "pruned_per_layer": n_prune,
            "kept_width": d_ff - n_prune,
            "capture_cache_key": key,
            "prompt_counts": {name: len(p) for name, p in sets.items()},
            "selectivity_summary": scoring.layer_summary(scores) if scores is not None else None,
            "kept_indices": [k.tolist() for k in kept],
        }
        atomic_write_json(run_dir / "pruning.json", record)
        metrics = {
            "prune/ratio": cfg.ratio,
            "prune/real_ratio": n_prune / d_ff,
            "prune/kept_width": d_ff - n_prune,
            "prune/params_before": params_before,
            "prune/params_after": params_after,
            "resources/params": params_after,
            "capture/cached": cached,
            **timings,
        }
        atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True) if OmegaConf.is_config(cfg) else str(cfg))
        atomic_write_json(run_dir / "metrics.json", metrics)
        log.info("pruned %d of %d neurons per layer (real ratio %.4f); params %d -> %d; saved %s",
                 n_prune, d_ff, n_prune / d_ff, params_before, params_after, run_dir / "model")
        return metrics
    finally:
        del model, tokenizer
        release_memory()
