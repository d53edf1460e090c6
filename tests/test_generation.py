"""The generation engine: batched == one prompt at a time, EOS/criterion/length slicing, order, chat, JSONL."""

import copy
import json

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, StoppingCriteria

from prunekit import text
from prunekit.errors import ConfigError
from prunekit.evaluation import generation as G

# Very different lengths on purpose: the short ones get many pad tokens when batched with the long ones.
PROMPTS = [
    "Hi",
    "What is the capital of France? Explain the history of the city, its rivers, monuments, people and food "
    "in as much detail as you can, and then compare it with two other capitals of your choice.",
    "2+2=",
    "Write a python function that adds two numbers.",
    "Natalia sold clips to 48 of her friends in April, and then she sold half as many clips in May. "
    "How many clips did Natalia sell altogether in April and May?",
    "ok",
]
N_NEW = 12


@pytest.fixture(scope="module")
def smol_tok(tokenizer):
    """The real SmolLM2 tokenizer (with chat template) of the pip-shipped offline default (conftest)."""
    return tokenizer


def _tiny(tok, attn="sdpa"):
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, eos_token_id=tok.eos_token_id,
                      bos_token_id=tok.bos_token_id, pad_token_id=tok.pad_token_id)
    return AutoModelForCausalLM.from_config(cfg, attn_implementation=attn).eval()


@pytest.fixture(scope="module")
def tiny(smol_tok):
    return _tiny(smol_tok)


def _one_by_one(model, tok, prompts, **kw):
    return [G.generate(model, tok, [p], batch_size=1, progress=False, **kw)[0] for p in prompts]


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
def test_batched_equals_one_prompt_at_a_time(smol_tok, attn):
    model = _tiny(smol_tok, attn)
    batched = G.generate(model, smol_tok, PROMPTS, max_new_tokens=N_NEW, batch_size=len(PROMPTS), progress=False)
    single = _one_by_one(model, smol_tok, PROMPTS, max_new_tokens=N_NEW)
    assert [g.prompt for g in batched] == PROMPTS
    for b, s in zip(batched, single):
        assert b.token_ids == s.token_ids  # exact token equality, not approximately
        assert b.output == s.output and b.stop_reason == s.stop_reason == "length"
        assert b.n_tokens == len(b.token_ids) == N_NEW


def test_rows_cut_at_first_eos_any_of_a_list(smol_tok, tiny):
    """eos_token_id as a list; each row is cut at its own first EOS while other rows keep going."""
    free = _one_by_one(tiny, smol_tok, PROMPTS, max_new_tokens=N_NEW)
    stop_tok = free[0].token_ids[3]  # a token the model really emits mid-sequence for prompt 0
    model = copy.deepcopy(tiny)
    model.generation_config.eos_token_id = [smol_tok.eos_token_id, stop_tok]
    out = G.generate(model, smol_tok, PROMPTS, max_new_tokens=N_NEW, batch_size=4, progress=False)
    for f, g in zip(free, out):
        if stop_tok in f.token_ids:
            j = f.token_ids.index(stop_tok)
            assert g.token_ids == f.token_ids[:j] and g.stop_reason == "eos"
            assert g.n_tokens == j
        else:
            assert g.token_ids == f.token_ids and g.stop_reason == "length"
    assert out[0].stop_reason == "eos" and out[0].n_tokens <= 3
    assert any(g.stop_reason == "length" for g in out)  # the batch continued after row 0 finished


class StopOnToken(StoppingCriteria):
    """Content-based criterion (independent of row order): a row stops once its last token is `tok`."""

    def __init__(self, tok, prompt_len, seen):
        self.tok = tok
        seen.append(prompt_len)

    def __call__(self, input_ids, scores, **kwargs):
        return input_ids[:, -1] == self.tok


def test_criterion_stops_rows_and_is_reported(smol_tok, tiny):
    free = _one_by_one(tiny, smol_tok, PROMPTS, max_new_tokens=N_NEW)
    stop_tok = free[1].token_ids[5]
    seen = []
    out = G.generate(tiny, smol_tok, PROMPTS, max_new_tokens=N_NEW, batch_size=3, progress=False,
                     stopping_criteria_factory=lambda n: [StopOnToken(stop_tok, n, seen)])
    assert len(seen) == 2  # one factory call per batch, with the padded prompt length
    assert max(seen) == max(len(smol_tok(p)["input_ids"]) for p in PROMPTS)
    for f, g in zip(free, out):
        if stop_tok in f.token_ids:
            j = f.token_ids.index(stop_tok)
            assert g.token_ids == f.token_ids[: j + 1] and g.stop_reason == "criterion"
        else:
            assert g.token_ids == f.token_ids and g.stop_reason == "length"
    assert out[1].stop_reason == "criterion" and out[1].n_tokens <= 6


def test_stop_strings(smol_tok, tiny):
    free = _one_by_one(tiny, smol_tok, PROMPTS[:1], max_new_tokens=N_NEW)[0]
    stop = smol_tok.decode(free.token_ids[4:5]).strip()
    assert stop, "need a visible stop string"
    g = G.generate(tiny, smol_tok, PROMPTS[:1], max_new_tokens=N_NEW, stop_strings=[stop], progress=False)[0]
    assert g.stop_reason == "criterion" and g.n_tokens <= 5
    assert g.token_ids == free.token_ids[: g.n_tokens] and stop in g.output


def test_split_row_rules():
    assert G.split_row([5, 6, 2, 2], [2]) == ([5, 6], "eos")
    assert G.split_row([5, 6, 7], [2, 7]) == ([5, 6], "eos")
    assert G.split_row([5, 6, 7], [2]) == ([5, 6, 7], "length")
    assert G.split_row([5, 6, 7, 2, 2], [2], fired_at=2) == ([5, 6], "criterion")
    # pad == EOS after a criterion stop: the pads are not mistaken for an EOS stop
    assert G.split_row([5, 6, 2, 2], [2], fired_at=2) == ([5, 6], "criterion")
    # EOS on the very step the criterion fires counts as EOS
    assert G.split_row([5, 2, 2], [2], fired_at=2) == ([5], "eos")


def test_chat_template_applied(smol_tok, tiny):
    p = PROMPTS[3]
    chat = G.generate(tiny, smol_tok, [p], max_new_tokens=N_NEW, chat_template=True, progress=False)[0]
    text = smol_tok.apply_chat_template([{"role": "user", "content": p}], add_generation_prompt=True, tokenize=False)
    raw = G.generate(tiny, smol_tok, [text], max_new_tokens=N_NEW, progress=False)[0]
    plain = G.generate(tiny, smol_tok, [p], max_new_tokens=N_NEW, progress=False)[0]
    assert chat.prompt == p
    assert chat.token_ids == raw.token_ids
    assert chat.token_ids != plain.token_ids


def test_sorted_and_unsorted_batching_agree_and_are_deterministic(smol_tok, tiny):
    a = G.generate(tiny, smol_tok, PROMPTS, max_new_tokens=N_NEW, batch_size=2, progress=False)
    b = G.generate(tiny, smol_tok, PROMPTS, max_new_tokens=N_NEW, batch_size=2, sort_by_length=False, progress=False)
    c = G.generate(tiny, smol_tok, PROMPTS, max_new_tokens=N_NEW, batch_size=2, progress=False)
    assert [g.token_ids for g in a] == [g.token_ids for g in b] == [g.token_ids for g in c]


def test_tokenizer_state_restored_and_pad_fallback(smol_tok, tiny):
    tok = copy.deepcopy(smol_tok)
    tok.pad_token = None
    assert tok.padding_side == "right" and tok.pad_token_id is None
    out = G.generate(tiny, tok, PROMPTS[:3], max_new_tokens=4, batch_size=3, progress=False)
    ref = _one_by_one(tiny, smol_tok, PROMPTS[:3], max_new_tokens=4)
    assert [g.token_ids for g in out] == [g.token_ids for g in ref]
    assert tok.padding_side == "right" and tok.pad_token_id is None


@pytest.mark.parametrize("kw", [{"max_new_tokens": 0}, {"max_new_tokens": -3}, {"max_new_tokens": 4, "batch_size": 0}])
def test_bad_settings_raise_clear_error(smol_tok, tiny, kw):
    with pytest.raises(ConfigError, match="max_new_tokens|batch_size"):
        G.generate(tiny, smol_tok, PROMPTS, progress=False, **kw)
    assert issubclass(ConfigError, ValueError)


def test_chat_template_missing_is_a_clear_error(smol_tok, tiny):
    tok = copy.deepcopy(smol_tok)
    tok.chat_template = None
    with pytest.raises(ConfigError, match="chat_template"):
        G.generate(tiny, tok, ["a"], max_new_tokens=2, chat_template=True, progress=False)


def test_non_string_prompt_rejected(smol_tok, tiny):
    with pytest.raises(ConfigError, match="prompts"):
        G.generate(tiny, smol_tok, ["a", 3], max_new_tokens=2, progress=False)


def test_write_generations_atomic_jsonl(tmp_path, smol_tok, tiny):
    gens = G.generate(tiny, smol_tok, PROMPTS[:2], max_new_tokens=3, progress=False)
    path = tmp_path / "run" / "generations.jsonl"
    G.write_generations(path, [g.record(id=i) for i, g in enumerate(gens)])
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert rows == G.read_generations(path)
    assert [r["id"] for r in rows] == [0, 1]
    assert rows[0] == {"prompt": PROMPTS[0], "output": gens[0].output, "n_tokens": 3, "stop_reason": "length", "id": 0}
    before = path.read_text()
    with pytest.raises(TypeError):  # a record that cannot be serialised half way through
        G.write_generations(path, [{"id": 0}, {"id": object()}])
    assert path.read_text() == before  # old file intact, no partial write
    assert [p.name for p in path.parent.iterdir()] == ["generations.jsonl"]  # temp file cleaned up


def _plain_generate(model, tok, prompts, n_new):
    """Reference: each prompt alone through plain `model.generate` (greedy), new tokens cut at the first EOS."""
    eos = G.eos_ids(model, tok)
    out = []
    for p in prompts:
        ids = torch.tensor([tok(p)["input_ids"]])
        gen = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=n_new,
                             eos_token_id=eos, pad_token_id=tok.pad_token_id)
        out.append(G.split_row(gen[0, ids.shape[1]:].tolist(), eos)[0])
    return out


@pytest.mark.parametrize("every", [1, 3, 5])
def test_dropping_finished_rows_keeps_every_token(smol_tok, tiny, every):
    """Rows that finish early (EOS, a criterion) leave the batch between chunks; every row's tokens, reasons and
    criterion positions stay those of plain `model.generate` / the one-call batch."""
    free = _one_by_one(tiny, smol_tok, PROMPTS, max_new_tokens=N_NEW)
    model = copy.deepcopy(tiny)
    model.generation_config.eos_token_id = [smol_tok.eos_token_id, free[0].token_ids[3], free[4].token_ids[6]]
    crit_tok = free[1].token_ids[7]
    kw = dict(max_new_tokens=N_NEW, batch_size=len(PROMPTS), progress=False,
              stopping_criteria_factory=lambda n: [StopOnToken(crit_tok, n, [])])
    whole = G.generate(model, smol_tok, PROMPTS, **kw)
    dropped = G.generate(model, smol_tok, PROMPTS, drop_finished_every=every, **kw)
    assert [g.stop_reason for g in whole] == [g.stop_reason for g in dropped]
    assert {"eos", "criterion", "length"} <= {g.stop_reason for g in dropped}  # rows finish at different steps
    assert [g.token_ids for g in whole] == [g.token_ids for g in dropped]
    plain = _plain_generate(model, smol_tok, PROMPTS, N_NEW)
    for g, ref in zip(dropped, plain):
        assert g.token_ids == (ref[: g.n_tokens] if g.stop_reason == "criterion" else ref)


def test_dropping_finished_rows_calls_generate_in_chunks(smol_tok, tiny, monkeypatch):
    """The chunked path really runs: with k = 4, a 12-token budget takes 3 generate calls on a shrinking batch."""
    calls = []
    orig = type(tiny).generate

    def spy(self, *a, **kw):
        calls.append((kw["input_ids"].shape[0], kw["generation_config"].max_new_tokens))
        return orig(self, *a, **kw)

    monkeypatch.setattr(type(tiny), "generate", spy)
    model = copy.deepcopy(tiny)
    free = _one_by_one(model, smol_tok, PROMPTS[:3], max_new_tokens=N_NEW)
    calls.clear()
    model.generation_config.eos_token_id = [smol_tok.eos_token_id, free[0].token_ids[1]]
    G.generate(model, smol_tok, PROMPTS[:3], max_new_tokens=N_NEW, batch_size=3, progress=False, drop_finished_every=4)
    assert [c[1] for c in calls] == [4, 4, 4]
    assert calls[0][0] == 3 and calls[-1][0] < 3


@pytest.mark.parametrize("bad", [-1, 1.5, True, "4"])
def test_drop_finished_every_validated(smol_tok, tiny, bad):
    with pytest.raises(ConfigError, match="drop_finished_every"):
        G.generate(tiny, smol_tok, PROMPTS, max_new_tokens=2, progress=False, drop_finished_every=bad)


def test_dropping_rows_needs_a_dynamic_cache(smol_tok, tiny):
    """A model whose generation config chooses a cache keeps it: the batch then runs in one call."""
    model = copy.deepcopy(tiny)
    plain = G.generate(model, smol_tok, PROMPTS[:3], max_new_tokens=4, batch_size=3, progress=False)
    for impl in ("static", "dynamic"):
        model.generation_config.cache_implementation = impl
        out = G.generate(model, smol_tok, PROMPTS[:3], max_new_tokens=4, batch_size=3, progress=False,
                         drop_finished_every=2)
        assert [g.token_ids for g in out] == [g.token_ids for g in plain]


def _throughput_benchmark():
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "generation_throughput.py"
    spec = importlib.util.spec_from_file_location("generation_throughput", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.parametrize("tied", [True, False])
def test_throughput_bound_counts_each_weight_read_once(smol_tok, tied):
    """Bytes per step: every weight once; the input embedding only when the output head is tied to it."""
    bench = _throughput_benchmark()
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(smol_tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=tied)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    read, matmul, width = bench.step_costs(model)
    emb = model.get_input_embeddings().weight.numel()
    total = sum(p.numel() for p in model.parameters())  # parameters() lists a tied weight once
    assert read == 4 * (total if tied else total - emb)
    linear = 2 * (32 * 32 * 2 + 32 * 16 * 2 + 3 * 32 * 64) + len(smol_tok) * 32
    assert matmul == linear and width == 2 * 4 * 8


def test_throughput_decode_rate_runs_the_engine(smol_tok, tiny):
    bench = _throughput_benchmark()
    tps, ctx, gens = bench.decode_rate(tiny, smol_tok, PROMPTS[:3], 5, 0)
    ref = G.generate(tiny, smol_tok, PROMPTS[:3], max_new_tokens=5, batch_size=3, chat_template=True, progress=False)
    assert [g.token_ids for g in gens] == [g.token_ids for g in ref] and tps > 0
    longest = max(len(ids) for ids in text.encode(smol_tok, PROMPTS[:3], True))
    assert longest < ctx < longest + 5  # mean padded context over the decode steps


# ---------------------------------------------------------------------------------------------- kv_cache
def _cat_reference(chunks):
    """What transformers' DynamicLayer holds after these updates: one torch.cat along the sequence."""
    return torch.cat([k for k, _ in chunks], -2), torch.cat([v for _, v in chunks], -2)


def test_buffered_layer_holds_what_dynamic_layer_holds():
    """Through a prefill, single steps past the buffer's capacity, a crop, a batch select and a reset, the buffered
    layer returns exactly DynamicLayer's keys and values, and writes in place while the buffer has room."""
    from transformers.cache_utils import DynamicLayer

    from prunekit.evaluation.kv_cache import MIN_CAPACITY, BufferedLayer

    torch.manual_seed(0)
    ours, ref = BufferedLayer(), DynamicLayer()
    steps = [40] + [1] * 60  # the first buffer (80 positions) fills up and is replaced by one of 162
    assert 2 * 40 >= MIN_CAPACITY
    ptrs = []
    for n in steps:
        k, v = torch.randn(3, 2, n, 8), torch.randn(3, 2, n, 8)
        got, want = ours.update(k, v), ref.update(k.clone(), v.clone())
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        ptrs.append(got[0].data_ptr())
    assert len(set(ptrs)) == 2  # one buffer for positions 1-80, one after: no copy per step
    for op in (lambda layer: layer.crop(-5), lambda layer: layer.batch_select_indices(torch.tensor([2, 0]))):
        op(ours), op(ref)
        k, v = torch.randn(ref.keys.shape[0], 2, 1, 8), torch.randn(ref.keys.shape[0], 2, 1, 8)
        got, want = ours.update(k, v), ref.update(k, v)
        assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
        assert ours.get_seq_length() == ref.get_seq_length()
    ours.reset()
    k, v = torch.randn(1, 2, 3, 8), torch.randn(1, 2, 3, 8)
    assert torch.equal(ours.update(k, v)[0], _cat_reference([(k, v)])[0]) and ours.get_seq_length() == 3


@pytest.mark.parametrize("attn", ["sdpa", "eager"])
@pytest.mark.parametrize("every", [0, 3])
def test_preallocated_cache_keeps_every_token(smol_tok, attn, every):
    """Padded batches decoded with the preallocated cache give DynamicCache's tokens and stop reasons, alone and
    with rows leaving the batch (a select rebuilds the buffer); a prompt longer than the first buffer included."""
    model = _tiny(smol_tok, attn)
    prompts = [*PROMPTS, " ".join(["word"] * 80)]
    kw = dict(max_new_tokens=N_NEW, batch_size=len(prompts), progress=False, drop_finished_every=every)
    free = G.generate(model, smol_tok, prompts, **kw)
    model.generation_config.eos_token_id = [smol_tok.eos_token_id, free[0].token_ids[3]]  # a row stops early
    plain = G.generate(model, smol_tok, prompts, **kw)
    ours = G.generate(model, smol_tok, prompts, kv_cache="preallocated", **kw)
    assert [g.token_ids for g in ours] == [g.token_ids for g in plain]
    assert [g.stop_reason for g in ours] == [g.stop_reason for g in plain] and "eos" in {g.stop_reason for g in ours}


def test_preallocated_cache_is_the_one_generate_fills(smol_tok, tiny, monkeypatch):
    """The option reaches generate: its cache holds BufferedLayers (so the test above compares two decodes)."""
    from prunekit.evaluation.kv_cache import BufferedLayer

    seen = []
    orig = type(tiny).generate

    def spy(self, *a, **kw):
        seen.append(kw.get("cache"))
        return orig(self, *a, **kw)

    monkeypatch.setattr(type(tiny), "generate", spy)
    G.generate(tiny, smol_tok, PROMPTS[:2], max_new_tokens=3, batch_size=2, progress=False, kv_cache="preallocated")
    G.generate(tiny, smol_tok, PROMPTS[:2], max_new_tokens=3, batch_size=2, progress=False)
    assert all(type(layer) is BufferedLayer for layer in seen[0].layers) and seen[0].get_seq_length() > 0
    assert seen[1] is None  # the plain decode leaves the cache to generate


def test_kv_cache_validated(smol_tok, tiny):
    with pytest.raises(ConfigError, match=r"kv_cache='static': allowed: dynamic, preallocated"):
        G.generate(tiny, smol_tok, PROMPTS, max_new_tokens=2, progress=False, kv_cache="static")
