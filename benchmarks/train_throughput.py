"""LoRA recovery: the measured speed-up of each training choice on one model, side by side in one run.

Each variant trains a few optimizer steps through `prunekit.training.train_lora` (the train.py path) in its own
spawned process, so peak memory is not shared between them, and on the same examples where the choice allows it:

    grouped   length-grouped batches (training.LengthBucketBatchSampler, the default), per-device batch B
    random    the same examples in randomly ordered batches of B (what grouping saves: padded tokens)
    pd1       the same examples one by one (per-device batch 1: no padding at all), same effective batch
    fp32-1    one optimizer step on the last --short-tokens tokens of ONE example, fp32: the bf16 rows' reference
    bf16-ac   the same example, bf16 autocast (lora.mixed_precision=bf16), fp32 weights
    bf16-w    the same example, bf16 base weights (LoRA parameters stay fp32, peft's default)
    full      (--compare-full) full fine-tuning of every weight on the grouped batches: the memory baseline

The timed batches (`steps x effective batch / B` of them) are a random sample of one epoch over `--pool` examples
in each batching's own order, so they carry its padding; the padding fraction of the whole epoch is printed beside
them (no compute: it needs only the lengths), and is the figure to trust when the timed sample is small. The bf16
rows are short on purpose (bf16 matmuls are emulated on CPUs without native bf16 and can be >10x slower).
Default data: the offline CodeIO recovery rows of task=code_offline (its `train:` section, from pip); `--data
<gsm8k train.jsonl>` keeps the old GSM8K path. Tokens/s counts real (non-pad) tokens; CPU seconds per 1k tokens
(all threads) is the steadier figure when other jobs share the cores.

    python benchmarks/train_throughput.py                           # Qwen2.5-Coder-0.5B, code_offline, lora=code
    python benchmarks/train_throughput.py --model <dir> --max-length 512 --steps 3 --variants grouped,random
"""

from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import queue
import random
import statistics
import sys
import threading
import time
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parents[1]
GSM8K_TEMPLATE = "### Question: {question}\n### Answer: "
VARIANTS = ("grouped", "random", "pd1", "fp32-1", "bf16-ac", "bf16-w", "full")
SHORT = ("fp32-1", "bf16-ac", "bf16-w")  # one short example each
log = logging.getLogger("train_throughput")


class PeakRSS:
    """Samples this process's RSS in a thread (ru_maxrss alone would include the model-loading peak)."""

    def __init__(self, every_s: float = 0.02):
        import psutil

        self.proc, self.every, self.peak, self._stop = psutil.Process(), every_s, 0, threading.Event()

    def __enter__(self):
        self.peak = self.proc.memory_info().rss
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()
        return self

    def _run(self):
        while not self._stop.wait(self.every):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def __exit__(self, *exc):
        self._stop.set()
        self.thread.join()
        self.peak = max(self.peak, self.proc.memory_info().rss)


class FixedBatches:
    """A batch sampler with LengthBucketBatchSampler's interface that yields pre-chosen batches (index lists).

    Patched in for `training.LengthBucketBatchSampler` so a variant's batches go through the unchanged
    train_lora/make_dataloader path: train_lora takes its step count from len(loader), i.e. from these batches.
    """

    drop_last = False
    batches: list[list[int]] = []

    def __init__(self, lengths, batch_size, seed=0):
        pass

    def set_epoch(self, epoch):
        pass

    def __iter__(self):
        return iter([list(b) for b in self.batches])

    def __len__(self):
        return len(self.batches)


def padded_fraction(lengths: list[int], batches: list[list[int]]) -> float:
    """Pad tokens / all tokens the model computes on when every batch is padded to its longest example."""
    real = sum(lengths[i] for b in batches for i in b)
    computed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    return 1 - real / computed


def random_batches(indices: list[int], batch_size: int, seed: int) -> list[list[int]]:
    order = list(indices)
    random.Random(seed).shuffle(order)
    return [order[i:i + batch_size] for i in range(0, len(order), batch_size)]


def plan(lengths: list[int], *, per_device: int, effective: int, steps: int, seed: int) -> dict:
    """Each variant's batches (indices into the pool) and the whole-epoch padding fraction of each batching."""
    from prunekit import training

    epoch = list(training.LengthBucketBatchSampler(lengths, per_device, seed))
    k = steps * effective // per_device
    if k > len(epoch):
        raise SystemExit(f"--pool {len(lengths)} gives {len(epoch)} batches of {per_device}; {k} are needed "
                         f"(--steps x --effective-batch-size / --per-device-batch-size): raise --pool")
    shuffled = random_batches(range(len(lengths)), per_device, seed)
    # Each batching's timed batches are a random sample of its own epoch (so they carry its padding); pd1 trains
    # the grouped sample's examples one by one; the short variants its first example (cut in run_variant).
    grouped = random.Random(seed).sample(epoch, k)
    batches = {"grouped": grouped, "random": shuffled[:k], "pd1": [[i] for b in grouped for i in b],
               "full": grouped, **{v: [[grouped[0][0]]] for v in SHORT}}
    epoch_padding = {"grouped": padded_fraction(lengths, epoch), "random": padded_fraction(lengths, shuffled),
                     "pd1": 0.0}
    return {"batches": batches, "epoch_padding": epoch_padding}


def load_data(a) -> tuple[list[dict], dict]:
    """(records, the training format's keys): the task's `train:` rows and format (offline, via prunekit.data), or
    GSM8K in the paper's raw format."""
    from prunekit import data

    if a.data != "task":
        if not Path(a.data).is_file():
            raise SystemExit(f"--data: {a.data} not found (a GSM8K-style JSONL with question/answer, or 'task')")
        rows = [json.loads(line) for _, line in zip(range(a.pool), open(a.data))]
        return rows, {"prompt_template": GSM8K_TEMPLATE, "response_field": "answer"}
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    from prunekit import config, training  # noqa: F401 (config registers the schemas the presets extend)
    from prunekit.schema import as_dict

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base=None):
        cfg = compose(config_name="train", overrides=[f"task={a.task}", f"task.train.n={a.pool}"])
    spec = OmegaConf.to_container(cfg.task.train, resolve=True)
    return data.load_records(spec, "task.train"), as_dict(training.TrainFormat.of(spec))


def full_finetune(model, tok, examples, lora: dict) -> dict:
    """Plain full fine-tuning with the same batches, accumulation, optimizer and clipping (the memory baseline)."""
    import torch
    from accelerate import Accelerator

    from prunekit import training

    s = training.validate(model, lora, len(examples))
    accum = int(s["effective_batch_size"]) // int(s["per_device_batch_size"])
    acc = Accelerator(gradient_accumulation_steps=accum,
                      mixed_precision=training.resolve_mixed_precision(s["mixed_precision"]))
    loader, _ = training.make_dataloader(examples, tok, int(s["per_device_batch_size"]), int(s["seed"]))
    opt = torch.optim.AdamW(model.parameters(), lr=float(s["lr"]))
    model, opt, loader = acc.prepare(model, opt, loader)
    model.train()
    tokens, steps, t0 = 0, 0, time.perf_counter()
    for batch in loader:
        with acc.accumulate(model):
            acc.backward(model(**batch).loss)
            tokens += int(batch["attention_mask"].sum())
            if acc.sync_gradients:
                acc.clip_grad_norm_(model.parameters(), float(s["max_grad_norm"]))
                steps += 1
            opt.step()
            opt.zero_grad()
    return {"steps": steps, "tokens": tokens, "time_s": time.perf_counter() - t0, "step_tokens_per_s": []}


def run_variant(variant: str, args: dict, out: mp.Queue) -> None:
    """Child process: load the model, train the variant's batches, put its measurements on `out`."""
    import torch
    import yaml

    from prunekit import models, training

    torch.set_num_threads(args["threads"])
    dtype = "bfloat16" if variant == "bf16-w" else "float32"
    model, tok = models.load(models.resolve(args["model"]), args["cache_dir"], dtype=dtype)
    examples, batches = args["examples"], args["batches"][variant]
    per_device, effective = (1, args["effective_batch_size"]) if variant == "pd1" else \
        (args["per_device_batch_size"], args["effective_batch_size"])
    if variant in SHORT:  # one example's last short_tokens tokens: answer tokens (its head is the masked prompt)
        n, ex = args["short_tokens"], examples[batches[0][0]]
        examples, batches, per_device, effective = [{k: v[-n:] for k, v in ex.items()}], [[0]], 1, 1
    lora = yaml.safe_load(Path(args["lora"]).read_text())
    lora.pop("defaults", None)
    lora.update(epochs=1, per_device_batch_size=per_device, effective_batch_size=effective,
                max_length=args["max_length"], save_every_steps=0,
                mixed_precision="bf16" if variant == "bf16-ac" else "no")
    lengths = [len(e["input_ids"]) for e in examples]
    step_rates = []
    cpu0 = time.process_time()
    with PeakRSS() as rss, mock.patch.object(training, "LengthBucketBatchSampler", FixedBatches), \
            mock.patch.object(FixedBatches, "batches", batches):
        base_rss = rss.peak
        if variant == "full":
            r = full_finetune(model, tok, examples, lora)
            trainable = sum(p.numel() for p in model.parameters())
        else:
            r = training.train_lora(model, tok, examples, lora, out_dir=args["out_dir"], progress=False,
                                    log=lambda m, step: step_rates.append(m["train/tokens_per_s"]))
            trainable = sum(p.numel() for p in r["peft_model"].parameters() if p.requires_grad)
    cpu_s = time.process_time() - cpu0
    computed = sum(len(b) * max(lengths[i] for i in b) for b in batches)
    out.put({"variant": variant, "steps": r["steps"], "tokens": r["tokens"], "computed_tokens": computed,
             "padding": 1 - r["tokens"] / computed, "time_s": r["time_s"], "tokens_per_s": r["tokens"] / r["time_s"],
             "first_step_tokens_per_s": step_rates[0] if step_rates else float("nan"),
             "cpu_s_per_1k_tokens": cpu_s / r["tokens"] * 1e3, "trainable_params": trainable,
             "loaded_rss_gb": base_rss / 1e9, "peak_rss_gb": rss.peak / 1e9, "train_rss_gb": (rss.peak - base_rss) / 1e9})


def measure(variants: list[str], args: dict, repeats: int) -> dict[str, list[dict]]:
    """Every variant in its own process, interleaved over the repeats (A B C A B C) against drifting load."""
    ctx = mp.get_context("spawn")
    res: dict[str, list[dict]] = {v: [] for v in variants}
    for rep in range(repeats):
        for v in variants:
            q = ctx.Queue()
            proc = ctx.Process(target=run_variant, args=(v, args, q))
            proc.start()
            while True:  # a child that dies (e.g. out of memory) puts nothing: do not wait for it forever
                try:
                    res[v].append(q.get(timeout=5))
                    break
                except queue.Empty:
                    if not proc.is_alive():
                        raise SystemExit(f"error: variant {v} died with exit code {proc.exitcode}") from None
            proc.join()
            log.info("repeat %d %s: %s", rep + 1, v, res[v][-1])
    return res


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def report(res: dict[str, list[dict]], epoch_padding: dict, header: str) -> None:
    print(f"\n{header}")
    print(f"{'variant':10}{'steps':>6}{'tokens':>8}{'pad (steps)':>12}{'pad (epoch)':>12}{'tok/s':>9}"
          f"{'CPU s/1k tok':>13}{'peak RSS GB':>12}{'+train GB':>10}{'vs grouped':>11}")
    for v, rows in res.items():
        rate = median(rows, "tokens_per_s")
        base = res.get("fp32-1" if v in SHORT else "grouped")
        ref = median(base, "tokens_per_s") if base else float("nan")
        pad_epoch = epoch_padding.get(v)
        print(f"{v:10}{rows[0]['steps']:>6}{rows[0]['tokens']:>8}{rows[0]['padding']:>12.3f}"
              f"{'' if pad_epoch is None else f'{pad_epoch:.3f}':>12}{rate:>9.1f}{median(rows, 'cpu_s_per_1k_tokens'):>13.1f}"
              f"{median(rows, 'peak_rss_gb'):>12.2f}{median(rows, 'train_rss_gb'):>10.2f}{rate / ref:>10.2f}x")
    print("tok/s = real (non-pad) tokens per wall second, median over repeats; 'vs grouped' > 1 = faster than the "
          "default; the bf16 rows are compared with fp32-1 (the same single short example) instead. On a shared machine "
          "wall time drifts with the load: compare CPU s per 1k tokens.")


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", default="pip:qwen2.5-coder-0.5b-instruct", help="model.name_or_path (dir, hub id, pip:)")
    p.add_argument("--cache-dir", default=str(Path("~/.cache/prunekit/models").expanduser()),
                   help="model.cache_dir (the default is the configs' ${cache_dir}/models: no second conversion)")
    p.add_argument("--task", default="code_offline", help="task preset whose `train:` section is the data")
    p.add_argument("--data", default="task", help="'task' (the task's train rows) or a GSM8K-style JSONL")
    p.add_argument("--lora", default="code", help="preset name in conf/lora (math|code) or a YAML path")
    p.add_argument("--variants", default="grouped,random,pd1,fp32-1,bf16-ac,bf16-w", help=f"comma list of {VARIANTS}")
    p.add_argument("--compare-full", action="store_true", help="also full fine-tuning (LoRA vs full memory)")
    p.add_argument("--steps", type=int, default=2, help="optimizer steps per variant (short ones: 1)")
    p.add_argument("--short-tokens", type=int, default=64, help="length of the fp32-1/bf16 rows' one example")
    p.add_argument("--per-device-batch-size", type=int, default=4)
    p.add_argument("--effective-batch-size", type=int, default=4)
    p.add_argument("--max-length", type=int, default=384)
    p.add_argument("--pool", type=int, default=256, help="examples tokenised: timed batches are sampled from them")
    p.add_argument("--repeats", type=int, default=1, help="interleaved repeats of the whole variant list")
    p.add_argument("--seed", type=int, default=42)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--json", help="also write the raw measurements here")
    p.add_argument("--out-dir", default="/tmp/prunekit-train-throughput")
    a = p.parse_args(argv)
    variants = [v for v in a.variants.split(",") if v] + (["full"] if a.compare_full else [])
    bad = [v for v in variants if v not in VARIANTS]
    if bad or "grouped" not in variants:
        raise SystemExit(f"error: --variants {bad or a.variants}: allowed {list(VARIANTS)}, and grouped (the "
                         "reference) must be one of them")
    preset = Path(a.lora) if a.lora.endswith((".yaml", ".yml")) else REPO / "conf" / "lora" / f"{a.lora}.yaml"
    if not preset.is_file() or a.effective_batch_size % a.per_device_batch_size:
        raise SystemExit(f"error: --lora {preset} not found, or --effective-batch-size is not a multiple of "
                         "--per-device-batch-size")
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    from prunekit import models, training

    tok = models.load_tokenizer(models.resolve(a.model), a.cache_dir)
    records, train_format = load_data(a)
    examples = training.build_examples(records, tokenizer=tok, max_length=a.max_length, **train_format)
    lengths = [len(e["input_ids"]) for e in examples]
    p_ = plan(lengths, per_device=a.per_device_batch_size, effective=a.effective_batch_size, steps=a.steps, seed=a.seed)
    args = {"model": a.model, "cache_dir": a.cache_dir, "lora": str(preset), "examples": list(examples),
            "batches": p_["batches"], "per_device_batch_size": a.per_device_batch_size,
            "effective_batch_size": a.effective_batch_size, "max_length": a.max_length, "threads": a.threads,
            "short_tokens": a.short_tokens, "out_dir": a.out_dir}
    res = measure(variants, args, a.repeats)
    header = (f"model {a.model}; data {a.data if a.data != 'task' else 'task=' + a.task + ' train'}: pool of "
              f"{len(examples)} examples, mean {statistics.mean(lengths):.0f} tokens ({examples.truncated} cut at "
              f"max_length {a.max_length}); {a.steps} steps of effective batch {a.effective_batch_size}, per-device "
              f"{a.per_device_batch_size}; lora={a.lora}; {a.threads} threads; {a.repeats} repeat(s)")
    report(res, p_["epoch_padding"], header)
    if a.json:
        Path(a.json).write_text(json.dumps({"header": header, "epoch_padding": p_["epoch_padding"], "runs": res}, indent=1))


if __name__ == "__main__":
    sys.exit(main())
