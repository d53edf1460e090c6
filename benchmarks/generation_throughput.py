"""Greedy decode tokens/s of the evaluation's generation path next to this machine's physical bounds, one run.

    python benchmarks/generation_throughput.py                                   # SmolLM2 + Qwen, batch 1 8 16
    python benchmarks/generation_throughput.py --models smollm2 --batches 1,8 --max-new-tokens 16   # short
    python benchmarks/generation_throughput.py --models '' --gguf run/model-f16.gguf,run/model-q4_k_m.gguf

Per model and batch size B the first B HumanEval prompts (pip:humaneval, chat template) run through
prunekit.evaluation.generation.generate with the loop detector, as the evaluation runs them; a clock criterion
timestamps every decode step, so the decode rate excludes the prefill. Beside it, measured in the same run:
- memory bound: B / (weight bytes read per decode step / copy bandwidth). A step reads every weight once (the
  input embedding only when the output head is tied to it); the copy benchmark moves a 512 MiB tensor
  (bytes read + written / time).
- compute bound: B / (FLOPs per step / matmul FLOP/s). FLOPs per step = 2 x B x matmul weights + attention
  (4 x B x layers x heads x head_dim x mean context); the matmul rate is a 2048^2 matmul in the model's dtype.
achieved / bound uses the lower (binding) bound. `same rows`: the rows shared with the previous (smaller)
batch's run (its prompts come first) have the same tokens. Both models come from their pip packages.

With `--llama-cpp` (needs llama-cpp-python, e.g. `pip install llama-cpp-python==0.3.36`, built from its sdist) each
model is also exported to an f16 GGUF (`prunekit.export`) and llama.cpp decodes the first prompt greedily at batch 1,
with as many threads: its decode tokens/s beside transformers' batch-1 row, and how many of the first tokens agree
(f16 and bf16 round differently, so the two greedy paths may part after a while).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from transformers import StoppingCriteria

from prunekit import data, models, text
from prunekit.evaluation import generation, traps
from prunekit.export import gguf as export_gguf

SOURCES = {"smollm2": "pip:smollm2-135m-instruct", "qwen": "pip:qwen2.5-coder-0.5b-instruct"}


class StepClock(StoppingCriteria):
    """Never stops a row; records when each decoding step's token arrived (called once per step)."""

    def __init__(self, log: list):
        self.log = log

    def __call__(self, input_ids, scores, **kwargs):
        self.log.append((time.perf_counter(), input_ids.shape[1]))
        return torch.zeros(input_ids.shape[0], dtype=torch.bool, device=input_ids.device)


def copy_bandwidth(mib: int = 512, repeats: int = 5) -> float:
    """Bytes/s of a large tensor copy (read + write), best of `repeats`."""
    src = torch.ones(mib * 2**20 // 4, dtype=torch.float32)
    dst = torch.empty_like(src)
    dst.copy_(src)
    best = min(_timed(lambda: dst.copy_(src)) for _ in range(repeats))
    return 2 * src.numel() * 4 / best


def matmul_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 3) -> float:
    """FLOP/s of an n x n matmul in `dtype`, best of `repeats`."""
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    return 2 * n**3 / min(_timed(lambda: a @ b) for _ in range(repeats))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def step_costs(model) -> tuple[int, int, int]:
    """(weight bytes read per decode step, matmul weights per row, attention width layers x heads x head_dim)."""
    emb = model.get_input_embeddings().weight
    tied = model.get_output_embeddings().weight.data_ptr() == emb.data_ptr()
    params = [p for p in model.parameters() if tied or p.data_ptr() != emb.data_ptr()]
    read = sum(p.numel() * p.element_size() for p in params)
    matmul = sum(m.weight.numel() for m in model.modules() if isinstance(m, torch.nn.Linear))
    cfg = model.config.get_text_config(decoder=True)
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    return read, matmul, cfg.num_hidden_layers * cfg.num_attention_heads * head_dim


def decode_rate(model, tok, prompts, max_new_tokens: int, drop_every: int) -> tuple[float, float, list]:
    """(decode tokens/s, mean context length, generations) of one batch through the evaluation's engine."""
    ticks: list = []
    eos = generation.eos_ids(model, tok)

    def criteria(prompt_len):
        return [traps.LoopStoppingCriteria(prompt_len, eos_token_id=eos), StepClock(ticks)]

    gens = generation.generate(model, tok, prompts, max_new_tokens=max_new_tokens, batch_size=len(prompts),
                               chat_template=True, stopping_criteria_factory=criteria, progress=False,
                               drop_finished_every=drop_every)
    made = sum(g.n_tokens + (g.stop_reason == "eos") for g in gens) - len(prompts)  # after the prefill's token
    seconds = ticks[-1][0] - ticks[0][0]
    return made / seconds, sum(c for _, c in ticks) / len(ticks), gens


def bench_model(name: str, source: str, batches: list[int], args, bw: float) -> None:
    """Print one model's header and a row per batch size as each is measured."""
    model, tok = models.load(models.resolve(source), os.path.expanduser("~/.cache/prunekit/models"), dtype=args.dtype)
    flops = matmul_flops(model.dtype)
    read, matmul, attn_width = step_costs(model)
    spec = {"path": "pip:humaneval", "split": None, "field": "prompt", "n": max(batches)}
    prompts = [r["prompt"] for r in data.load_records(spec, "benchmark")]
    generation.generate(model, tok, prompts[:1], max_new_tokens=2, chat_template=True, progress=False)  # warm-up
    print(f"{name}: {model.dtype}, weights read per step {read / 1e6:.0f} MB, matmul FLOP/s {flops / 1e9:.1f} G, "
          f"prompt tokens {[len(t) for t in text.encode(tok, prompts, True)][:max(batches)]}", flush=True)
    prev: list = []  # the previous (smaller) batch's generations: a larger batch must repeat them token for token
    first: list = []  # batch 1's tokens, for the llama.cpp comparison
    for b in batches:
        tps, ctx, gens = decode_rate(model, tok, prompts[:b], args.max_new_tokens, args.drop_finished_every)
        same = all(a.token_ids == g.token_ids for a, g in zip(prev, gens))
        prev = gens
        first = first or gens[0].token_ids
        mem_bound = b * bw / read
        compute_bound = b * flops / (2 * b * matmul + 4 * b * attn_width * ctx)
        bound = min(mem_bound, compute_bound)
        print(f"  {name:<8}{b:>6}{tps:>11.2f}{mem_bound:>12.1f}{compute_bound:>14.1f}"
              f"{'memory' if mem_bound <= compute_bound else 'compute':>9}{tps / bound:>10.1%}{ctx:>8.0f}"
              f"{str(same):>11}", flush=True)
    if args.llama_cpp:
        tps, agree, n = llama_cpp_rate(model, tok, source, prompts[0], args.max_new_tokens, first)
        print(f"  {name:<8}{'1 llama.cpp f16':>17}{tps:>11.2f}{1 * bw / (read * 2 / model.dtype.itemsize):>12.1f}"
              f"  first {agree} of {n} tokens as transformers' batch 1", flush=True)


def llama_cpp_rate(model, tok, source: str, prompt: str, max_new_tokens: int,
                   reference: list) -> tuple[float, int, int]:
    """(llama.cpp decode tokens/s, tokens agreeing with `reference` before the first difference, tokens made) of one
    greedy batch-1 generation from the model exported as an f16 GGUF. The memory bound printed beside it counts
    2 bytes a weight."""
    from prunekit.export import gguf as export_gguf

    with tempfile.TemporaryDirectory(prefix="gen-throughput-") as tmp:
        model.save_pretrained(Path(tmp) / "model")
        tok.save_pretrained(Path(tmp) / "model")
        # as a run directory records it: a GGUF-sourced model's export starts from its source file's metadata
        (Path(tmp) / "pruning.json").write_text(json.dumps({"source_model": source}))
        path = export_gguf.export(Path(tmp) / "model", "f16", out=Path(tmp) / "model.gguf").path
        tps, made = gguf_rate(path, text.format_prompt(tok, prompt, True), max_new_tokens)
    agree = next((i for i, (a, b) in enumerate(zip(made, reference)) if a != b), min(len(made), len(reference)))
    return tps, agree, len(made)


def gguf_rate(path: Path, prompt_text: str, max_new_tokens: int) -> tuple[float, list]:
    """(decode tokens/s, tokens) of llama.cpp's greedy batch-1 generation from one GGUF file, prefill excluded."""
    import llama_cpp

    if problem := export_gguf.amx_backend_problem(llama_cpp):  # a segfault would end the whole benchmark run
        raise SystemExit(f"llama.cpp: {problem}")
    llm = llama_cpp.Llama(model_path=str(path), n_ctx=4096, n_threads=torch.get_num_threads(), n_batch=512, verbose=False)
    ids = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    made, stamps = [], []
    for token in llm.generate(ids, top_k=1, temp=0.0, repeat_penalty=1.0):  # greedy
        stamps.append(time.perf_counter())
        made.append(token)
        if token == llm.token_eos() or len(made) >= max_new_tokens:
            break
    return (len(made) - 1) / (stamps[-1] - stamps[0]), made


def bench_gguf_files(files: list[str], args) -> None:
    """--gguf: llama.cpp's batch-1 decode of exported files (e.g. f16 / q8_0 / q4_k_m of one pruned run), on the
    first HumanEval prompt in the chat template the file carries (read by transformers' GGUF tokenizer loader,
    formatted by the evaluation's own text.format_prompt)."""
    from transformers import AutoTokenizer

    spec = {"path": "pip:humaneval", "split": None, "field": "prompt", "n": 1}
    prompt = data.load_records(spec, "benchmark")[0]["prompt"]
    for f in map(Path, files):
        tok = AutoTokenizer.from_pretrained(str(f.parent), gguf_file=f.name)
        tps, made = gguf_rate(f, text.format_prompt(tok, prompt, True), args.max_new_tokens)
        print(f"  llama.cpp {f.name:<28}{os.path.getsize(f) / 2**20:>9.0f} MiB{tps:>11.2f} decode t/s "
              f"({len(made)} tokens)", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--models", default="smollm2,qwen", help="comma-separated: smollm2, qwen, or a model directory")
    ap.add_argument("--batches", default="1,8,16")
    ap.add_argument("--max-new-tokens", type=int, default=64)
    ap.add_argument("--dtype", default="auto", help="model.dtype: auto | float32 | bfloat16")
    ap.add_argument("--drop-finished-every", type=int, default=0, help="eval.drop_finished_every (0: off)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    ap.add_argument("--llama-cpp", action="store_true", help="also llama.cpp's batch-1 decode of an f16 export")
    ap.add_argument("--gguf", default="", help="comma-separated GGUF files: llama.cpp's batch-1 decode of each "
                                               "(with --models '' alone)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    batches = [int(b) for b in args.batches.split(",")]
    bw = copy_bandwidth()
    print(f"copy bandwidth {bw / 1e9:.2f} GB/s (read + write), threads={torch.get_num_threads()}, "
          f"max_new_tokens={args.max_new_tokens}, drop_finished_every={args.drop_finished_every}, "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"  {'model':<8}{'batch':>6}{'decode t/s':>11}{'mem bound':>12}{'compute bound':>14}{'binding':>9}"
          f"{'achieved':>10}{'context':>8}{'same rows':>11}", flush=True)
    for name in filter(None, args.models.split(",")):
        bench_model(name, SOURCES.get(name, name), batches, args, bw)
    if args.gguf:
        bench_gguf_files(args.gguf.split(","), args)


if __name__ == "__main__":
    main()
