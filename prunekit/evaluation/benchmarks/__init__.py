"""The registered benchmarks: `base` holds the Benchmark class and the registry, each benchmark module registers
its classes on import (and imports only `base`), and importing this package imports the built-in ones (GSM8K;
HumanEval and MBPP).

A new benchmark is one module here (or anywhere) with a `@register`ed subclass of `Benchmark`, imported below or
by its user, plus a task file (conf/task/*.yaml).
"""

from prunekit.evaluation.benchmarks import gsm8k, humaneval  # importing registers GSM8K, HumanEval, MBPP
from prunekit.evaluation.benchmarks.base import (
    REGISTRY,
    Benchmark,
    get,
    names,
    primary_metrics,
    register,
)
from prunekit.evaluation.benchmarks.humaneval import CodeBenchmark

__all__ = ["REGISTRY", "Benchmark", "CodeBenchmark", "get", "gsm8k", "humaneval", "names",
           "primary_metrics", "register"]
