"""Capture overhead: time of `capture.statistics` / time of a plain `torch.no_grad()` forward over the same batches.

Target: <= 1.10. Runs on the offline default model (SmolLM2-135M from pip) with real GSM8K-style prompts.
    python benchmarks/capture_overhead.py [--n 64] [--batch-size 8] [--max-length 256] [--repeats 3]
"""

import argparse
import time

import torch

from prunekit import capture, data, models


def plain_forward(model, tokenizer, prompts, settings) -> None:
    """The same right-padded, length-sorted batches through the full model (logits included), no hooks."""
    with torch.no_grad():
        for batch in capture._batches(tokenizer, prompts, settings):
            model(**batch, use_cache=False)


def decoder_forward(model, tokenizer, prompts, settings) -> None:
    """The same batches through the decoder only (what capture runs), no hooks: isolates the hook cost."""
    with torch.no_grad():
        for batch in capture._batches(tokenizer, prompts, settings):
            model.get_decoder()(**batch, use_cache=False)


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default="~/.cache/prunekit/models")
    args = ap.parse_args()

    model, tokenizer = models.load(models.resolve(args.model), args.cache_dir)
    prompts = data.load_prompts({"path": "pip:gsm_symbolic", "field": "question", "n": args.n}, "benchmark")
    settings = capture.CaptureSettings(max_length=args.max_length, batch_size=args.batch_size)
    tokenizer.padding_side = "right"
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token

    plain_forward(model, tokenizer, prompts[: args.batch_size], settings)  # warm-up
    # Interleaved repeats, best of each: background load hits both sides alike.
    t_plain = t_decoder = t_capture = float("inf")
    for _ in range(args.repeats):
        t_plain = min(t_plain, timed(lambda: plain_forward(model, tokenizer, prompts, settings)))
        t_decoder = min(t_decoder, timed(lambda: decoder_forward(model, tokenizer, prompts, settings)))
        t_capture = min(t_capture, timed(lambda: capture.statistics(model, tokenizer, {"target": prompts}, settings)))
    print(f"model={args.model} prompts={args.n} batch={args.batch_size} max_length={args.max_length} "
          f"threads={torch.get_num_threads()}")
    print(f"plain forward (full model, no hooks): {t_plain:.3f} s")
    print(f"decoder-only forward (no LM head):     {t_decoder:.3f} s")
    print(f"capture.statistics (hooks + stats):    {t_capture:.3f} s")
    print(f"capture / plain forward ratio: {t_capture / t_plain:.3f}  (target <= 1.10)")
    print(f"capture / decoder-only forward ratio (hook + statistics overhead alone): {t_capture / t_decoder:.3f}")


if __name__ == "__main__":
    main()
