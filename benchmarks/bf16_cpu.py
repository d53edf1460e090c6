"""bfloat16 vs float32 on this CPU: speed of capture, decoding and NLL, and how much the results move.

Side by side in one run, same prompts: capture time; batch-8 greedy decode tokens/s; which neurons `selective`
removes (Jaccard of the removed sets per layer, fp32 vs bf16 statistics); the target proxy (NLL of the unpruned
model's own answers) of the unpruned and the selective-pruned model; and how many greedy outputs are identical.
`model.dtype=auto` picks bf16 on CPUs with native bf16 (avx512_bf16 or AMX) because of what this prints.

    .venv/bin/python benchmarks/bf16_cpu.py [--model pip:smollm2-135m-instruct] [--n 64] [--ratio 0.1]
"""

import argparse
import time

import torch

from prunekit import capture, data, dist, models, scoring, strategies, surgery
from prunekit.evaluation import generation, nll
from prunekit.evaluation.benchmarks import gsm8k
from prunekit.mlp import mlp_layers


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="pip:smollm2-135m-instruct")
    ap.add_argument("--n", type=int, default=64, help="prompts per capture set")
    ap.add_argument("--gen", type=int, default=16, help="prompts generated (and scored by NLL)")
    ap.add_argument("--new-tokens", type=int, default=64)
    ap.add_argument("--ratio", type=float, default=0.1)
    args = ap.parse_args()
    print(f"cpu bf16 native: {dist.cpu_has_bf16()} | threads {torch.get_num_threads()}")
    source = models.resolve(args.model)
    target = data.load_prompts({"path": "pip:gsm_symbolic", "field": "question", "n": args.n}, "target")
    distractors = data.load_prompts({"path": "pip:squad", "template": "{context}\n{question}", "n": args.n}, "squad")
    questions = data.load_prompts({"path": "pip:gsm_symbolic", "field": "question", "n": args.gen,
                                   "offset": 10000}, "eval")
    prompts = [gsm8k.build_prompt(q) for q in questions]
    settings = capture.CaptureSettings(max_length=512, batch_size=8)
    out = {}
    for dtype in ("float32", "bfloat16"):
        model, tok = models.load(source, "~/.cache/prunekit/models", dtype=dtype)
        t = time.perf_counter()
        stats = capture.statistics(model, tok, {"target": target, "squad": distractors}, settings)
        t_capture = time.perf_counter() - t
        t = time.perf_counter()
        gens = generation.generate(model, tok, prompts, max_new_tokens=args.new_tokens, batch_size=8,
                                   chat_template=True, progress=False)
        t_gen = time.perf_counter() - t
        d_ff = mlp_layers(model)[0].d_ff
        plan = strategies.get({"name": "selective"}).plan(
            strategies.Scores(selectivity=scoring.selectivity(stats["target"], [stats["squad"]])),
            n_prune=surgery.check_ratio(d_ff, args.ratio), d_ff=d_ff, layers=len(mlp_layers(model)), seed=0)
        out[dtype] = dict(model=model, tok=tok, capture=t_capture, tps=sum(g.n_tokens for g in gens) / t_gen,
                          outputs=[g.output for g in gens], plan=plan, removed=plan.removed())
    pairs = [(p, o) for p, o in zip(prompts, out["float32"]["outputs"]) if o.strip()]  # fp32 answers: the reference
    for o in out.values():
        o["nll"] = nll.target_nll(o["model"], o["tok"], pairs, chat_template=True, progress=False)
        o["plan"].apply(o["model"])
        o["nll_pruned"] = nll.target_nll(o["model"], o["tok"], pairs, chat_template=True, progress=False)
    a, b = out["float32"]["removed"], out["bfloat16"]["removed"]
    jaccard = [len(set(x.tolist()) & set(y.tolist())) / len(set(x.tolist()) | set(y.tolist())) for x, y in zip(a, b)]
    same = sum(x == y for x, y in zip(out["float32"]["outputs"], out["bfloat16"]["outputs"]))
    f, h = out["float32"], out["bfloat16"]
    print(f"{'':34} {'float32':>10} {'bfloat16':>10} {'bf16/fp32':>10}")
    print(f"{'capture time (s)':34} {f['capture']:>10.1f} {h['capture']:>10.1f} {h['capture'] / f['capture']:>10.2f}")
    print(f"{'decode tokens/s (batch 8)':34} {f['tps']:>10.1f} {h['tps']:>10.1f} {h['tps'] / f['tps']:>10.2f}")
    print(f"{'NLL own answers, unpruned':34} {f['nll']:>10.3f} {h['nll']:>10.3f}")
    print(f"{'NLL own answers, selective ' + str(args.ratio):34} {f['nll_pruned']:>10.3f} {h['nll_pruned']:>10.3f}")
    print(f"removed-neuron Jaccard fp32 vs bf16: mean {sum(jaccard) / len(jaccard):.3f}, min {min(jaccard):.3f}")
    print(f"identical greedy outputs: {same}/{len(prompts)}")


if __name__ == "__main__":
    main()
