"""lm-eval bridge: any lm-evaluation-harness task (boolq, copa, sst2, xnli, mmlu, ...) run on the
in-memory model (pruned, recovered or original) through lm-eval's HF model class, metrics flattened to
``lmeval/<task>/<metric>`` (e.g. ``lmeval/copa/acc``, ``lmeval/gsm8k/exact_match@strict-match``).

Built-in lm-eval tasks download their data from the Hugging Face Hub. For offline use, write task YAML
files backed by local data and point the bridge at their directory:

    run_lm_eval(model, tok, ["my_task"], include_path="/path/to/my_tasks")   # or a list of dirs

A local task is an ordinary lm-eval YAML (see ``lm_eval_tasks/prunekit_tiny_mc.yaml``) with
``dataset_path: json`` (or ``csv``/``parquet``) and ``dataset_kwargs.data_files``. lm-eval hands
relative ``data_files`` to ``datasets.load_dataset``, which reads them against the current working
directory; this bridge resolves them against the YAML's own directory instead (for tasks, not groups),
so a task directory can be moved as a whole. Absolute paths are kept as they are.
The directory ``lm_eval_tasks/`` next to this module is always included (task ``prunekit_tiny_mc``).
"""

from __future__ import annotations

import copy
import difflib
import functools
import logging
from pathlib import Path

from prunekit.errors import ConfigError

logger = logging.getLogger(__name__)

BUILTIN_TASKS_DIR = Path(__file__).resolve().parent / "lm_eval_tasks"


def _include_paths(include_path) -> tuple[str, ...]:
    """Our bundled task directory plus the user's directories, each checked to exist."""
    given = [] if include_path is None else include_path
    if isinstance(given, (str, Path)):
        given = [given]
    paths = [BUILTIN_TASKS_DIR]
    for p in given:
        path = Path(p).expanduser()
        if not path.exists():
            raise ConfigError(
                f"include_path={str(p)!r} does not exist (expected a directory of lm-eval task YAML files)"
            )
        paths.append(path.resolve())
    return tuple(dict.fromkeys(str(p) for p in paths))


@functools.lru_cache(maxsize=8)
def _task_manager(paths: tuple[str, ...], include_defaults: bool = True):
    """lm-eval's task index, built once per path set (the built-in one scans ~15k YAML files, seconds)."""
    from lm_eval.tasks import TaskManager

    logger.info("indexing lm-eval tasks (built-in: %s; + %s)", include_defaults, ", ".join(paths))
    return TaskManager(include_path=list(paths), include_defaults=include_defaults)


def _manager_for(names, paths: tuple[str, ...]):
    """Local-only index when every name is a plain task in the local directories, else the full one."""
    from lm_eval.tasks._index import Kind

    if isinstance(names, (list, tuple)) and names and all(isinstance(n, str) for n in names):
        local = _task_manager(paths, include_defaults=False)
        if all(getattr(local.task_index.get(n), "kind", None) == Kind.TASK for n in names):
            return local
    return _task_manager(paths)


def check_tasks(tasks, task_manager) -> list[str]:
    """Validate task names (or YAML paths) before running anything; unknown names list close matches."""
    if isinstance(tasks, str) or not isinstance(tasks, (list, tuple)) or not tasks:
        raise ConfigError(f"tasks must be a non-empty list of lm-eval task names, got {tasks!r}")
    known = task_manager.all_tasks
    known_set = set(known)
    for name in tasks:
        if not isinstance(name, str) or not name:
            raise ConfigError(f"tasks must hold task names (strings), got {name!r}")
        if name in known_set or (name.endswith((".yaml", ".yml")) and Path(name).is_file()):
            continue
        close = difflib.get_close_matches(name, known, n=5, cutoff=0.6)
        hint = f"close matches: {close}" if close else "no close match"
        raise ConfigError(
            f"tasks: unknown lm-eval task {name!r} ({hint}); allowed: any of lm-eval's {len(known)} task/group/tag "
            "names, a task YAML path, or tasks from include_path=<dir of task YAML files>"
        )
    return list(tasks)


def _resolve_data_files(data_files, base: Path):
    """Make relative local data file paths absolute against the task YAML's directory."""
    if isinstance(data_files, dict):
        return {k: _resolve_data_files(v, base) for k, v in data_files.items()}
    if isinstance(data_files, (list, tuple)):
        return [_resolve_data_files(v, base) for v in data_files]
    if isinstance(data_files, str) and "://" not in data_files and not Path(data_files).expanduser().is_absolute():
        return str(base / data_files)
    return data_files


def task_spec(name: str, task_manager, local_dirs: tuple[str, ...]):
    """The name itself, or for a local YAML task with relative data_files, its config with paths resolved."""
    from lm_eval.tasks._index import Kind
    from lm_eval.tasks._yaml_loader import load_yaml

    entry = task_manager.task_index.get(name)
    if entry is None or entry.kind != Kind.TASK or entry.yaml_path is None:
        return name
    yaml_path = Path(entry.yaml_path).resolve()
    if not any(yaml_path.is_relative_to(d) for d in local_dirs):
        return name
    cfg = load_yaml(yaml_path, resolve_func=True)
    if cfg.get("output_type") == "multiple_choice" and not cfg.get("doc_to_choice"):
        raise ConfigError(f"tasks: local task {name!r} ({yaml_path}) has output_type multiple_choice but no "
                                "doc_to_choice: a multiple-choice metric needs the answer options of each document")
    data_files = (cfg.get("dataset_kwargs") or {}).get("data_files")
    if data_files is None:
        return name
    cfg["dataset_kwargs"] = {**cfg["dataset_kwargs"], "data_files": _resolve_data_files(data_files, yaml_path.parent)}
    return cfg


def flatten_results(results: dict) -> dict:
    """lm-eval's ``results`` + ``n-samples`` -> ``{"lmeval/<task>/<metric>[@<filter>]": number}``."""
    flat: dict = {}
    for task, metrics in results.get("results", {}).items():
        for key, value in metrics.items():
            if key in ("alias", "sample_len") or isinstance(value, bool) or not isinstance(value, (int, float)):
                continue  # alias text, "N/A" stderr entries and the doc count (reported as /n) are not metrics
            metric, _, filt = key.partition(",")
            suffix = metric if filt in ("", "none") else f"{metric}@{filt}"
            flat[f"lmeval/{task}/{suffix}"] = float(value)
    for task, counts in results.get("n-samples", {}).items():
        if isinstance(counts, dict) and "effective" in counts:
            flat[f"lmeval/{task}/n"] = int(counts["effective"])
    return flat


def _check_options(limit, batch_size, num_fewshot) -> None:
    """Clear errors for numeric options before any work starts."""
    if limit is not None and (
        isinstance(limit, bool) or not isinstance(limit, (int, float)) or limit <= 0
        or (isinstance(limit, float) and limit > 1)
    ):
        raise ConfigError(
            f"limit must be None, a positive int (documents per task) or a float in (0, 1], got {limit!r}"
        )
    ok_batch = (isinstance(batch_size, int) and not isinstance(batch_size, bool) and batch_size > 0) or (
        isinstance(batch_size, str) and batch_size.startswith("auto")
    )
    if not ok_batch:
        raise ConfigError(f"batch_size must be a positive int or 'auto' / 'auto:N', got {batch_size!r}")
    if num_fewshot is not None and (
        isinstance(num_fewshot, bool) or not isinstance(num_fewshot, int) or num_fewshot < 0
    ):
        raise ConfigError(f"num_fewshot must be None (task default) or an int >= 0, got {num_fewshot!r}")


def run_lm_eval(
    model,
    tokenizer,
    tasks: list[str],
    *,
    include_path=None,
    limit: int | float | None = None,
    batch_size: int | str = 8,
    num_fewshot: int | None = None,
) -> dict:
    """Evaluate the in-memory ``model`` on lm-eval ``tasks``; returns flat ``lmeval/<task>/<metric>`` numbers.

    ``include_path`` adds directories of local task YAML files; ``limit`` caps documents per task
    (int) or takes a fraction (float); ``num_fewshot=None`` keeps each task's default.
    """
    _check_options(limit, batch_size, num_fewshot)
    paths = _include_paths(include_path)
    manager = _manager_for(tasks, paths)
    names = check_tasks(tasks, manager)
    specs = [task_spec(n, manager, paths) for n in names]

    from lm_eval import simple_evaluate
    from lm_eval.models.huggingface import HFLM

    # lm-eval may set a pad token on the tokenizer it is given: give it a copy, the caller's stays untouched.
    lm = HFLM(pretrained=model, tokenizer=copy.deepcopy(tokenizer), batch_size=batch_size)
    was_training = model.training
    try:
        out = simple_evaluate(
            model=lm, tasks=specs, num_fewshot=num_fewshot, limit=limit, task_manager=manager, log_samples=False
        )
    finally:
        model.train(was_training)
    metrics = flatten_results(out or {})
    logger.info("lm-eval metrics: %s", metrics)
    return metrics
