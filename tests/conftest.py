"""Shared fixtures: tiny random models of every supported architecture and the offline default's tokenizer."""

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

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"
# Converted pip models are cached across test sessions (the one-time GGUF conversion takes ~20 s).
MODEL_CACHE = Path(os.environ.get("PRUNEKIT_TEST_CACHE", Path.home() / ".cache" / "prunekit-tests")) / "models"
ARCHS = models.TINY_ARCHS


@pytest.fixture(scope="session")
def model_cache() -> Path:
    return MODEL_CACHE


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


def shared_data(*parts) -> Path:
    """Path into ../shared/data; skips the test when the shared datasets are not beside the repo."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def word_tokenizer(texts):
    """A WordLevel tokenizer built in memory over the words of ``texts`` (unknown words map to <unk>)."""
    from tokenizers import Tokenizer, pre_tokenizers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    words = sorted({w for t in texts for w, _ in pre_tokenizers.Whitespace().pre_tokenize_str(t)})
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<pad>": 3, **{w: i + 4 for i, w in enumerate(words)}}
    tk = Tokenizer(tk_models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tk, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>")
