"""This process: its rank and device under ``accelerate launch`` / ``torchrun``, and what its CPU can compute.
Kept apart from model loading, so recipes, capture and generation ask one place whether they are the main process."""

import functools
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils import parse_flag_from_env


def process_state() -> PartialState:
    """This process's Accelerate state: its rank and device under ``accelerate launch``/``torchrun``.

    ``cpu=True`` when there is no CUDA (or ACCELERATE_USE_CPU is set), so CPU processes launched together form a
    gloo group instead of each believing it is alone.
    """
    return PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())


def device() -> torch.device:
    """The device of this process, as Accelerate sees it (its CUDA device under ``accelerate launch``, else CPU)."""
    return process_state().device


@functools.lru_cache(maxsize=1)
def cpu_has_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), read from /proc/cpuinfo (Linux)."""
    try:
        flags = Path("/proc/cpuinfo").read_text().split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags
