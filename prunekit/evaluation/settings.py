"""Evaluation settings: `EvalSettings` (`eval.*`, which conf/eval/ extends) checks itself once when built, the
shared generation settings and each part's own (`parts.EvalPart.check_settings`); `EvalSettings.check_task` checks
them against the task's `eval:` section. Both run before any model loads.

The suite and the parts read the settings as a plain dict (`EvalSettings.as_dict()`, the form the source-model
caches hash); `task` is the task preset as a plain dict (its `eval:` section holds `metric`, `target` with
`gold_field`, `distractors`, optional `max_new_tokens`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from prunekit import text
from prunekit.errors import ConfigError
from prunekit.evaluation import benchmarks
from prunekit.evaluation.kv_cache import KINDS as KV_CACHES
from prunekit.schema import Checked, as_dict, defaults

# Distractor set name -> comparison kind, for sets whose spec does not say (`kind: qna | dialogue`): QnA outputs
# are compared by BERTScore F1, dialogue outputs by SBERT cosine.
DISTRACTOR_KINDS = {"squad": "qna", "qna": "qna", "conversations": "dialogue", "dialogue": "dialogue"}
KINDS = ("qna", "dialogue")


# The nested groups are containers of fields and defaults; the part that owns a group checks its values
# (parts.EvalPart.check_settings), so a new part brings its checks with it.
@dataclass
class SimilaritySettings:
    sbert_model: str = "pip:all-minilm-l6-v2"      # dialogue, SBERT cosine; paper: sentence-transformers/all-mpnet-base-v2
    bertscore_model: str = "pip:all-minilm-l6-v2"  # QnA, BERTScore F1; paper: roberta-large (bert-score's English default)
    bertscore_rescale: bool | None = None           # null: rescale when bert-score ships a baseline for the model (paper)
    bertscore_num_layers: int | None = None         # null: bert-score's tuned layer (5 for the pip MiniLM)
    max_new_tokens: int = 128                       # generation budget per distractor prompt (evaluated and source model)
    batch_size: int = 32                            # encoder batch size


@dataclass
class ThroughputSettings:  # tokens/s at batch 1 on the first `prompts` eval prompts (fixed across a sweep)
    prompts: int = 4
    max_new_tokens: int = 32


@dataclass
class CodeSettings:  # HumanEval / MBPP execution in the sandbox
    workers: int = 2               # parallel sandboxes
    timeout_s: float = 3.0         # per problem (paper Table 8)


@dataclass
class NLLSettings:
    max_length: int = 1024         # tokens per prompt + answer
    # Padded tokens per forward batch (null: eval.batch_size rows, padded to the longest). The forward costs its
    # padded tokens: the default's 32 answers padded to batches of 20 are 15.3k tokens for 10.8k real ones, 49-54 s
    # against 36 s with this cap on 2 bf16 cores (benchmarks/nll_batching.py).
    max_batch_tokens: int | None = 1024
    # Also `<metric>/nll_gold`, the NLL of the dataset's gold solutions (the earlier definition, kept for
    # benchmarks/proxy_agreement.py): off by default, since it is a second forward pass over the whole target set
    # (107 s a model for 40 HumanEval problems on 2 bf16 cores, a sixth of the default run) that no table prints.
    gold: bool = False


@dataclass
class LMEvalSettings:  # e.g. eval.lm_eval.tasks=[boolq,copa]; offline: include_path=<dir of task YAMLs>
    tasks: list = field(default_factory=list)
    include_path: str | None = None
    limit: float | None = None     # null: all documents; an int per task or a fraction in (0, 1]
    num_fewshot: int | None = None  # null: each task's default


def _allowed(text: str) -> dict:
    return {"allowed": text}


@dataclass
class EvalSettings(Checked):
    """`eval.*`: what to run and how. Which data and metric come from the task preset's `eval:` section."""

    # any of: task (EM / pass@1 on greedy generations), traps (Type 1 / Type 2), similarity (distractor outputs vs
    # the unpruned model's, paper eq. 6), resources (params, memory, batch-1 tokens/s), nll (the target proxy),
    # lm_eval (lm-evaluation-harness tasks on the in-memory model; runs only when lm_eval.tasks is set)
    parts: list = field(default_factory=lambda: ["task", "traps", "similarity", "resources", "nll", "lm_eval"])
    # prompts per generation batch (greedy; length-sorted, left padded). 20: the default's 40 HumanEval problems in
    # two batches. A batch decodes until its longest answer ends, and a step of 20 rows costs only about 2.4x a step
    # of 1 (77 ms plus 5.5 ms a row, bf16 on 2 AVX-512 cores), so fewer, wider batches take fewer steps: the 40
    # problems took 109 s at batch 20 against 131 s at 16 and 141 s at 8 (docs/results/speed.md). In bf16 another
    # batch shape rounds differently, so the greedy tokens (and pass@1 by a problem or so) differ between batches;
    # the batch is part of every evaluation's cache key.
    batch_size: int = field(default=20, metadata=_allowed("an integer >= 1"))
    # and at most this many padded prompt tokens per batch (20 HumanEval chat prompts are up to ~10k); null: no cap
    max_batch_tokens: int | None = field(default=16384, metadata=_allowed("an integer >= 1 or null"))
    # >0: every k new tokens, rows that are done leave the batch; 0: off. Both decode options keep every greedy token
    # in the tests (fp32 tiny models) and on 32 HumanEval problems of SmolLM2 and Qwen2.5-Coder-0.5B in bf16 on
    # AVX-512 CPUs, and are faster there; on an AMX CPU 4 of 13,420 tokens of 40 problems differed
    # (docs/results/speed.md): a smaller batch is another matmul shape
    drop_finished_every: int = field(default=16, metadata=_allowed("an integer >= 0 (0: off)"))
    # dynamic: transformers' DynamicCache (a torch.cat per step); preallocated: the same values in a doubling buffer
    kv_cache: str = field(default="preallocated", metadata=_allowed("dynamic, preallocated"))
    chat_template: Any = True              # true: prompts in the model's chat template (paper); false; auto
    # null: the task's (GSM8K 1024, the paper's "unconstrained"; HumanEval 512)
    max_new_tokens: int | None = field(default=None, metadata=_allowed("an integer >= 1 or null"))
    loop_detection: bool = True            # a looping sample stops early and is recorded as a trap
    stop_on_answer: bool = False           # math only: stop at the first complete \boxed{} (the paper's mitigation)
    # null: the whole evaluation sets; an int evaluates the first n target samples and at most n prompts of each
    # distractor set
    n: int | None = field(default=None, metadata=_allowed("an integer >= 1 or null"))
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    throughput: ThroughputSettings = field(default_factory=ThroughputSettings)
    code: CodeSettings = field(default_factory=CodeSettings)
    nll: NLLSettings = field(default_factory=NLLSettings)
    lm_eval: LMEvalSettings = field(default_factory=LMEvalSettings)
    reference_cache_dir: str | None = None  # source-model distractor outputs (the preset: ${cache_dir}/references)
    _prefix: str = field(default="eval.", repr=False, kw_only=True, compare=False)

    @classmethod
    def of(cls, settings: Mapping | EvalSettings | None) -> EvalSettings:
        """The settings of a partial mapping (an OmegaConf node too), missing keys at their defaults; an unknown key
        is an error naming the allowed ones."""
        if isinstance(settings, EvalSettings):
            return settings
        given = as_plain(settings or {})
        out = {}
        for key, value in given.items():
            if key not in DEFAULTS:
                raise ConfigError(f"eval.{key}: unknown setting; allowed: {', '.join(DEFAULTS)}")
            if isinstance(DEFAULTS[key], dict):
                if not isinstance(value, dict):
                    raise ConfigError(f"eval.{key} must be a mapping with keys {list(DEFAULTS[key])}, got {value!r}")
                unknown = sorted(set(value) - set(DEFAULTS[key]))
                if unknown:
                    raise ConfigError(f"eval.{key}.{unknown[0]}: unknown setting; allowed: "
                                      f"{', '.join(DEFAULTS[key])}")
                value = _GROUPS[key](**value)
            out[key] = value
        return cls(**out)

    def as_dict(self) -> dict:
        """The settings as plain containers, every key present: what the parts read and the caches hash."""
        return as_dict(self)

    def check(self) -> None:
        from prunekit.evaluation import parts  # the registry of parts, which reads these settings

        parts.check_names(self.parts)
        positive_int(self.batch_size, "eval.batch_size")
        positive_int(self.max_batch_tokens, "eval.max_batch_tokens", allow_none=True)
        positive_int(self.nll.max_batch_tokens, "eval.nll.max_batch_tokens", allow_none=True)
        positive_int(self.max_new_tokens, "eval.max_new_tokens", allow_none=True)
        positive_int(self.n, "eval.n", allow_none=True)
        if self.drop_finished_every < 0:
            raise ConfigError(f"eval.drop_finished_every={self.drop_finished_every!r}: must be an integer >= 0 "
                              "(0: off)")
        if self.kv_cache not in KV_CACHES:
            raise ConfigError(f"eval.kv_cache={self.kv_cache!r}: allowed: {', '.join(KV_CACHES)}")
        if self.chat_template not in (True, False, "auto"):
            raise ConfigError(f"eval.chat_template={self.chat_template!r}: allowed: true, false, auto")
        plain = self.as_dict()
        for name in parts.names():  # every part's own settings, as any config value, on or off
            parts.REGISTRY[name].check_settings(plain)

    def check_task(self, task: Mapping) -> dict:
        """The settings against the task's `eval:` section (its budget, the answer stop, each enabled part's
        data); returns the checked section."""
        from prunekit.evaluation import parts

        ev = task_eval(task)
        positive_int(ev.get("max_new_tokens"), "task.eval.max_new_tokens", allow_none=True)
        if self.stop_on_answer and not benchmarks.get(ev["metric"]).stops_on_answer:
            allowed = [n for n in benchmarks.names() if benchmarks.get(n).stops_on_answer]
            raise ConfigError(f"eval.stop_on_answer=true stops at the first complete answer (\\boxed{{}}): allowed "
                              f"only with task.eval.metric={'|'.join(allowed)}, not {ev['metric']!r}")
        plain = self.as_dict()
        for part in parts.chosen(self.parts):
            part.check_task(plain, ev)
        return ev


_GROUPS = {"similarity": SimilaritySettings, "throughput": ThroughputSettings, "code": CodeSettings,
           "nll": NLLSettings, "lm_eval": LMEvalSettings}

# Every eval.* field and default, so plain callers can pass partial settings.
DEFAULTS: dict = defaults(EvalSettings)


def as_plain(value):
    """Mapping/sequence trees (an OmegaConf node too, by duck typing) -> dicts and lists."""
    if isinstance(value, Mapping) or (hasattr(value, "items") and not isinstance(value, (str, bytes))):
        return {str(k): as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and hasattr(value, "__len__")
                                            and not isinstance(value, (str, bytes))):
        return [as_plain(v) for v in value]
    return value


def resolve_settings(settings: Mapping | None) -> dict:
    """The checked settings as a plain dict, defaults filled in (EvalSettings.of)."""
    return EvalSettings.of(settings).as_dict()


def positive_int(value, option: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or null" if allow_none else ""
        raise ConfigError(f"{option}={value!r}: must be an integer >= 1{extra}")


def task_eval(task: Mapping) -> dict:
    """The task's `eval:` section with `metric` and `target` checked (plain dict)."""
    t = as_plain(task)
    ev = t.get("eval") if isinstance(t, dict) else None
    if not isinstance(ev, dict) or not isinstance(ev.get("target"), dict):
        name = t.get("name", "?") if isinstance(t, dict) else "?"
        raise ConfigError(f"task.eval.target: task {name!r} has no evaluation data; give task.eval.target "
                         "(a prompt-set spec with gold_field)")
    benchmarks.get(ev.get("metric"))  # a known benchmark, or an error naming the registered ones
    return ev


def distractor_kind(name: str, spec: Mapping | None = None) -> str:
    """'qna' or 'dialogue': the set's own `kind`, else by its name (squad/qna -> BERTScore, conversations/dialogue
    -> SBERT)."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind is not None and kind not in KINDS:
        raise ConfigError(f"task.eval.distractors.{name}.kind={kind!r}: allowed: {', '.join(KINDS)}")
    kind = kind or DISTRACTOR_KINDS.get(str(name).lower())
    if kind is None:
        raise ConfigError(f"task.eval.distractors.{name}: unknown distractor set name; allowed: "
                         f"{', '.join(DISTRACTOR_KINDS)}, or any name with kind: qna|dialogue (QnA sets are compared "
                         "by BERTScore, dialogue by SBERT)")
    return kind


def use_chat(settings: dict, tokenizer) -> bool:
    """The resolved eval.chat_template flag ('auto': apply it when the tokenizer has one)."""
    return text.resolve_chat(settings["chat_template"], tokenizer)


def max_new_tokens(settings: dict, ev: dict) -> int:
    """Target generation budget: eval.max_new_tokens, else task.eval.max_new_tokens, else the paper's per metric."""
    return settings["max_new_tokens"] or ev.get("max_new_tokens") or benchmarks.get(ev["metric"]).max_new_tokens


def generation_options(settings: dict, tokenizer) -> dict:
    """The keyword arguments of `generation.generate_journaled` that come from the settings."""
    return {"chat": use_chat(settings, tokenizer), "loop_detection": settings["loop_detection"],
            "batch_size": settings["batch_size"], "max_batch_tokens": settings["max_batch_tokens"],
            "drop_finished_every": settings["drop_finished_every"], "kv_cache": settings["kv_cache"]}
