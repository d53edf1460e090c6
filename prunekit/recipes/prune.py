"""The prune recipe (`python prune.py`): checks -> load once -> the scores the strategy needs (capture,
attribution, weights; cached) -> the strategy's plan -> surgery -> a stock checkpoint in the source's dtype and
pruning.json -> the evaluation parts beside the unpruned model's cached results -> records, W&B, before -> after.
"""

import logging
from pathlib import Path

from prunekit import attribution, capture, checkpoint, data, dist, models, scoring, strategies, surgery, text
from prunekit.config import check as check_config
from prunekit.evaluation.resources import count_parameters
from prunekit.mlp import check_architecture, mlp_layers
from prunekit.recipes._job import (
    Timer,
    check_evaluation,
    evaluation,
    plain,
    reference_outputs,
    run_job,
    source_evaluation,
)
from prunekit.runs import layout, wandb

log = logging.getLogger(__name__)


def prune(cfg, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """capture -> scores -> choose -> physical pruning (or one-layer deactivation) -> stock checkpoint + records."""
    run_dir = Path(run_dir)
    timer = Timer()

    # 1. Setup: check everything cheap before any weight is loaded.
    with timer("checks"):
        job = check_config(cfg, "prune")  # every value checked once, by its owner's settings class
        wandb.check_mode(cfg.wandb.mode)
        options = plain(cfg.strategy)
        strategy = strategies.get(options)  # a registered Strategy, its own options checked
        align = job.prune.align  # the paper's 128 when the config has no prune.align
        if strategy.physical:
            surgery.kept_width(1, cfg.ratio, align)  # range check of ratio, before anything else
        settings = job.capture
        source = models.resolve(cfg.model.name_or_path)
        task = plain(cfg.task)
        needs = strategy.needs
        sets, specs = capture_sets(task) if {"capture", "attribution"} & needs else ({}, {})
        config = models.load_config(source, cfg.model.cache_dir, cfg.model.revision)
        check_architecture(config)
        d_ff, n_layers = config.intermediate_size, config.num_hidden_layers
        strategy.check(n_layers=n_layers, available=len(sets.get("target", [])) or None)
        n_prune = surgery.check_ratio(d_ff, cfg.ratio, align) if strategy.physical else 0
        if cfg.evaluate:
            check_evaluation(job.eval, task)

    # 2. Run: inside the job lifecycle (skipped when complete with the same settings).
    def body(tracker) -> dict:
        with timer("load"):
            loaded = models.load_model(source, job.model)
            model, tokenizer = loaded.model, loaded.tokenizer
            params_before = count_parameters(model)

        # The scores the strategy needs: activation statistics -> selectivity (cached), integrated-gradients
        # attribution (cached per layer), down_proj weights.
        scores = strategies.Scores()
        key = ig_key = cached = None
        checked = prompt_checks(tokenizer, sets, settings) if sets else None
        with timer("capture"):
            if "capture" in needs:
                key = capture.cache_key(loaded.identity, sets, specs, settings, str(loaded.dtype))
                scores.stats, cached = capture.cached_statistics(model, tokenizer, sets, key, settings,
                                                                 Path(cfg.capture.cache_dir).expanduser())
                scores.selectivity = scoring.selectivity(scores.stats["target"], scores.distractors())
        with timer("attribution"):
            if "attribution" in needs:
                scores.attribution, ig_key = attribution_scores(cfg, options, loaded, sets["target"],
                                                                strategy.attribution_layers(n_layers))
        if "weights" in needs:
            scores.down_weights = [mlp.down.weight for mlp in mlp_layers(model)]

        # The unpruned model's results, before it is cut: cached, so only the first run of a setup pays.
        with timer("reference"):
            reference = reference_outputs(cfg, loaded) if cfg.evaluate else None
        with timer("source_eval"):
            original, source_rows = source_evaluation(cfg, loaded) if cfg.evaluate else ({}, None)

        # The strategy's plan: uniform physical pruning, or zeroing some neurons of one layer.
        with timer("prune"):
            seed = options.get("seed", cfg.seed)
            plan = strategy.plan(scores, n_prune=n_prune, d_ff=d_ff, layers=n_layers, seed=seed)
            plan.apply(model)
            record = {"source_model": cfg.model.name_or_path, "model_identity": loaded.identity,
                      "strategy": strategy.name, "seed": seed, "d_ff": d_ff, "align": align,
                      "capture_cache_key": key, "attribution_cache_key": ig_key,
                      "prompt_counts": {n: len(p) for n, p in sets.items()}, "prompt_checks": checked,
                      **plan.record(cfg.ratio),
                      "selectivity_summary": scoring.layer_summary(scores.selectivity)
                      if scores.selectivity is not None else None}
            params_after = count_parameters(model)

        # A stock checkpoint and the pruning record (atomic writes, main process).
        with timer("save"):
            state = dist.process_state()
            if state.is_main_process:
                checkpoint.save_model(checkpoint_model(cfg, loaded, config, plan), tokenizer, run_dir / "model")
                checkpoint.atomic_write_json(run_dir / layout.PRUNING_FILE, record)
            state.wait_for_everyone()
        wandb.log_selectivity(tracker, record)
        log.info("%s: real ratio %.4f, params %d -> %d; saved %s", strategy.name, record["real_ratio"],
                 params_before, params_after, run_dir / "model")

        # The pruned model's evaluation (evaluate=true): task metric, traps, similarity, resources, NLL.
        evaluated = evaluation(cfg, model, tokenizer, run_dir, tracker, reference, run_dir / "model",
                               source_rows) if cfg.evaluate else {}
        metrics = {"prune/ratio": record["ratio"], "prune/real_ratio": record["real_ratio"],
                   "prune/kept_width": record["kept_width"], "prune/params_before": params_before,
                   "prune/params_after": params_after, "resources/params": params_after, "capture/cached": cached,
                   **evaluated, **{f"original/{k}": v for k, v in original.items()}}
        if cfg.evaluate:
            metrics["original/resources/params"] = params_before
        return metrics

    metrics = run_job(cfg, "prune", run_dir, sweep_dir, body, timer)

    # 3. Cleanup: the model went with the body; the before -> after table ends an evaluated run.
    if cfg.evaluate and dist.process_state().is_main_process:
        from prunekit.report import before_after  # pandas: loaded only by a run that prints the table

        print(f"\n{strategy.name} pruning, ratio {cfg.ratio} (real {metrics['prune/real_ratio']:.4f}): "
              f"before -> after\n" + before_after(metrics), flush=True)
    return metrics


# ---------------------------------------------------------------------------------------------- its stages
def capture_sets(task) -> tuple[dict[str, list[str]], dict]:
    """Prompt sets keyed ``target`` and ``distractor/<name>``, and their specs (for the cache key)."""
    prompts = data.prompt_sets(task)
    sets = {"target": prompts["target"]}
    sets.update({f"distractor/{name}": p for name, p in prompts["distractors"].items()})
    specs = {"target": data.spec_fingerprint(task["target"])}
    specs.update({f"distractor/{n}": data.spec_fingerprint(s) for n, s in task["distractors"].items()})
    return sets, specs


def prompt_checks(tokenizer, sets: dict[str, list[str]], settings) -> dict:
    """Per capture set: how many prompts repeat an earlier one (each occurrence counts in the statistics) and how
    many are longer than capture.max_length tokens (cut there); warned about, and kept in pruning.json."""
    out = {}
    for name, prompts in sets.items():
        lengths = [len(ids) for ids in text.encode(tokenizer, prompts, settings.chat_template)]
        out[name] = {"prompts": len(prompts), "duplicates": len(prompts) - len(set(prompts)),
                     "truncated": sum(n > settings.max_length for n in lengths)}
        if out[name]["duplicates"]:
            log.warning("%s: %d of %d prompts repeat an earlier one (each occurrence counts in the statistics)",
                        name, out[name]["duplicates"], len(prompts))
        if out[name]["truncated"]:
            log.warning("%s: %d of %d prompts are longer than capture.max_length=%d tokens: only their first %d "
                        "tokens are captured", name, out[name]["truncated"], len(prompts), settings.max_length,
                        settings.max_length)
    return out


def attribution_scores(cfg, strategy, loaded: models.LoadedModel, prompts, layers=None):
    """Integrated-gradients scores [layers, d_ff] on seeded target samples (cached per layer on disk)."""
    sample = attribution.sample_prompts(prompts, strategy["samples"], strategy["seed"])
    ig = dict(steps=strategy["steps"], method=strategy["method"], max_length=cfg.capture.max_length,
              chat_template=cfg.capture.chat_template)
    key = attribution.cache_key(loaded.identity, sample, dtype=str(loaded.dtype), **ig)
    scores, _ = attribution.cached_ig_scores(loaded.model, loaded.tokenizer, sample, key=key,
                                             cache_dir=Path(cfg.cache_dir).expanduser() / "attribution",
                                             layers=layers, batch_size=strategy.get("batch_size"), **ig)
    return scores, key


def checkpoint_model(cfg, loaded: models.LoadedModel, config, plan):
    """The pruned model to save: ``loaded.model`` itself when it computes in the dtype to save (model.save_dtype;
    null: the source's stored dtype), else the source reloaded on the CPU in that dtype with the same plan applied,
    so a bf16 computation never rounds an fp32 source's checkpoint. The reload costs one CPU copy of the source
    while saving, only when the two dtypes differ (not for a bf16-stored model computed in bf16)."""
    chosen = cfg.model.get("save_dtype")
    want = models.DTYPES[chosen] if chosen else models.stored_dtype(loaded.source, config)
    if want == loaded.dtype:
        return loaded.model
    log.info("saving in %s (computed in %s): the source's weights are reloaded and pruned alike",
             want or "the source's stored dtype", loaded.dtype)
    stored = models.load_stored(loaded.source, cfg.model.cache_dir, want, revision=cfg.model.revision,
                                trust_remote_code=cfg.model.trust_remote_code)
    plan.apply(stored)
    return stored
