"""Evaluation parts as registered objects (as strategies and benchmarks are): `eval.parts` names them, and the suite
runs the enabled ones in their `order` on one in-memory model.

Each part declares what it needs (the evaluated model's target generations, the unpruned source model's ones,
which prompt sets), which `eval.*` settings it owns and which of them enter the source model's generation key,
checks its own settings and data, and runs. A new part is one subclass registered with `register`:

    @register
    class Length(EvalPart):
        name, order, data = "length", 45, ("target",)

        def run(self, ctx):
            return {"length/prompt_chars": sum(len(s["prompt"]) for s in ctx.samples)}

The source-evaluation cache (`baseline`) reads the same declarations: which parts score the cached generations,
which are measured on the source too, and what stays out of its key.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from prunekit import data
from prunekit.errors import ConfigError, DataError
from prunekit.evaluation import benchmarks, generation, nll, resources, similarity, traps
from prunekit.evaluation.settings import (
    distractor_kind,
    generation_options,
    positive_int,
    task_eval,
    use_chat,
)
from prunekit.registry import Registry
from prunekit.runs.layout import DISTRACTOR_FILE

log = logging.getLogger(__name__)


REGISTRY = Registry("evaluation part", "eval.parts", ConfigError)
register = REGISTRY.register


@dataclass
class Context:
    """What a part runs on: the model, the task's evaluation data and the resolved settings."""

    model: object
    tokenizer: object
    task: dict                         # the task preset (plain)
    ev: dict                           # its checked `eval:` section
    settings: dict                     # resolved eval.* settings
    samples: list[dict]                # the eval target's samples (benchmarks.Benchmark.sample)
    run_dir: Path | None = None
    reference_outputs: dict | None = None  # the source model's distractor outputs (similarity)
    checkpoint_dir: object = None      # the saved checkpoint, for its size on disk (resources)
    rows: list[dict] | None = None     # the evaluated model's target generations with verdicts
    source_rows: list[dict] | None = None  # the unpruned source model's (None: the model is the source)

    @property
    def metric(self) -> str:
        return self.ev["metric"]


class EvalPart:
    """Defaults; a part overrides what differs."""

    name: str = ""
    order: int = 100                 # run order after the target generation (resources before the encoders' parts)
    owns: tuple[str, ...] = ()       # eval.* settings only this part reads: out of the source generation key
    data: tuple[str, ...] = ()       # prompt sets it needs ("target", "distractors"), loaded before any model
    scores_generations: bool = False  # its metrics come from the evaluated model's target generations
    needs_correct: bool = False      # those rows need `correct` (the benchmark's scoring; the sandbox for code)
    needs_source_rows: bool = False  # reads the source model's target generations (its own, on the source)
    needs_reference: bool = False    # compares against the source model's distractor outputs (baseline cache)
    on_source: bool = True           # measured on the unpruned source model too (cached beside its generations)
    fresh_metrics: bool = False      # `fresh` measures some again on the source in every run (not from the cache)

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        """Its own settings' values (they are checked whether or not the part is on, as any config value)."""

    @classmethod
    def check_task(cls, settings: dict, ev: dict) -> None:
        """Its settings against the task's `eval:` section (only when the part is on)."""

    @classmethod
    def generation_key(cls, settings: dict) -> dict:
        """Entries of the source model's generation key from its own settings (a scoring part's, e.g. a timeout
        that decides `correct`); {} for none."""
        return {}

    def active(self, ctx: Context) -> bool:
        """False: nothing to run with these settings (no time is recorded)."""
        return True

    def run(self, ctx: Context) -> dict:
        """Flat metrics of a part that does not score the target generations."""
        return {}

    def row_metrics(self, metric: str, rows: list[dict]) -> dict:
        """Flat `<metric>/...` numbers from the target rows (parts with scores_generations)."""
        return {}

    def fresh(self, ctx: Context) -> dict:
        """With fresh_metrics: metrics measured again on the source model in every run (its others are cached)."""
        return {}


def get(name: str) -> EvalPart:
    return REGISTRY.lookup(name)()


def names() -> list[str]:
    return REGISTRY.names()


def check_names(parts) -> None:
    """`eval.parts` is a list of registered part names."""
    if isinstance(parts, str) or not isinstance(parts, list):
        raise ConfigError(f"eval.parts={parts!r}: must be a list of part names from {', '.join(names())}")
    for p in parts:
        if p not in REGISTRY:
            raise ConfigError(f"eval.parts: unknown part {p!r}; allowed: {', '.join(names())}")


def chosen(parts) -> list[EvalPart]:
    """The parts named in `eval.parts`, in their run order."""
    return sorted((get(p) for p in parts), key=lambda p: p.order)


def not_generation() -> tuple[str, ...]:
    """eval.* settings that do not change the source model's target generations: the part list and every part's
    own settings."""
    return ("parts", *(s for name in names() for s in REGISTRY[name].owns))


def generating() -> list[str]:
    """The parts that score the target generations, in run order (what the source's cached generation step runs)."""
    return [p.name for p in chosen(names()) if p.scores_generations]


# ---------------------------------------------------------------------------------------------- task, traps
@register
class Task(EvalPart):
    """The benchmark's metric (GSM8K EM, pass@1) on greedy generations of the eval target."""

    name, order, owns, data = "task", 10, ("code",), ("target",)
    scores_generations = needs_correct = True

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        positive_int(settings["code"]["workers"], "eval.code.workers")
        timeout = settings["code"]["timeout_s"]
        if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
            raise ConfigError(f"eval.code.timeout_s={timeout!r}: must be a number > 0")

    @classmethod
    def generation_key(cls, settings: dict) -> dict:
        return {"code_timeout_s": settings["code"]["timeout_s"]}  # decides `correct` of a slow solution

    def row_metrics(self, metric: str, rows: list[dict]) -> dict:
        bench, n = benchmarks.get(metric), len(rows)
        trapped = [bool(r["trap"]) for r in rows]
        correct = sum(bool(r["correct"]) for r in rows)
        out = {f"{metric}/{bench.primary}": correct / n,  # a Type 1 trap's answer counts (as the paper)
               f"{metric}/correct": correct,
               f"{metric}/{bench.primary}_strict": sum(bool(r["correct"]) and not t for r, t in zip(rows, trapped)) / n}
        out.update(bench.extra_metrics(rows))
        return out


@register
class Traps(EvalPart):
    """Trap rate, Type 1 / Type 2 (a loop or the length limit after / without a complete answer)."""

    name, order, data = "traps", 20, ("target",)
    scores_generations = True

    def row_metrics(self, metric: str, rows: list[dict]) -> dict:
        summary = traps.summarize(traps.TrapVerdict(r["trap"], r["trap_type"], r["trap_reason"], None) for r in rows)
        return {f"{metric}/{k}": v for k, v in summary.items() if k != "n"}


# ---------------------------------------------------------------------------------------------- similarity
def distractor_prompts(task, settings: dict | None = None) -> dict[str, list[str]]:
    """{set name: prompts} of the task's `eval.distractors` (empty when it has none). `eval.n` caps each set too
    (a quick check with eval.n=2 generates 2 per set, not the sets' own n)."""
    ev = task_eval(task)
    cap = (settings or {}).get("n")
    out = {}
    for name, spec in (ev.get("distractors") or {}).items():
        spec = dict(spec)
        if cap is not None and (spec.get("n") is None or spec["n"] > cap):
            spec["n"] = cap
        out[str(name)] = data.load_prompts(spec, f"task.eval.distractors.{name}")
    return out


def distractor_outputs(model, tokenizer, prompts: dict[str, list[str]], settings: dict) -> dict:
    """{name: {prompts, outputs, n_tokens, stop_reasons}} of greedy generations on each distractor set."""
    out = {}
    for name, ps in prompts.items():
        gens = generation.generate_journaled(model, tokenizer, ps, settings["similarity"]["max_new_tokens"],
                                             stop_on_answer=False, desc=f"distractor {name}",
                                             **generation_options(settings, tokenizer))
        out[name] = {"prompts": ps, "outputs": [g.output for g in gens], "n_tokens": [g.n_tokens for g in gens],
                     "stop_reasons": [g.stop_reason for g in gens]}
    return out


def check_reference(reference, prompts: dict[str, list[str]]) -> None:
    """The reference must hold every distractor set, with the same prompts in the same order."""
    for name, ps in prompts.items():
        ref = reference.get(name) if isinstance(reference, Mapping) else None
        if not isinstance(ref, Mapping) or "outputs" not in ref or "prompts" not in ref:
            raise DataError(f"reference_outputs: no set {name!r} with prompts and outputs; got sets "
                             f"{sorted(reference) if isinstance(reference, Mapping) else type(reference).__name__}")
        if list(ref["prompts"]) != ps or len(ref["outputs"]) != len(ps):
            raise DataError(f"reference_outputs[{name!r}]: prompts differ from task.eval.distractors.{name} "
                             "(made for another task or n?)")


@register
class Similarity(EvalPart):
    """Distractor outputs of the evaluated model vs the unpruned source model's (paper eq. 6): BERTScore F1 for
    QnA sets, SBERT cosine for dialogue. On the source itself it is 1 by definition, so it is not measured there."""

    name, order, owns, data = "similarity", 50, ("similarity", "reference_cache_dir"), ("distractors",)
    needs_reference, on_source = True, False

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        positive_int(settings["similarity"]["max_new_tokens"], "eval.similarity.max_new_tokens")
        positive_int(settings["similarity"]["batch_size"], "eval.similarity.batch_size")

    @classmethod
    def check_task(cls, settings: dict, ev: dict) -> None:
        for name, spec in (ev.get("distractors") or {}).items():
            distractor_kind(name, spec)

    def run(self, ctx: Context) -> dict:
        prompts = distractor_prompts(ctx.task, ctx.settings)
        if not prompts:
            log.info("similarity skipped: task.eval.distractors is empty")
            return {}
        reference = ctx.reference_outputs
        if reference is None:
            log.warning("similarity skipped: no reference_outputs (the source model's distractor outputs) were given")
            return {}
        check_reference(reference, prompts)
        ours = distractor_outputs(ctx.model, ctx.tokenizer, prompts, ctx.settings)
        pairs: dict[str, tuple[list[str], list[str]]] = {}
        by_kind: dict[str, list[str]] = {}
        specs = ctx.ev.get("distractors") or {}
        for name in prompts:
            kind = distractor_kind(name, specs.get(name))
            cands, refs = pairs.setdefault(kind, ([], []))
            cands.extend(ours[name]["outputs"])
            refs.extend(reference[name]["outputs"])
            by_kind.setdefault(kind, []).append(name)
        sim = ctx.settings["similarity"]
        metrics = similarity.distractor_similarity(
            pairs.get("qna"), pairs.get("dialogue"), sbert_model=sim["sbert_model"],
            bertscore_model=sim["bertscore_model"], bertscore_rescale=sim["bertscore_rescale"],
            bertscore_num_layers=sim["bertscore_num_layers"], batch_size=sim["batch_size"])
        for kind, names_ in by_kind.items():  # per-set alias when a kind has one set (e.g. distractor/squad_bertscore)
            if len(names_) == 1:
                key = "distractor/bertscore_f1" if kind == "qna" else "distractor/sbert_cosine"
                metrics[f"distractor/{names_[0]}_{'bertscore' if kind == 'qna' else 'sbert'}"] = metrics[key]
        rows = [{"set": name, "index": i, "prompt": p, "output": o, "reference": r, "n_tokens": t, "stop_reason": sr}
                for name, v in ours.items()
                for i, (p, o, r, t, sr) in enumerate(zip(v["prompts"], v["outputs"], reference[name]["outputs"],
                                                         v["n_tokens"], v["stop_reasons"]))]
        generation.write_generations(ctx.run_dir / DISTRACTOR_FILE, rows)
        return metrics


# ---------------------------------------------------------------------------------------------- resources
def speed(model, tokenizer, samples: list[dict], settings: dict) -> dict:
    """Batch-1 tokens/s on the first `throughput.prompts` target prompts (resources.throughput)."""
    tp = settings["throughput"]
    return resources.throughput(model, tokenizer, [x["prompt"] for x in samples[: tp["prompts"]]],
                                max_new_tokens=tp["max_new_tokens"], chat_template=use_chat(settings, tokenizer))


@register
class Resources(EvalPart):
    """Parameters, checkpoint size, peak memory, batch-1 tokens/s. It runs before the parts that load encoders
    (similarity, lm-eval), whose memory would count in the peak."""

    name, order, owns, data = "resources", 40, ("throughput",), ("target",)
    fresh_metrics = True

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        positive_int(settings["throughput"]["prompts"], "eval.throughput.prompts")
        positive_int(settings["throughput"]["max_new_tokens"], "eval.throughput.max_new_tokens")

    def run(self, ctx: Context) -> dict:
        return {**speed(ctx.model, ctx.tokenizer, ctx.samples, ctx.settings),
                **resources.model_resources(ctx.model, ctx.checkpoint_dir)}

    def fresh(self, ctx: Context) -> dict:
        # Speed depends on the machine's load at the time: a cached unpruned tokens/s (measured on another day,
        # maybe beside another job) against the pruned model's fresh one would compare two loads, not two models.
        return speed(ctx.model, ctx.tokenizer, ctx.samples, ctx.settings)


# ---------------------------------------------------------------------------------------------- nll
# Fewer correct answers than this (or than half the rows, for tiny sets) are too small a sample: the proxy then
# scores every answer instead.
MIN_CORRECT_ANSWERS = 16


def nll_pairs(samples: list[dict], metric: str) -> list[tuple[str, str]]:
    """(prompt, gold solution) pairs of the benchmark (GSM8K worked solutions, HumanEval prompt + canonical code)."""
    bench = benchmarks.get(metric)
    return [bench.nll_pair(s) for s in samples]


def own_answer_pairs(samples: list[dict], source_rows: list[dict]) -> tuple[list[tuple[str, str]], bool]:
    """(prompt, answer) pairs from the unpruned source model's own greedy outputs on the eval target: the correct
    ones, in the model's own format (chat template, its code style, its way of writing the final answer); all of
    them when too few are correct (MIN_CORRECT_ANSWERS) (a model that cannot do the task: the proxy then measures
    faithfulness to the source's behaviour). Returns (pairs, correct_only)."""
    by_id = {s["id"]: s for s in samples}
    rows = [r for r in source_rows if r.get("id") in by_id and str(r.get("output", "")).strip()]
    correct = [r for r in rows if r.get("correct")]
    enough = bool(correct) and len(correct) >= min(MIN_CORRECT_ANSWERS, max(1, len(rows) // 2))
    chosen_rows = correct if enough else rows
    if not chosen_rows:
        raise DataError("nll: the source model produced no non-empty output on the eval target; nothing to score")
    return [(by_id[r["id"]]["prompt"], r["output"]) for r in chosen_rows], enough


@register
class NLL(EvalPart):
    """`<metric>/nll`: mean token NLL of the source model's own correct answers (the validated target proxy);
    `<metric>/nll_gold` (with eval.nll.gold=true): of the dataset's gold solutions (the earlier definition; they are
    not in the format the model writes: raw canonical code, GSM8K's <<48/2=24>> calculator marks)."""

    name, order, owns, data = "nll", 30, ("nll",), ("target",)
    needs_correct = needs_source_rows = True

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        if not isinstance(settings["nll"]["max_length"], int) or settings["nll"]["max_length"] < 2:
            raise ConfigError(f"eval.nll.max_length={settings['nll']['max_length']!r}: must be an integer >= 2")
        if not isinstance(settings["nll"]["gold"], bool):
            raise ConfigError(f"eval.nll.gold={settings['nll']['gold']!r}: must be true or false")

    def run(self, ctx: Context) -> dict:
        s, metric = ctx.settings, ctx.metric
        kw = dict(batch_size=s["batch_size"], max_length=s["nll"]["max_length"],
                  max_batch_tokens=s["nll"]["max_batch_tokens"], chat_template=use_chat(s, ctx.tokenizer))
        gold = ({f"{metric}/nll_gold": nll.target_nll(ctx.model, ctx.tokenizer, nll_pairs(ctx.samples, metric), **kw)}
                if s["nll"]["gold"] else {})
        try:
            pairs, correct_only = own_answer_pairs(ctx.samples, ctx.source_rows)
        except DataError as e:  # a source that writes only whitespace: no own answers, the other results stand
            log.warning("%s/nll skipped (%s)", metric, e)
            return {f"{metric}/nll_answers": 0, **gold}
        return {f"{metric}/nll": nll.target_nll(ctx.model, ctx.tokenizer, pairs, **kw),
                f"{metric}/nll_answers": len(pairs), f"{metric}/nll_correct_only": correct_only, **gold}


# ---------------------------------------------------------------------------------------------- lm-eval
@register
class LMEval(EvalPart):
    """lm-evaluation-harness tasks on the in-memory model (runs only when eval.lm_eval.tasks is set)."""

    name, order, owns = "lm_eval", 60, ("lm_eval",)

    @classmethod
    def check_settings(cls, settings: dict) -> None:
        tasks = settings["lm_eval"]["tasks"]
        if isinstance(tasks, str) or not isinstance(tasks, list):
            raise ConfigError(f"eval.lm_eval.tasks={tasks!r}: must be a list of lm-eval task names (e.g. [boolq, copa])")

    def active(self, ctx: Context) -> bool:
        return bool(ctx.settings["lm_eval"]["tasks"])

    def run(self, ctx: Context) -> dict:
        from prunekit.evaluation.lm_eval_bridge import run_lm_eval  # lm-eval is heavy: imported when used

        le = ctx.settings["lm_eval"]
        return run_lm_eval(ctx.model, ctx.tokenizer, list(le["tasks"]), include_path=le["include_path"],
                           limit=le["limit"], batch_size=ctx.settings["batch_size"], num_fewshot=le["num_fewshot"])


__all__ = ["REGISTRY", "Context", "EvalPart", "check_names", "check_reference", "chosen", "distractor_outputs",
           "distractor_prompts", "generating", "get", "names", "nll_pairs", "not_generation", "own_answer_pairs",
           "register", "speed"]
