"""The one job lifecycle prune, evaluate and train share, and the stages more than one of them runs.

``run_job``: skip if complete with the same settings -> a tracked W&B run around the recipe's body -> its metrics
logged -> the local records written, then the completion marker (main process only). Each recipe takes the
composed config (an OmegaConf DictConfig or anything with the same keys), the run directory and, in a multirun,
the sweep directory; Hydra itself stays in the entry scripts.
"""

import gc
import logging
import time
from contextlib import contextmanager
from pathlib import Path

import torch
from omegaconf import OmegaConf

from prunekit import data, dist, models
from prunekit.checkpoint import DiskFullError, atomic_write_json, atomic_write_text, clean_stale_temps, read_json
from prunekit.evaluation import baseline, suite
from prunekit.runs import layout, store, wandb

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


# ---------------------------------------------------------------------------------------------- the lifecycle
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


# ---------------------------------------------------------------------------------------------- shared stages
def check_evaluation(settings, task: dict, generations=None) -> None:
    """The evaluation settings (the Job's, checked once by config.check) against the task, and the data they read,
    before any weights load."""
    suite.check_data(suite.check_settings(settings, task), task, generations)


def reference_outputs(cfg, loaded: models.LoadedModel) -> dict | None:
    """The unpruned source model's distractor outputs (cached per model + dtype + prompts + settings), for
    similarity."""
    return baseline.reference_outputs(loaded, plain(cfg.task), plain(cfg.eval))


def source_evaluation(cfg, loaded: models.LoadedModel) -> tuple[dict, list[dict]]:
    """The unpruned source model's metrics and target generations (with verdicts), cached under
    ``cache_dir/sources``."""
    return baseline.source_evaluation(loaded, plain(cfg.task), plain(cfg.eval),
                                      Path(cfg.cache_dir).expanduser() / "sources")


def source_results(cfg, source_model: str, parts) -> tuple[dict | None, dict, list[dict] | None]:
    """From the unpruned model ``source_model`` a checkpoint came from: similarity reference outputs (when a part
    compares against them), and its cached evaluation metrics and target generations (when a part reads them:
    nll). The model is loaded for these (its tokenizer decides the cache keys); a cache hit then costs no
    generation. It is freed before the recipe loads its own model."""
    loaded = models.load_model(models.resolve(source_model), cfg.model)
    try:
        return results_of_source(cfg, loaded, parts)
    finally:
        del loaded
        release_memory()


def results_of_source(cfg, loaded: models.LoadedModel, parts) -> tuple[dict | None, dict, list[dict] | None]:
    """`source_results` on the caller's load of the unpruned model (train.py also asks it for its answers)."""
    reference = reference_outputs(cfg, loaded)
    original, rows = (source_evaluation(cfg, loaded) if baseline.needs_source_rows(parts) else ({}, None))
    return reference, original, rows


def evaluation(cfg, model, tokenizer, run_dir: Path, tracker, reference=None, checkpoint_dir=None,
               source_rows=None) -> dict:
    """The evaluation suite on an in-memory model; its sample generations also go to W&B."""
    result = suite.evaluate(model, tokenizer, plain(cfg.task), plain(cfg.eval), run_dir=run_dir,
                            reference_outputs=reference, checkpoint_dir=checkpoint_dir, source_rows=source_rows)
    if result.rows is not None:  # prompt, output and verdict of every target sample
        wandb.log_generations(tracker, result.rows, limit=cfg.wandb.log_generations)
    return result.metrics
