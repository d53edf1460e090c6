"""Typed config schemas that validate themselves (as peft's configs): every recipe turns the composed Hydra config
into these dataclasses first, so a value of the wrong type or range (`ratio=abc`, `seed=abc`,
`capture.batch_size=1.5`) is one line naming the option, before any data or model loads.

The YAML files stay the menu of defaults; the schemas say what each value must be. (Hydra's own structured-config
checking is not used: its errors are multi-line and name no allowed values.)
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from prunekit.errors import PrunekitError


class ConfigError(PrunekitError):
    """A config value of the wrong type or out of range."""


_NAMES = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}


def _coerce(value: Any, kind: type, option: str, hint: str | None = None) -> Any:
    """`value` as `kind` (an int is a valid float; nothing else converts); otherwise a one-line ConfigError."""
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if kind is not bool and isinstance(value, bool) or not isinstance(value, kind):
        raise ConfigError(f"{option}={value!r}: must be {hint or _NAMES.get(kind, kind.__name__)}")
    return value


def _check_types(obj, prefix: str) -> None:
    """Check and coerce every field against its annotation (int, float, bool, str, or X | None)."""
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):
        kind, value, option = hints[f.name], getattr(obj, f.name), f"{prefix}{f.name}"
        args = typing.get_args(kind)
        if type(None) in args:
            if value is None:
                continue
            kind = next(a for a in args if a is not type(None))
        if kind in _NAMES:
            setattr(obj, f.name, _coerce(value, kind, option, f.metadata.get("allowed")))


def from_mapping(cls, mapping, prefix: str):
    """`cls(**known keys of mapping)`: the schema checks what it knows; other keys belong to other readers."""
    names = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in dict(mapping or {}).items() if k in names}, _prefix=prefix)


@dataclass
class _Checked:
    _prefix: str = field(default="", repr=False, kw_only=True)

    def __post_init__(self):
        _check_types(self, self._prefix)
        self.check()

    def check(self) -> None:
        """Ranges and choices, after the types are right."""

    def _at_least(self, name: str, minimum, allow_none: bool = False) -> None:
        value = getattr(self, name)
        if value is None and allow_none:
            return
        if value < minimum:
            kind = "an integer" if isinstance(value, int) else "a number"
            raise ConfigError(f"{self._prefix}{name}={value!r}: must be {kind} >= {minimum}")


# Seeds go to torch generators, random.Random and numpy (accelerate's set_seed); numpy takes 0..2**32-1.
SEED_MAX = 2**32 - 1


def _seed_in_range(seed, option: str) -> None:
    if seed is not None and not 0 <= seed <= SEED_MAX:
        raise ConfigError(f"{option}={seed}: must be an integer in 0..{SEED_MAX}")


@dataclass
class JobConfig(_Checked):
    """The top-level keys every job has."""

    seed: int = 42
    evaluate: bool = True
    resume: bool = True
    ratio: float | None = field(default=None, metadata={"allowed": "a number in (0, 1)"})  # prune only

    # the range of ratio is checked against the model's width by surgery.check_ratio

    def check(self):
        _seed_in_range(self.seed, f"{self._prefix}seed")


@dataclass
class PruneConfig(_Checked):
    """`prune.*`: how physical pruning rounds the kept width."""

    # the kept width per layer is the largest multiple of align <= (1 - ratio) * d_ff (surgery.kept_width)
    align: int = field(default=128, metadata={"allowed": "a positive multiple of 32"})

    def check(self):
        from prunekit.surgery import check_align  # the rule and its message live with the width arithmetic

        check_align(self.align)


@dataclass
class CaptureConfig(_Checked):
    """`capture.*`: how activations are recorded (the defaults are the paper's). Registered as `capture_schema`,
    which prune.yaml's `capture` extends."""

    # prompts per capture set: null keeps each task preset's own counts (math/code: 800 each, the paper's;
    # math_offline and the *_local presets: 200 target + 100 per distractor set); an integer sets every capture
    # set's n (the presets read it as `${capture_n:<their own n>}`)
    n: int | None = field(default=None, metadata={"allowed": "null or an integer >= 1"})
    # tokens per prompt (longer prompts are truncated)
    max_length: int = field(default=1024, metadata={"allowed": "an integer >= 1"})
    # prompts per forward pass (does not change the statistics)
    batch_size: int = field(default=8, metadata={"allowed": "an integer >= 1"})
    # false: raw prompts, as the paper; true: wrap each prompt in the model's chat template
    chat_template: bool = False
    # leave each prompt's first k tokens out of the statistics (0: all tokens, as the paper)
    skip_first: int = field(default=0, metadata={"allowed": "an integer >= 0"})

    def check(self):
        from prunekit.capture import CaptureSettings  # its own range checks, with the same messages

        self._at_least("n", 1, allow_none=True)
        CaptureSettings(max_length=self.max_length, batch_size=self.batch_size, chat_template=self.chat_template,
                        skip_first=self.skip_first)


@dataclass
class ModelConfig(_Checked):
    """`model.*`: which weights, in which dtype."""

    name_or_path: str = ""
    dtype: str = field(default="auto", metadata={"allowed": "auto, float32, bfloat16 or float16"})
    # dtype of the saved checkpoint: null = the source's stored dtype (whatever `dtype` computes in)
    save_dtype: str | None = field(default=None, metadata={"allowed": "null, float32, bfloat16 or float16"})
    revision: str | None = None
    device_map: str | None = None
    trust_remote_code: bool = False

    def check(self):
        allowed = ("float32", "bfloat16", "float16")
        if self.save_dtype is not None and self.save_dtype not in allowed:
            raise ConfigError(f"{self._prefix}save_dtype={self.save_dtype!r}: unknown dtype; allowed: null (the "
                              f"source's stored dtype), {', '.join(allowed)}")


@dataclass
class StrategyConfig(_Checked):
    """`strategy.*` options that several strategies share (each strategy object checks its own ranges)."""

    name: str = "selective"
    seed: int | None = None
    weight: float | None = None
    layer: int | None = None
    percent: float | None = None
    samples: int | None = None
    steps: int | None = None

    def check(self):
        _seed_in_range(self.seed, f"{self._prefix}seed")


# ---------------------------------------------------------------------------------------------- group schemas
# The single source of every field and default of the `eval` and `lora` groups, of `capture` and of each prompt
# set. Registered in Hydra's ConfigStore (`register`) as `eval/schema`, `lora/schema`, `capture_schema` and
# `prompt_set`, which the YAML presets extend, stating only what differs. They are registered as plain mappings:
# the values are checked by prunekit's own one-line checks (suite, training, data), not OmegaConf's.
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


@dataclass
class LMEvalSettings:  # e.g. eval.lm_eval.tasks=[boolq,copa]; offline: include_path=<dir of task YAMLs>
    tasks: list = field(default_factory=list)
    include_path: str | None = None
    limit: float | None = None     # null: all documents; an int per task or a fraction in (0, 1]
    num_fewshot: int | None = None  # null: each task's default


@dataclass
class EvalConfig(_Checked):
    """`eval.*`: the types are checked here; the ranges and the parts against the task by suite.check_settings
    (both before any model loads). Which data and metric come from the task preset's `eval:` section; these
    settings say what to run and how."""

    # any of: task (EM / pass@1 on greedy generations), traps (Type 1 / Type 2), similarity (distractor outputs vs
    # the unpruned model's, paper eq. 6), resources (params, memory, batch-1 tokens/s), nll (the target proxy),
    # lm_eval (lm-evaluation-harness tasks on the in-memory model; runs only when lm_eval.tasks is set)
    parts: list = field(default_factory=lambda: ["task", "traps", "similarity", "resources", "nll", "lm_eval"])
    batch_size: int = 8                    # prompts per generation batch (greedy; length-sorted, left padded)
    max_batch_tokens: int | None = 4096    # and at most this many padded prompt tokens per batch; null: no cap
    drop_finished_every: int = 0           # >0: every k new tokens, rows that are done leave the batch; 0: off
    chat_template: Any = True              # true: prompts in the model's chat template (paper); false; auto
    max_new_tokens: int | None = None      # null: the task's (GSM8K 1024, the paper's "unconstrained"; HumanEval 512)
    loop_detection: bool = True            # a looping sample stops early and is recorded as a trap
    stop_on_answer: bool = False           # math only: stop at the first complete \boxed{} (the paper's mitigation)
    n: int | None = None                   # null: the whole evaluation sets; an int evaluates the first n target
                                           # samples and at most n prompts of each distractor set
    similarity: SimilaritySettings = field(default_factory=SimilaritySettings)
    throughput: ThroughputSettings = field(default_factory=ThroughputSettings)
    code: CodeSettings = field(default_factory=CodeSettings)
    nll: NLLSettings = field(default_factory=NLLSettings)
    lm_eval: LMEvalSettings = field(default_factory=LMEvalSettings)
    reference_cache_dir: str | None = None  # source-model distractor outputs (the preset: ${cache_dir}/references)


@dataclass
class LoraConfig(_Checked):
    """`lora.*`: types here, ranges by training.check_values (both before any weights load); the target module
    names are checked against the model once it is loaded. r, alpha, lr and effective_batch_size have no
    default: each preset (paper Table 7) sets them."""

    r: int | None = None                   # LoRA rank
    alpha: float | None = None             # the update is scaled by alpha / r
    lr: float | None = None                # peak learning rate (AdamW)
    effective_batch_size: int | None = None  # = per_device_batch_size x processes x gradient-accumulation steps
    dropout: float = 0.1                   # dropout on the LoRA input
    target_modules: list = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                          "up_proj", "down_proj"])  # Linear module names to adapt
    epochs: int = 2
    per_device_batch_size: int = 1         # must divide effective_batch_size / processes
    scheduler: str = "cosine"              # cosine | linear (warm-up, then decay to 0)
    warmup_ratio: float = 0.03             # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0             # gradient clipping; 0 = no clipping
    max_length: int = 1024                 # tokens per example (prompt + answer + EOS)
    save_every_steps: int = 0              # checkpoint (checkpoints/step-N) every N optimizer steps; 0 = none
    mixed_precision: str = "auto"          # auto (bf16 on CUDA, no on CPU) | no | bf16 | fp16
    seed: int = 42

    def check(self) -> None:
        from prunekit import training  # its range checks and messages

        training.check_values({k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")})


@dataclass
class PromptSetSpec(_Checked):
    """One prompt set of a task preset (prunekit/data/__init__.py normalises and checks it; the `prompt_set` schema every
    set in conf/task/ extends, so each states only what differs). Consumers' keys (gold_field, prompt_template,
    response_field) and pip:gsm_symbolic's `seed` are stated where they are used."""

    path: str | None = None            # hub id | local .jsonl/.json/.csv (optionally .gz) or dataset dir | pip:<source>
    name: str | None = None            # hub config name
    split: str | None = "train"        # hub split (ignored for local files and pip sources)
    field: str | None = None           # exactly one of field (a dotted path, e.g. messages.0.content) ...
    template: str | None = None        # ... or a str.format template over the record ("{context}\n{question}")
    n: int | None = None               # how many records; null = all
    offset: int = 0                    # skip the first matching records (the paper takes the first rows)
    shuffle_seed: int | None = None    # null keeps file order; an int shuffles before the offset
    filter_contains: str | None = None  # a substring (case-insensitive) the rendered text must contain
    where: dict | None = None          # {dotted field: value} equalities a record must satisfy, e.g. {lang: python}
    exclude: Any = None                # (evaluation sets) specs whose texts must not appear, e.g. the capture set

    def check(self) -> None:
        from prunekit import data  # the spec rules (exactly one of field/template, a known path kind, ...)

        data.normalise({k: v for k, v in dataclasses.asdict(self).items() if not k.startswith("_")},
                       self._prefix.rstrip("."))


def defaults(schema) -> dict:
    """A schema's fields and defaults as plain containers (what suite and training overlay settings on), read from
    the field definitions: no instance is built, so no check runs (and nothing heavy is imported) at registration."""
    out = {}
    for f in dataclasses.fields(schema):
        if f.name.startswith("_"):
            continue
        value = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        out[f.name] = dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value
    return out


def capture_n(default, *, _root_):
    """`${capture_n:<n>}` in the task presets: prune.py's `capture.n` when given, else the preset's own `n`
    (also in evaluate.py and train.py, which have no capture). OmegaConf's oc.select cannot express this: it returns
    a null value rather than its default."""
    from omegaconf import OmegaConf

    n = OmegaConf.select(_root_, "capture.n", default=None)
    return default if n is None else n


def register() -> None:
    """Put the group schemas in Hydra's ConfigStore (called on `import prunekit`, before any composition)."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("capture_n", capture_n, replace=True)
    store = ConfigStore.instance()
    store.store(group="eval", name="schema", node=defaults(EvalConfig))
    store.store(group="lora", name="schema", node=defaults(LoraConfig))
    # `exclude` stays out of the node: only evaluation sets use it (and state it), and a null `exclude` in every
    # spec would change the cached source evaluations' keys, which hash the task's eval specs as composed.
    store.store(name="prompt_set", node={k: v for k, v in defaults(PromptSetSpec).items() if k != "exclude"})
    store.store(name="capture_schema", node=defaults(CaptureConfig))


def check(cfg, job: str) -> None:
    """Validate the parts of `cfg` a `job` (prune | evaluate | train) reads, before anything loads."""
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    JobConfig(seed=get("seed", 42), evaluate=get("evaluate", True), resume=get("resume", True),
              ratio=get("ratio") if job == "prune" else None)
    from_mapping(ModelConfig, get("model"), "model.")
    if job == "prune":
        from_mapping(PruneConfig, get("prune"), "prune.")
        from_mapping(CaptureConfig, get("capture"), "capture.")
        from_mapping(StrategyConfig, get("strategy"), "strategy.")
    if job == "train":
        from_mapping(LoraConfig, get("lora"), "lora.")
    if job != "prune" or get("evaluate", True):
        from_mapping(EvalConfig, get("eval"), "eval.")
    task = get("task") or {}
    for option, spec in _prompt_sets(task, job):
        from_mapping(PromptSetSpec, spec, f"{option}.")
    for option in ("cache_dir", "model.cache_dir", "capture.cache_dir", "eval.reference_cache_dir"):
        _check_directory(_get_dotted(get, option), option)


def _get_dotted(get, option: str):
    head, _, rest = option.partition(".")
    node = get(head)
    for part in filter(None, rest.split(".")):
        node = node.get(part) if hasattr(node, "get") else None
    return node


def _check_directory(value, option: str) -> None:
    """A cache directory must be a directory or creatable as one: a path through a file (PRUNEKIT_CACHE set to a
    file) would fail deep inside a write with a traceback."""
    if value is None:
        return
    import os
    from pathlib import Path

    path = Path(os.path.expanduser(str(value)))
    while not path.exists() and path != path.parent:
        path = path.parent
    if not path.is_dir():
        from_env = option == "cache_dir" and os.environ.get("PRUNEKIT_CACHE") == str(value)  # not a CLI value
        env = " (from $PRUNEKIT_CACHE)" if from_env else ""
        raise ConfigError(f"{option}={value}{env}: {path} is a file, not a directory; point it at a directory")


def _prompt_sets(task, job: str) -> list[tuple[str, Any]]:
    """(option, spec) of every prompt set the job reads: capture sets (prune), training set (train), eval sets."""
    def sets(node, prefix):
        return [(f"{prefix}.{name}", spec) for name, spec in (node or {}).items()] if node else []

    out = []
    if job == "prune":
        out += [("task.target", task.get("target"))] + sets(task.get("distractors"), "task.distractors")
    if job == "train" and task.get("train") is not None:
        out.append(("task.train", task["train"]))
    evals = task.get("eval") or {}
    if evals.get("target") is not None:
        out.append(("task.eval.target", evals["target"]))
    out += sets(evals.get("distractors"), "task.eval.distractors")
    return [(o, s) for o, s in out if s is not None]
