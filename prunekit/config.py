"""Composition: the composed Hydra config of a job -> one typed `Job` of the owners' settings, every check done
before any data or model loads (`check`), and the owners' defaults registered as the Hydra schemas the YAML presets
extend (`register`). Each setting is owned by the module that uses it and checks itself once when built (as peft's
configs); this module only composes them and imports downward.

The YAML files stay the menu of defaults; the dataclasses say what each value must be.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.capture import CaptureSettings
from prunekit.data.spec import PromptSetSpec
from prunekit.errors import ConfigError
from prunekit.evaluation.settings import EvalSettings
from prunekit.models.load import ModelSettings
from prunekit.schema import Checked, check_seed, defaults, from_mapping
from prunekit.strategies import StrategyOptions
from prunekit.surgery import PruneSettings
from prunekit.training import LoraSettings

JOBS = ("prune", "evaluate", "train")


@dataclass
class Job(Checked):
    """One job's checked settings. The top-level keys are checked here (they have no other owner: seed, evaluate,
    resume and ratio are read by the job's lifecycle and more than one stage); every group by its owner. A group
    the job does not read is None (`prune`, `capture`, `strategy` for prune; `lora` for train; `eval` when it
    evaluates)."""

    job: str = "prune"
    seed: int = 42
    evaluate: bool = True
    resume: bool = True
    ratio: float | None = field(default=None, metadata={"allowed": "a number in (0, 1)"})  # prune only
    # the range of ratio is checked against the model's width by surgery.check_ratio
    model: ModelSettings | None = None
    prune: PruneSettings | None = None
    capture: CaptureSettings | None = None
    strategy: StrategyOptions | None = None
    lora: LoraSettings | None = None
    eval: EvalSettings | None = None
    prompt_sets: dict = field(default_factory=dict)  # option (task.target, task.eval.distractors.squad) -> spec

    def check(self):
        check_seed(self.seed, f"{self._prefix}seed")


def capture_n(default, *, _root_):
    """`${capture_n:<n>}` in the task presets: prune.py's `capture.n` when given, else the preset's own `n`
    (also in evaluate.py and train.py, which have no capture). OmegaConf's oc.select cannot express this: it returns
    a null value rather than its default."""
    from omegaconf import OmegaConf

    n = OmegaConf.select(_root_, "capture.n", default=None)
    return default if n is None else n


def code_only(template: str) -> str:
    """`${code_only:<prompt template>}`: the evaluation's code-only instruction (HumanEval's, without its first
    sentence) ahead of the template, e.g. `task.train.prompt_template=${code_only:${task.target.template}}`. With
    task.train.responses=source the unpruned model then answers the training tasks with code alone, as it answers
    in the evaluation, instead of prose around code that runs past lora.max_length."""
    from prunekit.evaluation.benchmarks.humaneval import CODE_ONLY_INSTRUCTION

    return f"{CODE_ONLY_INSTRUCTION}\n\n{template}"


def register() -> None:
    """Put the owners' defaults in Hydra's ConfigStore (called on `import prunekit`, before any composition), as
    `eval/schema`, `lora/schema`, `capture_schema` and `prompt_set`. They are registered as plain mappings: the
    values are checked by the owners' one-line checks (`check`), not OmegaConf's."""
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    OmegaConf.register_new_resolver("capture_n", capture_n, replace=True)
    OmegaConf.register_new_resolver("code_only", code_only, replace=True)
    store = ConfigStore.instance()
    store.store(group="eval", name="schema", node=defaults(EvalSettings))
    store.store(group="lora", name="schema", node=defaults(LoraSettings))
    store.store(name="prompt_set", node={k: v for k, v in defaults(PromptSetSpec).items()
                                         if k not in PromptSetSpec.NOT_IN_NODE})
    # cache_dir is stated by prune.yaml (${cache_dir}/activations), not by the schema
    store.store(name="capture_schema", node={k: v for k, v in defaults(CaptureSettings).items() if k != "cache_dir"})


register()  # on import: whoever composes a job's config imports this module first


def check(cfg, job: str) -> Job:
    """The typed, checked settings of the parts of `cfg` a `job` (prune | evaluate | train) reads, before anything
    loads. The order is the order of the messages a user with several mistakes sees first."""
    get = cfg.get if hasattr(cfg, "get") else (lambda k, d=None: getattr(cfg, k, d))
    out = Job(job=job, seed=get("seed", 42), evaluate=get("evaluate", True), resume=get("resume", True),
              ratio=get("ratio") if job == "prune" else None)
    out.model = from_mapping(ModelSettings, get("model"), "model.")
    if job == "prune":
        out.prune = from_mapping(PruneSettings, get("prune"), "prune.")
        out.capture = from_mapping(CaptureSettings, get("capture"), "capture.")
        out.strategy = from_mapping(StrategyOptions, get("strategy"), "strategy.")
    if job == "train":
        out.lora = LoraSettings.of(get("lora") or {}, "lora.")
    if job != "prune" or out.evaluate:
        out.eval = EvalSettings.of(get("eval"))
    task = get("task") or {}
    out.prompt_sets = {option: PromptSetSpec.of(spec, option) for option, spec in _prompt_sets(task, job)}
    for option in ("cache_dir", "model.cache_dir", "capture.cache_dir", "eval.reference_cache_dir"):
        _check_directory(_get_dotted(get, option), option)
    return out


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
