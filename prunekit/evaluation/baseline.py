"""The unpruned (source) model's results, cached on disk, so every run of a sweep and every later run of the same
setup compares against them without evaluating the source again. Both caches are ``prunekit.cache.ArtifactCache``
kinds, and both take the job's ``prunekit.models.LoadedModel``, whose identity and dtype enter their keys:

- its target generations with verdicts and the metrics of the parts that score them (`source_evaluation`),
  keyed by model + dtype + task evaluation data + generation settings (`source_key`);
- the metrics of its other parts, beside them per set of parts and those parts' own settings (speed aside:
  measured again in every run);
- its distractor outputs, the similarity reference (`reference_outputs`), keyed by model + prompts + settings.

What enters the generation key comes from the parts' declarations (`parts.EvalPart.owns`, `generation_key`), so
a part's own settings never move the keys of the unpruned models' cached generations.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path

from prunekit import data
from prunekit.cache import ArtifactCache, Damaged, digest
from prunekit.checkpoint import atomic_write_json, read_json
from prunekit.errors import ConfigError, DataError
from prunekit.evaluation import generation, parts, suite
from prunekit.evaluation.settings import use_chat
from prunekit.runs.layout import GENERATIONS_FILE

log = logging.getLogger(__name__)

# Bumped when the source model's cached target generations (SOURCE_EVAL_VERSION) or the metrics computed from them
# (SOURCE_METRICS_VERSION, e.g. the rule choosing which own answers the NLL proxy scores) change meaning.
SOURCE_EVAL_VERSION = 1
SOURCE_METRICS_VERSION = 2
# Settings added after the keys were pinned, at their off value: left out, so the keys made before them still hold.
ADDED_OFF = (("drop_finished_every", 0), ("kv_cache", "dynamic"))
# Bumped when the reference generation recipe changes, so old cached references are not reused.
REFERENCE_VERSION = 1


def needs_reference(names) -> bool:
    """Some enabled part compares against the source model's distractor outputs."""
    return any(p.needs_reference for p in parts.chosen(names))


def needs_source_rows(names) -> bool:
    """Some enabled part reads the source model's target generations."""
    return any(p.needs_source_rows for p in parts.chosen(names))


def needs_source(names) -> bool:
    """Some enabled part needs the source model's cached results (its distractor outputs or generations)."""
    return needs_reference(names) or needs_source_rows(names)


def not_on_source(names) -> list[str]:
    """The enabled parts an unpruned model's own evaluation leaves out (similarity: 1 by definition)."""
    return [p.name for p in parts.chosen(names) if not p.on_source]


# ---------------------------------------------------------------------------------------------- source evaluation
def source_key(identity: Mapping, dtype: str, task: Mapping, settings: dict) -> str:
    """Key of a source model's cached evaluation: model identity + dtype + task eval data + generation settings.
    A change of this key re-evaluates every unpruned model (1.5 h for Qwen2.5-Coder-1.5B here): bump
    SOURCE_EVAL_VERSION for it on purpose, never by accident (tests pin the default's key)."""
    task_eval = {k: v for k, v in (task.get("eval") or {}).items() if k != "distractors"}
    skip = parts.not_generation()
    key_of = {"version": SOURCE_EVAL_VERSION, "model": dict(identity), "dtype": dtype, "task": task_eval,
              "settings": {k: v for k, v in settings.items() if k not in skip and (k, v) not in ADDED_OFF}}
    for name in parts.generating():  # the scoring parts' own settings that decide the cached verdicts
        key_of.update(parts.REGISTRY[name].generation_key(settings))
    # The content of local evaluation files (target, its exclude sets): an edited file is new questions. Added only
    # when there are any, so the keys of pip/hub presets stay what they were.
    files = data.local_inputs(task_eval)
    if files:
        key_of["files"] = files
    return digest(key_of)


class SourceEvaluation(ArtifactCache):
    """The JSON metric files in one source model's folder ``<cache_dir>/<source_key>/``: ``target.json`` (the
    metrics of the parts that score the generations, written once ``generations.jsonl`` is complete) and
    ``metrics-v<N>-<parts>.json``. A damaged file is moved aside alone: the folder's generation journal stays, so
    a rebuild resumes from it."""

    kind = "source evaluation cache"
    suffix = ".json"
    again = "evaluating again"
    log = log

    def read(self, path: Path, expected=None) -> dict:
        metrics = read_json(path)
        if not isinstance(metrics, dict):
            raise Damaged("not a JSON object")
        return metrics

    def write(self, path: Path, metrics: dict, expected=None) -> None:
        atomic_write_json(path, metrics)


def _owned_suffix(names: list[str], settings: dict) -> str:
    """The settings those parts own (eval.nll.*, ...), hashed into their cached metrics' file name: a changed
    eval.nll.max_length or eval.nll.gold measures the source again instead of reusing numbers made without it."""
    owned = {k: settings[k] for name in names for k in parts.REGISTRY[name].owns if k in settings}
    return f"-{digest(owned, 10)}" if owned else ""


def _untimed(metrics: dict) -> dict:
    return {k: v for k, v in metrics.items() if not k.startswith("time/")}


def source_evaluation(loaded, task: Mapping, settings: Mapping | None, cache_dir) -> tuple[dict, list[dict]]:
    """The unpruned source model's (``loaded``: a LoadedModel) metrics and target generations (with verdicts),
    cached under ``cache_dir/<source_key>``.

    The parts that score the target generations run once per key; the metrics of the other enabled parts that
    are measured on the source are cached beside them per set of parts, except what a part measures fresh in
    every run (speed). Parts not measured on the source (similarity: the source against its own outputs is 1 by
    definition) are left out.
    """
    model, tokenizer = loaded.model, loaded.tokenizer
    s = suite.check_settings(settings, task)
    cache = SourceEvaluation(Path(cache_dir).expanduser() / source_key(loaded.identity, str(loaded.dtype), task, s))
    built = {}

    def generate() -> dict:  # generations.jsonl + task/trap metrics; a killed run resumes from its journal
        log.info("evaluating the unpruned source model once (cached in %s)", cache.root)
        result = suite.evaluate(model, tokenizer, task, {**s, "parts": parts.generating()}, run_dir=cache.root)
        built["rows"] = result.rows
        return result.metrics

    metrics, cached = cache.get("target", generate, collective=True)  # sharded generation
    rows = generation.read_generations(cache.root / GENERATIONS_FILE) if cached else built["rows"]
    metrics = _untimed(metrics)
    rest = [p for p in s["parts"] if not parts.REGISTRY[p].scores_generations and parts.REGISTRY[p].on_source]
    if rest:
        measured, cached = cache.get(
            f"metrics-v{SOURCE_METRICS_VERSION}-{'-'.join(rest)}{_owned_suffix(rest, s)}",
            lambda: suite.evaluate(model, tokenizer, task, {**s, "parts": rest}, run_dir=cache.root,
                                   source_rows=rows).metrics, collective=True)
        metrics.update(_untimed(measured))
        fresh = [p for p in parts.chosen(rest) if p.fresh_metrics] if cached else []
        if fresh:  # measured again seconds before the pruned model's, on the same machine load
            ctx = suite.context(model, tokenizer, task, s)
            for part in fresh:
                metrics.update(part.fresh(ctx))
    return metrics, rows


# ---------------------------------------------------------------------------------------------- reference outputs
def _reference_settings(settings: dict, tokenizer) -> dict:
    """The generation settings that decide distractor outputs (part of the reference cache key)."""
    return {"max_new_tokens": settings["similarity"]["max_new_tokens"], "chat_template": use_chat(settings, tokenizer),
            "batch_size": settings["batch_size"], "loop_detection": settings["loop_detection"],
            "version": REFERENCE_VERSION}


def reference_key(model_id: str, prompts: dict[str, list[str]], gen_settings: dict) -> str:
    """sha256 over (model identity, distractor prompts, generation settings), all 64 hex digits."""
    return digest({"model": model_id, "prompts": prompts, "settings": gen_settings}, None)


class ReferenceOutputs(ArtifactCache):
    """``<cache_dir>/<reference_key>.json``: the source model's outputs per distractor set, used only when its
    prompts are the ones asked for."""

    kind = "reference outputs cache"
    suffix = ".json"
    again = "generating again"
    hit_message = "reference outputs: cache hit %s"
    saved_message = "reference outputs cached in %s"
    log = log

    def read(self, path: Path, prompts) -> dict:
        cached = json.loads(path.read_text(encoding="utf-8"))
        try:
            parts.check_reference(cached, prompts)
        except DataError as e:
            raise Damaged(str(e).splitlines()[0][:120]) from e
        return cached

    def write(self, path: Path, refs: dict, prompts) -> None:
        atomic_write_json(path, refs)


def reference_generations(model, tokenizer, task: Mapping, settings: Mapping | None, cache_dir=None, *,
                          model_id: str | None = None) -> dict:
    """The source model's outputs on the task's distractor prompts: {name: {"prompts": [...], "outputs": [...]}}.

    With `cache_dir` (and `model_id`, a string identifying the weights) they are stored under a key of
    (model_id, prompts, generation settings), so a sweep generates them once.
    """
    s = suite.check_settings(settings, task)
    cache_dir = cache_dir if cache_dir is not None else s["reference_cache_dir"]
    if cache_dir is not None and not model_id:
        raise ConfigError("reference_generations: cache_dir needs model_id= (a string identifying the source "
                         "model's weights, e.g. its hub id or json of prunekit.models.identity)")
    prompts = parts.distractor_prompts(task, s)
    if not prompts:
        raise DataError("task.eval.distractors: empty; distractor similarity needs at least one set")

    def generate() -> dict:
        return {name: {"prompts": v["prompts"], "outputs": v["outputs"]}
                for name, v in parts.distractor_outputs(model, tokenizer, prompts, s).items()}

    if cache_dir is None:
        return generate()
    key = reference_key(str(model_id), prompts, _reference_settings(s, tokenizer))
    return ReferenceOutputs(cache_dir).get(key, generate, prompts, collective=True)[0]  # sharded generation


def reference_outputs(loaded, task: Mapping, settings: Mapping) -> dict | None:
    """The unpruned source model's (``loaded``: a LoadedModel) distractor outputs, cached per model + dtype +
    prompts + settings, when an enabled part compares against them; else None."""
    if not needs_reference(settings["parts"]):
        return None
    # The dtype is part of the identity: bf16 and fp32 greedy outputs differ (an fp32 reference reused for a bf16
    # run moved the default's similarity from 0.567 to 0.558).
    model_id = json.dumps({**loaded.identity, "dtype": str(loaded.dtype)}, sort_keys=True)
    return reference_generations(loaded.model, loaded.tokenizer, task, settings, model_id=model_id)
