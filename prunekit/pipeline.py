"""The top-level recipes the entry scripts call: read top to bottom, one stage per step.

Each recipe takes the composed config (an OmegaConf DictConfig or anything with the same keys), the run directory
and, in a multirun, the sweep directory; Hydra itself stays in the entry scripts.
"""

import gc
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from accelerate import PartialState
from omegaconf import OmegaConf

from prunekit import attribution, capture, data, models, scoring, slicing, strategies, tracking
from prunekit.checkpoint import atomic_write_json, atomic_write_text, read_json, save_model
from prunekit.mlp import check_architecture

log = logging.getLogger(__name__)


def plain(node):
    """OmegaConf node -> plain Python containers (library functions take plain values)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


def count_parameters(model) -> int:
    return sum(p.numel() for p in model.parameters())


def release_memory() -> None:
    """Collect freed models between jobs of an in-process multirun (call after dropping references)."""
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


class Timer(dict):
    """Wall-clock seconds per named stage, as ``time/<stage>_s`` metrics."""

    @contextmanager
    def __call__(self, stage: str):
        t = time.perf_counter()
        yield
        self[f"time/{stage}_s"] = time.perf_counter() - t


# ---------------------------------------------------------------------------------------------- shared stages
def load_model(cfg, source):
    return models.load(source, cfg.model.cache_dir, dtype=cfg.model.dtype, device_map=cfg.model.device_map,
                       revision=cfg.model.revision, trust_remote_code=cfg.model.trust_remote_code)


@contextmanager
def tracked(cfg, job_type: str, run_dir: Path, sweep_dir):
    """A W&B run around one job on the main process (never fails the job); the caller writes the local record."""
    if not PartialState().is_main_process:
        yield tracking.Tracker(None, "disabled")
        return
    config = plain(cfg)
    group = cfg.wandb.group or tracking.group(config, sweep_dir, run_dir)
    with tracking.start(config, job_type=job_type, run_dir=run_dir, mode=cfg.wandb.mode, project=cfg.wandb.project,
                        entity=cfg.wandb.entity, group=group, name=tracking.run_name(config),
                        tags=tracking.tags(config) + list(cfg.wandb.tags)) as tracker:
        yield tracker


def finish_record(cfg, job_type: str, run_dir: Path, sweep_dir, metrics: dict) -> None:
    """metrics.json + config.yaml, then the completion marker LAST, then the sweep's runs.jsonl line."""
    atomic_write_text(run_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run_dir / "metrics.json", metrics)
    tracking.mark_complete(run_dir, job_type)
    tracking.record_run(sweep_dir or run_dir.parent, run_dir, metrics, plain(cfg), "complete", job_type)


def skip_if_complete(cfg, job_type: str, run_dir: Path) -> dict | None:
    """With resume=true, the metrics of a job that already finished in this run directory; else None."""
    if tracking.should_skip(run_dir, job_type, cfg.resume):
        log.info("%s job already complete in %s (resume=true): skipping", job_type, run_dir)
        return read_json(run_dir / "metrics.json")
    if PartialState().is_main_process:
        tracking.begin(run_dir, job_type)
    return None


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
    if PartialState().is_main_process:
        capture.save_cached(path, stats)
    return stats, False


def attribution_scores(cfg, strategy, model, tokenizer, source, prompts, layers=None):
    """Integrated-gradients scores [layers, d_ff] on seeded target samples (cached per layer on disk)."""
    sample = attribution.sample_prompts(prompts, strategy["samples"], strategy["seed"])
    dtype = str(next(model.parameters()).dtype)
    ig = dict(steps=strategy["steps"], method=strategy["method"], max_length=cfg.capture.max_length,
              chat_template=cfg.capture.chat_template)
    key = attribution.cache_key(models.identity(source, cfg.model.revision), sample, dtype=dtype, **ig)
    scores, _ = attribution.cached_ig_scores(model, tokenizer, sample, key=key,
                                             cache_dir=Path(cfg.cache_dir).expanduser() / "attribution",
                                             layers=layers, batch_size=strategy.get("batch_size"), **ig)
    return scores, key


# ---------------------------------------------------------------------------------------------- prune
def prune(cfg, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """capture -> scores -> choose -> physical pruning (or one-layer deactivation) -> stock checkpoint + records."""
    run_dir = Path(run_dir)
    timer = Timer()

    # 1. Check everything cheap before any weight is loaded.
    with timer("checks"):
        tracking.check_mode(cfg.wandb.mode)
        strategy = plain(cfg.strategy)
        name = strategy["name"]
        strategies.check_strategy(name)
        deactivation = name in strategies.DEACTIVATION
        if not deactivation:
            slicing.pruned_count(1, cfg.ratio)  # range check of ratio, before anything else
        settings = capture.CaptureSettings(**{k: cfg.capture[k] for k in ("max_length", "batch_size", "chat_template")})
        source = models.resolve(cfg.model.name_or_path)
        task = plain(cfg.task)
        needs_prompts = name in strategies.NEEDS_SELECTIVITY or name in strategies.NEEDS_ATTRIBUTION
        sets, specs = capture_sets(task) if needs_prompts else ({}, {})
        config = models.load_config(source, cfg.model.cache_dir, cfg.model.revision)
        check_architecture(config)
        d_ff, n_layers = config.intermediate_size, config.num_hidden_layers
        attribution.check_options(strategy, n_layers=n_layers, available=len(sets.get("target", [])) or None)
        n_prune = 0 if deactivation else slicing.check_ratio(d_ff, cfg.ratio)
    done = skip_if_complete(cfg, "prune", run_dir)
    if done is not None:
        return done

    with tracked(cfg, "prune", run_dir, sweep_dir) as tracker:
        # 2. Load the model.
        with timer("load"):
            model, tokenizer = load_model(cfg, source)
            params_before = count_parameters(model)
        try:
            # 3. Scores: activation statistics -> selectivity (cached), and/or integrated-gradients attribution.
            selectivity = attrib = key = ig_key = cached = None
            with timer("capture"):
                if name in strategies.NEEDS_SELECTIVITY:
                    dtype = str(next(model.parameters()).dtype)
                    key = capture.cache_key(models.identity(source, cfg.model.revision), sets, specs, settings, dtype)
                    stats, cached = activation_statistics(model, tokenizer, sets, key, settings, cfg.capture.cache_dir)
                    selectivity = scoring.selectivity(stats["target"], [s for n, s in stats.items() if n != "target"])
            with timer("attribution"):
                if name in strategies.NEEDS_ATTRIBUTION:
                    layers = [strategy["layer"]] if name == "detrimental" else None
                    attrib, ig_key = attribution_scores(cfg, strategy, model, tokenizer, source, sets["target"], layers)

            # Under `accelerate launch`, the other processes helped capture; the main process does the rest.
            if not PartialState().is_main_process:
                return {}

            # 4. Remove neurons: uniform physical pruning, or zero one layer's detrimental (or random) neurons.
            with timer("prune"):
                record = {"source_model": cfg.model.name_or_path, "model_identity": models.identity(source, cfg.model.revision),
                          "strategy": name, "seed": strategy.get("seed", cfg.seed), "d_ff": d_ff,
                          "capture_cache_key": key, "attribution_cache_key": ig_key,
                          "prompt_counts": {n: len(p) for n, p in sets.items()}}
                if deactivation:
                    neurons = (attribution.detrimental_neurons(attrib, 0, strategy["percent"]) if name == "detrimental"
                               else attribution.random_neurons(d_ff, strategy["percent"], strategy["seed"]))
                    attribution.deactivate(model, strategy["layer"], neurons, strategy["where"])
                    record.update(ratio=0.0, real_ratio=0.0, kept_width=d_ff, layer=strategy["layer"],
                                  percent=strategy["percent"], where=strategy["where"], deactivated=neurons.tolist())
                else:
                    scores = None if name == "random" else strategies.ranking(
                        name, selectivity, attrib, rank_by=strategy.get("rank_by", "signed"),
                        weight=strategy.get("weight", 0.5))
                    kept = strategies.choose(name, scores, n_prune, d_ff=d_ff, layers=n_layers,
                                             seed=strategy.get("seed", cfg.seed))
                    slicing.prune_mlp(model, kept)
                    record.update(ratio=cfg.ratio, real_ratio=n_prune / d_ff, pruned_per_layer=n_prune,
                                  kept_width=d_ff - n_prune, kept_indices=[k.tolist() for k in kept])
                record["selectivity_summary"] = scoring.layer_summary(selectivity) if selectivity is not None else None
                params_after = count_parameters(model)

            # 5. Save a stock checkpoint and the run records (atomic writes; the completion marker last).
            with timer("save"):
                save_model(model, tokenizer, run_dir / "model")
                atomic_write_json(run_dir / "pruning.json", record)
        finally:
            del model, tokenizer
            release_memory()

        metrics = {
            "prune/ratio": record["ratio"],
            "prune/real_ratio": record["real_ratio"],
            "prune/kept_width": record["kept_width"],
            "prune/params_before": params_before,
            "prune/params_after": params_after,
            "resources/params": params_after,
            "capture/cached": cached,
            **timer,
        }
        tracker.log(metrics)
        tracker.summary(metrics)
        tracking.log_selectivity(tracker, record)
    finish_record(cfg, "prune", run_dir, sweep_dir, metrics)
    log.info("%s: real ratio %.4f, params %d -> %d; saved %s", name, record["real_ratio"], params_before,
             params_after, run_dir / "model")
    return metrics
