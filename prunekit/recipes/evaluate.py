"""The evaluate recipe (`python evaluate.py`): any checkpoint (original, pruned or recovered; or the best run of
a detrimental grid, ``best_of=<sweep>``), or a generations file re-scored without a model. A pruned or
recovered checkpoint is evaluated beside the unpruned model it came from (its cached results); an unpruned model
gets its cached source evaluation copied into the run.
"""

import logging
from pathlib import Path

from prunekit import models
from prunekit.config import check as check_config
from prunekit.evaluation import baseline, suite
from prunekit.mlp import check_architecture
from prunekit.recipes._job import Timer, check_evaluation, evaluation, plain, run_job, source_evaluation, source_results
from prunekit.runs import wandb
from prunekit.runs.store import pruning_record_of

log = logging.getLogger(__name__)


def evaluate(cfg, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """Evaluate any checkpoint (original, pruned or recovered), or re-score a generations file without a model."""
    run_dir = Path(run_dir)

    # 1. Setup: the settings, the data and the model's config, before any weight is loaded.
    job = check_config(cfg, "evaluate")  # every value checked once, by its owner's settings class
    wandb.check_mode(cfg.wandb.mode)
    task, settings = plain(cfg.task), plain(cfg.eval)
    generations = cfg.get("generations")  # re-score this file of {id, output} lines: no model is loaded
    check_evaluation(job.eval, task, generations)
    rescoring = generations is not None
    chosen = None
    if cfg.get("best_of"):  # the best run of a detrimental grid sweep
        from prunekit.report import best_of_grid  # tables and plotting libraries: imported only for best_of=

        chosen = best_of_grid(cfg.best_of)
    name_or_path = f"{chosen['run']}/model" if chosen else cfg.model.name_or_path
    source = None if rescoring else models.resolve(name_or_path)
    if source is not None:
        check_architecture(models.load_config(source, cfg.model.cache_dir, cfg.model.revision))
    timer = Timer()
    record = None if rescoring else pruning_record_of(name_or_path)  # what the evaluated model is

    # 2. Run: inside the job lifecycle (skipped when complete with the same settings).
    def body(tracker) -> dict:
        if rescoring:
            with timer("rescore"):
                return suite.rescore(task, settings, generations, run_dir)
        reference = source_rows = None
        original: dict = {}
        if record is not None and baseline.needs_source(settings["parts"]):
            with timer("source"):  # the unpruned model the checkpoint came from (cached results)
                reference, original, source_rows = source_results(cfg, record["source_model"], settings["parts"])
        with timer("load"):
            loaded = models.load_model(source, job.model)
        if record is None:  # the unpruned model itself: its cached source evaluation, copied into the run
            for name in baseline.not_on_source(settings["parts"]):
                log.info("%s skipped: not measured on an unpruned model (similarity to its own outputs is 1 by "
                         "definition)", name)
            metrics, rows = source_evaluation(cfg, loaded)
            suite.write_target_files(run_dir, rows)
        else:
            checkpoint = name_or_path if loaded.source.kind == "dir" else None
            metrics = evaluation(cfg, loaded.model, loaded.tokenizer, run_dir, tracker, reference, checkpoint,
                                 source_rows)
            metrics.update({f"original/{k}": v for k, v in original.items()})
            metrics.update({"prune/ratio": record.get("ratio"), "prune/real_ratio": record.get("real_ratio")})
        if chosen:
            metrics.update({"select/layer": chosen["layer"], "select/percent": chosen["percent"],
                            f"select/adaptation/{chosen['metric']}": chosen[chosen["metric"]]})
        return metrics

    # 3. Cleanup: run_job frees the model and writes the records.
    return run_job(cfg, "evaluate", run_dir, sweep_dir, body, timer, record)

