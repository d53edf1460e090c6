"""Evaluation suite: one call runs the enabled parts of issue 4 on an in-memory model and returns flat metrics.

Parts: `task` (GSM8K EM / HumanEval pass@1 on greedy generations), `traps` (trap rate, Type 1 / Type 2),
`similarity` (distractor similarity against the unpruned source model's outputs, paper eq. 6), `resources`
(params, checkpoint size, peak memory, batch-1 tokens/s), `nll` (target NLL on gold solutions) and `lm_eval`.
`rescore` scores an existing generations file (vLLM, an API, ...) without a model.

`task` is the task preset as a plain dict (its `eval:` section holds `metric`, `target` with `gold_field`,
`distractors`, optional `max_new_tokens`); `settings` is `conf/eval/default.yaml` as a plain dict (missing keys
take the defaults of `DEFAULTS`).
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import logging
import time
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from statistics import fmean

from tqdm.auto import tqdm

from prunekit import config, data, text
from prunekit.checkpoint import DiskFullError, atomic_write_json, move_aside
from prunekit.dist import process_state
from prunekit.errors import PrunekitError
from prunekit.evaluation import benchmarks, generation, nll, resources, similarity, traps
from prunekit.runs.layout import JOURNAL_FILE  # finished batches of an evaluation still under way (resumable)

log = logging.getLogger(__name__)

PARTS = ("task", "traps", "similarity", "resources", "nll", "lm_eval")
# Distractor set name -> comparison kind, for sets whose spec does not say (`kind: qna | dialogue`): QnA outputs
# are compared by BERTScore F1, dialogue outputs by SBERT cosine.
DISTRACTOR_KINDS = {"squad": "qna", "qna": "qna", "conversations": "dialogue", "dialogue": "dialogue"}
KINDS = ("qna", "dialogue")
GENERATIONS_FILE = "generations.jsonl"
SAMPLES_FILE = "samples.jsonl"
DISTRACTOR_FILE = "distractor_generations.jsonl"
# Bumped when the reference generation recipe changes, so old cached references are not reused.
REFERENCE_VERSION = 1

# Every eval.* field and default (config.EvalConfig, which conf/eval/ extends), so plain callers can pass partial
# settings.
DEFAULTS: dict = config.defaults(config.EvalConfig)


class SuiteError(PrunekitError):
    """Bad evaluation settings, task or generations file; the message names the option and allowed values."""


# ---------------------------------------------------------------------------------------------- settings
def _as_plain(value):
    """Mapping/sequence trees (an OmegaConf node too, by duck typing) -> dicts and lists."""
    if isinstance(value, Mapping) or (hasattr(value, "items") and not isinstance(value, (str, bytes))):
        return {str(k): _as_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (hasattr(value, "__iter__") and hasattr(value, "__len__")
                                            and not isinstance(value, (str, bytes))):
        return [_as_plain(v) for v in value]
    return value


def resolve_settings(settings: Mapping | None) -> dict:
    """DEFAULTS overlaid with `settings` (one level of nesting); unknown keys are an error naming the allowed ones."""
    given = _as_plain(settings or {})
    out = copy.deepcopy(DEFAULTS)
    for key, value in given.items():
        if key not in DEFAULTS:
            raise SuiteError(f"eval.{key}: unknown setting; allowed: {', '.join(DEFAULTS)}")
        if isinstance(DEFAULTS[key], dict):
            if not isinstance(value, dict):
                raise SuiteError(f"eval.{key} must be a mapping with keys {list(DEFAULTS[key])}, got {value!r}")
            unknown = sorted(set(value) - set(DEFAULTS[key]))
            if unknown:
                raise SuiteError(f"eval.{key}.{unknown[0]}: unknown setting; allowed: {', '.join(DEFAULTS[key])}")
            out[key].update(value)
        else:
            out[key] = value
    return out


def _positive_int(value, option: str, allow_none: bool = False) -> None:
    if value is None and allow_none:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        extra = " or null" if allow_none else ""
        raise SuiteError(f"{option}={value!r}: must be an integer >= 1{extra}")


def _bool(value, option: str) -> None:
    if not isinstance(value, bool):
        raise SuiteError(f"{option}={value!r}: must be true or false")


def task_eval(task: Mapping) -> dict:
    """The task's `eval:` section with `metric` and `target` checked (plain dict)."""
    t = _as_plain(task)
    ev = t.get("eval") if isinstance(t, dict) else None
    if not isinstance(ev, dict) or not isinstance(ev.get("target"), dict):
        name = t.get("name", "?") if isinstance(t, dict) else "?"
        raise SuiteError(f"task.eval.target: task {name!r} has no evaluation data; give task.eval.target "
                         "(a prompt-set spec with gold_field)")
    try:
        benchmarks.get(ev.get("metric"))  # a known benchmark, or an error naming the registered ones
    except benchmarks.BenchmarkError as e:
        raise SuiteError(str(e)) from None
    return ev


def distractor_kind(name: str, spec: Mapping | None = None) -> str:
    """'qna' or 'dialogue': the set's own `kind`, else by its name (squad/qna -> BERTScore, conversations/dialogue
    -> SBERT)."""
    kind = spec.get("kind") if isinstance(spec, Mapping) else None
    if kind is not None and kind not in KINDS:
        raise SuiteError(f"task.eval.distractors.{name}.kind={kind!r}: allowed: {', '.join(KINDS)}")
    kind = kind or DISTRACTOR_KINDS.get(str(name).lower())
    if kind is None:
        raise SuiteError(f"task.eval.distractors.{name}: unknown distractor set name; allowed: "
                         f"{', '.join(DISTRACTOR_KINDS)}, or any name with kind: qna|dialogue (QnA sets are compared "
                         "by BERTScore, dialogue by SBERT)")
    return kind


def check_settings(settings: Mapping | None, task: Mapping) -> dict:
    """Validate settings and task before any work; returns the resolved settings (defaults filled in)."""
    s = resolve_settings(settings)
    ev = task_eval(task)
    parts = s["parts"]
    if isinstance(parts, str) or not isinstance(parts, list):
        raise SuiteError(f"eval.parts={parts!r}: must be a list of part names from {', '.join(PARTS)}")
    for p in parts:
        if p not in PARTS:
            raise SuiteError(f"eval.parts: unknown part {p!r}; allowed: {', '.join(PARTS)}")
    _positive_int(s["batch_size"], "eval.batch_size")
    _positive_int(s["max_batch_tokens"], "eval.max_batch_tokens", allow_none=True)
    drop = s["drop_finished_every"]
    if isinstance(drop, bool) or not isinstance(drop, int) or drop < 0:
        raise SuiteError(f"eval.drop_finished_every={drop!r}: must be an integer >= 0 (0: off)")
    _positive_int(s["max_new_tokens"], "eval.max_new_tokens", allow_none=True)
    _positive_int(ev.get("max_new_tokens"), "task.eval.max_new_tokens", allow_none=True)
    _positive_int(s["n"], "eval.n", allow_none=True)
    if s["chat_template"] not in (True, False, "auto"):
        raise SuiteError(f"eval.chat_template={s['chat_template']!r}: allowed: true, false, auto")
    _bool(s["loop_detection"], "eval.loop_detection")
    _bool(s["stop_on_answer"], "eval.stop_on_answer")
    if s["stop_on_answer"] and not benchmarks.get(ev["metric"]).stops_on_answer:
        allowed = [n for n in benchmarks.names() if benchmarks.get(n).stops_on_answer]
        raise SuiteError(f"eval.stop_on_answer=true stops at the first complete answer (\\boxed{{}}): allowed only "
                         f"with task.eval.metric={'|'.join(allowed)}, not {ev['metric']!r}")
    _positive_int(s["similarity"]["max_new_tokens"], "eval.similarity.max_new_tokens")
    _positive_int(s["similarity"]["batch_size"], "eval.similarity.batch_size")
    _positive_int(s["throughput"]["prompts"], "eval.throughput.prompts")
    _positive_int(s["throughput"]["max_new_tokens"], "eval.throughput.max_new_tokens")
    _positive_int(s["code"]["workers"], "eval.code.workers")
    timeout = s["code"]["timeout_s"]
    if isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or timeout <= 0:
        raise SuiteError(f"eval.code.timeout_s={timeout!r}: must be a number > 0")
    if not isinstance(s["nll"]["max_length"], int) or s["nll"]["max_length"] < 2:
        raise SuiteError(f"eval.nll.max_length={s['nll']['max_length']!r}: must be an integer >= 2")
    tasks = s["lm_eval"]["tasks"]
    if isinstance(tasks, str) or not isinstance(tasks, list):
        raise SuiteError(f"eval.lm_eval.tasks={tasks!r}: must be a list of lm-eval task names (e.g. [boolq, copa])")
    if "similarity" in parts:
        for name, spec in (ev.get("distractors") or {}).items():
            distractor_kind(name, spec)
    return s


def check_data(settings: dict, task: Mapping, generations=None) -> None:
    """Load the evaluation prompt sets the enabled parts need (cheap, no model): a missing or empty set stops the
    run before any weights load, not after capture and pruning. ``generations``: the file evaluate.py re-scores;
    re-scoring reads only that file and the task's evaluation target (it generates nothing, so the distractor
    sets are not needed: a hub id for them must not stop an offline re-score)."""
    if generations is not None:
        if not Path(str(generations)).expanduser().is_file():
            raise SuiteError(f"generations={str(generations)!r}: no such file (a JSONL file with id and output per line)")
        read_outputs(generations, task_eval(task)["metric"])
        target_samples(task, settings)
        return
    parts = settings["parts"]
    if {"task", "traps", "nll", "resources"} & set(parts):
        target_samples(task, settings)
    if "similarity" in parts:
        distractor_prompts(task, settings)


def _chat(settings: dict, tokenizer) -> bool:
    """The resolved chat_template flag ('auto': apply it when the tokenizer has one)."""
    if settings["chat_template"] == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return bool(settings["chat_template"])


def max_new_tokens(settings: dict, ev: dict) -> int:
    """Target generation budget: eval.max_new_tokens, else task.eval.max_new_tokens, else the paper's per metric."""
    return settings["max_new_tokens"] or ev.get("max_new_tokens") or benchmarks.get(ev["metric"]).max_new_tokens


# ---------------------------------------------------------------------------------------------- task data
def target_samples(task: Mapping, settings: dict) -> list[dict]:
    """Eval samples {id, prompt, gold, record}, made by the task's benchmark from each eval record."""
    ev = task_eval(task)
    bench = benchmarks.get(ev["metric"])
    spec = dict(ev["target"])
    if settings.get("n") is not None:
        spec["n"] = settings["n"]
    gold_field = spec.get("gold_field")
    if not gold_field:
        raise SuiteError("task.eval.target.gold_field: missing; name the record field holding the gold answer "
                         "(GSM8K: answer; HumanEval: test; MBPP: test_list)")
    records = data.load_records(spec, "task.eval.target", "eval.n" if settings.get("n") is not None else None)
    offset = int(spec.get("offset") or 0)
    samples = []
    for i, rec in enumerate(records):
        gold = data.get_path(rec, gold_field)
        if gold is None:
            raise SuiteError(f"task.eval.target.gold_field={gold_field!r}: record {i} has no such field; "
                             f"fields: {', '.join(rec)}")
        samples.append(bench.sample(offset + i, rec, data.render(rec, spec, "task.eval.target"), gold))
    return samples


def nll_pairs(samples: list[dict], metric: str) -> list[tuple[str, str]]:
    """(prompt, gold solution) pairs of the benchmark (GSM8K worked solutions, HumanEval prompt + canonical code)."""
    bench = benchmarks.get(metric)
    return [bench.nll_pair(s) for s in samples]


# Fewer correct answers than this (or than half the rows, for tiny sets) are too small a sample: the proxy then
# scores every answer instead.
MIN_CORRECT_ANSWERS = 16


def own_answer_pairs(samples: list[dict], source_rows: list[dict]) -> tuple[list[tuple[str, str]], bool]:
    """(prompt, answer) pairs from the unpruned source model's own greedy outputs on the eval target: the correct
    ones, in the model's own format (chat template, its code style, its way of writing the final answer); all of
    them when too few are correct (MIN_CORRECT_ANSWERS) (a model that cannot do the task: the proxy then measures
    faithfulness to the source's behaviour). Returns (pairs, correct_only)."""
    by_id = {s["id"]: s for s in samples}
    rows = [r for r in source_rows if r.get("id") in by_id and str(r.get("output", "")).strip()]
    correct = [r for r in rows if r.get("correct")]
    enough = bool(correct) and len(correct) >= min(MIN_CORRECT_ANSWERS, max(1, len(rows) // 2))
    chosen = correct if enough else rows
    if not chosen:
        raise SuiteError("nll: the source model produced no non-empty output on the eval target; nothing to score")
    return [(by_id[r["id"]]["prompt"], r["output"]) for r in chosen], enough


# ---------------------------------------------------------------------------------------------- verdicts
def verdict(metric: str, output: str, sample: dict, *, token_ids=None, tokenizer=None, hit_limit: bool) -> dict:
    """Per-sample answer and trap labels (code correctness comes later, from the sandbox)."""
    bench = benchmarks.get(metric)
    out = bench.verdict(output, sample)
    v = traps.classify(output, token_ids, hit_limit=hit_limit, has_answer=lambda text: bench.has_answer(text, sample),
                       tokenizer=tokenizer)
    out.update({"trap": v.trap, "trap_type": v.kind, "trap_reason": v.reason})
    return out


def task_metrics(metric: str, rows: list[dict], parts) -> dict:
    """Flat `<metric>/...` numbers from per-sample rows (`task` part: accuracy; `traps` part: trap counts)."""
    n = len(rows)
    out: dict = {f"{metric}/n": n}
    trapped = [bool(r["trap"]) for r in rows]
    if "task" in parts:
        bench = benchmarks.get(metric)
        correct = sum(bool(r["correct"]) for r in rows)
        out[f"{metric}/{bench.primary}"] = correct / n  # a Type 1 trap's answer counts (as the paper)
        out[f"{metric}/correct"] = correct
        out[f"{metric}/{bench.primary}_strict"] = sum(bool(r["correct"]) and not t for r, t in zip(rows, trapped)) / n
        out.update(bench.extra_metrics(rows))
    if "traps" in parts:
        summary = traps.summarize(traps.TrapVerdict(r["trap"], r["trap_type"], r["trap_reason"], None) for r in rows)
        out.update({f"{metric}/{k}": v for k, v in summary.items() if k != "n"})
    tokens = [r["n_tokens"] for r in rows if r.get("n_tokens") is not None]
    if tokens:
        out[f"{metric}/new_tokens"] = sum(tokens)
        out[f"{metric}/mean_new_tokens"] = fmean(tokens)
    reasons = Counter(r.get("stop_reason") for r in rows if r.get("stop_reason"))
    if reasons:
        out.update({f"{metric}/stop_{reason}": reasons[reason] for reason in generation.STOP_REASONS})
    return out


def _sample_record(row: dict) -> dict:
    """samples.jsonl line: the verdict fields without prompt and output."""
    return {k: v for k, v in row.items() if k not in ("prompt", "output")}


# ---------------------------------------------------------------------------------------------- generation
def _journal_key(prompt: str, budget: int, chat: bool, loop: bool, answer: bool) -> str:
    """What decides one greedy generation (the model aside: a journal lives in one run directory)."""
    blob = json.dumps([prompt, budget, chat, loop, answer])
    return hashlib.sha256(blob.encode()).hexdigest()[:24]


def _read_journal(path: Path | None) -> dict[str, generation.Generation]:
    """Generations a killed earlier attempt finished (a torn last line is ignored)."""
    done: dict[str, generation.Generation] = {}
    if path is None or not path.is_file():
        return done
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            rec = json.loads(line)
            key = rec.pop("key")
            done[key] = generation.Generation(**rec)
        except (json.JSONDecodeError, TypeError, KeyError):
            continue
    return done


def _generate(model, tokenizer, prompts: list[str], settings: dict, budget: int, *, stop_on_answer,
              desc: str, journal: Path | None = None) -> list[generation.Generation]:
    """Greedy generations with the online loop detector and the optional stop-at-first-box criterion.

    With ``journal`` (a JSONL path), every finished batch is appended there and a re-run skips the prompts it
    holds, so a killed hour-long evaluation resumes where it stopped; the caller deletes it when done.
    """
    eos = generation.eos_ids(model, tokenizer)
    loop, answer = settings["loop_detection"], stop_on_answer  # answer: None/False, or text -> complete answer?
    chat = _chat(settings, tokenizer)
    keys = [_journal_key(p, budget, chat, loop, bool(answer)) for p in prompts]
    done = _read_journal(journal) if process_state().num_processes == 1 else {}
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
    groups = text.length_batches(lengths, settings["batch_size"], max_tokens=settings["max_batch_tokens"])
    n_new = 0
    with tqdm(total=len(prompts), initial=len(prompts) - len(todo), desc=desc, unit="prompt") as bar:
        for group in groups:  # one engine call per batch: the engine itself batches by count only
            idx = [todo[j] for j in group]
            gens = generation.generate(model, tokenizer, [prompts[i] for i in idx], max_new_tokens=budget,
                                       batch_size=len(idx), chat_template=chat, progress=False,
                                       stopping_criteria_factory=criteria if (loop or answer) else None, desc=desc,
                                       drop_finished_every=settings["drop_finished_every"])
            for i, g in zip(idx, gens):
                results[i] = g
                n_new += g.n_tokens
            if journal is not None and process_state().is_main_process:
                with open(journal, "a", encoding="utf-8") as f:
                    f.writelines(json.dumps({"key": keys[i], **dataclasses.asdict(results[i])}) + "\n" for i in idx)
            bar.update(len(idx))
            bar.set_postfix(new_tokens=n_new)
    return results


def _answer_test(metric: str):
    """text -> whether it already holds a complete answer, for benchmarks whose answers need no sample (GSM8K)."""
    bench = benchmarks.get(metric)
    return lambda text: bench.has_answer(text, {})


def write_target_files(run_dir: Path, rows: list[dict]) -> None:
    """generations.jsonl (every field) and samples.jsonl (the verdicts, without prompt and output) of a run."""
    generation.write_generations(run_dir / GENERATIONS_FILE, rows)
    generation.write_generations(run_dir / SAMPLES_FILE, (_sample_record(r) for r in rows))


def speed(model, tokenizer, samples: list[dict], settings: dict) -> dict:
    """Batch-1 tokens/s on the first `throughput.prompts` target prompts (resources.throughput)."""
    tp = settings["throughput"]
    return resources.throughput(model, tokenizer, [x["prompt"] for x in samples[: tp["prompts"]]],
                                max_new_tokens=tp["max_new_tokens"], chat_template=_chat(settings, tokenizer))


def _run_target(model, tokenizer, samples, ev, settings, run_dir: Path) -> tuple[dict, list[dict]]:
    """Generate on the eval target, label every sample, write generations.jsonl + samples.jsonl; return the
    metrics and the rows."""
    metric, budget = ev["metric"], max_new_tokens(settings, ev)
    journal = run_dir / JOURNAL_FILE
    gens = _generate(model, tokenizer, [s["prompt"] for s in samples], settings, budget,
                     stop_on_answer=settings["stop_on_answer"] and _answer_test(metric), desc=f"eval {metric}",
                     journal=journal)
    rows = []
    for s, g in zip(samples, gens):
        row = g.record(id=s["id"])
        row.update(verdict(metric, g.output, s, token_ids=g.token_ids, tokenizer=tokenizer,
                           hit_limit=g.stop_reason == "length"))
        rows.append(row)
    if "task" in settings["parts"] or "nll" in settings["parts"]:
        benchmarks.get(metric).score(samples, rows, settings)  # the sandbox, for code; nll scores correct answers
    write_target_files(run_dir, rows)
    journal.unlink(missing_ok=True)
    metrics = task_metrics(metric, rows, settings["parts"])
    metrics[f"{metric}/max_new_tokens"] = budget
    return metrics, rows


def _run_nll(model, tokenizer, samples, metric: str, settings: dict, source_rows: list[dict]) -> dict:
    """`<metric>/nll`: mean token NLL of the source model's own correct answers (the validated target proxy);
    `<metric>/nll_gold`: of the dataset's gold solutions (the earlier definition; they are not in the format the
    model writes: raw canonical code, GSM8K's <<48/2=24>> calculator marks)."""
    kw = dict(batch_size=settings["batch_size"], max_length=settings["nll"]["max_length"],
              chat_template=_chat(settings, tokenizer))
    gold = {f"{metric}/nll_gold": nll.target_nll(model, tokenizer, nll_pairs(samples, metric), **kw)}
    try:
        pairs, correct_only = own_answer_pairs(samples, source_rows)
    except SuiteError as e:  # a source that writes only whitespace: no own answers, but the run's other results stand
        log.warning("%s/nll skipped (%s); %s/nll_gold is still measured", metric, e, metric)
        return {f"{metric}/nll_answers": 0, **gold}
    return {f"{metric}/nll": nll.target_nll(model, tokenizer, pairs, **kw),
            f"{metric}/nll_answers": len(pairs), f"{metric}/nll_correct_only": correct_only, **gold}


# ---------------------------------------------------------------------------------------------- similarity
def distractor_prompts(task: Mapping, settings: Mapping | None = None) -> dict[str, list[str]]:
    """{set name: prompts} of the task's `eval.distractors` (empty when it has none). `eval.n` caps each set too
    (a quick check with eval.n=2 generates 2 per set, not the sets' own n)."""
    ev = task_eval(task)
    cap = (settings or {}).get("n")
    out = {}
    for name, spec in (ev.get("distractors") or {}).items():
        spec = dict(spec)
        if cap is not None and (spec.get("n") is None or spec["n"] > cap):
            spec["n"] = cap
        out[str(name)] = data.load_prompts(spec, f"task.eval.distractors.{name}")
    return out


def _reference_settings(settings: dict, tokenizer) -> dict:
    """The generation settings that decide distractor outputs (part of the reference cache key)."""
    return {"max_new_tokens": settings["similarity"]["max_new_tokens"], "chat_template": _chat(settings, tokenizer),
            "batch_size": settings["batch_size"], "loop_detection": settings["loop_detection"],
            "version": REFERENCE_VERSION}


def _distractor_outputs(model, tokenizer, prompts: dict[str, list[str]], settings: dict) -> dict:
    """{name: {prompts, outputs, n_tokens, stop_reasons}} of greedy generations on each distractor set."""
    out = {}
    for name, ps in prompts.items():
        gens = _generate(model, tokenizer, ps, settings, settings["similarity"]["max_new_tokens"],
                         stop_on_answer=False, desc=f"distractor {name}")
        out[name] = {"prompts": ps, "outputs": [g.output for g in gens], "n_tokens": [g.n_tokens for g in gens],
                     "stop_reasons": [g.stop_reason for g in gens]}
    return out


def reference_key(model_id: str, prompts: dict[str, list[str]], gen_settings: dict) -> str:
    """sha256 over (model identity, distractor prompts, generation settings)."""
    blob = json.dumps({"model": model_id, "prompts": prompts, "settings": gen_settings}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def reference_generations(model, tokenizer, task: Mapping, settings: Mapping | None, cache_dir=None, *,
                          model_id: str | None = None) -> dict:
    """The source model's outputs on the task's distractor prompts: {name: {"prompts": [...], "outputs": [...]}}.

    With `cache_dir` (and `model_id`, a string identifying the weights) they are stored under a key of
    (model_id, prompts, generation settings), so a sweep generates them once.
    """
    s = check_settings(settings, task)
    cache_dir = cache_dir if cache_dir is not None else s["reference_cache_dir"]
    if cache_dir is not None and not model_id:
        raise SuiteError("reference_generations: cache_dir needs model_id= (a string identifying the source "
                         "model's weights, e.g. its hub id or json of prunekit.models.identity)")
    prompts = distractor_prompts(task, s)
    if not prompts:
        raise SuiteError("task.eval.distractors: empty; distractor similarity needs at least one set")
    path = None
    if cache_dir is not None:
        key = reference_key(str(model_id), prompts, _reference_settings(s, tokenizer))
        path = Path(cache_dir).expanduser() / f"{key}.json"
        if path.is_file():
            try:
                cached = json.loads(path.read_text(encoding="utf-8"))
                _check_reference(cached, prompts)
                log.info("reference outputs: cache hit %s", path)
                return cached
            except (ValueError, UnicodeDecodeError, OSError) as e:  # SuiteError is a ValueError too
                log.warning("reference outputs cache %s is damaged (%s): moved to %s, generating again",
                            path, str(e).splitlines()[0][:120], move_aside(path))
    refs = {name: {"prompts": v["prompts"], "outputs": v["outputs"]}
            for name, v in _distractor_outputs(model, tokenizer, prompts, s).items()}
    if path is not None:
        try:
            atomic_write_json(path, refs)
            log.info("reference outputs cached in %s", path)
        except (OSError, DiskFullError) as e:  # the cache only saves time: the run goes on without it
            log.warning("could not write the reference outputs cache %s (%s); continuing without it", path, e)
    return refs


def _check_reference(reference: Mapping, prompts: dict[str, list[str]]) -> None:
    """The reference must hold every distractor set, with the same prompts in the same order."""
    for name, ps in prompts.items():
        ref = reference.get(name)
        if not isinstance(ref, Mapping) or "outputs" not in ref or "prompts" not in ref:
            raise SuiteError(f"reference_outputs: no set {name!r} with prompts and outputs; got sets "
                             f"{sorted(reference) if isinstance(reference, Mapping) else type(reference).__name__}")
        if list(ref["prompts"]) != ps or len(ref["outputs"]) != len(ps):
            raise SuiteError(f"reference_outputs[{name!r}]: prompts differ from task.eval.distractors.{name} "
                             "(made for another task or n?)")


def _run_similarity(model, tokenizer, task, settings, reference, run_dir: Path) -> dict:
    """Distractor outputs of the evaluated model vs the reference outputs: BERTScore (QnA), SBERT (dialogue)."""
    prompts = distractor_prompts(task, settings)
    if not prompts:
        log.info("similarity skipped: task.eval.distractors is empty")
        return {}
    if reference is None:
        log.warning("similarity skipped: no reference_outputs (the source model's distractor outputs) were given")
        return {}
    _check_reference(reference, prompts)
    ours = _distractor_outputs(model, tokenizer, prompts, settings)
    pairs: dict[str, tuple[list[str], list[str]]] = {}
    by_kind: dict[str, list[str]] = {}
    specs = task_eval(task).get("distractors") or {}
    for name in prompts:
        kind = distractor_kind(name, specs.get(name))
        cands, refs = pairs.setdefault(kind, ([], []))
        cands.extend(ours[name]["outputs"])
        refs.extend(reference[name]["outputs"])
        by_kind.setdefault(kind, []).append(name)
    sim = settings["similarity"]
    metrics = similarity.distractor_similarity(
        pairs.get("qna"), pairs.get("dialogue"), sbert_model=sim["sbert_model"],
        bertscore_model=sim["bertscore_model"], bertscore_rescale=sim["bertscore_rescale"],
        bertscore_num_layers=sim["bertscore_num_layers"], batch_size=sim["batch_size"])
    for kind, names in by_kind.items():  # per-set alias when a kind has one set (e.g. distractor/squad_bertscore)
        if len(names) == 1:
            key = "distractor/bertscore_f1" if kind == "qna" else "distractor/sbert_cosine"
            metrics[f"distractor/{names[0]}_{'bertscore' if kind == 'qna' else 'sbert'}"] = metrics[key]
    rows = [{"set": name, "index": i, "prompt": p, "output": o, "reference": r, "n_tokens": t, "stop_reason": sr}
            for name, v in ours.items()
            for i, (p, o, r, t, sr) in enumerate(zip(v["prompts"], v["outputs"], reference[name]["outputs"],
                                                     v["n_tokens"], v["stop_reasons"]))]
    generation.write_generations(run_dir / DISTRACTOR_FILE, rows)
    return metrics


# ---------------------------------------------------------------------------------------------- evaluate
def evaluate(model, tokenizer, task: Mapping, settings: Mapping | None, *, run_dir, reference_outputs=None,
             checkpoint_dir=None, source_rows: list[dict] | None = None) -> dict:
    """Run the enabled parts on `model` and return flat metrics; writes generations.jsonl, samples.jsonl and
    distractor_generations.jsonl into `run_dir`.

    `source_rows` are the unpruned source model's target generations with verdicts (its generations.jsonl): the
    answers the `nll` part scores. None means `model` is the source itself: its own rows are used (and generated
    for `nll` even when `task` and `traps` are off)."""
    s = check_settings(settings, task)
    ev = task_eval(task)
    metric, parts = ev["metric"], s["parts"]
    run_dir = Path(run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    resources.reset_peak_memory(model.device)
    was_training = model.training
    model.eval()
    metrics: dict = {}
    t_all = time.perf_counter()
    try:
        samples = target_samples(task, s)
        log.info("evaluating %s on %d samples, parts %s", metric, len(samples), parts)

        def timed(part, fn):
            t0 = time.perf_counter()
            metrics.update(fn())
            metrics[f"time/eval_{part}_s"] = time.perf_counter() - t0

        rows = None
        if "task" in parts or "traps" in parts or ("nll" in parts and source_rows is None):
            t0 = time.perf_counter()
            target_metrics, rows = _run_target(model, tokenizer, samples, ev, s, run_dir)
            if "task" in parts or "traps" in parts:
                metrics.update(target_metrics)
            metrics["time/eval_generate_s"] = time.perf_counter() - t0
        if "nll" in parts:
            timed("nll", lambda: _run_nll(model, tokenizer, samples, metric, s,
                                          source_rows if source_rows is not None else rows))
        if "resources" in parts:  # before similarity/lm-eval, whose encoders would count in the peak memory
            timed("resources", lambda: {**speed(model, tokenizer, samples, s),
                                        **resources.model_resources(model, checkpoint_dir)})
        if "similarity" in parts:
            timed("similarity", lambda: _run_similarity(model, tokenizer, task, s, reference_outputs, run_dir))
        if "lm_eval" in parts and s["lm_eval"]["tasks"]:
            from prunekit.evaluation.lm_eval_bridge import run_lm_eval

            le = s["lm_eval"]
            timed("lm_eval", lambda: run_lm_eval(model, tokenizer, list(le["tasks"]), include_path=le["include_path"],
                                                 limit=le["limit"], batch_size=s["batch_size"],
                                                 num_fewshot=le["num_fewshot"]))
    finally:
        model.train(was_training)
    metrics["time/eval_s"] = time.perf_counter() - t_all
    log.info("evaluation done in %.1f s: %s", metrics["time/eval_s"],
             {k: v for k, v in metrics.items() if not k.startswith("time/")})
    return metrics


# ---------------------------------------------------------------------------------------------- re-scoring
def read_outputs(path, metric: str) -> list[dict]:
    """Lines of a generations file: each needs `id` and a string `output`; GSM8K ids become ints."""
    p = Path(str(path)).expanduser()
    if not p.is_file():
        raise SuiteError(f"generations={str(path)!r}: no such file (a JSONL file with id and output per line)")
    rows, seen = [], set()
    try:
        content = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise SuiteError(f"generations: {p} is not UTF-8 text (byte {e.start}: {e.reason})") from None
    for lineno, line in enumerate(content.splitlines(), 1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise SuiteError(f"generations: line {lineno} of {p} is not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "id" not in rec or not isinstance(rec.get("output"), str):
            raise SuiteError(f"generations: line {lineno} of {p} needs fields id and output (a string)")
        try:
            rid = benchmarks.get(metric).parse_id(rec["id"])
        except benchmarks.BenchmarkError as e:
            raise SuiteError(f"generations: line {lineno}: {e}") from None
        if rid in seen:
            raise SuiteError(f"generations: line {lineno}: id {rid!r} appears twice")
        seen.add(rid)
        rows.append({**rec, "id": rid})
    if not rows:
        raise SuiteError(f"generations: {p} holds no generations")
    return rows


def rescore(task: Mapping, settings: Mapping | None, generations_path, run_dir) -> dict:
    """Score an existing JSONL of {id, output} lines without a model; writes samples.jsonl (and generations.jsonl
    with verdicts, unless that is the input file). Trap labels come from text: line loops, and the length limit
    when a line has stop_reason ("length") or n_tokens (>= the max_new_tokens in effect)."""
    s = check_settings(settings, task)
    ev = task_eval(task)
    metric = ev["metric"]
    rows_in = read_outputs(generations_path, metric)
    samples = {x["id"]: x for x in target_samples(task, s)}
    unknown = [r["id"] for r in rows_in if r["id"] not in samples]
    if unknown:
        raise SuiteError(f"generations: {len(unknown)} id(s) not in task.eval.target, e.g. {unknown[:3]}; "
                         f"valid ids look like {list(samples)[:5]} ({len(samples)} in the eval set)")
    budget = max_new_tokens(s, ev)
    rows = []
    for r in rows_in:
        if r.get("stop_reason") is not None:
            hit_limit = r["stop_reason"] == "length"
        else:
            hit_limit = r.get("n_tokens") is not None and int(r["n_tokens"]) >= budget
        row = {k: r[k] for k in ("id", "output", "n_tokens", "stop_reason") if k in r}
        row.update(verdict(metric, r["output"], samples[r["id"]], hit_limit=hit_limit))
        rows.append(row)
    if len(rows) < len(samples):
        log.warning("generations: %d of the %d eval ids have a generation; metrics cover those %d only",
                    len(rows), len(samples), len(rows))
    picked = [samples[r["id"]] for r in rows]
    if "task" in s["parts"]:
        benchmarks.get(metric).score(picked, rows, s)
    run_dir = Path(run_dir)
    out_path = run_dir / GENERATIONS_FILE
    if out_path.resolve() != Path(str(generations_path)).expanduser().resolve():
        generation.write_generations(out_path, rows)
    generation.write_generations(run_dir / SAMPLES_FILE, (_sample_record(r) for r in rows))
    metrics = task_metrics(metric, rows, s["parts"])
    log.info("re-scored %d generations from %s: %s", len(rows), generations_path, metrics)
    return metrics


__all__ = [
    "DEFAULTS", "PARTS", "SuiteError", "check_settings", "distractor_kind",
    "distractor_prompts", "evaluate", "max_new_tokens", "nll_pairs", "read_outputs",
    "own_answer_pairs", "reference_generations", "reference_key", "rescore", "resolve_settings", "target_samples", "task_metrics",
    "verdict",
]
