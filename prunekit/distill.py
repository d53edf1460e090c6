"""Self-data distillation: the unpruned source model's own greedy answers to the training prompts, as the
recovery targets (``task.train.responses=source``), cached on disk.

Why: a dataset's reference answers teach the pruned model the dataset's style. Recovered on CodeIO's reference
solutions, the models copied its scaffold comments into their HumanEval answers (docs/results/qwen2.5-coder-0.5b.md,
Table 4). The source model's answers are what the pruned model should go back to. This is the self-data
distillation of Thangarasa et al. (2024), "Self-Data Distillation for Recovering Quality in Pruned Large Language
Models".

The answers are generated once per source model + dtype + prompts + decoding settings (``answers_key``), with the
evaluation's generation engine: batches, the online loop detector, and a journal, so a killed generation resumes.
An answer that never ended (a loop, or the token budget) is returned as None: it would teach the model not to stop.
"""

from __future__ import annotations

import logging
from pathlib import Path

from prunekit.cache import ArtifactCache, Damaged, digest
from prunekit.dist import process_state
from prunekit.evaluation import generation

log = logging.getLogger(__name__)

ANSWERS_VERSION = 1  # bump when what an entry holds, or how it is generated, changes meaning


class SourceAnswers(ArtifactCache):
    """``<cache_dir>/<key>.jsonl``: one {prompt, output, stop_reason, n_tokens} row per training prompt, in order."""

    kind = "source answers cache"
    suffix = ".jsonl"
    again = "generating again"
    hit_message = "source answers: cached in %s"
    log = log

    def read(self, path: Path, expected: list[str]) -> list[dict]:
        rows = generation.read_generations(path)
        if [r.get("prompt") for r in rows] != expected:
            raise Damaged(f"{len(rows)} rows whose prompts are not the {len(expected)} expected")
        return rows

    def write(self, path: Path, rows: list[dict], expected=None) -> None:
        generation.write_generations(path, rows)


def answers_key(identity, dtype: str, prompts: list[str], budget: int, options: dict) -> str:
    """What decides the source's greedy answers: the model, its dtype, the prompts, the budget and the generation
    options (chat template, loop detection, batching: bf16 numerics depend on the batch's padding)."""
    return digest({"version": ANSWERS_VERSION, "model": dict(identity), "dtype": dtype, "prompts": digest(prompts, None),
                   "budget": budget, "options": options})


def source_answers(loaded, prompts: list[str], budget: int, options: dict, cache_dir) -> list[str | None]:
    """The source model's (``loaded``: a LoadedModel) greedy answer to each prompt, None where it never ended.
    ``options``: `generation.generate_journaled`'s keyword arguments (chat, loop_detection, batch_size, ...)."""
    cache = SourceAnswers(Path(cache_dir).expanduser())
    key = answers_key(loaded.identity, str(loaded.dtype), prompts, budget, options)
    journal = cache.root / f"{key}.partial.jsonl"

    def generate() -> list[dict]:
        log.info("source answers: generating %d answers with the unpruned model once (cached in %s)", len(prompts),
                 cache.root)
        gens = generation.generate_journaled(loaded.model, loaded.tokenizer, prompts, budget, stop_on_answer=False,
                                             desc="source answers", journal=journal, **options)
        return [{"prompt": g.prompt, "output": g.output, "stop_reason": g.stop_reason, "n_tokens": g.n_tokens}
                for g in gens]

    # under accelerate launch every process takes part in the generation
    rows, _ = cache.get(key, generate, expected=prompts, collective=True)
    if process_state().is_main_process:
        journal.unlink(missing_ok=True)
    return [r["output"] if r["stop_reason"] == "eos" else None for r in rows]
