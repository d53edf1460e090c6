"""benchmarks/paper_tables.py: the job order, the journal that lets a rerun skip finished cells, and the printed
tables, with the recipes replaced by a recorder (the real jobs take hours)."""

import importlib.util
import json
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def load_runner(tmp_path, monkeypatch):
    spec = importlib.util.spec_from_file_location("paper_tables", REPO / "benchmarks" / "paper_tables.py")
    runner = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(runner)
    monkeypatch.setattr(runner, "JOURNAL", tmp_path / "journal.jsonl")
    return runner


def test_jobs_put_cheap_cells_first_and_recovery_after_its_pass_cells(tmp_path, monkeypatch):
    runner = load_runner(tmp_path, monkeypatch)
    jobs = runner.jobs(["3", "4", "5"], list(runner.STRATEGIES), list(runner.PAPER_RATIOS), runner.RECOVERY.split())
    ids = [job for job, _, _ in jobs]
    assert len(ids) == len(set(ids)) == 5 * 7 + 6 + 1
    cheap = [j for j, _, o in jobs if "eval.parts=[similarity,nll]" in o]
    assert ids[:len(cheap)] == cheap and "t3/random_s33_r0.05" in cheap and "t3/selective_r0.05" not in cheap
    assert ids.index("t4/selective_r0.15") > ids.index("t3/selective_r0.15")
    assert ids.index("t4/selective_r0.15") < ids.index("t3/selective_r0.2") < ids.index("t4/selective_r0.25")
    assert ids[-1] == "t5"
    overrides = dict(jobs[ids.index("t3/random_s42_r0.1")][2][i].split("=", 1) for i in range(2))
    assert overrides == {"strategy": "random", "strategy.seed": "42"}


def test_a_rerun_skips_journaled_jobs(tmp_path, monkeypatch):
    runner = load_runner(tmp_path, monkeypatch)
    calls = []

    def fake_prune(cfg, run_dir, sweep_dir=None):
        calls.append(Path(run_dir).name)
        return {"humaneval/pass@1": 0.5, "humaneval/nll": 0.2, "distractor/sss": 0.7, "prune/real_ratio": 0.0526,
                "original/humaneval/pass@1": 0.55, "time/eval": 1.0}

    monkeypatch.setattr(runner.recipes, "prune", fake_prune)
    monkeypatch.setattr(runner, "compose_job", lambda job, overrides: overrides)
    monkeypatch.setattr(runner.recipes, "release_memory", lambda: None)
    args = type("Args", (), {"tables": "3", "strategies": "selective,reverse", "ratios": "0.05", "recovery": "",
                             "out": str(tmp_path / "runs")})
    runner.run(args)
    assert sorted(calls) == ["reverse_r0.05", "selective_r0.05"]
    rows = [json.loads(line) for line in (tmp_path / "journal.jsonl").read_text().splitlines()]
    assert {r["job"] for r in rows} == {"t3/selective_r0.05", "t3/reverse_r0.05"}
    assert all("time/eval" not in r and r["humaneval/pass@1"] == 0.5 for r in rows)
    runner.run(args)  # everything is journaled: nothing runs again
    assert len(calls) == 2
    table = runner.print_tables(runner.read_journal())
    assert "| 5% (5.3%) | 50.00 (-) / 0.200 / 0.700 |" in table and "47.56 (0.0)" in table


def test_every_job_decodes_at_the_journals_batch_not_the_default(tmp_path, monkeypatch):
    """The journal's rows were generated at batch 8; the default moved to 16, then 20, and in bf16 the batch changes the
    greedy tokens, so the runner pins 8 for prune and train jobs alike (a table is one decode setting)."""
    from hydra import compose, initialize_config_dir

    runner = load_runner(tmp_path, monkeypatch)
    with initialize_config_dir(config_dir=str(REPO / "conf"), version_base="1.3"):
        default = compose("prune", overrides=["model=qwen2.5-coder-0.5b", "task=code_offline"])
    assert (default.eval.batch_size, default.eval.max_batch_tokens) == (20, 16384)
    for job, overrides in (("prune", ["strategy=contrastive", "ratio=0.15"]), ("train", ["lora=code"])):
        cfg = runner.compose_job(job, overrides)
        assert (cfg.eval.batch_size, cfg.eval.max_batch_tokens, cfg.eval.nll.max_batch_tokens) == (8, 4096, None), job
        assert cfg.model.name_or_path == "pip:qwen2.5-coder-0.5b-instruct", job


def test_the_journal_records_the_cpu_and_the_tables_say_which_jobs_ran_where(tmp_path, monkeypatch):
    runner = load_runner(tmp_path, monkeypatch)
    monkeypatch.setattr(runner.dist, "cpu_kind", lambda: "Xeon, amx_bf16")
    runner.record("t3/selective_r0.2", {"humaneval/pass@1": 0.1, "original/humaneval/correct": 88}, 5.0, [])
    rows = runner.read_journal()
    assert rows["t3/selective_r0.2"]["cpu"] == "Xeon, amx_bf16"
    rows["t3/reverse_r0.05"] = {"job": "t3/reverse_r0.05", "original/humaneval/correct": 90}  # an older row
    lines = runner.provenance(rows)
    assert lines[1:] == ["- CPU not recorded, unpruned 90 of 164: t3/reverse_r0.05",
                         "- Xeon, amx_bf16, unpruned 88 of 164: t3/selective_r0.2"]


def test_journal_option_reads_and_writes_the_named_file(tmp_path, monkeypatch, capsys):
    """--journal: a runner in a worktree appends to the main checkout's journal (the worktree's is lost with it)."""
    import sys

    runner = load_runner(tmp_path, monkeypatch)
    other = tmp_path / "main-checkout.jsonl"
    other.write_text(json.dumps({"job": "t3/reverse_r0.05", "humaneval/nll": 0.215, "distractor/sss": 0.811,
                                 "prune/real_ratio": 0.0526}) + "\n")
    monkeypatch.setattr(sys, "argv", ["paper_tables.py", "--print", "--journal", str(other)])
    runner.main()
    assert "| 5% (5.3%) |  |  |  |  | 0.215 / 0.811 |" in capsys.readouterr().out
    assert runner.JOURNAL == other
    runner.record("t3/selective_r0.05", {"humaneval/nll": 0.05}, 1.0, [])
    assert {json.loads(line)["job"] for line in other.read_text().splitlines()} == {"t3/reverse_r0.05",
                                                                                   "t3/selective_r0.05"}
    assert not (tmp_path / "journal.jsonl").exists()


def test_proxy_agreement_counts_the_pairs_the_nll_orders_as_pass_at_1_per_machine(tmp_path, monkeypatch):
    runner = load_runner(tmp_path, monkeypatch)

    def cell(p, nll, cpu="A"):
        return {"humaneval/pass@1": p, "humaneval/nll": nll, "cpu": cpu, "original/humaneval/correct": 90}

    journal = {"t3/a_r0.05": cell(0.5, 0.05), "t3/b_r0.05": cell(0.4, 0.06), "t3/c_r0.05": cell(0.3, 0.055),
               "t3/d_r0.05": cell(0.1, 0.2, cpu="B"), "t3/e_r0.05": {"humaneval/nll": 0.1, "cpu": "A"},
               "t4/a_r0.15": cell(0.9, 0.01)}
    lines = runner.proxy_agreement(journal)
    # pairs (a,b) and (a,c) ordered alike, (b,c) swapped: 2 of 3, tau-b (2 - 1) / 3; B has one cell: no line
    assert lines[1] == ("- A: over 3 cells with pass@1, a lower own-answer NLL goes with a higher pass@1 "
                        "in 2 of 3 pairs (Kendall tau-b +0.33)")
    assert len(lines) == 2 and runner.proxy_agreement({}) == []
    assert lines[0] in runner.print_tables(journal)


def test_another_recovery_budget_gets_its_own_job_ids_and_table_4_rows(tmp_path, monkeypatch):
    """A rerun with more steps must not be skipped as the default budget's finished cell, nor hide beside it."""
    runner = load_runner(tmp_path, monkeypatch)
    more = runner.RECOVERY.replace("task.train.n=1200", "task.train.n=2400").split()
    ids = [j for j, _, _ in runner.jobs(["4"], ["selective"], [0.15], more)]
    assert len(ids) == 1 and ids[0].startswith("t4+") and ids[0].endswith("/selective_r0.15")
    assert ids != [j for j, _, _ in runner.jobs(["4"], ["selective"], [0.15], runner.RECOVERY.split())]
    _, _, overrides = runner.recovery_job("selective", 0.15, more)
    journal = {"t3/selective_r0.15": {"humaneval/pass@1": 0.1585, "humaneval/trap_rate": 0.3},
               ids[0]: {"humaneval/pass@1": 0.3, "humaneval/trap_rate": 0.1, "overrides": overrides},
               "t4/selective_r0.15": {"humaneval/pass@1": 0.1585, "humaneval/trap_rate": 0.3}}
    labels = [label for label, _ in runner.recovery_rows(journal, "selective", 0.15)]
    assert labels == ["selective", "selective, task.train.n=2400"]
    assert "| 15% | selective, task.train.n=2400 | 15.85 (30.00) | 30.00 (10.00) | - |" in runner.print_tables(journal)
    # With the unpruned model's score: the share of the loss regained, (30.00 - 15.85) / (54.88 - 15.85) = 36 %,
    # beside the paper's (51.22 - 38.41) / (62.80 - 38.41) = 52.5 %
    journal["t3/original"] = {"original/humaneval/pass@1": 0.5488}
    assert ("| 15% | selective, task.train.n=2400 | 15.85 (30.00) | 30.00 (10.00) | 36 % |" in
            runner.print_tables(journal))
    assert "| 38.41 -> 51.22 | 53 % |" in runner.print_tables(journal)


def test_a_quoted_recovery_override_stays_whole_and_a_long_list_is_counted_in_its_label(tmp_path, monkeypatch):
    """A drop_response_lines regex has spaces, so a plain split of --recovery would break it into pieces; Table 4
    names such a budget by its key and item count, the journal keeps it whole."""
    runner = load_runner(tmp_path, monkeypatch)
    # as the shell hands it over from: --recovery '... "task.train.drop_response_lines=[\"^\\s*# import ...$\",...]"'
    text = runner.RECOVERY + (r' "task.train.drop_response_lines=[\"^\\s*# import necessary packages$\",'
                              r'\"^\\s*# main function$\"]"')
    overrides = runner.recovery_overrides(text)
    assert overrides[:-1] == runner.RECOVERY.split()
    assert overrides[-1] == r'task.train.drop_response_lines=["^\s*# import necessary packages$","^\s*# main function$"]'
    assert runner.budget_label(overrides[-1]) == "task.train.drop_response_lines=[2 items]"
    assert runner.budget_label("lora.epochs=2") == "lora.epochs=2"
    assert runner.budget_label("task.train.drop_response_lines=[a]") == "task.train.drop_response_lines=[a]"
