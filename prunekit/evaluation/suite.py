"""Evaluation suite: one call runs the enabled evaluation parts (`parts.py`: task, traps, nll, resources,
similarity, lm_eval) on an in-memory model and returns flat metrics with the target generations; `rescore` scores
an existing generations file (vLLM, an API, ...) without a model.

The settings and their shared checks are in `settings.py`, each part's own in its class; the journaled generation
is in `generation.py`; the unpruned model's cached results (its generations, metrics and distractor outputs) are in
`baseline.py`. This module generates on the eval target once for the parts that need it and runs the parts.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from prunekit import data
from prunekit.errors import DataError
from prunekit.evaluation import benchmarks, generation, parts, resources, traps
from prunekit.evaluation.parts import distractor_prompts, nll_pairs, own_answer_pairs, speed
from prunekit.evaluation.settings import (
    DEFAULTS,
    EvalSettings,
    generation_options,
    max_new_tokens,
    resolve_settings,
    task_eval,
)
from prunekit.runs.layout import GENERATIONS_FILE, JOURNAL_FILE, SAMPLES_FILE

log = logging.getLogger(__name__)

PARTS = tuple(parts.names())  # the built-in parts, in eval.parts' documented order


# ---------------------------------------------------------------------------------------------- checks
def check_settings(settings: Mapping | EvalSettings | None, task: Mapping) -> dict:
    """The settings (checked once, when an EvalSettings is built from a mapping) against the task, before any
    work; returns them resolved (defaults filled in) as the plain dict the parts read."""
    s = EvalSettings.of(settings)
    s.check_task(task)
    return s.as_dict()


def check_data(settings: dict, task: Mapping, generations=None) -> None:
    """Load the evaluation prompt sets the enabled parts need (cheap, no model): a missing or empty set stops the
    run before any weights load, not after capture and pruning. ``generations``: the file evaluate.py re-scores;
    re-scoring reads only that file and the task's evaluation target (it generates nothing, so the distractor
    sets are not needed: a hub id for them must not stop an offline re-score)."""
    if generations is not None:
        if not Path(str(generations)).expanduser().is_file():
            raise DataError(f"generations={str(generations)!r}: no such file (a JSONL file with id and output per line)")
        read_outputs(generations, task_eval(task)["metric"])
        target_samples(task, settings)
        return
    needed = {d for part in parts.chosen(settings["parts"]) for d in part.data}
    if "target" in needed:
        target_samples(task, settings)
    if "distractors" in needed:
        distractor_prompts(task, settings)


# ---------------------------------------------------------------------------------------------- task data
def target_samples(task: Mapping, settings: dict) -> list[dict]:
    """Eval samples {id, prompt, gold, record}, made by the task's benchmark from each eval record."""
    ev = task_eval(task)
    bench = benchmarks.get(ev["metric"])
    spec = dict(ev["target"])
    if settings.get("n") is not None:
        spec["n"] = settings["n"]
    gold_field = spec.get("gold_field")
    if not gold_field:
        raise DataError("task.eval.target.gold_field: missing; name the record field holding the gold answer "
                         "(GSM8K: answer; HumanEval: test; MBPP: test_list)")
    records = data.load_records(spec, "task.eval.target", "eval.n" if settings.get("n") is not None else None)
    offset = int(spec.get("offset") or 0)
    samples = []
    for i, rec in enumerate(records):
        gold = data.get_path(rec, gold_field)
        if gold is None:
            raise DataError(f"task.eval.target.gold_field={gold_field!r}: record {i} has no such field; "
                             f"fields: {', '.join(rec)}")
        samples.append(bench.sample(offset + i, rec, data.render(rec, spec, "task.eval.target"), gold))
    return samples


# ---------------------------------------------------------------------------------------------- verdicts
def verdict(metric: str, output: str, sample: dict, *, token_ids=None, tokenizer=None, hit_limit: bool) -> dict:
    """Per-sample answer and trap labels (code correctness comes later, from the sandbox)."""
    bench = benchmarks.get(metric)
    out = bench.verdict(output, sample)
    v = traps.classify(output, token_ids, hit_limit=hit_limit, has_answer=lambda text: bench.has_answer(text, sample),
                       tokenizer=tokenizer)
    out.update({"trap": v.trap, "trap_type": v.kind, "trap_reason": v.reason})
    return out


def task_metrics(metric: str, rows: list[dict], names) -> dict:
    """Flat `<metric>/...` numbers from per-sample rows: each enabled part that scores them (task: accuracy; traps:
    trap counts), then the generation counters."""
    out: dict = {f"{metric}/n": len(rows)}
    for part in parts.chosen(names):
        if part.scores_generations:
            out.update(part.row_metrics(metric, rows))
    tokens = [r["n_tokens"] for r in rows if r.get("n_tokens") is not None]
    if tokens:
        out[f"{metric}/new_tokens"] = sum(tokens)
        out[f"{metric}/mean_new_tokens"] = fmean(tokens)
    reasons = Counter(r.get("stop_reason") for r in rows if r.get("stop_reason"))
    if reasons:
        out.update({f"{metric}/stop_{reason}": reasons[reason] for reason in generation.STOP_REASONS})
    return out


def _sample_record(row: dict) -> dict:
    """samples.jsonl line: the verdict fields without prompt and output."""
    return {k: v for k, v in row.items() if k not in ("prompt", "output")}


def write_target_files(run_dir: Path, rows: list[dict]) -> None:
    """generations.jsonl (every field) and samples.jsonl (the verdicts, without prompt and output) of a run."""
    generation.write_generations(run_dir / GENERATIONS_FILE, rows)
    generation.write_generations(run_dir / SAMPLES_FILE, (_sample_record(r) for r in rows))


# ---------------------------------------------------------------------------------------------- generation
def _generate(model, tokenizer, prompts: list[str], settings: dict, budget: int, *, stop_on_answer,
              desc: str, journal: Path | None = None) -> list[generation.Generation]:
    """Greedy generations with the settings' batching, chat template and loop detector (generate_journaled)."""
    return generation.generate_journaled(model, tokenizer, prompts, budget, stop_on_answer=stop_on_answer, desc=desc,
                                         journal=journal, **generation_options(settings, tokenizer))


def _answer_test(metric: str):
    """text -> whether it already holds a complete answer, for benchmarks whose answers need no sample (GSM8K)."""
    bench = benchmarks.get(metric)
    return lambda text: bench.has_answer(text, {})


def _run_target(model, tokenizer, samples, ev, settings, run_dir: Path, chosen) -> tuple[dict, list[dict]]:
    """Generate on the eval target, label every sample, write generations.jsonl + samples.jsonl; return the
    metrics and the rows."""
    metric, budget = ev["metric"], max_new_tokens(settings, ev)
    journal = run_dir / JOURNAL_FILE
    gens = _generate(model, tokenizer, [s["prompt"] for s in samples], settings, budget,
                     stop_on_answer=settings["stop_on_answer"] and _answer_test(metric), desc=f"eval {metric}",
                     journal=journal)
    rows = []
    for s, g in zip(samples, gens):
        row = g.record(id=s["id"])
        row.update(verdict(metric, g.output, s, token_ids=g.token_ids, tokenizer=tokenizer,
                           hit_limit=g.stop_reason == "length"))
        rows.append(row)
    if any(p.needs_correct for p in chosen):
        benchmarks.get(metric).score(samples, rows, settings)  # the sandbox, for code; nll scores correct answers
    write_target_files(run_dir, rows)
    journal.unlink(missing_ok=True)
    metrics = task_metrics(metric, rows, settings["parts"])
    metrics[f"{metric}/max_new_tokens"] = budget
    return metrics, rows


# ---------------------------------------------------------------------------------------------- evaluate
@dataclass
class Evaluation:
    """What `evaluate` returns: flat metrics, and the target generations with verdicts (None when no enabled part
    needed them), as written to generations.jsonl."""

    metrics: dict = field(default_factory=dict)
    rows: list[dict] | None = None


def context(model, tokenizer, task: Mapping, settings: dict, **kw) -> parts.Context:
    """The parts' context for `model` on the task's eval target (resolved, checked `settings`)."""
    return parts.Context(model, tokenizer, task, task_eval(task), settings, target_samples(task, settings), **kw)


def evaluate(model, tokenizer, task: Mapping, settings: Mapping | None, *, run_dir, reference_outputs=None,
             checkpoint_dir=None, source_rows: list[dict] | None = None) -> Evaluation:
    """Run the enabled parts on `model`; writes generations.jsonl, samples.jsonl and distractor_generations.jsonl
    into `run_dir`.

    `source_rows` are the unpruned source model's target generations with verdicts (its generations.jsonl): the
    answers the `nll` part scores. None means `model` is the source itself: its own rows are used (and generated
    for `nll` even when `task` and `traps` are off)."""
    s = check_settings(settings, task)
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resources.reset_peak_memory(model.device)
    was_training = model.training
    model.eval()
    metrics: dict = {}
    t_all = time.perf_counter()
    chosen = parts.chosen(s["parts"])
    try:
        ctx = context(model, tokenizer, task, s, run_dir=run_dir, reference_outputs=reference_outputs,
                      checkpoint_dir=checkpoint_dir, source_rows=source_rows)
        log.info("evaluating %s on %d samples, parts %s", ctx.metric, len(ctx.samples), s["parts"])
        scoring = any(p.scores_generations for p in chosen)
        if scoring or (source_rows is None and any(p.needs_source_rows for p in chosen)):
            t0 = time.perf_counter()
            target_metrics, ctx.rows = _run_target(model, tokenizer, ctx.samples, ctx.ev, s, run_dir, chosen)
            if scoring:
                metrics.update(target_metrics)
            metrics["time/eval_generate_s"] = time.perf_counter() - t0
        if ctx.source_rows is None:  # the model is the source: its own answers
            ctx.source_rows = ctx.rows
        for part in chosen:
            if part.scores_generations or not part.active(ctx):
                continue
            t0 = time.perf_counter()
            metrics.update(part.run(ctx))
            metrics[f"time/eval_{part.name}_s"] = time.perf_counter() - t0
    finally:
        model.train(was_training)
    metrics["time/eval_s"] = time.perf_counter() - t_all
    log.info("evaluation done in %.1f s: %s", metrics["time/eval_s"],
             {k: v for k, v in metrics.items() if not k.startswith("time/")})
    return Evaluation(metrics, ctx.rows)


# ---------------------------------------------------------------------------------------------- re-scoring
def read_outputs(path, metric: str) -> list[dict]:
    """Lines of a generations file: each needs `id` and a string `output`; GSM8K ids become ints."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise DataError(f"generations={str(path)!r}: no such file (a JSONL file with id and output per line)")
    rows, seen = [], set()
    try:
        content = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise DataError(f"generations: {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise DataError(f"generations: line {lineno} of {p} is not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("output"), str):
            raise DataError(f"generations: line {lineno} of {p} needs fields id and output (a string)")
        try:
            rid = benchmarks.get(metric).parse_id(rec["id"])
        except DataError as e:
            raise DataError(f"generations: line {lineno}: {e}") from None
        if rid in seen:
            raise DataError(f"generations: line {lineno}: id {rid!r} appears twice")
        seen.add(rid)
        rows.append({**rec, "id": rid})
    if not rows:
        raise DataError(f"generations: {p} holds no generations")
    return rows


def rescore(task: Mapping, settings: Mapping | None, generations_path, run_dir) -> dict:
    """Score an existing JSONL of {id, output} lines without a model; writes samples.jsonl (and generations.jsonl
    with verdicts, unless that is the input file). Trap labels come from text: line loops, and the length limit
    when a line has stop_reason ("length") or n_tokens (>= the max_new_tokens in effect)."""
    s = check_settings(settings, task)
    ev = task_eval(task)
    metric = ev["metric"]
    rows_in = read_outputs(generations_path, metric)
    samples = {x["id"]: x for x in target_samples(task, s)}
    unknown = [r["id"] for r in rows_in if r["id"] not in samples]
    if unknown:
        raise DataError(f"generations: {len(unknown)} id(s) not in task.eval.target, e.g. {unknown[:3]}; "
                         f"valid ids look like {list(samples)[:5]} ({len(samples)} in the eval set)")
    budget = max_new_tokens(s, ev)
    rows = []
    for r in rows_in:
        if r.get("stop_reason") is not None:
            hit_limit = r["stop_reason"] == "length"
        else:
            hit_limit = r.get("n_tokens") is not None and int(r["n_tokens"]) >= budget
        row = {k: r[k] for k in ("id", "output", "n_tokens", "stop_reason") if k in r}
        row.update(verdict(metric, r["output"], samples[r["id"]], hit_limit=hit_limit))
        rows.append(row)
    if len(rows) < len(samples):
        log.warning("generations: %d of the %d eval ids have a generation; metrics cover those %d only",
                    len(rows), len(samples), len(rows))
    picked = [samples[r["id"]] for r in rows]
    if any(p.scores_generations and p.needs_correct for p in parts.chosen(s["parts"])):
        benchmarks.get(metric).score(picked, rows, s)
    run_dir = Path(run_dir)
    out_path = run_dir / GENERATIONS_FILE
    if out_path.resolve() != Path(str(generations_path)).expanduser().resolve():
        generation.write_generations(out_path, rows)
    generation.write_generations(run_dir / SAMPLES_FILE, (_sample_record(r) for r in rows))
    metrics = task_metrics(metric, rows, s["parts"])
    log.info("re-scored %d generations from %s: %s", len(rows), generations_path, metrics)
    return metrics


# The settings and parts helpers callers reach through the suite.
__all__ = [
    "DEFAULTS", "PARTS", "Evaluation", "EvalSettings", "check_data", "check_settings", "context", "distractor_prompts",
    "evaluate", "max_new_tokens", "nll_pairs", "own_answer_pairs", "read_outputs", "rescore", "resolve_settings",
    "speed", "target_samples", "task_metrics", "verdict", "write_target_files",
]
