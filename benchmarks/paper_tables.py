"""The paper's Tables 3, 4 and 5 on the offline default model (Qwen2.5-Coder-0.5B-Instruct, task=code_offline),
side by side with the paper's Qwen-1.5B Code column. One resumable command:

    nohup .venv/bin/python benchmarks/paper_tables.py > paper_tables.log 2>&1 &     # everything (many hours)
    .venv/bin/python benchmarks/paper_tables.py --tables 3 --ratios 0.05,0.1 --strategies selective,contrastive
    .venv/bin/python benchmarks/paper_tables.py --print                             # the tables from the journal
    .venv/bin/python benchmarks/paper_tables.py --journal ../main/benchmarks/results/paper_tables_qwen2.5-coder-0.5b.jsonl
                                                 # from a worktree: finished rows land in the main checkout at once

Table 3: every strategy x ratio gets the cheap cell (own-answer NLL proxy + distractor similarity, no HumanEval
generation); the cells in PASS_CELLS also get HumanEval pass@1 on all 164 problems with the trap rate (Type 1/2).
Table 4: LoRA recovery (`train.py lora=code` on CodeIO instruction -> reference solution) of selective and
contrastive at 15, 25 and 35 %, then pass@1 and traps on all 164 problems. Table 5: parameters, peak memory and
batch-1 decode tokens/s per ratio (benchmarks/pruned_speed.py's measurement), speed-up vs the parameter ideal.

Every finished job is appended to a journal committed with the repository (benchmarks/results/, the metrics only,
no weights), so a re-run skips it even on a new machine; an unfinished job resumes from its run directory
(`--out`, default ~/prunekit-runs/paper-0.5b). Jobs run in priority order: the cheap cells first, then pass@1 at
5-15 %, then the rest, then recovery.
"""

import argparse
import hashlib
import json
import logging
import math
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.override_parser.overrides_parser import OverridesParser

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from prunekit import dist, recipes  # noqa: E402
from prunekit.checkpoint import atomic_write_text  # noqa: E402
from prunekit.report import PAPER_RATIOS, PAPER_TABLE3, PAPER_TABLE4, number  # noqa: E402

JOURNAL = REPO / "benchmarks" / "results" / "paper_tables_qwen2.5-coder-0.5b.jsonl"
PAPER_COLUMN = "Qwen-1.5B Code"
STRATEGIES = ("selective", "contrastive", "random_s42", "random_s33", "reverse")
# HumanEval pass@1 cells (the minimum set this runner commits to): selective, contrastive, one random seed at
# every ratio; reverse at 5-15 % (by 15 % it has collapsed on the 1.5B model already).
PASS_CELLS = {(s, r) for s in ("selective", "contrastive", "random_s42") for r in PAPER_RATIOS} | {
    ("reverse", r) for r in (0.05, 0.10, 0.15)}
RECOVERY_CELLS = [(s, r) for r in (0.15, 0.25, 0.35) for s in ("selective", "contrastive")]
ALL_PROBLEMS = ["task.eval.target.n=164"]
# A larger capture than the quick default's 32 + 16 + 16 prompts (captured once, shared by every cell); the paper
# used 800 per set: ~2 h of capture on 2 CPU cores here.
CAPTURE = ["task.target.n=128", "task.distractors.squad.n=64", "task.distractors.conversations.n=64"]
# The generation batch every journal row was decoded with (the default until batch 16 replaced it): in bf16 the
# batch shape changes the greedy tokens, so one table keeps one batch. The NLL proxy's forward batches likewise
# stay those of batch 8 (no token cap; the cap moves the proxy in its fourth digit, benchmarks/nll_batching.py).
DECODE = ["eval.batch_size=8", "eval.max_batch_tokens=4096", "eval.nll.max_batch_tokens=null"]
# humaneval/nll_gold: only in the rows made before eval.nll.gold existed (it is off now: no table prints it)
KEEP = ("humaneval/pass@1", "humaneval/trap_rate", "humaneval/trap_type1", "humaneval/trap_type2",
        "humaneval/nll", "humaneval/nll_gold", "distractor/sss", "prune/real_ratio", "resources/params",
        "train/final_loss", "train/time_s", "train/tokens_per_s", "train/steps", "train/n_examples",
        "train/unfinished_source_answers", "time/source_answers_s")  # the last two: task.train.responses=source


# Journal rows `t4-raw/...`: the first recovery runs, on the paper's raw `### Question/### Answer` format with
# answers cut at 512 tokens (227 of 320 were); kept beside the chat-format runs that replaced them.
RAW_NOTE = "raw format, cut answers"
# The recovery budget of the `t4/...` rows (see --recovery). Another budget gets its own job ids, `t4+<hash>/...`,
# so a rerun with more steps or another learning rate runs beside them instead of being skipped as finished.
RECOVERY = "task.train.n=1200 lora.epochs=1 lora.max_length=512 lora.per_device_batch_size=1"
EXTRA: list[str] = []  # the command line's extra overrides


def recovery_overrides(text: str) -> list[str]:
    """--recovery split like a shell line, so a quoted override with spaces (drop_response_lines' regexes) stays one."""
    return shlex.split(text)


def recovery_tag(recovery: list[str]) -> str:
    """`t4` for the default budget, `t4+<6 hex of the overrides>` for any other."""
    if recovery == recovery_overrides(RECOVERY):
        return "t4"
    return "t4+" + hashlib.sha1(" ".join(recovery).encode()).hexdigest()[:6]


def budget_label(override: str) -> str:
    """An override as a Table 4 row names it: a list value longer than 40 characters (regexes) is counted, not
    printed; the journal keeps it whole."""
    parsed = OverridesParser.create().parse_override(override)
    value = parsed.value()
    if isinstance(value, list) and len(override.partition("=")[2]) > 40:
        return f"{parsed.key_or_group}=[{len(value)} items]"
    return override


def recovery_job(s: str, r: float, recovery: list[str]) -> tuple[str, str, list[str]]:
    return (f"{recovery_tag(recovery)}/{s}_r{r:g}", "recover",
            [*strategy_overrides(s), f"ratio={r}", "lora=code", *recovery, *ALL_PROBLEMS, "eval.parts=[task,traps]"])


def strategy_overrides(strategy: str) -> list[str]:
    """`random_s<N>` is `random` with seed N; every other name is a conf/strategy option."""
    seeded = re.fullmatch(r"random_s(\d+)", strategy)
    return ["strategy=random", f"strategy.seed={seeded[1]}"] if seeded else [f"strategy={strategy}"]


def compose_job(job: str, overrides: list[str]):
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        return compose(job, overrides=["model=qwen2.5-coder-0.5b", "task=code_offline", "wandb.mode=offline",
                                       *CAPTURE, *DECODE, *EXTRA, *overrides])


def read_journal() -> dict:
    if not JOURNAL.is_file():
        return {}
    rows = (json.loads(line) for line in JOURNAL.read_text().splitlines() if line.strip())
    return {row["job"]: row for row in rows}


def record(job: str, metrics: dict, wall_s: float, overrides: list[str]) -> None:
    """Append one finished job to the journal (rewritten atomically, so a kill never leaves half a line)."""
    rows = read_journal()
    rows[job] = {"job": job, "wall_s": round(wall_s), "finished": time.strftime("%Y-%m-%d %H:%M"), "cpu": dist.cpu_kind(),
                 "overrides": overrides, **{k: metrics[k] for k in (*KEEP, "rows") if k in metrics},
                 **{k: v for k, v in metrics.items() if k.startswith("original/humaneval/")}}
    JOURNAL.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(JOURNAL, "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows.values()))


def table3_job(s: str, r: float) -> tuple[str, str, list[str]]:
    """A Table 3 cell: pass@1 + traps + the proxies for PASS_CELLS, the proxies alone otherwise."""
    parts = "[task,traps,similarity,nll]" if (s, r) in PASS_CELLS else "[similarity,nll]"
    return f"t3/{s}_r{r:g}", "prune", [*strategy_overrides(s), f"ratio={r}", *ALL_PROBLEMS, f"eval.parts={parts}"]


def jobs(tables: list[str], strategies: list[str], ratios: list[float], recovery: list[str]) -> list[tuple]:
    """(job id, kind, overrides) in priority order: every cheap Table 3 cell; pass@1 at 5-15 %; recovery at 15 %;
    pass@1 at 20-35 %; recovery at 25 and 35 %; Table 5. So each claim gets its first evidence early."""
    cells = [(s, r) for r in ratios for s in strategies]
    t3 = {c: table3_job(*c) for c in cells} if "3" in tables else {}
    t4 = {(s, r): recovery_job(s, r, recovery)
          for s, r in RECOVERY_CELLS if s in strategies and r in ratios} if "4" in tables else {}
    order = [t3[c] for c in cells if c in t3 and c not in PASS_CELLS]
    order += [t3[c] for c in cells if c in t3 and c in PASS_CELLS and c[1] <= 0.15]
    order += [t4[c] for c in t4 if c[1] <= 0.15]
    order += [t3[c] for c in cells if c in t3 and c in PASS_CELLS and c[1] > 0.15]
    order += [t4[c] for c in t4 if c[1] > 0.15]
    return order + ([("t5", "speed", [])] if "5" in tables else [])


def recover(job: str, overrides: list[str], out: Path) -> dict:
    """Prune again without evaluation (deterministic: the Table 3 cell's neurons, seconds with the cached capture),
    then LoRA recovery on the CodeIO training rows and pass@1 + traps of the merged model."""
    prune_keys = [o for o in overrides if o.split("=")[0] in ("strategy", "strategy.seed", "ratio")]
    pruned = out / job / "pruned"
    recipes.prune(compose_job("prune", [*prune_keys, "evaluate=false"]), pruned)
    train_keys = [o for o in overrides if o not in prune_keys]
    return recipes.train(compose_job("train", [f"model.name_or_path={pruned / 'model'}", *train_keys]),
                          out / job / "recovered")


def speed() -> dict:
    """Table 5 rows from benchmarks/pruned_speed.py (its own process: nothing else in memory while it times)."""
    cmd = [sys.executable, str(REPO / "benchmarks" / "pruned_speed.py"), "--model", "pip:qwen2.5-coder-0.5b-instruct",
           "--ratios", ",".join(f"{r:g}" for r in PAPER_RATIOS), "--dtype", "auto", "--json"]
    done = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return {"rows": json.loads(done.stdout.strip().splitlines()[-1])}


def run(args) -> None:
    todo = jobs(args.tables.split(","), args.strategies.split(","), [float(r) for r in args.ratios.split(",")],
                recovery_overrides(args.recovery))
    for job, kind, overrides in todo:
        if job in read_journal():
            continue
        t0 = time.perf_counter()
        print(f"== {job} ({kind}): {' '.join(overrides)}", flush=True)
        if kind == "prune":
            metrics = recipes.prune(compose_job("prune", overrides), Path(args.out) / job)
        elif kind == "recover":
            metrics = recover(job, overrides, Path(args.out))
        else:
            metrics = speed()
        record(job, metrics, time.perf_counter() - t0, overrides)
        recipes.release_memory()


def pct(v) -> str:
    return "-" if (v := number(v)) is None else f"{100 * v:.2f}"


def num(v, digits=3) -> str:
    return "-" if (v := number(v)) is None else f"{v:.{digits}f}"


def pass_and_traps(row: dict) -> str:
    """pass@1 % (trap %) of a journal row."""
    return f"{pct(row.get('humaneval/pass@1'))} ({pct(row.get('humaneval/trap_rate'))})"


def regained(before: float, after: float, original: float) -> str:
    """The share of what pruning lost that recovery gained back, (after - before) / (original - before), in %
    (claim 3: "most"); "-" where a value is missing or pruning lost nothing."""
    before, after, original = map(number, (before, after, original))
    if None in (before, after, original) or original <= before:
        return "-"
    return f"{100 * (after - before) / (original - before):.0f} %"


def provenance(journal: dict) -> list[str]:
    """Which CPU made which job, with the unpruned model's score it was compared with: bf16 rounds differently on
    different CPUs and greedy decoding amplifies it, so the unpruned answers (and the NLL proxy built on them) can
    differ between machines. Rows made before the journal recorded the CPU say so."""
    groups: dict[tuple, list[str]] = {}
    for job, row in journal.items():
        solved = row.get("original/humaneval/correct")
        groups.setdefault((row.get("cpu", "CPU not recorded"), solved), []).append(job)
    return ["Where each job ran (CPU, bf16 path) and the unpruned model's score beside it:"] + [
        f"- {cpu}, unpruned {'-' if solved is None else solved} of 164: {', '.join(sorted(jobs))}"
        for (cpu, solved), jobs in sorted(groups.items(), key=lambda kv: (kv[0][0], str(kv[0][1])))]


def proxy_agreement(journal: dict) -> list[str]:
    """How well the cheap cells' own-answer NLL ranks cells as pass@1 does, over the Table 3 cells that have both,
    per group of rows compared with the same unpruned answers (CPU and unpruned score, as in `provenance`): the
    proxy's answers differ between such groups, so their NLLs are not on one scale."""
    from scipy.stats import kendalltau

    groups: dict[tuple, list[tuple]] = {}
    for job, row in journal.items():
        if job.startswith("t3/") and "humaneval/pass@1" in row and "humaneval/nll" in row:
            key = (row.get("cpu", "CPU not recorded"), row.get("original/humaneval/correct"))
            groups.setdefault(key, []).append((row["humaneval/pass@1"], row["humaneval/nll"]))
    out = []
    for (cpu, _), cells in sorted(groups.items(), key=lambda kv: str(kv[0])):
        pairs = [(a, b) for i, a in enumerate(cells) for b in cells[i + 1:] if a[0] != b[0]]
        if len(cells) < 3:
            continue
        alike = sum((a[0] - b[0]) * (b[1] - a[1]) > 0 for a, b in pairs)
        tau = kendalltau([c[0] for c in cells], [-c[1] for c in cells]).statistic
        out.append(f"- {cpu}: over {len(cells)} cells with pass@1, a lower own-answer NLL goes with a higher pass@1 "
                   f"in {alike} of {len(pairs)} pairs (Kendall tau-b {tau:+.2f})")
    return ["How the NLL proxy ranks the cells that also have pass@1:", *out] if out else []


def recovery_rows(journal: dict, s: str, r: float) -> list[tuple[str, dict]]:
    """A recovery cell's journal rows with their labels: the default budget, the raw-format first runs, then any
    other budget labelled by its overrides that differ from the default."""
    rows = []
    for job, row in journal.items():
        tag, _, cell = job.partition("/")
        if cell != f"{s}_r{r:g}" or not (tag in ("t4", "t4-raw") or tag.startswith("t4+")):
            continue
        own = set(recovery_job(s, r, [])[2]) | set(recovery_overrides(RECOVERY))
        budget = " ".join(budget_label(o) for o in row.get("overrides", []) if o not in own) or "budget not recorded"
        label = {"t4": s, "t4-raw": f"{s}, {RAW_NOTE}"}.get(tag, f"{s}, {budget}")
        rows.append(((tag != "t4") + (tag.startswith("t4+")), label, row))
    return [(label, row) for _, label, row in sorted(rows, key=lambda x: x[0])]


def print_tables(journal: dict) -> str:
    """Table 3 (pass@1 (traps %) | own NLL | distractor sim per strategy), Table 4, Table 5, from the journal."""
    out = []
    original = next((row for row in journal.values() if "original/humaneval/pass@1" in row), {})
    paper3 = dict(zip((0.0, *PAPER_RATIOS), PAPER_TABLE3[PAPER_COLUMN]))
    head = "| ratio (real) | " + " | ".join(STRATEGIES) + f" | paper {PAPER_COLUMN} (selective) |"
    out += ["Table 3: HumanEval pass@1 % (trap %) / own-answer NLL / distractor similarity, 164 problems", "",
            head, "|" + "---|" * (len(STRATEGIES) + 2)]
    out.append(f"| original | {pct(original.get('original/humaneval/pass@1'))} "
               f"({pct(original.get('original/humaneval/trap_rate'))}) / {num(original.get('original/humaneval/nll'))} / 1.000"
               + " |" * len(STRATEGIES) + f" {paper3[0.0][0]} ({paper3[0.0][1]}) |")
    for r in PAPER_RATIOS:
        cells, real = [], None
        for s in STRATEGIES:
            row = journal.get(f"t3/{s}_r{r:g}")
            if row is None:
                cells.append("")
                continue
            real = row.get("prune/real_ratio", real)
            score = (f"{pct(row['humaneval/pass@1'])} ({pct(row.get('humaneval/trap_rate'))}) / "
                     if "humaneval/pass@1" in row else "")
            cells.append(f"{score}{num(row.get('humaneval/nll'))} / {num(row.get('distractor/sss'))}")
        label = f"{r:.0%} ({real:.1%})" if real is not None else f"{r:.0%}"
        out.append(f"| {label} | " + " | ".join(cells) + f" | {paper3[r][0]} ({paper3[r][1]}) |")
    out += ["", *provenance(journal)]
    agreement = proxy_agreement(journal)
    out += ["", *agreement] if agreement else []
    paper4 = dict(zip(PAPER_RATIOS, PAPER_TABLE4[PAPER_COLUMN]))
    out += ["", "Table 4: pass@1 % (trap %) before -> after LoRA recovery, 164 problems", "",
            "| ratio | strategy | before | after | regained | train loss | train time | "
            "paper before -> after (selective) | paper regained |",
            "|---|---|---|---|---|---|---|---|---|"]
    unpruned = original.get("original/humaneval/pass@1", math.nan)
    for s, r in RECOVERY_CELLS:
        before = journal.get(f"t3/{s}_r{r:g}", {})
        for label, after in recovery_rows(journal, s, r):
            gained = regained(before.get("humaneval/pass@1", math.nan), after.get("humaneval/pass@1", math.nan),
                              unpruned)
            out.append(f"| {r:.0%} | {label} | {pass_and_traps(before)} | {pass_and_traps(after)} | {gained} | "
                       f"{num(after.get('train/final_loss'))} | {num(after.get('train/time_s', math.nan) / 60, 1)} min | "
                       f"{paper3[r][0]} -> {paper4[r][0]} | {regained(paper3[r][0], paper4[r][0], paper3[0.0][0])} |")
    t5 = journal.get("t5", {}).get("rows")
    if t5:
        out += ["", "Table 5: batch-1 decode (benchmarks/pruned_speed.py)", "",
                "| ratio | real | params | peak RSS GB | tokens/s | speed-up | ideal | achieved / ideal |",
                "|---|---|---|---|---|---|---|---|"]
        out += [f"| {row['ratio']:.2f} | {row['real']:.3f} | {row['params']:,} | {num(row.get('peak_rss_gb'), 2)} | "
                f"{row['tokens_per_s']:.1f} | {row['speedup']:.2f}x | {row['ideal']:.2f}x | {row['speedup'] / row['ideal']:.2f} |"
                for row in t5]
    return "\n".join(out)


def main() -> None:
    global JOURNAL
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tables", default="3,4,5")
    ap.add_argument("--strategies", default=",".join(STRATEGIES))
    ap.add_argument("--ratios", default=",".join(f"{r:g}" for r in PAPER_RATIOS))
    # The CodeIO rows after the capture's, those that fit in 512 tokens whole (lora.overlong=drop): 346 of the first
    # 1,200, ~139k tokens, 1 epoch, batch 1 x 16 accumulation = 22 optimizer steps; 20.1 min measured alone on 2 cores
    # with native bf16 (train.py computes in model.dtype=auto = bf16 there). Batch 1 because batch 4 at 512 tokens peaked at
    # 15 GB RSS (151k-vocabulary logits). On AVX2-only cores (fp32, ~15 tokens/s) pass task.train.n=300.
    ap.add_argument("--recovery", default=RECOVERY,
                    help="train.py overrides of the recovery budget; any other than the default runs as its own "
                         "t4+<hash> jobs, printed beside the default budget's rows")
    ap.add_argument("--out", default=str(Path.home() / "prunekit-runs" / "paper-0.5b"))
    ap.add_argument("--print", action="store_true", help="only print the tables from the journal")
    # A runner started from a worktree of a fixed commit writes into that worktree's journal, which a stopped
    # machine loses with the worktree (eight finished cells were lost that way); point it at the main checkout's.
    ap.add_argument("--journal", default=str(JOURNAL), help="the journal file to read and append to")
    ap.add_argument("overrides", nargs="*", help="extra Hydra overrides for every job (they change the job ids' "
                                                 "meaning: use another --out and journal)")
    args = ap.parse_args()
    JOURNAL = Path(args.journal).expanduser()
    EXTRA.extend(args.overrides)
    logging.basicConfig(level=logging.WARNING)
    if not args.print:
        run(args)
    print(print_tables(read_journal()), flush=True)


if __name__ == "__main__":
    main()
