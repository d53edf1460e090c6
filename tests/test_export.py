"""GGUF export: pruned tiny models of several architectures written with the gguf package, read back with
transformers' GGUF reader, compared tensor by tensor and logit by logit with the pruned checkpoint."""

import json
import subprocess
import sys
from pathlib import Path

import gguf
import numpy as np
import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM, LlamaConfig

from prunekit import models, strategies, surgery
from prunekit.errors import ModelError
from prunekit.export import gguf as export_gguf
from tests.helpers import BPE_VOCAB as VOCAB
from tests.helpers import REPO, sliced_run
from tests.helpers import prune_cfg as _cfg

IDS = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(0))
# f16: each weight is rounded to 11 significant bits (relative error <= 2^-11); through two tiny layers the logits
# move by less than 4e-3 x max|logit| (measured: 4.5e-4 x). Q8_0: each weight within half a quantization step of its
# block (max|block| / 254, plus the f16 rounding of the block scale); the logits within 3 % of max|logit| (measured
# ~1.1 %).
F16_LOGIT_TOL = 4e-3
Q8_LOGIT_TOL = 3e-2
# llama.cpp on the f16 export of a 30-layer model against transformers in fp32: the f16 weight rounding through 30
# layers plus llama.cpp's own kernels. Measured 1.64e-3 x max|logit| (0.059 of 36.0; SmolLM2 pruned at 5 %,
# llama-cpp-python 0.3.36 built with GGML_NATIVE on an AVX-512 Xeon, 2026-12-02); the bound is ~2.4x that.
LLAMA_CPP_LOGIT_TOL = 4e-3


def _llama_cpp_that_runs():
    """llama-cpp-python (these tests skip without it), failing first, with the reason, where its build would
    segfault on a quantized model and take pytest down with it (export_gguf.amx_backend_problem)."""
    llama_cpp = pytest.importorskip("llama_cpp")
    if problem := export_gguf.amx_backend_problem(llama_cpp):
        pytest.fail(problem)
    return llama_cpp


def _export(run: Path, type_name: str, model_cache: Path):
    return export_gguf.export(run / "model", type_name, cache_dir=model_cache.parent)


def _load_gguf(path: Path):
    config = AutoConfig.from_pretrained(path.parent, gguf_file=path.name)
    if config.model_type == "qwen3":
        # transformers' GGUF reader does not read qwen3.attention.key_length (llama.cpp does) and falls back to
        # Qwen3Config's head_dim 128; take it from the file itself
        config.head_dim = int(gguf.GGUFReader(path).fields["qwen3.attention.key_length"].contents())
    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, config=config,
                                                dtype=torch.float32).eval()


def _logits(model, ids=IDS):
    with torch.no_grad():
        return model(input_ids=ids).logits


@pytest.fixture(scope="module")
def runs(tmp_path_factory, bpe_tokenizer):
    root = tmp_path_factory.mktemp("export")
    return {arch: sliced_run(root, arch, bpe_tokenizer) for arch in ("llama", "qwen2", "qwen3", "mistral")}


@pytest.mark.parametrize("arch", ["llama", "qwen2", "qwen3", "mistral"])
def test_f16_round_trip_matches_the_pruned_checkpoint(arch, runs, model_cache, bpe_tokenizer):
    from transformers import AutoTokenizer

    run, pruned = runs[arch]
    report = _export(run, "f16", model_cache)
    assert report.path == run / "model-f16.gguf" and report.kept_width == 256
    fields = export_gguf.read_fields(report.path)
    assert fields[f"{report.arch}.feed_forward_length"][0] == 256
    text = "def add(x, y): return x + y  # the lazy fox"
    back = AutoTokenizer.from_pretrained(run, gguf_file=report.path.name)
    assert back(text).input_ids == bpe_tokenizer(text).input_ids and back.chat_template == bpe_tokenizer.chat_template

    loaded = _load_gguf(report.path)
    assert loaded.config.intermediate_size == 256
    want = {k: v.half().float() for k, v in pruned.state_dict().items()}
    got = loaded.state_dict()
    assert set(got) == set(want)
    # every tensor is exactly the checkpoint's rounded to f16: names, shapes and the llama q/k permutation are right
    assert [k for k in want if not torch.equal(want[k], got[k])] == []
    ref = _logits(pruned)
    assert (_logits(loaded) - ref).abs().max() <= F16_LOGIT_TOL * ref.abs().max()


@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_q8_0_round_trip_within_a_quantization_step(arch, runs, model_cache):
    run, pruned = runs[arch]
    report = _export(run, "q8_0", model_cache)
    assert {t for t, shape in report.tensors.values() if len(shape) == 2} == {"Q8_0"}
    assert {t for t, shape in report.tensors.values() if len(shape) == 1} == {"F32"}  # norms (and biases) stay F32
    loaded = _load_gguf(report.path)
    got = loaded.state_dict()
    for name, w in pruned.state_dict().items():
        if w.ndim == 1:
            assert torch.equal(got[name], w), name
            continue
        blocks = w.reshape(-1, 32)
        step = blocks.abs().amax(dim=1, keepdim=True) / 127
        err = (got[name].reshape(-1, 32) - blocks).abs()
        assert (err <= step * (0.5 + 127 * 2**-11) + 1e-7).all(), name  # scale stored as f16
    ref = _logits(pruned)
    assert (_logits(loaded) - ref).abs().max() <= Q8_LOGIT_TOL * ref.abs().max()


def _wide_run(root: Path, tokenizer, align: int) -> Path:
    """Hidden 256, d_ff 512 pruned at ratio 0.2 with `align`: 384 kept at 128, 256 kept at 256."""
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tokenizer), hidden_size=256, intermediate_size=512, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = AutoModelForCausalLM.from_config(config)
    n_prune = surgery.check_ratio(512, 0.2, align)
    strategies.get({"name": "random", "seed": 42}).plan(
        strategies.Scores(), n_prune=n_prune, d_ff=512, layers=1, seed=42).apply(model)
    run = root / f"align{align}"
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "pruning.json").write_text(json.dumps({"source_model": "org/wide"}))
    return run


def test_tiny_model_takes_its_tokenizer_from_the_source_gguf(tmp_path, tokenizer, model_cache):
    # the tiny models' tokenizer is the offline default's, which comes from a pip GGUF: its tokenizer keys are copied
    run, _ = sliced_run(tmp_path, "llama", tokenizer, source="tiny:llama")
    report = _export(run, "q8_0", model_cache)
    src = export_gguf.read_fields(models.gguf_file(models.TOKENIZER_SOURCE, model_cache))
    out = export_gguf.read_fields(report.path)
    tokenizer_keys = {k for k in src if k.startswith("tokenizer.")}
    assert tokenizer_keys >= {"tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.pre",
                              "tokenizer.chat_template"}
    assert {k for k in tokenizer_keys if out[k][0] != src[k][0]} == set()
    assert out["llama.feed_forward_length"][0] == 256 and out["llama.block_count"][0] == 2  # the checkpoint's


def test_k_quant_fallbacks_are_reported_and_align_256_avoids_them(tmp_path, bpe_tokenizer, model_cache):
    at_128 = _export(_wide_run(tmp_path, bpe_tokenizer, 128), "f16", model_cache)
    assert at_128.kept_width == 384
    assert at_128.k_quant_fallbacks == ["blk.0.ffn_down.weight"]  # the only tensor whose rows are the kept width
    assert "ffn_down (1 tensors)" in at_128.summary()
    at_256 = _export(_wide_run(tmp_path, bpe_tokenizer, 256), "f16", model_cache)
    assert at_256.kept_width == 256 and at_256.k_quant_fallbacks == []
    assert "output.weight" not in at_256.tensors  # tied embeddings: llama.cpp reads token_embd for the output


@pytest.mark.parametrize("type_name, message", [
    ("q4_k_m", "cannot quantize to K-quants in Python .*llama-cpp-python is not installed.*"
               "`llama-quantize model-f16.gguf model-q4_k_m.gguf Q4_K_M"),
    ("int3", "--type int3: unknown type; allowed: f32, f16, bf16, q8_0.*q4_k_m"),
])
def test_types_the_package_cannot_write_are_one_line_errors(type_name, message, runs, model_cache, monkeypatch):
    monkeypatch.setattr(export_gguf, "_llama_cpp", lambda: None)  # as where llama-cpp-python is not installed
    with pytest.raises(ModelError, match=message):
        _export(runs["llama"][0], type_name, model_cache)


def test_k_quants_come_from_llama_cpps_quantizer_and_align_256_keeps_ffn_down_on_them(tmp_path, bpe_tokenizer,
                                                                                        model_cache):
    """With llama-cpp-python installed (skipped elsewhere), --type q4_k_m runs llama.cpp's own quantizer: at the
    paper's 128-alignment the kept width 384 takes ffn_down off K-quants, as the report predicts; 256 keeps it."""
    llama_cpp = _llama_cpp_that_runs()
    k_types = {"Q4_K", "Q5_K", "Q6_K"}
    at_128 = _export(_wide_run(tmp_path, bpe_tokenizer, 128), "q4_k_m", model_cache)
    at_256 = _export(_wide_run(tmp_path, bpe_tokenizer, 256), "q4_k_m", model_cache)
    for report in (at_128, at_256):
        assert gguf.GGUFReader(report.path).fields["general.file_type"].contents() == gguf.LlamaFileType.MOSTLY_Q4_K_M
        assert not list(report.path.parent.glob(".*.tmp")) and not list(report.path.parent.glob(".*.f16.gguf"))
    assert at_128.k_quant_fallbacks == ["blk.0.ffn_down.weight"]
    assert at_128.tensors["blk.0.ffn_down.weight"][0] not in k_types  # llama.cpp's own fallback type
    assert at_128.tensors["blk.0.ffn_down.weight"][1] == (256, 384)
    two_d = {n: kind for n, (kind, shape) in at_256.tensors.items() if len(shape) == 2}
    assert two_d and set(two_d.values()) <= k_types, two_d
    assert "tensor types: " in at_256.summary() and "K-quants apply to all of them" in at_256.summary()
    assert "not K-quant (rows not a multiple of 256" in at_128.summary() and "would" not in at_128.summary()
    llm = llama_cpp.Llama(model_path=str(at_256.path), n_ctx=64, n_threads=1, verbose=False)
    assert llm.metadata["llama.feed_forward_length"] == "256"
    assert len(llm.tokenize(b"def f(x):")) > 0 and next(iter(llm.generate([1, 2, 3], top_k=1, temp=0.0))) >= 0


def test_unexported_architecture_says_why(tmp_path, bpe_tokenizer, model_cache):
    run, _ = sliced_run(tmp_path, "phi3", bpe_tokenizer)
    with pytest.raises(ModelError, match="'phi3' is not exported to GGUF: Phi-3's fused"):
        _export(run, "f16", model_cache)


def test_cli_bad_type_is_one_line_exit_2(runs):
    out = subprocess.run([sys.executable, "-m", "prunekit.export", "gguf", str(runs["llama"][0] / "model"),
                          "--type", "int3"], capture_output=True, text=True, timeout=300, cwd=REPO)
    lines = [line for line in out.stderr.splitlines() if line.strip()]
    assert out.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: --type int3"), out.stderr


def test_prune_align_reaches_the_pruned_checkpoint(tmp_path, model_cache):
    from prunekit import recipes

    widths = {}
    for align in (32, 256):
        run = tmp_path / f"a{align}"
        recipes.prune(_cfg(tmp_path, model_cache, "strategy=random", "evaluate=false", f"prune.align={align}"), run)
        record = json.loads((run / "pruning.json").read_text())
        assert record["align"] == align
        widths[align] = AutoConfig.from_pretrained(run / "model").intermediate_size
        assert widths[align] == record["kept_width"]
    assert widths == {32: 320, 256: 256}  # d_ff 384 at ratio 0.1: the largest multiple of align <= 345.6


@pytest.mark.slow
@pytest.mark.real_model
def test_gguf_sourced_model_keeps_the_source_metadata(tmp_path, model_cache):
    """The offline default (SmolLM2 from a pip GGUF): every source key is copied but feed_forward_length."""
    source = models.resolve("pip:smollm2-135m-instruct")
    model, tokenizer = models.load(source, model_cache, dtype="float32")
    n_prune = surgery.check_ratio(1536, 0.05)
    strategies.get({"name": "random", "seed": 42}).plan(
        strategies.Scores(), n_prune=n_prune, d_ff=1536, layers=30, seed=42).apply(model)
    run = tmp_path / "run"
    model.save_pretrained(run / "model")
    (run / "pruning.json").write_text(json.dumps({"source_model": "pip:smollm2-135m-instruct"}))
    report = _export(run, "f16", model_cache)
    src = export_gguf.read_fields(models.gguf_file(source, model_cache))
    out = export_gguf.read_fields(report.path)
    assert out["llama.feed_forward_length"][0] == 1408
    changed = {k for k in src if k not in ("general.file_type", "llama.feed_forward_length")
               and out[k][0] != src[k][0]}
    assert changed == set() and out["tokenizer.ggml.pre"][0] == "smollm"
    loaded = _load_gguf(report.path)
    ref = _logits(model)
    assert (_logits(loaded) - ref).abs().max() <= F16_LOGIT_TOL * ref.abs().max()
    assert np.isclose(report.path.stat().st_size / 2**20, 2 * sum(p.numel() for p in model.parameters()) / 2**20,
                      rtol=0.05)


def test_gguf_sourced_model_starts_from_the_source_files_metadata(runs, tmp_path, model_cache):
    """A model pruned from a .gguf (as the offline defaults are): the source's keys are copied, feed_forward_length
    is the new kept width, and a source that does not describe the checkpoint is refused."""
    source = _export(runs["llama"][0], "f16", model_cache).path  # a llama GGUF of d_ff 256 to prune again
    model, tokenizer = models.load(models.resolve(str(source)), model_cache, dtype="float32")
    strategies.get({"name": "random", "seed": 42}).plan(
        strategies.Scores(), n_prune=surgery.check_ratio(256, 0.5), d_ff=256, layers=2, seed=42).apply(model)
    run = tmp_path / "again"
    model.save_pretrained(run / "model")
    (run / "pruning.json").write_text(json.dumps({"source_model": str(source)}))
    report = _export(run, "q8_0", model_cache)
    src, out = export_gguf.read_fields(source), export_gguf.read_fields(report.path)
    assert out["llama.feed_forward_length"][0] == 128 and src["llama.feed_forward_length"][0] == 256
    assert {k for k in src if k not in ("general.file_type", "llama.feed_forward_length") and out[k] != src[k]} == set()
    assert out["general.file_type"][0] == gguf.LlamaFileType.MOSTLY_Q8_0
    ref = _logits(model)
    assert (_logits(_load_gguf(report.path)) - ref).abs().max() <= Q8_LOGIT_TOL * ref.abs().max()

    wrong = tmp_path / "wrong"
    model.config.num_hidden_layers = 1
    model.model.layers = model.model.layers[:1]
    model.save_pretrained(wrong / "model")
    (wrong / "pruning.json").write_text(json.dumps({"source_model": str(source)}))
    with pytest.raises(ModelError, match="llama.block_count=2 but the checkpoint has 1"):
        _export(wrong, "f16", model_cache)


@pytest.mark.slow
@pytest.mark.real_model
def test_llama_cpp_loads_the_exported_pruned_smollm2_and_generates(tmp_path, model_cache):
    """llama.cpp itself (llama-cpp-python, built from its sdist; skipped where it is not installed) loads the f16
    export of SmolLM2 pruned at 5 %, reads the kept width, and its logits and greedy tokens follow transformers'."""
    llama_cpp = _llama_cpp_that_runs()
    source = models.resolve("pip:smollm2-135m-instruct")
    model, tokenizer = models.load(source, model_cache, dtype="float32")
    strategies.get({"name": "random", "seed": 42}).plan(
        strategies.Scores(), n_prune=surgery.check_ratio(1536, 0.05), d_ff=1536, layers=30, seed=42).apply(model)
    run = tmp_path / "run"
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "pruning.json").write_text(json.dumps({"source_model": "pip:smollm2-135m-instruct"}))
    path = _export(run, "f16", model_cache).path
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=256, n_threads=2, logits_all=True, verbose=False)
    assert llm.metadata["llama.feed_forward_length"] == "1408"
    prompt = "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n"
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    assert llm.tokenize(prompt.encode(), add_bos=False, special=True) == ids  # the source's tokenizer, pre-tokenizer
    llm.eval(ids)
    theirs = torch.tensor(np.array(llm.scores[: len(ids)]))
    with torch.no_grad():
        ours = model(input_ids=torch.tensor([ids])).logits[0]
    assert (theirs - ours).abs().max() <= LLAMA_CPP_LOGIT_TOL * ours.abs().max()
    llm.reset()
    made = []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):
        made.append(token)
        if len(made) == 8:
            break
    with torch.no_grad():
        greedy = model.generate(torch.tensor([ids]), max_new_tokens=8, do_sample=False)[0, len(ids):].tolist()
    assert made == greedy


def test_a_llama_cpp_build_with_the_amx_backend_is_named_before_it_can_segfault():
    """What the llama.cpp tests and the --gguf benchmark check before running a model in-process: the system info
    string of a build with ggml's AMX backend (llama.cpp #20824) against one without (both as 0.3.36 prints them)."""
    def build(info: str):
        return type("LlamaCpp", (), {"llama_print_system_info": staticmethod(lambda: info.encode())})

    amx = "CPU : SSE3 = 1 | AVX512 = 1 | AVX512_BF16 = 1 | AMX_INT8 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
    plain = "CPU : SSE3 = 1 | AVX512 = 1 | AVX512_BF16 = 1 | LLAMAFILE = 1 | OPENMP = 1 | REPACK = 1 | "
    assert "llama.cpp #20824" in export_gguf.amx_backend_problem(build(amx))
    assert export_gguf.amx_backend_problem(build(plain)) is None
