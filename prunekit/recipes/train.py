"""The train recipe (`python train.py`): LoRA recovery of a (pruned) checkpoint -> adapter + merged stock
checkpoint, training.json -> the evaluation parts beside the unpruned source's cached results -> the relative
gain over the run it was recovered from (paper eq. 4) -> records, W&B.
"""

import json
import logging
from pathlib import Path

from prunekit import data, dist, distill, models, text, training
from prunekit.checkpoint import atomic_write_json, read_json
from prunekit.config import check as check_config
from prunekit.evaluation import baseline, benchmarks
from prunekit.evaluation.settings import generation_options
from prunekit.mlp import check_architecture
from prunekit.recipes._job import (
    Timer,
    check_evaluation,
    evaluation,
    plain,
    release_memory,
    results_of_source,
    run_inputs,
    run_job,
)
from prunekit.runs import layout, wandb
from prunekit.runs.store import checkpoint_problem, config_hash, pruning_record_of
from prunekit.schema import as_dict

log = logging.getLogger(__name__)
GAIN_METRICS = (*benchmarks.primary_metrics(), "distractor/sss")


def train(cfg, run_dir: str | Path, sweep_dir: str | Path | None = None) -> dict:
    """LoRA recovery of a (pruned) checkpoint -> adapter + merged stock checkpoint, training.json, metrics."""
    run_dir = Path(run_dir)

    # 1. Setup: the settings, the training rows and the model's config, before any weight is loaded.
    job = check_config(cfg, "train")  # every value checked once, by its owner's settings class
    wandb.check_mode(cfg.wandb.mode)
    task, lora = plain(cfg.task), plain(cfg.lora)
    source = models.resolve(cfg.model.name_or_path)
    if "train" not in task:
        raise data.DataError(f"task '{task.get('name')}' has no `train` section (training data spec)")
    train_format = training.TrainFormat.of(task["train"])  # how a record becomes an example, checked now
    records = data.load_records(task["train"], "task.train")
    if cfg.evaluate:
        check_evaluation(job.eval, task)
    check_architecture(models.load_config(source, cfg.model.cache_dir, cfg.model.revision))
    if cfg.resume_from:  # another run's or base model's checkpoint: one line now, not size mismatches after load
        training.check_resume_checkpoint(cfg.resume_from, str(cfg.model.name_or_path))
    timer = Timer()
    record = pruning_record_of(cfg.model.name_or_path)
    model_dir = Path(cfg.model.name_or_path).expanduser()  # <run>/model: the run it came from (not a hub id)
    recovered_from = str(model_dir.parent.resolve()) if record is not None and model_dir.name == "model" else None
    unpruned_model = (record or {"source_model": cfg.model.name_or_path})["source_model"]

    # 2. Run: inside the job lifecycle (skipped when complete with the same settings).
    def body(tracker) -> dict:
        # An earlier attempt of these settings that finished training but died later (in the evaluation) left
        # training.json and the merged model/: resume=true evaluates that model instead of training it again.
        stamp = json.loads(json.dumps({"config_hash": config_hash(plain(cfg))[0],  # as read back from the file
                                       "inputs": run_inputs(cfg, plain(cfg))}))
        trained = finished_training(run_dir, stamp) if cfg.resume else None
        reference, source_rows, answers = from_unpruned(
            cfg, job, unpruned_model, timer,
            parts=cfg.eval.parts if cfg.evaluate and baseline.needs_source(cfg.eval.parts) else None,
            prompts=[train_format.prompt(r, i) for i, r in enumerate(records)]  # self-data distillation
            if trained is None and train_format.responses == "source" else None,
            chat_template=train_format.chat_template)
        if trained is not None:
            model, tokenizer, summary = load_trained(run_dir, trained, job, tracker, timer)
        else:
            model, tokenizer, summary = train_and_merge(cfg, job, records, train_format, answers, run_dir, tracker,
                                                        timer)
            if dist.process_state().is_main_process:
                if record is not None:
                    atomic_write_json(run_dir / layout.PRUNING_FILE, record)
                atomic_write_json(run_dir / layout.TRAINING_FILE, {  # after the merged model/ is complete
                    "source_model": cfg.model.name_or_path, "lora": lora, "recovered_from": recovered_from,
                    "examples": summary["n_examples"], **summary, "stamp": stamp})
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

    # 3. Cleanup: run_job frees the models and writes the records.
    return run_job(cfg, "train", run_dir, sweep_dir, body, timer, record)


TRAINING_ONLY = ("source_model", "lora", "recovered_from", "examples", "stamp")  # training.json keys not in a summary


def load_trained(run_dir: Path, trained: dict, job, tracker, timer: Timer):
    """An earlier attempt's merged model and its training summary (training.json) -> (model, tokenizer, summary)."""
    log.info("training already finished in %s with the same settings (resume=true): evaluating its merged model",
             run_dir)
    with timer("load"):
        loaded = models.load_model(models.resolve(str(run_dir / layout.MODEL_DIR)), job.model)
    summary = {k: v for k, v in trained.items() if k not in TRAINING_ONLY}
    for step, loss in summary["loss_curve"]:  # this run's W&B curve too, not only the killed attempt's
        tracker.log({"train/loss": loss}, step)
    return loaded.model, loaded.tokenizer, summary


def from_unpruned(cfg, job, source_model: str, timer: Timer, *, parts, prompts, chat_template):
    """What the job needs from the unpruned source model (the model being trained, when it was never pruned), from
    one load of it, freed before training: the evaluation's reference outputs and target rows (``parts``: those
    that compare against it; None: none do) and its greedy answers to the training ``prompts`` (None: not asked,
    responses=dataset). Answers are None where an answer never ended; cached under cache_dir/answers."""
    if parts is None and prompts is None:
        return None, None, None
    reference = source_rows = answers = None
    with timer("source_load"):
        loaded = models.load_model(models.resolve(source_model), cfg.model)
    try:
        if parts is not None:
            with timer("reference"):
                reference, _, source_rows = results_of_source(cfg, loaded, parts)
        if prompts is not None:
            with timer("source_answers"):  # in the chat format the examples are built in, the evaluation's settings
                options = {**generation_options(as_dict(job.eval), loaded.tokenizer),
                           "chat": text.resolve_chat(chat_template, loaded.tokenizer)}
                # The budget: an answer longer than lora.max_length tokens could never be a whole training example.
                answers = distill.source_answers(loaded, prompts, job.lora.max_length, options,
                                                 Path(cfg.cache_dir).expanduser() / "answers")
    finally:
        del loaded
        release_memory()
    return reference, source_rows, answers


def train_and_merge(cfg, job, records, train_format, answers, run_dir: Path, tracker, timer: Timer):
    """Load the model, fine-tune LoRA adapters on the task's training examples (``answers``: the source model's,
    responses=source), merge them (the main process saves adapter/ and the merged model/) -> (merged model,
    tokenizer, training summary)."""
    with timer("load"):
        loaded = models.load_model(models.resolve(cfg.model.name_or_path), job.model)
        tokenizer = loaded.tokenizer
    examples = training.build_examples(records, tokenizer=tokenizer, max_length=job.lora.max_length,
                                       overlong=job.lora.overlong, answers=answers, **as_dict(train_format))
    resume_from = cfg.resume_from or (training.latest_checkpoint(run_dir) if cfg.resume else None)
    with timer("train"):
        summary = training.train_lora(loaded.model, tokenizer, examples, job.lora, out_dir=run_dir,
                                      resume_from=resume_from, log=tracker.log, base_model=str(cfg.model.name_or_path))
    with timer("merge"):  # every process merges (the evaluation below needs the model); one writes
        model = training.merge(summary.pop("peft_model"), tokenizer, run_dir, save=dist.process_state().is_main_process)
    return model, tokenizer, {**summary, "unfinished_source_answers": examples.unfinished} if answers else summary


def finished_training(run_dir: Path, stamp: dict) -> dict | None:
    """training.json of an earlier attempt in ``run_dir`` with the same settings and inputs (``stamp``), whose
    merged model/ loads; else None (train again)."""
    try:
        trained = read_json(run_dir / layout.TRAINING_FILE)
    except (OSError, ValueError):
        return None
    if not isinstance(trained, dict) or trained.get("stamp") != stamp:
        return None
    return trained if checkpoint_problem(run_dir / layout.MODEL_DIR) is None else None


def relative_gain(before: dict, after: dict) -> dict:
    """Paper eq. 4: (A_after - A_before) / A_before x 100, for the task metrics both runs have."""
    return {f"gain/{k}": (after[k] - before[k]) / before[k] * 100
            for k in GAIN_METRICS if k in after and isinstance(before.get(k), (int, float)) and before[k]}
