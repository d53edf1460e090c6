"""This process: its rank and device under ``accelerate launch`` / ``torchrun``, and what its CPU can compute.
Kept apart from model loading, so recipes, capture and generation ask one place whether they are the main process."""

import atexit
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
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available())
    if state.use_distributed:
        _destroy_group_at_exit()
    return state


@functools.cache
def _destroy_group_at_exit() -> None:
    """Registered once per process: a process group still alive when the interpreter tears down lets gloo's (or
    NCCL's) threads be destroyed while joinable, which aborts an exited rank now and then ("terminate called without
    an active exception", SIGABRT after its work is done). atexit runs before that teardown, for every entry at once.
    Torch is called directly, not PartialState: a state reset by then must not start a group at exit."""
    atexit.register(_destroy_group)


def _destroy_group() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


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


@functools.lru_cache(maxsize=1)
def cpu_kind() -> str:
    """The CPU's model name and its bf16 path (amx_bf16, avx512_bf16 or none), e.g. "Intel(R) Xeon(R) Processor,
    amx_bf16": bf16 kernels of different paths round differently, so a greedy result records where it was made."""
    try:
        info = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "unknown"
    name = next((line.split(":", 1)[1].strip() for line in info.splitlines() if line.startswith("model name")), "?")
    flags = info.split()
    return f"{name}, {next((f for f in ('amx_bf16', 'avx512_bf16') if f in flags), 'no native bf16')}"
