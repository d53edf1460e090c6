"""Shared generation engine: batched greedy decoding with left padding, length-sorted batches, stop reasons.

Every generative metric (EM, pass@1, traps, distractor similarity) calls `generate`, so the slicing of
new tokens per row is done once, here, and tested against one-prompt-at-a-time decoding. `generate_journaled`
adds the evaluation's batching by padded tokens, the loop and answer stops, and the journal a killed evaluation
resumes from.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from accelerate.utils import gather_object
from tqdm.auto import tqdm
from transformers import StoppingCriteria, StoppingCriteriaList, StopStringCriteria

from prunekit import text
from prunekit.checkpoint import atomic_write_text
from prunekit.dist import process_state
from prunekit.errors import ConfigError
from prunekit.evaluation import traps
from prunekit.evaluation.kv_cache import KINDS as KV_CACHES
from prunekit.evaluation.kv_cache import make_cache

log = logging.getLogger(__name__)

STOP_REASONS = ("eos", "length", "criterion")


@dataclass
class Generation:
    """One prompt's greedy continuation: decoded new text, its token ids (EOS excluded) and why it stopped."""

    prompt: str
    output: str
    token_ids: list[int]
    n_tokens: int
    stop_reason: str  # "eos" | "length" | "criterion"

    def record(self, **extra) -> dict:
        """JSONL record for `generations.jsonl`: prompt, output, n_tokens, stop_reason plus caller fields (e.g. id)."""
        rec = {k: v for k, v in asdict(self).items() if k != "token_ids"}
        rec.update(extra)
        return rec


class _FirstStop(StoppingCriteria):
    """Wraps caller criteria and records, per row, how many new tokens existed when one of them first fired.

    transformers only reports that a row finished, not why; this record tells a criterion stop apart from
    EOS (pad may equal EOS, so the tokens alone cannot).
    """

    def __init__(self, criteria: Sequence[StoppingCriteria], prompt_len: int, batch: int):
        self.criteria = StoppingCriteriaList(criteria)
        self.prompt_len = prompt_len
        self.fired_at = torch.full((batch,), -1, dtype=torch.long)

    def __call__(self, input_ids: torch.LongTensor, scores, **kwargs) -> torch.BoolTensor:
        done = self.criteria(input_ids, scores, **kwargs)
        done = torch.as_tensor(done, dtype=torch.bool, device=input_ids.device).expand(input_ids.shape[0])
        new = done.cpu() & (self.fired_at < 0)
        self.fired_at[new] = input_ids.shape[1] - self.prompt_len
        return done


def eos_ids(model, tokenizer) -> list[int]:
    """All EOS ids: `generation_config.eos_token_id` (int or list), else the tokenizer's EOS."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if eos is None:
        eos = tokenizer.eos_token_id
    if eos is None:
        raise ConfigError("no EOS token: set model.generation_config.eos_token_id or tokenizer.eos_token")
    return [int(e) for e in (eos if isinstance(eos, (list, tuple)) else [eos])]


def split_row(new_ids: Sequence[int], eos: Iterable[int], fired_at: int = -1) -> tuple[list[int], str]:
    """New tokens of one row cut at the first EOS (excluded) or where a criterion fired; with the stop reason.

    An EOS emitted on the same step a criterion fires counts as "eos".
    """
    eos = set(eos)
    ids = [int(t) for t in new_ids]
    first_eos = next((i for i, t in enumerate(ids) if t in eos), None)
    if first_eos is not None and (fired_at < 0 or first_eos + 1 <= fired_at):
        return ids[:first_eos], "eos"
    if fired_at >= 0:
        return ids[:fired_at], "criterion"
    return ids, "length"


def greedy_config(model, max_new_tokens: int, pad_id: int, eos: list[int]):
    """Greedy config from the model's own (copy), with sampling knobs cleared so nothing warns or samples."""
    cfg = copy.deepcopy(model.generation_config)
    cfg.do_sample = False
    cfg.num_beams = 1
    cfg.temperature = cfg.top_p = cfg.top_k = cfg.min_p = None
    cfg.max_new_tokens = max_new_tokens
    cfg.max_length = None
    cfg.pad_token_id = pad_id
    cfg.eos_token_id = eos
    cfg.stop_strings = None
    cfg.return_dict_in_generate = False
    return cfg


def _check(prompts, max_new_tokens, batch_size, drop_finished_every=0, cache="dynamic") -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens <= 0:
        raise ConfigError(f"max_new_tokens must be a positive integer, got {max_new_tokens!r}")
    if not isinstance(batch_size, int) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")
    if not isinstance(drop_finished_every, int) or isinstance(drop_finished_every, bool) or drop_finished_every < 0:
        raise ConfigError(f"drop_finished_every must be an integer >= 0 (0: off), got {drop_finished_every!r}")
    if cache not in KV_CACHES:
        raise ConfigError(f"kv_cache={cache!r}: allowed: {', '.join(KV_CACHES)}")
    bad = [i for i, p in enumerate(prompts) if not isinstance(p, str)]
    if bad:
        raise ConfigError(f"prompts must be strings; items {bad[:5]} are not")


def _decode(model, input_ids, attention_mask, gen_cfg, criteria: list, eos: list[int],
            drop_finished_every: int, cache_kind: str) -> tuple[list[list[int]], list[int]]:
    """New token ids per row (padding after a row's stop included) and where a criterion first fired (-1: never).

    With ``drop_finished_every`` = k > 0 the batch is decoded k tokens per `generate` call, and between calls the
    rows that are done (EOS or a criterion) leave the batch and the KV cache (`DynamicCache.batch_select_indices`):
    the remaining rows keep their padding, cache and positions, so each row computes exactly what it would have
    in the full batch, while a long last row no longer drags the finished ones through every step. 0: one call.
    ``cache_kind``: the KV cache generate fills (`KV_CACHES`; "dynamic" is generate's own choice).
    """
    if (drop_finished_every or cache_kind != "dynamic") and gen_cfg.cache_implementation is not None:
        # generate refuses a cache object beside a cache choice, and fills an unset choice from the model's own
        log.info("drop_finished_every and kv_cache ignored: the model's generation config chooses "
                 "cache_implementation=%r", gen_cfg.cache_implementation)
        drop_finished_every, cache_kind = 0, "dynamic"
    budget, rows = gen_cfg.max_new_tokens, list(range(input_ids.shape[0]))
    new: list[list[int]] = [[] for _ in rows]
    fired = [-1] * len(rows)
    own = drop_finished_every or cache_kind != "dynamic"  # a cache of ours, kept across the generate calls
    cache = make_cache(cache_kind, model) if own else None
    step_cfg, done_tokens, eos_t = copy.copy(gen_cfg), 0, torch.tensor(eos)
    while rows:
        step_cfg.max_new_tokens = min(drop_finished_every or budget, budget - done_tokens)
        first_stop = _FirstStop(criteria, input_ids.shape[1] - done_tokens, len(rows))
        out = model.generate(input_ids=input_ids, attention_mask=attention_mask, generation_config=step_cfg,
                             stopping_criteria=StoppingCriteriaList([first_stop]) if criteria else None,
                             **({"cache": cache} if cache is not None else {}))
        chunk = out[:, input_ids.shape[1]:].cpu()
        done_tokens += chunk.shape[1]
        finished = torch.isin(chunk, eos_t).any(1) | (first_stop.fired_at >= 0)
        for r, row in enumerate(rows):
            new[row] += chunk[r].tolist()
            fired[row] = int(first_stop.fired_at[r])
        if done_tokens >= budget or bool(finished.all()):
            break
        keep = (~finished).nonzero().flatten()
        rows = [rows[r] for r in keep.tolist()]
        input_ids = out[keep.to(out.device)]
        attention_mask = torch.cat([attention_mask, attention_mask.new_ones(chunk.shape)], 1)[keep.to(out.device)]
        cache.batch_select_indices(keep.to(out.device))
    return new, fired


@torch.inference_mode()
def generate(
    model,
    tokenizer,
    prompts: list[str],
    *,
    max_new_tokens: int,
    batch_size: int = 8,
    chat_template: bool = False,
    stopping_criteria_factory: Callable[[int], list[StoppingCriteria]] | None = None,
    stop_strings: list[str] | None = None,
    sort_by_length: bool = True,
    progress: bool = True,
    desc: str = "generate",
    drop_finished_every: int = 0,
    kv_cache: str = "dynamic",
) -> list[Generation]:
    """Greedy continuations of `prompts` (original order), batched with left padding and KV cache.

    `stopping_criteria_factory(padded_prompt_len)` adds per-batch criteria; rows they stop (and rows that hit a
    stop string) get stop_reason "criterion", and keep the tokens up to and including the triggering one.
    Under `accelerate launch` the batches are shared out whole across processes and the generations gathered,
    so every process returns exactly what one process would.
    `drop_finished_every`: see `_decode` (0: each batch in one `model.generate` call); `kv_cache`: "dynamic"
    (transformers' DynamicCache) or "preallocated" (`kv_cache.BufferedLayer`: the same values without a
    concatenation per step).
    """
    _check(prompts, max_new_tokens, batch_size, drop_finished_every, kv_cache)
    if not prompts:
        return []
    eos = eos_ids(model, tokenizer)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos[0]
    gen_cfg = greedy_config(model, max_new_tokens, pad_id, eos)
    encoded = text.encode(tokenizer, prompts, chat_template)
    order = "longest" if sort_by_length else "given"
    batches = text.length_batches([len(e) for e in encoded], batch_size, order=order)
    results: list[Generation | None] = [None] * len(prompts)
    device = model.device
    # Built once: it precomputes tables over the whole vocabulary, and keeps no per-batch state.
    stop_crit = StopStringCriteria(tokenizer=tokenizer, stop_strings=list(stop_strings)) if stop_strings else None
    n_new = 0
    state = process_state()
    with state.split_between_processes(batches) as mine:
        mine = list(mine)
    bar = tqdm(total=sum(map(len, mine)), desc=desc, disable=not progress or not state.is_local_main_process,
               unit="prompt")
    for idx in mine:
        enc = text.collate([encoded[i] for i in idx], pad_id, left=True)  # prompt ends aligned
        input_ids = enc["input_ids"].to(device)
        attention_mask = enc["attention_mask"].to(device)
        prompt_len = input_ids.shape[1]
        extra = list(stopping_criteria_factory(prompt_len)) if stopping_criteria_factory else []
        if stop_crit is not None:
            extra.append(stop_crit)
        new, fired_at = _decode(model, input_ids, attention_mask, gen_cfg, extra, eos, drop_finished_every,
                                kv_cache)
        for row, i in enumerate(idx):
            ids, reason = split_row(new[row], eos, fired_at[row])
            decoded = tokenizer.decode(ids, skip_special_tokens=True)
            results[i] = Generation(prompts[i], decoded, ids, len(ids), reason)
            n_new += len(ids)
        bar.update(len(idx))
        bar.set_postfix(new_tokens=n_new)
    bar.close()
    if state.num_processes > 1:
        for i, generation in gather_object([(i, results[i]) for idx in mine for i in idx]):
            results[i] = generation
    log.info("%s: %d prompts, %d new tokens, %d batches", desc, sum(map(len, mine)), n_new, len(mine))
    return results  # type: ignore[return-value]


def write_generations(path: str | Path, records: Iterable[dict]) -> Path:
    """Write records as JSONL atomically (temp file in the same directory, then os.replace)."""
    path = Path(path)
    atomic_write_text(path, "".join(json.dumps(rec, ensure_ascii=False) + "\n" for rec in records))
    return path


def read_generations(path: str | Path) -> list[dict]:
    """Records of a generations JSONL file (blank lines skipped)."""
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------- journal
def journal_key(prompt: str, budget: int, chat: bool, loop: bool, answer: bool) -> str:
    """What decides one greedy generation (the model aside: a journal lives in one run directory)."""
    blob = json.dumps([prompt, budget, chat, loop, answer])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def read_journal(path: Path | None) -> dict[str, Generation]:
    """Generations a killed earlier attempt finished (a torn last line is ignored)."""
    done: dict[str, Generation] = {}
    if path is None or not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            key = rec.pop("key")
            done[key] = Generation(**rec)
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
    return done


def generate_journaled(model, tokenizer, prompts: list[str], budget: int, *, chat: bool, loop_detection: bool,
                       stop_on_answer, batch_size: int, max_batch_tokens: int | None, drop_finished_every: int,
                       kv_cache: str = "dynamic", desc: str, journal: Path | None = None) -> list[Generation]:
    """Greedy generations in batches of at most `batch_size` prompts and `max_batch_tokens` padded prompt tokens,
    with the online loop detector and the optional stop at the first complete answer (``stop_on_answer``: None or
    False, or text -> whether it holds a complete answer).

    With ``journal`` (a JSONL path), every finished batch is appended there and a re-run skips the prompts it
    holds, so a killed hour-long evaluation resumes where it stopped; the caller deletes it when done.
    """
    eos = eos_ids(model, tokenizer)
    loop, answer = loop_detection, stop_on_answer
    keys = [journal_key(p, budget, chat, loop, bool(answer)) for p in prompts]
    done = read_journal(journal) if process_state().num_processes == 1 else {}
    if done:
        log.info("%s: resuming, %d of %d prompts already generated (%s)", desc,
                 sum(k in done for k in keys), len(prompts), journal)

    def criteria(prompt_len: int) -> list:
        crits = []
        if loop:
            crits.append(traps.LoopStoppingCriteria(prompt_len, eos_token_id=eos))
        if answer:
            crits.append(traps.AnswerStoppingCriteria(tokenizer, answer, prompt_len))
        return crits

    results: list = [done.get(k) for k in keys]
    todo = [i for i, r in enumerate(results) if r is None]
    lengths = [len(ids) for ids in text.encode(tokenizer, [prompts[i] for i in todo], chat)]
    groups = text.length_batches(lengths, batch_size, max_tokens=max_batch_tokens)
    n_new = 0
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="prompt") as bar:
        for group in groups:  # one engine call per batch: the engine itself batches by count only
            idx = [todo[j] for j in group]
            gens = generate(model, tokenizer, [prompts[i] for i in idx], max_new_tokens=budget,
                            batch_size=len(idx), chat_template=chat, progress=False,
                            stopping_criteria_factory=criteria if (loop or answer) else None, desc=desc,
                            drop_finished_every=drop_finished_every, kv_cache=kv_cache)
            for i, g in zip(idx, gens):
                results[i] = g
                n_new += g.n_tokens
            if journal is not None and process_state().is_main_process:
                with open(journal, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps({"key": keys[i], **asdict(results[i])}) + "\n" for i in idx)
            bar.update(len(idx))
            bar.set_postfix(new_tokens=n_new)
    return results
