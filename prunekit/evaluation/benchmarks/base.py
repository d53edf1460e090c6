"""Benchmarks as registered objects (as lm-evaluation-harness tasks): a task preset names one by `eval.metric`, and
the suite, the report and the relative-gain code read everything benchmark-specific from it.

A benchmark turns an eval record into a sample (id, prompt, gold), scores generations, tells a complete answer
from a trap, gives the (prompt, gold solution) pair for the gold NLL, and names its primary metric. A new benchmark
is one subclass registered with `register` plus a task file (conf/task/*.yaml); see `humaneval.MBPP`. The package
`__init__` imports the built-in ones, so this module knows none of them (no import cycle).
"""

from __future__ import annotations

from collections.abc import Mapping

from prunekit.errors import ConfigError
from prunekit.registry import Registry

REGISTRY = Registry("benchmark", "task.eval.metric", ConfigError, sort=True)
register = REGISTRY.register


def get(name: str) -> Benchmark:
    """The registered benchmark `name` (the task preset's `eval.metric`)."""
    return REGISTRY.lookup(name)()


def names() -> list[str]:
    return REGISTRY.names()


def primary_metrics() -> list[str]:
    """`<name>/<primary>` of every benchmark (the report's task metric), e.g. gsm8k/em, humaneval/pass@1."""
    return [f"{n}/{REGISTRY[n].primary}" for n in names()]


class Benchmark:
    """Defaults and the shared scoring flow; subclasses say what differs."""

    name: str = ""
    primary: str = ""              # metric name under `<name>/`, e.g. em or pass@1
    domain: str = ""               # Math or Code
    in_paper: bool = False         # the paper's Tables 3-4 report this benchmark (the report prints them beside)
    max_new_tokens: int = 512      # generation budget when neither the task nor eval settings give one
    stops_on_answer: bool = False  # eval.stop_on_answer (stop at the first complete answer) is allowed
    executes_code: bool = False    # correctness comes from running the output in the sandbox

    def sample(self, index: int, record: Mapping, prompt_text: str, gold) -> dict:
        """{id, prompt, gold, record} for one eval record; `prompt_text` is the spec-rendered text."""
        raise NotImplementedError

    def parse_id(self, raw):
        """The id of a generations-file line as this benchmark's ids are (GSM8K: int)."""
        return raw

    def verdict(self, output: str, sample: dict) -> dict:
        """Answer fields of one generation (`correct` None when scoring needs the sandbox)."""
        return {"correct": None}

    def has_answer(self, text: str, sample: dict) -> bool:
        """A complete answer is in `text` (a trap after it is Type 1, not Type 2)."""
        raise NotImplementedError

    def score(self, samples: list[dict], rows: list[dict], settings: dict) -> None:
        """Fill `correct` (and `status`) in rows that `verdict` left open (the code benchmarks run the sandbox)."""

    def nll_pair(self, sample: dict) -> tuple[str, str]:
        """(prompt, gold solution) for `<name>/nll_gold`."""
        raise NotImplementedError

    def extra_metrics(self, rows: list[dict]) -> dict:
        """Benchmark-specific counters beside the primary metric."""
        return {}
