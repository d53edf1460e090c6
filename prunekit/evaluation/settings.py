"""Evaluation settings: `eval.*` (config.EvalConfig, which conf/eval/ extends) overlaid on its defaults, the task's
`eval:` section, and the checks of the settings every part shares (the generation settings). Each evaluation part
checks its own settings (`parts.EvalPart.check_settings`); `suite.check_settings` runs both before any model loads.

`settings` is `conf/eval/default.yaml` as a plain dict (missing keys take the defaults of `DEFAULTS`); `task` is
the task preset as a plain dict (its `eval:` section holds `metric`, `target` with `gold_field`, `distractors`,
optional `max_new_tokens`).
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

from prunekit import config
from prunekit.errors import PrunekitError
from prunekit.evaluation import benchmarks

# Distractor set name -> comparison kind, for sets whose spec does not say (`kind: qna | dialogue`): QnA outputs
# are compared by BERTScore F1, dialogue outputs by SBERT cosine.
DISTRACTOR_KINDS = {"squad": "qna", "qna": "qna", "conversations": "dialogue", "dialogue": "dialogue"}
KINDS = ("qna", "dialogue")

# Every eval.* field and default (config.EvalConfig, which conf/eval/ extends), so plain callers can pass partial
# settings.
DEFAULTS: dict = config.defaults(config.EvalConfig)


class SuiteError(PrunekitError):
    """Bad evaluation settings, task or generations file; the message names the option and allowed values."""


def as_plain(value):
    """Mapping/sequence trees (an OmegaConf node too, by duck typing) -> dicts and lists."""
    if isinstance(value, Mapping) or (hasattr(value, "items") and not isinstance(value, (str, bytes))):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and hasattr(value, "__len__")
                                            and not isinstance(value, (str, bytes))):
        return [as_plain(v) for v in value]
    return value


def resolve_settings(settings: Mapping | None) -> dict:
    """DEFAULTS overlaid with `settings` (one level of nesting); unknown keys are an error naming the allowed ones."""
    given = as_plain(settings or {})
    out = copy.deepcopy(DEFAULTS)
    for key, value in given.items():
        if key not in DEFAULTS:
            raise SuiteError(f"eval.{key}: unknown setting; allowed: {', '.join(DEFAULTS)}")
        if isinstance(DEFAULTS[key], dict):
            if not isinstance(value, dict):
                raise SuiteError(f"eval.{key} must be a mapping with keys {list(DEFAULTS[key])}, got {value!r}")
            unknown = sorted(set(value) - set(DEFAULTS[key]))
            if unknown:
                raise SuiteError(f"eval.{key}.{unknown[0]}: unknown setting; allowed: {', '.join(DEFAULTS[key])}")
            out[key].update(value)
        else:
            out[key] = value
    return out


def positive_int(value, option: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or null" if allow_none else ""
        raise SuiteError(f"{option}={value!r}: must be an integer >= 1{extra}")


def check_bool(value, option: str) -> None:
    if not isinstance(value, bool):
        raise SuiteError(f"{option}={value!r}: must be true or false")


def task_eval(task: Mapping) -> dict:
    """The task's `eval:` section with `metric` and `target` checked (plain dict)."""
    t = as_plain(task)
    ev = t.get("eval") if isinstance(t, dict) else None
    if not isinstance(ev, dict) or not isinstance(ev.get("target"), dict):
        name = t.get("name", "?") if isinstance(t, dict) else "?"
        raise SuiteError(f"task.eval.target: task {name!r} has no evaluation data; give task.eval.target "
                         "(a prompt-set spec with gold_field)")
    try:
        benchmarks.get(ev.get("metric"))  # a known benchmark, or an error naming the registered ones
    except benchmarks.BenchmarkError as e:
        raise SuiteError(str(e)) from None
    return ev


def distractor_kind(name: str, spec: Mapping | None = None) -> str:
    """'qna' or 'dialogue': the set's own `kind`, else by its name (squad/qna -> BERTScore, conversations/dialogue
    -> SBERT)."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind is not None and kind not in KINDS:
        raise SuiteError(f"task.eval.distractors.{name}.kind={kind!r}: allowed: {', '.join(KINDS)}")
    kind = kind or DISTRACTOR_KINDS.get(str(name).lower())
    if kind is None:
        raise SuiteError(f"task.eval.distractors.{name}: unknown distractor set name; allowed: "
                         f"{', '.join(DISTRACTOR_KINDS)}, or any name with kind: qna|dialogue (QnA sets are compared "
                         "by BERTScore, dialogue by SBERT)")
    return kind


def check_generation(s: dict, ev: dict) -> None:
    """The settings every generating part shares (batching, budgets, chat template, loop and answer stops)."""
    positive_int(s["batch_size"], "eval.batch_size")
    positive_int(s["max_batch_tokens"], "eval.max_batch_tokens", allow_none=True)
    drop = s["drop_finished_every"]
    if isinstance(drop, bool) or not isinstance(drop, int) or drop < 0:
        raise SuiteError(f"eval.drop_finished_every={drop!r}: must be an integer >= 0 (0: off)")
    positive_int(s["max_new_tokens"], "eval.max_new_tokens", allow_none=True)
    positive_int(ev.get("max_new_tokens"), "task.eval.max_new_tokens", allow_none=True)
    positive_int(s["n"], "eval.n", allow_none=True)
    if s["chat_template"] not in (True, False, "auto"):
        raise SuiteError(f"eval.chat_template={s['chat_template']!r}: allowed: true, false, auto")
    check_bool(s["loop_detection"], "eval.loop_detection")
    check_bool(s["stop_on_answer"], "eval.stop_on_answer")
    if s["stop_on_answer"] and not benchmarks.get(ev["metric"]).stops_on_answer:
        allowed = [n for n in benchmarks.names() if benchmarks.get(n).stops_on_answer]
        raise SuiteError(f"eval.stop_on_answer=true stops at the first complete answer (\\boxed{{}}): allowed only "
                         f"with task.eval.metric={'|'.join(allowed)}, not {ev['metric']!r}")


def use_chat(settings: dict, tokenizer) -> bool:
    """The resolved chat_template flag ('auto': apply it when the tokenizer has one)."""
    if settings["chat_template"] == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return bool(settings["chat_template"])


def max_new_tokens(settings: dict, ev: dict) -> int:
    """Target generation budget: eval.max_new_tokens, else task.eval.max_new_tokens, else the paper's per metric."""
    return settings["max_new_tokens"] or ev.get("max_new_tokens") or benchmarks.get(ev["metric"]).max_new_tokens


def generation_options(settings: dict, tokenizer) -> dict:
    """The keyword arguments of `generation.generate_journaled` that come from the settings."""
    return {"chat": use_chat(settings, tokenizer), "loop_detection": settings["loop_detection"],
            "batch_size": settings["batch_size"], "max_batch_tokens": settings["max_batch_tokens"],
            "drop_finished_every": settings["drop_finished_every"]}
