"""Attribution cost: integrated-gradients time per prompt / time of one forward+backward on the same prompt.

IG runs one path per layer (``steps`` points each, batched), so the expected ratio is roughly
layers x steps x (forward + partial backward) / (forward + full backward), less whatever batching wins.
Runs on the offline default model (SmolLM2-135M from pip) with GSM8K-style prompts.
    python benchmarks/attribution_cost.py [--n 2] [--steps 20] [--layers all|0,5,10] [--batch-size 20]
"""

import argparse
import time

import torch

from prunekit import attribution, data, models, text
from prunekit.mlp import mlp_layers


def forward_backward(model, ids: torch.Tensor) -> None:
    """One forward and a backward of the top last-position logit into every parameter (a training-step's work)."""
    model.zero_grad(set_to_none=True)
    attribution.last_logits(model, ids[None])[0].max().backward()


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=2, help="prompts timed (IG is averaged per prompt)")
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--method", default=attribution.DEFAULT_METHOD, choices=attribution.METHODS)
    ap.add_argument("--batch-size", type=int, default=None, help="IG steps per forward (default: all steps)")
    ap.add_argument("--layers", default="all", help="'all' or comma-separated layer indices (time is extrapolated)")
    ap.add_argument("--max-length", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--cache-dir", default="~/.cache/prunekit/models")
    args = ap.parse_args()

    model, tokenizer = models.load(models.resolve(args.model), args.cache_dir, dtype="float32")
    n_layers = len(mlp_layers(model))
    layers = list(range(n_layers)) if args.layers == "all" else [int(x) for x in args.layers.split(",")]
    prompts = data.load_prompts({"path": "pip:gsm_symbolic", "field": "question", "n": args.n}, "benchmark")
    ids = [torch.tensor(x) for x in text.encode(tokenizer, prompts, False, args.max_length)]

    forward_backward(model, ids[0])  # warm-up
    t_fb = sum(best_of(lambda x=x: forward_backward(model, x), args.repeats) for x in ids) / len(ids)
    model.zero_grad(set_to_none=True)
    t = time.perf_counter()
    attribution.ig_scores_from_ids(model, ids, steps=args.steps, layers=layers, batch_size=args.batch_size,
                                   method=args.method)
    t_ig = (time.perf_counter() - t) / len(ids)
    t_ig_all = t_ig * n_layers / len(layers)

    tokens = sum(len(x) for x in ids) / len(ids)
    print(f"model={args.model} prompts={len(ids)} mean_tokens={tokens:.0f} steps={args.steps} method={args.method} "
          f"batch={args.batch_size or args.steps} layers_timed={len(layers)}/{n_layers} "
          f"threads={torch.get_num_threads()}")
    print(f"forward+backward (one prompt, all params):  {t_fb:.3f} s")
    print(f"IG per prompt per layer path:               {t_ig / len(layers):.3f} s  "
          f"(ratio {t_ig / len(layers) / t_fb:.1f})")
    print(f"IG per prompt, all {n_layers} layers{' (extrapolated)' if len(layers) < n_layers else ''}: "
          f"{t_ig_all:.3f} s")
    print(f"IG / forward+backward ratio: {t_ig_all / t_fb:.1f}  "
          f"(reference: layers x steps = {n_layers * args.steps})")


if __name__ == "__main__":
    main()
