"""lm-eval bridge on a tiny random Llama with the real SmolLM2 tokenizer and the bundled offline task."""

import json

import pytest
import torch

from prunekit.errors import ConfigError
from prunekit.evaluation import lm_eval_bridge as bridge

TASK = "prunekit_tiny_mc"
TASK_DATA = bridge.BUILTIN_TASKS_DIR / f"{TASK}.jsonl"


@pytest.fixture(scope="module")
def smollm2_tokenizer(tokenizer):
    """The real SmolLM2 tokenizer of the pip-shipped offline default (conftest)."""
    return tokenizer


@pytest.fixture(scope="module")
def tiny_llama(smollm2_tokenizer):
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(1234)
    cfg = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    return LlamaForCausalLM(cfg).eval()


def hand_predictions(model, tok, docs):
    """Independent multiple-choice scoring: argmax of summed option log-likelihoods (and per character)."""
    preds, preds_norm = [], []
    for doc in docs:
        context = f"Question: {doc['question']}\nAnswer:"
        ctx_ids = tok.encode(context)
        lls = []
        for choice in doc["choices"]:
            whole = tok.encode(context + " " + choice)
            assert whole[: len(ctx_ids)] == ctx_ids
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([whole])).logits[0].float(), dim=-1)
            lls.append(sum(logp[i - 1, whole[i]].item() for i in range(len(ctx_ids), len(whole))))
        preds.append(max(range(len(lls)), key=lls.__getitem__))
        preds_norm.append(max(range(len(lls)), key=lambda j: lls[j] / len(doc["choices"][j])))
    return preds, preds_norm


def test_local_task_acc_matches_hand_computation(tiny_llama, smollm2_tokenizer, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative data_files must resolve against the YAML, not the working dir
    docs = [json.loads(line) for line in TASK_DATA.read_text().splitlines() if line.strip()]
    preds, preds_norm = hand_predictions(tiny_llama, smollm2_tokenizer, docs)
    want_acc = sum(p == d["label"] for p, d in zip(preds, docs)) / len(docs)
    want_norm = sum(p == d["label"] for p, d in zip(preds_norm, docs)) / len(docs)

    pad_before = smollm2_tokenizer.pad_token
    out = bridge.run_lm_eval(tiny_llama, smollm2_tokenizer, [TASK], batch_size=4)

    assert 0.0 <= out[f"lmeval/{TASK}/acc"] <= 1.0
    assert out[f"lmeval/{TASK}/acc"] == pytest.approx(want_acc)
    assert out[f"lmeval/{TASK}/acc_norm"] == pytest.approx(want_norm)
    assert out[f"lmeval/{TASK}/n"] == len(docs)
    assert smollm2_tokenizer.pad_token == pad_before  # the caller's tokenizer is not modified

    limited = bridge.run_lm_eval(tiny_llama, smollm2_tokenizer, [TASK], limit=5, batch_size=2)
    assert limited[f"lmeval/{TASK}/n"] == 5
    want5 = sum(p == d["label"] for p, d in zip(preds[:5], docs[:5])) / 5
    assert limited[f"lmeval/{TASK}/acc"] == pytest.approx(want5)


def test_unknown_task_is_clear_error_before_running():
    # model and tokenizer are None: the name check must fail before anything touches them
    with pytest.raises(ValueError, match=r"tasks: unknown lm-eval task 'copaa'.*'copa'"):
        bridge.run_lm_eval(None, None, ["copaa"])
    with pytest.raises(ValueError, match=r"prunekit_tiny_mc"):
        bridge.run_lm_eval(None, None, ["prunekit_tiny_mcq"])


@pytest.mark.parametrize(
    "kwargs, option",
    [
        (dict(tasks=[]), "tasks"),
        (dict(tasks="copa"), "tasks"),
        (dict(tasks=[TASK], limit=0), "limit"),
        (dict(tasks=[TASK], limit=1.5), "limit"),
        (dict(tasks=[TASK], batch_size=0), "batch_size"),
        (dict(tasks=[TASK], num_fewshot=-1), "num_fewshot"),
        (dict(tasks=[TASK], include_path="/no/such/task/dir"), "include_path"),
    ],
)
def test_bad_options_name_the_option(kwargs, option):
    with pytest.raises(ValueError, match=option):
        bridge.run_lm_eval(None, None, **kwargs)


def test_flatten_results_names():
    raw = {
        "results": {
            "copa": {"alias": "copa", "acc,none": 0.6, "acc_stderr,none": 0.05, "sample_len": 100},
            "gsm8k": {"alias": "gsm8k", "exact_match,strict-match": 0.25, "exact_match_stderr,strict-match": "N/A"},
        },
        "n-samples": {"copa": {"original": 100, "effective": 100}},
    }
    assert bridge.flatten_results(raw) == {
        "lmeval/copa/acc": 0.6,
        "lmeval/copa/acc_stderr": 0.05,
        "lmeval/gsm8k/exact_match@strict-match": 0.25,
        "lmeval/copa/n": 100,
    }


def test_relative_data_files_resolve_against_yaml_dir(tmp_path):
    resolved = bridge._resolve_data_files({"test": "a.jsonl", "train": ["/abs/b.jsonl", "hf://x/y.json"]}, tmp_path)
    assert resolved == {"test": str(tmp_path / "a.jsonl"), "train": ["/abs/b.jsonl", "hf://x/y.json"]}


def test_local_multiple_choice_task_without_options_is_refused_before_running(tmp_path):
    spec = (bridge.BUILTIN_TASKS_DIR / f"{TASK}.yaml").read_text()
    broken = spec.replace("task: prunekit_tiny_mc", "task: no_options_mc").replace('doc_to_choice: "{{choices}}"\n', "")
    (tmp_path / "no_options_mc.yaml").write_text(broken)
    with pytest.raises(ConfigError, match="no_options_mc.*multiple_choice but no doc_to_choice"):
        bridge.run_lm_eval(None, None, ["no_options_mc"], include_path=str(tmp_path))
