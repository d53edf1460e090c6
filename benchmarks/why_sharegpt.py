"""Why did `selective` lose to `random` with ShareGPT as the only distractor set? Three hypotheses, measured.

One process, one model load: the GSM-Symbolic target and several distractor sets are captured once each, then for
every distractor set the selectivity (paper eq. 2) is computed against the same target, the model is pruned
(selective, and random seeds 42/33 for reference) and the target proxy is measured: NLL of the unpruned model's
own answers on the evaluation prompts (the validated proxy; cached like the evaluation of the source model).

Distractor sets (all pip-shipped): ShareGPT first turns as the old default took them; ShareGPT split by length
(<= 400 characters vs longer) and by content (code/technical markers vs none); the new default mix (SQuAD
passage+question and chitchat dialogue). Per set it prints the prompts' mean length in tokens and code share (H1,
H2), the NLL after selective vs random pruning, and how many of the neurons selective removes are among each
layer's most target-important half by Wanda-style importance (H3: does S remove neurons the target relies on?).
H4 (position): the same selectivity with each prompt's first token left out of the means (capture.skip_first=1;
the first position carries the attention-sink "massive activations", and a short prompt's mean is dominated by it).

    .venv/bin/python benchmarks/why_sharegpt.py [--ratios 0.05,0.1] [--n 200] [--eval-n 64]
"""

import argparse
import copy
import re
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

from prunekit import capture, data, models, recipes, scoring, strategies, surgery
from prunekit.evaluation import baseline, nll, suite
from prunekit.mlp import mlp_layers

REPO = Path(__file__).resolve().parents[1]
# Markers of code or technical text in a prompt (H2): fences, code keywords, markup, shell/SQL words.
CODE = re.compile(r"```|\bdef |\bimport |\bclass |[{};]\s*$|</?\w+>|\bSELECT\b|\bfunction\b|=>|\bconsole\.|\bpip ",
                  re.MULTILINE)
DIALOGUE = ("{messages[0][role]}: {messages[0][content]}\n{messages[1][role]}: {messages[1][content]}\n"
            "{messages[2][role]}: {messages[2][content]}\ncontinue the dialogue for few turn")


def distractor_sets(n: int) -> dict[str, list[str]]:
    share = data.load_prompts({"path": "pip:sharegpt", "field": "conversations.0.value", "n": 4000}, "sharegpt")
    short = [p for p in share if len(p) <= 400]
    code = [p for p in share if CODE.search(p)]
    plain = [p for p in share if not CODE.search(p)]
    half = n // 2
    return {
        "sharegpt (old default)": share[:n],
        "sharegpt <= 400 chars": short[:n],
        "sharegpt > 400 chars": [p for p in share if len(p) > 400][:n],
        "sharegpt code/technical": code[:n],
        "sharegpt no code": plain[:n],
        "sharegpt short, no code": [p for p in short if not CODE.search(p)][:n],
        "squad + chitchat (new default)":
            data.load_prompts({"path": "pip:squad", "template": "{context}\n{question}", "n": half}, "squad")
            + data.load_prompts({"path": "pip:chitchat", "template": DIALOGUE, "n": half}, "chitchat"),
    }


def own_nll(model, tokenizer, pairs) -> float:
    return nll.target_nll(model, tokenizer, pairs, batch_size=8, max_length=1024, chat_template=True, progress=False)


def pruned(model, plan):
    copy_ = copy.deepcopy(model)
    plan.apply(copy_)
    return copy_


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ratios", default="0.05,0.1")
    ap.add_argument("--n", type=int, default=200, help="prompts per capture set")
    ap.add_argument("--eval-n", type=int, default=64, help="evaluation prompts whose own answers are scored")
    args = ap.parse_args()

    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        cfg = compose("prune", overrides=["model=smollm2-135m", "task=math_offline", f"eval.n={args.eval_n}",
                                          "eval.parts=[nll]"])
    source = models.resolve(cfg.model.name_or_path)
    loaded = models.load_model(source, cfg.model)
    model, tokenizer = loaded.model, loaded.tokenizer
    _, rows = baseline.source_evaluation(loaded, recipes.plain(cfg.task), recipes.plain(cfg.eval),
                                         Path(cfg.cache_dir).expanduser() / "sources")
    samples = suite.target_samples(recipes.plain(cfg.task), suite.check_settings(recipes.plain(cfg.eval), cfg.task))
    pairs, correct_only = suite.own_answer_pairs(samples, rows)
    print(f"target proxy: NLL of the unpruned model's own answers on {len(pairs)} prompts "
          f"({'correct ones' if correct_only else 'all: none is correct'}); unpruned {own_nll(model, tokenizer, pairs):.3f}")

    settings = capture.CaptureSettings(max_length=1024, batch_size=8)
    target = data.load_prompts(dict(recipes.plain(cfg.task.target), n=args.n), "target")
    sets = {"target": target, **distractor_sets(args.n)}
    stats = capture.statistics(model, tokenizer, sets, settings)
    h4 = ["sharegpt (old default)", "sharegpt <= 400 chars", "squad + chitchat (new default)"]
    skipped = capture.statistics(model, tokenizer, {k: sets[k] for k in ["target", *h4]},
                                 capture.CaptureSettings(max_length=1024, batch_size=8, skip_first=1))
    for name in h4:
        sets[f"{name}, first token out"] = sets[name]
        stats[f"{name}, first token out"] = (skipped["target"], skipped[name])
    layers = mlp_layers(model)
    d_ff = layers[0].d_ff
    importance = scoring.wanda_sp(stats["target"], [m.down.weight for m in layers])
    top_half = importance >= importance.median(dim=1, keepdim=True).values  # [layers, d_ff]

    for ratio in map(float, args.ratios.split(",")):
        k = surgery.check_ratio(d_ff, ratio)
        rand = [own_nll(pruned(model, strategies.get({"name": "random", "seed": s}).plan(
            strategies.Scores(), n_prune=k, d_ff=d_ff, layers=len(layers), seed=s)), tokenizer, pairs) for s in (42, 33)]
        print(f"\nratio {ratio} (real {k / d_ff:.3f}); random seeds 42/33: NLL {rand[0]:.3f} / {rand[1]:.3f}")
        print(f"{'distractor set':44} {'prompts':>7} {'tokens':>7} {'code %':>7} {'selective NLL':>14} "
              f"{'vs random':>10} {'removed in top-half target imp. %':>34}")
        for name, prompts in sets.items():
            if name == "target":
                continue
            pair = stats[name] if isinstance(stats[name], tuple) else (stats["target"], stats[name])
            s = scoring.selectivity(pair[0], [pair[1]])
            plan = strategies.get({"name": "selective"}).plan(strategies.Scores(selectivity=s), n_prune=k, d_ff=d_ff,
                                                              layers=len(layers), seed=0)
            removed = plan.removed()
            in_top = float(torch.gather(top_half, 1, removed).float().mean()) * 100
            value = own_nll(pruned(model, plan), tokenizer, pairs)
            tokens = sum(min(len(t), 1024) for t in tokenizer(prompts)["input_ids"]) / len(prompts)
            code = 100 * sum(bool(CODE.search(p)) for p in prompts) / len(prompts)
            print(f"{name:44} {len(prompts):>7} {tokens:>7.0f} {code:>7.0f} {value:>14.3f} "
                  f"{value - sum(rand) / 2:>+10.3f} {in_top:>34.1f}", flush=True)


if __name__ == "__main__":
    main()
