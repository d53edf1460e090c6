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
from omegaconf import OmegaConf

from prunekit import attribution, capture, data, dist, models, scoring, strategies, surgery, text, training
from prunekit.checkpoint import (
    DiskFullError,
    atomic_write_json,
    atomic_write_text,
    clean_stale_temps,
    read_json,
    save_model,
)
from prunekit.config import check as check_config
from prunekit.evaluation import baseline, benchmarks, suite
from prunekit.evaluation.resources import count_parameters
from prunekit.mlp import check_architecture, mlp_layers
from prunekit.runs import layout, store, wandb
from prunekit.runs.store import pruning_record_of

log = logging.getLogger(__name__)


def plain(node):
    """OmegaConf node -> plain Python containers (library functions take plain values)."""
    return OmegaConf.to_container(node, resolve=True) if OmegaConf.is_config(node) else node


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
def tracked(cfg, job_type: str, run_dir: Path, sweep_dir, record: dict | None = None):
    """A W&B run around one job on the main process (never fails the job); the caller writes the local record.
    ``record``: the evaluated/trained checkpoint's pruning.json, which names the run (None: an unpruned model)."""
    if not dist.process_state().is_main_process:
        yield wandb.Tracker(None, "disabled")
        return
    config = plain(cfg)
    group = cfg.wandb.group or wandb.group(config, sweep_dir, run_dir)
    with wandb.start(config, job_type=job_type, run_dir=run_dir, mode=cfg.wandb.mode, project=cfg.wandb.project,
                        entity=cfg.wandb.entity, group=group, name=wandb.run_name(config, record, job_type),
                        tags=wandb.tags(config, record, job_type) + list(cfg.wandb.tags)) as tracker:
        yield tracker


def finish_record(cfg, job_type: str, run_dir: Path, sweep_dir, metrics: dict, record: dict | None = None) -> None:
    """metrics.json + config.yaml, then the completion marker LAST, then the sweep's runs.jsonl line (main process)."""
    if not dist.process_state().is_main_process:
        return
    atomic_write_text(run_dir / layout.CONFIG_YAML, OmegaConf.to_yaml(cfg, resolve=True))
    atomic_write_json(run_dir / layout.METRICS_FILE, metrics)
    store.mark_complete(run_dir, job_type)
    try:  # the job is complete; a failing sweep index (full disk) is a warning, not a failed job
        store.record_run(sweep_dir or run_dir.parent, run_dir, metrics, plain(cfg), "complete", job_type,
                         wandb.run_name(plain(cfg), record, job_type))
    except (OSError, DiskFullError) as e:
        log.warning("could not append this run to %s (%s); the run itself is complete",
                    Path(sweep_dir or run_dir.parent) / layout.INDEX_FILE, e)


def run_inputs(cfg, config: dict) -> dict:
    """Content stamps of the local files a job reads (prompt sets, a re-scored generations file) and, for a local
    model, its files' sizes and mtimes (models.identity: a checkpoint is too big to hash on every resume)."""
    inputs = data.local_inputs(config)
    name_or_path = str(cfg.model.name_or_path)
    if not name_or_path.startswith(("pip:", "tiny:")) and Path(name_or_path).expanduser().exists():
        inputs["model.name_or_path"] = models.identity(models.resolve(name_or_path), cfg.model.revision)
    return inputs


def skip_if_complete(cfg, job_type: str, run_dir: Path) -> dict | None:
    """With resume=true, the metrics of a job that already finished in this run directory with the same settings
    (another config there is a one-line error); else None, after clearing the earlier attempt's results."""
    config = plain(cfg)
    inputs = run_inputs(cfg, config)
    if store.check_resume(run_dir, job_type, config, cfg.resume, inputs):
        log.info("%s job already complete in %s with the same settings (resume=true): skipping", job_type, run_dir)
        return read_json(run_dir / layout.METRICS_FILE)
    if dist.process_state().is_main_process:
        store.begin(run_dir, job_type)
        run_dir.mkdir(parents=True, exist_ok=True)
        store.record_config(run_dir, config, job_type, inputs)
        capture_cache = cfg.capture.cache_dir if "capture" in cfg else None  # prune.py's only
        for folder in filter(None, (capture_cache, cfg.model.cache_dir, cfg.eval.reference_cache_dir,
                                    Path(cfg.cache_dir).expanduser() / "sources")):
            clean_stale_temps(folder, recursive=True)  # what killed jobs left (their processes are gone)
    return None


def run_job(cfg, job_type: str, run_dir: Path, sweep_dir, body, timer: Timer, record: dict | None = None) -> dict:
    """The one job lifecycle of prune, evaluate and train, after their checks: skip if complete with the same
    settings -> a tracked W&B run around ``body(tracker)`` -> its metrics logged -> the local records written
    (main process only). ``body`` loads what it needs; its model is freed when it returns."""
    done = skip_if_complete(cfg, job_type, run_dir)
    if done is not None:
        return done
    with tracked(cfg, job_type, run_dir, sweep_dir, record) as tracker:
        metrics = body(tracker)
        release_memory()  # the body's model went with its frame
        metrics.update(timer)
        tracker.log(metrics)
        tracker.summary(metrics)
    finish_record(cfg, job_type, run_dir, sweep_dir, metrics, record)
    return metrics


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


def activation_statistics(model, tokenizer, sets, key, settings, cache_dir) -> tuple[dict, bool]:
    """Statistics for ``key`` from the on-disk cache (verified), or captured now and cached: (stats, was_cached)."""
    return capture.cached_statistics(model, tokenizer, sets, key, settings, Path(cache_dir).expanduser())


def weights_dtype(model) -> str:
    """The dtype the model computes in, e.g. 'torch.bfloat16': part of every cache key (capture, attribution,
    references, source evaluation), since bf16 and fp32 give different numbers."""
    return str(next(model.parameters()).dtype)


def checkpoint_model(cfg, source, config, model, plan):
    """The pruned model to save: ``model`` itself when it computes in the dtype to save (model.save_dtype; null:
    the source's stored dtype), else the source reloaded on the CPU in that dtype with the same plan applied, so a
    bf16 computation never rounds an fp32 source's checkpoint. The reload costs one CPU copy of the source while
    saving, only when the two dtypes differ (not for a bf16-stored model computed in bf16)."""
    chosen = cfg.model.get("save_dtype")
    want = models.DTYPES[chosen] if chosen else models.stored_dtype(source, config)
    if want == next(model.parameters()).dtype:
        return model
    log.info("saving in %s (computed in %s): the source's weights are reloaded and pruned alike",
             want or "the source's stored dtype", next(model.parameters()).dtype)
    stored = models.load_stored(source, cfg.model.cache_dir, want, revision=cfg.model.revision,
                                trust_remote_code=cfg.model.trust_remote_code)
    plan.apply(stored)
    return stored


def attribution_scores(cfg, strategy, model, tokenizer, source, prompts, layers=None):
    """Integrated-gradients scores [layers, d_ff] on seeded target samples (cached per layer on disk)."""
    sample = attribution.sample_prompts(prompts, strategy["samples"], strategy["seed"])
    dtype = weights_dtype(model)
    ig = dict(steps=strategy["steps"], method=strategy["method"], max_length=cfg.capture.max_length,
              chat_template=cfg.capture.chat_template)
    key = attribution.cache_key(models.identity(source, cfg.model.revision), sample, dtype=dtype, **ig)
    scores, _ = attribution.cached_ig_scores(model, tokenizer, sample, key=key,
                                             cache_dir=Path(cfg.cache_dir).expanduser() / "attribution",
                                             layers=layers, batch_size=strategy.get("batch_size"), **ig)
    return scores, key


def reference_outputs(cfg, model, tokenizer, source) -> dict | None:
    """The unpruned source model's distractor outputs (cached per model + dtype + prompts + settings), for similarity."""
    return baseline.reference_outputs(model, tokenizer, plain(cfg.task), plain(cfg.eval),
                                      identity=models.identity(source, cfg.model.revision), dtype=weights_dtype(model))


def source_key(cfg, source, dtype: str, settings: dict) -> str:
    """Key of a source model's cached evaluation (baseline.source_key)."""
    return baseline.source_key(models.identity(source, cfg.model.revision), dtype, plain(cfg.task), settings)


def source_evaluation(cfg, model, tokenizer, source) -> tuple[dict, list[dict]]:
    """The unpruned source model's metrics and target generations (with verdicts), cached under cache_dir/sources
    (baseline.source_evaluation)."""
    return baseline.source_evaluation(model, tokenizer, plain(cfg.task), plain(cfg.eval),
                                      identity=models.identity(source, cfg.model.revision),
                                      dtype=weights_dtype(model), cache_dir=Path(cfg.cache_dir).expanduser() / "sources")


def before_after(metrics: dict) -> str:
    """The short before -> after table `prune.py` ends with (original/ metrics vs the pruned model's)."""
    task = next((m for m in benchmarks.primary_metrics() if m in metrics or f"original/{m}" in metrics),
                "gsm8k/em")
    metric = task.split("/")[0]
    rows = [(task, task), ("target NLL (own answers)", f"{metric}/nll"), ("trap rate", f"{metric}/trap_rate"),
            ("distractor similarity", "distractor/sss"), ("parameters", "resources/params"),
            ("tokens/s (batch 1)", "resources/tokens_per_s")]
    before = {"distractor/sss": 1.0, **{k[len("original/"):]: v for k, v in metrics.items() if k.startswith("original/")}}

    def fmt(v):
        if v is None:
            return "-"
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return str(v)
        return f"{v:,.0f}" if abs(v) >= 1000 else f"{v:.3f}"

    lines = [f"{'':26} {'before':>12} {'after':>12}"]
    lines += [f"{label:26} {fmt(before.get(key)):>12} {fmt(metrics.get(key)):>12}" for label, key in rows
              if key in metrics or key in before]
    return "\n".join(lines)


def evaluation(cfg, model, tokenizer, run_dir: Path, tracker, reference=None, checkpoint_dir=None,
               source_rows=None) -> dict:
    """The evaluation suite on an in-memory model; its sample generations also go to W&B."""
    result = suite.evaluate(model, tokenizer, plain(cfg.task), plain(cfg.eval), run_dir=run_dir,
                            reference_outputs=reference, checkpoint_dir=checkpoint_dir, source_rows=source_rows)
    if result.rows is not None:  # prompt, output and verdict of every target sample
        wandb.log_generations(tracker, result.rows, limit=cfg.wandb.log_generations)
    return result.metrics


# ---------------------------------------------------------------------------------------------- prune
def prune_align(cfg) -> int:
    """`prune.align` (checked by config.check), or the paper's 128 for a config composed before the key existed."""
    node = cfg.get("prune") if hasattr(cfg, "get") else None
    return (node or {}).get("align", surgery.ALIGN)


def prune(cfg, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """capture -> scores -> choose -> physical pruning (or one-layer deactivation) -> stock checkpoint + records."""
    run_dir = Path(run_dir)
    timer = Timer()

    # 1. Check everything cheap before any weight is loaded.
    with timer("checks"):
        check_config(cfg, "prune")
        wandb.check_mode(cfg.wandb.mode)
        options = plain(cfg.strategy)
        strategy = strategies.get(options)  # a registered Strategy, its own options checked
        name = strategy.name
        align = prune_align(cfg)
        if strategy.physical:
            surgery.kept_width(1, cfg.ratio, align)  # range check of ratio, before anything else
        settings = capture.CaptureSettings(**{k: cfg.capture[k] for k in ("max_length", "batch_size", "chat_template",
                                                                           "skip_first")})
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
            suite.check_data(suite.check_settings(plain(cfg.eval), task), task)

    def body(tracker) -> dict:
        # 2. Load the model.
        with timer("load"):
            model, tokenizer = load_model(cfg, source)
            params_before = count_parameters(model)

        # 3. The scores the strategy needs: activation statistics -> selectivity (cached), integrated-gradients
        #    attribution (cached per layer), down_proj weights.
        scores = strategies.Scores()
        key = ig_key = cached = None
        checked = prompt_checks(tokenizer, sets, settings) if sets else None
        with timer("capture"):
            if "capture" in needs:
                dtype = weights_dtype(model)
                key = capture.cache_key(models.identity(source, cfg.model.revision), sets, specs, settings, dtype)
                scores.stats, cached = activation_statistics(model, tokenizer, sets, key, settings,
                                                             cfg.capture.cache_dir)
                scores.selectivity = scoring.selectivity(scores.stats["target"], scores.distractors())
        with timer("attribution"):
            if "attribution" in needs:
                scores.attribution, ig_key = attribution_scores(cfg, options, model, tokenizer, source,
                                                                sets["target"], strategy.attribution_layers(n_layers))
        if "weights" in needs:
            scores.down_weights = [mlp.down.weight for mlp in mlp_layers(model)]

        with timer("reference"):
            reference = reference_outputs(cfg, model, tokenizer, source) if cfg.evaluate else None
        with timer("source_eval"):  # the unpruned model's numbers, cached: only the first run pays
            original, source_rows = source_evaluation(cfg, model, tokenizer, source) if cfg.evaluate else ({}, None)

        # 4. The strategy's plan: uniform physical pruning, or zeroing some neurons of one layer.
        with timer("prune"):
            plan = strategy.plan(scores, n_prune=n_prune, d_ff=d_ff, layers=n_layers,
                                 seed=options.get("seed", cfg.seed))
            plan.apply(model)
            record = {"source_model": cfg.model.name_or_path,
                      "model_identity": models.identity(source, cfg.model.revision),
                      "strategy": name, "seed": options.get("seed", cfg.seed), "d_ff": d_ff, "align": align,
                      "capture_cache_key": key, "attribution_cache_key": ig_key,
                      "prompt_counts": {n: len(p) for n, p in sets.items()}, "prompt_checks": checked,
                      **plan.record(cfg.ratio),
                      "selectivity_summary": scoring.layer_summary(scores.selectivity)
                      if scores.selectivity is not None else None}
            params_after = count_parameters(model)

        # 5. Save a stock checkpoint and the pruning record (atomic writes, main process).
        with timer("save"):
            state = dist.process_state()
            if state.is_main_process:
                save_model(checkpoint_model(cfg, source, config, model, plan), tokenizer, run_dir / "model")
                atomic_write_json(run_dir / layout.PRUNING_FILE, record)
            state.wait_for_everyone()
        wandb.log_selectivity(tracker, record)
        log.info("%s: real ratio %.4f, params %d -> %d; saved %s", name, record["real_ratio"], params_before,
                 params_after, run_dir / "model")

        # 6. Evaluate the pruned model (evaluate=true): task metric, traps, similarity, resources, NLL.
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
    if cfg.evaluate and dist.process_state().is_main_process:
        print(f"\n{name} pruning, ratio {cfg.ratio} (real {metrics['prune/real_ratio']:.4f}): before -> after\n"
              + before_after(metrics), flush=True)
    return metrics


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(cfg, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """Evaluate any checkpoint (original, pruned or recovered), or re-score a generations file without a model."""
    run_dir = Path(run_dir)
    check_config(cfg, "evaluate")
    wandb.check_mode(cfg.wandb.mode)
    task, settings = plain(cfg.task), plain(cfg.eval)
    generations = cfg.get("generations")  # re-score this file of {id, output} lines: no model is loaded
    suite.check_data(suite.check_settings(settings, task), task, generations)
    rescoring = generations is not None
    chosen = best_of_grid(cfg.best_of) if cfg.get("best_of") else None
    name_or_path = f"{chosen['run']}/model" if chosen else cfg.model.name_or_path
    source = None if rescoring else models.resolve(name_or_path)
    if source is not None:
        check_architecture(models.load_config(source, cfg.model.cache_dir, cfg.model.revision))
    timer = Timer()
    record = None if rescoring else pruning_record_of(name_or_path)  # what the evaluated model is

    def body(tracker) -> dict:
        if rescoring:
            with timer("rescore"):
                return suite.rescore(task, settings, generations, run_dir)
        reference = source_rows = None
        original: dict = {}
        if record is not None and baseline.needs_source(settings["parts"]):
            with timer("source"):  # the unpruned model the checkpoint came from (cached results)
                reference, original, source_rows = _source_results(cfg, record, settings["parts"])
        with timer("load"):
            model, tokenizer = load_model(cfg, source)
        if record is None:  # the unpruned model itself: its cached source evaluation, copied into the run
            for name in baseline.not_on_source(settings["parts"]):
                log.info("%s skipped: not measured on an unpruned model (similarity to its own outputs is 1 by "
                         "definition)", name)
            metrics, rows = source_evaluation(cfg, model, tokenizer, source)
            suite.write_target_files(run_dir, rows)
        else:
            checkpoint = name_or_path if source.kind == "dir" else None
            metrics = evaluation(cfg, model, tokenizer, run_dir, tracker, reference, checkpoint, source_rows)
            metrics.update({f"original/{k}": v for k, v in original.items()})
            metrics.update({"prune/ratio": record.get("ratio"), "prune/real_ratio": record.get("real_ratio")})
        if chosen:
            metrics.update({"select/layer": chosen["layer"], "select/percent": chosen["percent"],
                            f"select/adaptation/{chosen['metric']}": chosen[chosen["metric"]]})
        return metrics

    return run_job(cfg, "evaluate", run_dir, sweep_dir, body, timer, record)


def best_of_grid(sweep_dir) -> dict:
    """The best (layer, percent) run of a ``strategy=detrimental`` grid sweep, by its runs' own metrics (method 2's
    adaptation split); ties go to the smaller percent, then the lower layer."""
    from prunekit import report  # tables and plotting libraries: imported only for this

    _, best, metric = report.detrimental_grid(report.load_runs([sweep_dir]))
    if best is None:
        raise report.RunError(f"best_of={sweep_dir}: no strategy=detrimental runs with a task or lm-eval metric")
    log.info("best_of: layer %s, percent %s (%s = %s on the grid's adaptation split): %s", best["layer"],
             best["percent"], metric, best[metric], best["run"])
    return {**best, "metric": metric}


def _source_results(cfg, record: dict, parts) -> tuple[dict | None, dict, list[dict] | None]:
    """From the unpruned model a checkpoint came from: similarity reference outputs (when a part compares against
    them), and its cached evaluation metrics and target generations (when a part reads them: nll). The model is
    loaded for these (its tokenizer decides the cache keys); a cache hit then costs no generation."""
    source = models.resolve(record["source_model"])
    model, tokenizer = load_model(cfg, source)
    try:
        reference = reference_outputs(cfg, model, tokenizer, source)
        original, rows = (source_evaluation(cfg, model, tokenizer, source) if baseline.needs_source_rows(parts)
                          else ({}, None))
        return reference, original, rows
    finally:
        del model, tokenizer
        release_memory()


# ---------------------------------------------------------------------------------------------- train
GAIN_METRICS = (*benchmarks.primary_metrics(), "distractor/sss")


def relative_gain(before: dict, after: dict) -> dict:
    """Paper eq. 4: (A_after - A_before) / A_before x 100, for the task metrics both runs have."""
    return {f"gain/{k}": (after[k] - before[k]) / before[k] * 100
            for k in GAIN_METRICS if k in after and isinstance(before.get(k), (int, float)) and before[k]}


def train(cfg, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """LoRA recovery of a (pruned) checkpoint -> adapter + merged stock checkpoint, training.json, metrics."""
    run_dir = Path(run_dir)
    check_config(cfg, "train")
    wandb.check_mode(cfg.wandb.mode)
    task, lora = plain(cfg.task), plain(cfg.lora)
    source = models.resolve(cfg.model.name_or_path)
    if "train" not in task:
        raise data.DataError(f"task '{task.get('name')}' has no `train` section (training data spec)")
    records = data.load_records(task["train"], "task.train")
    if cfg.evaluate:
        suite.check_data(suite.check_settings(plain(cfg.eval), task), task)
    check_architecture(models.load_config(source, cfg.model.cache_dir, cfg.model.revision))
    if cfg.resume_from:  # another run's or base model's checkpoint: one line now, not size mismatches after load
        training.check_resume_checkpoint(cfg.resume_from, str(cfg.model.name_or_path))
    timer = Timer()
    record = pruning_record_of(cfg.model.name_or_path)
    model_dir = Path(cfg.model.name_or_path).expanduser()  # <run>/model: the run it came from (not a hub id)
    recovered_from = str(model_dir.parent.resolve()) if record is not None and model_dir.name == "model" else None

    def body(tracker) -> dict:
        reference = source_rows = None
        if cfg.evaluate and baseline.needs_source(cfg.eval.parts):
            with timer("reference"):  # the unpruned source (the model being trained, when it was never pruned)
                reference, _, source_rows = _source_results(
                    cfg, record or {"source_model": cfg.model.name_or_path}, cfg.eval.parts)
        with timer("load"):
            model, tokenizer = load_model(cfg, source)
        examples = training.build_examples(records, tokenizer=tokenizer,
                                           prompt_template=task["train"]["prompt_template"],
                                           response_field=task["train"]["response_field"],
                                           max_length=int(lora.get("max_length", 1024)))
        resume_from = cfg.resume_from or (training.latest_checkpoint(run_dir) if cfg.resume else None)
        with timer("train"):
            summary = training.train_lora(model, tokenizer, examples, lora, out_dir=run_dir,
                                          resume_from=resume_from, log=tracker.log,
                                          base_model=str(cfg.model.name_or_path))
        main = dist.process_state().is_main_process
        with timer("merge"):  # every process merges (the evaluation below needs the model); one writes
            model = training.merge(summary.pop("peft_model"), tokenizer, run_dir, save=main)
        if main:
            if record is not None:
                atomic_write_json(run_dir / layout.PRUNING_FILE, record)
            atomic_write_json(run_dir / layout.TRAINING_FILE, {"source_model": cfg.model.name_or_path, "lora": lora,
                                                          "recovered_from": recovered_from, "examples": len(examples),
                                                          **summary})
        scores = evaluation(cfg, model, tokenizer, run_dir, tracker, reference, run_dir / "model",
                            source_rows) if cfg.evaluate else {}
        before_path = model_dir.parent / layout.METRICS_FILE
        before = read_json(before_path) if model_dir.name == "model" and before_path.is_file() else {}
        metrics = {**{f"train/{k}": v for k, v in summary.items() if isinstance(v, (int, float))},
                   **scores, **relative_gain(before, scores)}
        if recovered_from:  # metrics.json and the W&B run name the pruned run this model was recovered from
            metrics["train/recovered_from"] = recovered_from
        if record is not None:
            metrics.update({"prune/ratio": record.get("ratio"), "prune/real_ratio": record.get("real_ratio")})
        return metrics

    return run_job(cfg, "train", run_dir, sweep_dir, body, timer, record)
