"""Every file name and marker of a run directory, and the label a strategy arm is shown under.

A run directory holds ``model/`` (a stock checkpoint), ``pruning.json`` (what was pruned), ``metrics.json``,
``run-config.json`` (config hash, for resume), ``config.yaml``, the evaluation's JSONL files and one completion
marker per job. Every module that reads or writes one of these takes its name from here.
"""

from __future__ import annotations

from pathlib import Path

MODEL_DIR = "model"
PRUNING_FILE = "pruning.json"
METRICS_FILE = "metrics.json"
CONFIG_FILE = "run-config.json"      # config hash, flattened settings, job type, input stamps
CONFIG_YAML = "config.yaml"          # the composed config, resolved (the report reads it)
TRAINING_FILE = "training.json"
INDEX_FILE = "runs.jsonl"            # one line per finished run, in the sweep directory
GENERATIONS_FILE = "generations.jsonl"
SAMPLES_FILE = "samples.jsonl"
DISTRACTOR_FILE = "distractor_generations.jsonl"
JOURNAL_FILE = "generations.partial.jsonl"  # finished generation batches of a killed evaluation (same config only)
WANDB_DIR = "wandb"
MARKER_GLOB = "complete-*.json"

# What save_pretrained writes: one weights file, or shards named by an index.
WEIGHTS_FILE, WEIGHTS_INDEX = "model.safetensors", "model.safetensors.index.json"
MODEL_CONFIG = f"{MODEL_DIR}/config.json"  # stands for the whole checkpoint in FINAL_FILES

JOB_TYPES = ("prune", "train", "evaluate", "report")
# Files that must exist and parse before a job counts as finished (besides its completion marker).
FINAL_FILES = {
    "prune": (MODEL_CONFIG, PRUNING_FILE, METRICS_FILE),
    "train": (MODEL_CONFIG, METRICS_FILE),
    "evaluate": (METRICS_FILE,),
    "report": (),
}
# Results of an attempt: cleared when a job (re)starts, so a failure can never leave another attempt's numbers.
RESULT_FILES = (METRICS_FILE, GENERATIONS_FILE, SAMPLES_FILE, DISTRACTOR_FILE)


def marker_name(job_type: str) -> str:
    """The completion marker's file name, e.g. ``complete-prune.json``."""
    return f"complete-{job_type}.json"


def marker_job(path: Path) -> str:
    """The job type a completion marker names (``complete-prune.json`` -> ``prune``)."""
    return Path(path).stem.split("-", 1)[1]


def strategy_label(name: str, seed) -> str:
    """How a strategy arm is named in run names and report columns: the seed for ``random`` (each seed is its own
    arm), the strategy name otherwise."""
    return f"random-s{seed}" if name == "random" else name
