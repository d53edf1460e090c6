"""Run directories (layout, store) and their W&B mirror: offline read-back, disabled mode, failures that never fail
a run, runs.jsonl, resume."""

import json
import logging
import multiprocessing as mp
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from prunekit.runs import layout, store
from prunekit.runs import wandb as mirror
from tests.helpers import inspect_run, write_checkpoint

CFG = {"model": {"name": "smollm2-135m", "name_or_path": "pip:smollm2-135m-instruct"},
       "task": {"name": "math_offline", "target": {"path": "gsm8k.jsonl", "n": 8}},
       "strategy": {"name": "selective"}, "ratio": 0.1, "seed": 42}


@pytest.fixture(autouse=True)
def _wandb_sandbox(tmp_path, monkeypatch):
    """Keep W&B's own caches/settings in tmp, no network, no API key from the environment."""
    for var in ("WANDB_DATA_DIR", "WANDB_CACHE_DIR", "WANDB_CONFIG_DIR", "WANDB_ARTIFACT_DIR"):
        monkeypatch.setenv(var, str(tmp_path / "_wandb_home" / var.lower()))
    monkeypatch.setenv("WANDB_SILENT", "true")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))


def test_names_tags_group(tmp_path):
    assert mirror.run_name(CFG) == "smollm2-135m/selective/r0.10"
    rnd = {**CFG, "strategy": {"name": "random", "seed": 33}, "ratio": 0.35}
    assert mirror.run_name(rnd) == "smollm2-135m/random-s33/r0.35"
    assert mirror.tags(CFG) == ["model:smollm2-135m", "task:math_offline", "strategy:selective", "ratio:0.10",
                                  "job:prune"]
    # evaluate/train runs are named after what their checkpoint is, never after the config's ratio/strategy defaults
    assert mirror.run_name(CFG, None, "evaluate") == "smollm2-135m/unpruned/evaluate"
    assert mirror.tags(CFG, None, "evaluate")[2:] == ["strategy:unpruned", "ratio:none", "job:evaluate"]
    record = {"source_model": "pip:smollm2-135m-instruct", "strategy": "reverse", "ratio": 0.3, "seed": 42}
    assert mirror.run_name(CFG, record, "train") == "smollm2-135m-instruct/reverse/r0.30/train"
    assert "strategy:reverse" in mirror.tags(CFG, record, "train") and "ratio:0.30" in mirror.tags(CFG, record, "train")
    sweep = tmp_path / "multirun" / "prune" / "2026-01-01_00-00-00"
    # every job of one sweep (whatever its overrides) shares the group; another sweep or a single run does not
    assert mirror.group(CFG, sweep, sweep / "ratio=0.1") == mirror.group(rnd, sweep, sweep / "ratio=0.35")
    assert mirror.group(CFG, sweep).startswith("sweep/prune/2026-01-01_00-00-00-")
    assert mirror.group(CFG, tmp_path / "other") != mirror.group(CFG, sweep)
    assert mirror.group(CFG, None, tmp_path / "run1") != mirror.group(CFG, None, tmp_path / "run2")
    assert store.flatten(CFG)["task.target.n"] == 8
    assert store.flatten(CFG)["model.name_or_path"] == "pip:smollm2-135m-instruct"


def test_unknown_mode_errors_before_any_work(tmp_path):
    with pytest.raises(ValueError, match=r"wandb.mode='cloud'.*online, offline, disabled"):
        mirror.start(CFG, job_type="prune", run_dir=tmp_path / "r", mode="cloud")
    with pytest.raises(ValueError, match=r"job_type='fit'.*prune, train, evaluate"):
        mirror.start(CFG, job_type="fit", run_dir=tmp_path / "r", mode="offline")
    assert not (tmp_path / "r").exists()


def test_disabled_writes_no_files(tmp_path):
    run_dir = tmp_path / "run"
    with mirror.start(CFG, job_type="prune", run_dir=run_dir, mode="disabled") as t:
        assert not t.active
        t.log({"gsm8k/em": 0.5})
        t.log_table("x", ["a"], [[1]])
        t.summary({"a": 1})
    assert not run_dir.exists()


def test_offline_two_runs_in_one_process_are_distinct(tmp_path):
    sweep = tmp_path / "sweep"
    jobs = [
        (sweep / "ratio=0.1", {**CFG, "ratio": 0.1}, {"gsm8k/em": 0.61, "gsm8k/trap_rate": 0.02, "prune/real_ratio": 0.125}),
        (sweep / "ratio=0.2", {**CFG, "ratio": 0.2, "strategy": {"name": "reverse"}},
         {"humaneval/pass@1": 0.25, "resources/params": 12345}),
    ]
    for run_dir, cfg, metrics in jobs:
        with mirror.start(cfg, job_type="prune", run_dir=run_dir, mode="offline", project="prunekit-test",
                            group=mirror.group(cfg, sweep), name=mirror.run_name(cfg), tags=mirror.tags(cfg),
                            settings={"console": "off", "x_disable_stats": True}) as t:
            assert t.active and t.mode == "offline"
            t.log(metrics)
            t.summary({"final/marker": cfg["ratio"]})

    group = mirror.group(CFG, sweep)
    seen_ids = set()
    for (run_dir, cfg, metrics), other in zip(jobs, reversed(jobs)):
        run = inspect_run(run_dir)
        assert run["exit_code"] == 0, "run was not finished"
        assert run["display_name"] == mirror.run_name(cfg)
        for key, value in metrics.items():
            assert run["summary"][key] == pytest.approx(value)
        for key in set(other[2]) - set(metrics):
            assert key not in run["summary"], f"metric {key} leaked from the other run"
        assert run["summary"]["final/marker"] == cfg["ratio"]
        for key, value in store.flatten(cfg).items():
            assert run["config"][key] == value, key
        assert run["job_type"] == "prune" and run["run_group"] == group
        assert set(run["tags"]) == set(mirror.tags(cfg))
        seen_ids.add(run["run_id"])
    assert len(seen_ids) == 2


def test_error_inside_run_still_finishes_and_next_run_is_clean(tmp_path):
    with pytest.raises(RuntimeError):
        with mirror.start(CFG, job_type="evaluate", run_dir=tmp_path / "a", mode="offline",
                            settings={"console": "off", "x_disable_stats": True}) as t:
            t.log({"first/only": 1.0})
            raise RuntimeError("job crashed")
    # a run opened without the context manager and never finished is closed by the next start
    leftover = mirror.start(CFG, job_type="evaluate", run_dir=tmp_path / "b", mode="offline",
                              settings={"console": "off", "x_disable_stats": True})
    leftover.log({"second/only": 2.0})
    with mirror.start(CFG, job_type="evaluate", run_dir=tmp_path / "c", mode="offline",
                        settings={"console": "off", "x_disable_stats": True}) as t:
        assert t.run is not leftover.run
        t.log({"third/only": 3.0})
    for name, key, code in (("a", "first/only", 1), ("b", "second/only", 0), ("c", "third/only", 0)):
        run = inspect_run(tmp_path / name)
        logged = {k for k in run["summary"] if not k.startswith("_")}
        assert logged == {key}, (name, logged)
        assert run["exit_code"] == code, (name, run["exit_code"])


def test_online_without_key_falls_back_to_offline_once(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(mirror, "_offline_fallback_logged", False)
    caplog.set_level(logging.WARNING, logger="prunekit.runs.wandb")
    assert not mirror.has_api_key()
    assert mirror.effective_mode("online") == "offline"
    assert mirror.effective_mode("online") == "offline"
    assert sum("no W&B API key" in r.getMessage() for r in caplog.records) == 1
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert mirror.effective_mode("online") == "online"
    assert mirror.effective_mode("disabled") == "disabled"


def test_wandb_failures_never_fail_the_run(tmp_path, monkeypatch, caplog):
    import wandb

    def broken_init(*args, **kwargs):
        raise ConnectionError("network is down")

    monkeypatch.setattr(wandb, "init", broken_init)
    caplog.set_level(logging.WARNING, logger="prunekit.runs.wandb")
    run_dir, sweep = tmp_path / "sweep" / "job0", tmp_path / "sweep"
    with mirror.start(CFG, job_type="prune", run_dir=run_dir, mode="offline") as t:
        assert not t.active
        t.log({"gsm8k/em": 0.5})
        mirror.log_selectivity(t, {"selectivity_summary": [{"layer": 0, "target_dominant": 1,
                                                               "distractor_dominant": 2}]})
    assert any("W&B init failed" in r.getMessage() for r in caplog.records)
    store.record_run(sweep, run_dir, {"gsm8k/em": 0.5}, CFG, "complete", job_type="prune", name=mirror.run_name(CFG))
    (entry,) = [json.loads(line) for line in (sweep / layout.INDEX_FILE).read_text().splitlines()]
    assert entry["metrics"] == {"gsm8k/em": 0.5} and entry["run_dir"] == "job0" and entry["status"] == "complete"
    assert entry["name"] == "smollm2-135m/selective/r0.10" and entry["config"] == CFG


def test_exception_while_logging_is_a_warning(caplog):
    class FlakyRun:
        summary = {}

        def log(self, *a, **k):
            raise OSError("connection reset")

        def finish(self, exit_code=None):
            raise OSError("connection reset")

    caplog.set_level(logging.WARNING, logger="prunekit.runs.wandb")
    with mirror.Tracker(FlakyRun(), "online") as t:
        t.log({"a": 1})
        t.log_table("k", ["a"], [[1]])
    msgs = [r.getMessage() for r in caplog.records]
    assert any("W&B log failed" in m for m in msgs) and any("W&B finish failed" in m for m in msgs)
    assert not t.active


class _TableSpy:
    def __init__(self):
        self.active, self.tables, self.summaries = True, {}, []

    def log_table(self, key, columns, rows):
        self.tables[key] = (columns, rows)

    def log_chart(self, key, chart):
        self.tables[key + "#chart"] = chart

    def summary(self, m):
        self.summaries.append(m)

    def _safe(self, what, fn):
        return fn()


def test_log_selectivity_and_generations_tables():
    spy = _TableSpy()
    summary = [{"layer": i, "mean": 0.1 * i, "std": 1.0, "min": -1.0, "max": 2.0, "target_dominant": 10 + i,
                "distractor_dominant": 20 - i} for i in range(3)]
    mirror.log_selectivity(spy, {"selectivity_summary": summary})
    cols, rows = spy.tables["selectivity/layers"]
    assert cols == mirror.SELECTIVITY_COLUMNS and rows[2][5:] == [12, 18]
    assert spy.summaries[-1] == {"selectivity/target_dominant": 33, "selectivity/distractor_dominant": 57}
    assert "selectivity/layer_distribution#chart" in spy.tables

    gens = [{"id": i, "output": f"out{i}", "correct": True} for i in range(20)]
    gens += [{"id": 100 + i, "output": "loop " * 5, "trap_type": 2} for i in range(3)]
    mirror.log_generations(spy, gens, limit=6)
    cols, rows = spy.tables["samples/generations"]
    assert len(rows) == 6
    assert {r[0] for r in rows if r[4]} == {"100", "101", "102"}


def _append_many(args):
    path, worker, n = args
    for i in range(n):
        store._append_line(Path(path), json.dumps({"w": worker, "i": i, "pad": "x" * 20000}))


def test_runs_jsonl_concurrent_appends_stay_whole_lines(tmp_path):
    path = tmp_path / "runs.jsonl"
    with mp.get_context("fork").Pool(4) as pool:
        pool.map(_append_many, [(str(path), w, 50) for w in range(4)])
    lines = path.read_text().splitlines()
    assert len(lines) == 200
    seen = {(d["w"], d["i"]) for d in map(json.loads, lines)}
    assert seen == {(w, i) for w in range(4) for i in range(50)}


# ---------------------------------------------------------------------------------------------- resume
def _write_prune_outputs(run_dir: Path, em: float) -> None:
    from prunekit.checkpoint import atomic_write_json
    write_checkpoint(run_dir / "model")
    atomic_write_json(run_dir / "pruning.json", {"ratio": 0.1})
    atomic_write_json(run_dir / "metrics.json", {"gsm8k/em": em})


def run_job(run_dir: Path, em: float, resume: bool = True) -> bool:
    """The resume protocol the recipes follow: skip, or begin -> record config -> write outputs -> mark_complete.
    True if run."""
    if store.check_resume(run_dir, "prune", CFG, resume):
        return False
    store.begin(run_dir, "prune")
    store.record_config(run_dir, CFG)
    _write_prune_outputs(run_dir, em)
    store.mark_complete(run_dir, "prune")
    return True


def test_is_complete_requires_marker_and_parseable_files(tmp_path):
    run = tmp_path / "r"
    assert not store.is_complete(run, "prune")
    _write_prune_outputs(run, 0.5)
    assert not store.is_complete(run, "prune")  # no marker yet: a job killed before its last step
    store.mark_complete(run, "prune")
    assert store.is_complete(run, "prune")
    assert not store.is_complete(run, "train")
    (run / "metrics.json").write_text('{"gsm8k/em": 0.')  # truncated by hand: not complete any more
    assert not store.is_complete(run, "prune")
    with pytest.raises(RuntimeError, match="metrics.json"):
        store.mark_complete(run, "prune")


KILLED_JOB = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from prunekit.checkpoint import atomic_write_json
    from prunekit.runs import store
    run = Path(sys.argv[1])
    store.begin(run, "prune")
    atomic_write_json(run / "model" / "config.json", {"intermediate_size": 256})
    (run / ".metrics.json.half.tmp").write_text('{"gsm8k/em"')   # an atomic write cut short
    print("ready", flush=True)
    time.sleep(60)                                                 # killed here, before pruning.json/marker
""")


def test_killed_job_is_redone_and_finished_jobs_are_kept(tmp_path):
    sweep = tmp_path / "sweep"
    done, killed = sweep / "ratio=0.1", sweep / "ratio=0.2"
    assert run_job(done, em=0.61)
    before = {p: p.read_bytes() for p in done.rglob("*") if p.is_file()}
    mtimes = {p: p.stat().st_mtime_ns for p in before}

    # a real process killed mid-job (SIGKILL: no cleanup code runs)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])}
    proc = subprocess.Popen([sys.executable, "-c", KILLED_JOB, str(killed)], stdout=subprocess.PIPE, text=True, env=env)
    assert proc.stdout.readline().strip() == "ready"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not store.is_complete(killed, "prune")
    assert (killed / ".metrics.json.half.tmp").exists()

    # re-running the same sweep: the finished job is skipped, the killed one redone and cleaned
    time.sleep(0.01)
    ran = {d.name: run_job(d, em=0.5) for d in (done, killed)}
    assert ran == {"ratio=0.1": False, "ratio=0.2": True}
    assert store.is_complete(killed, "prune")
    assert not list(killed.rglob(".*.tmp"))
    assert {p: p.read_bytes() for p in done.rglob("*") if p.is_file()} == before
    assert {p: p.stat().st_mtime_ns for p in before} == mtimes
    # resume=false re-runs a finished job
    assert run_job(done, em=0.7, resume=False)
    assert json.loads((done / "metrics.json").read_text()) == {"gsm8k/em": 0.7}


@pytest.mark.parametrize("launcher, target", [("joblib_local", "JoblibLauncher"), ("slurm", "SlurmLauncher")])
def test_launcher_configs_compose(launcher, target, monkeypatch):
    from hydra import compose, initialize_config_dir
    monkeypatch.setenv("PRUNEKIT_CACHE", "/tmp/prunekit-compose")
    with initialize_config_dir(config_dir=str(Path(__file__).resolve().parents[1] / "conf"), version_base="1.3"):
        cfg = compose(config_name="prune", overrides=[f"hydra/launcher={launcher}"], return_hydra_config=True)
    assert cfg.hydra.launcher._target_.endswith(target)
    assert cfg.hydra.launcher.get("n_jobs", 2) == 2 and cfg.hydra.launcher.get("timeout_min", 240) == 240


def test_prune_align_at_its_default_keeps_earlier_runs_resumable(tmp_path):
    # a run recorded before prune.align existed is the same job as prune.align=128; another align is not
    before = {"ratio": 0.1, "model": {"name_or_path": "tiny:llama"}}
    store.record_config(tmp_path, before)
    assert store.config_hash({**before, "prune": {"align": 128}})[0] == store.config_hash(before)[0]
    store.check_resume(tmp_path, "prune", {**before, "prune": {"align": 128}}, resume=True)  # not refused
    with pytest.raises(store.RunError, match=r"prune.align: \(absent\) -> 256"):
        store.check_resume(tmp_path, "prune", {**before, "prune": {"align": 256}}, resume=True)


def test_keys_added_later_at_their_default_keep_an_old_runs_hash():
    """A run recorded before model.save_dtype existed, or when capture.n defaulted to 800, still resumes."""
    old = {"model": {"name_or_path": "tiny:llama", "dtype": "auto"}, "capture": {"n": 800, "max_length": 48},
           "task": {"target": {"n": 200}}}
    new = {"model": {"name_or_path": "tiny:llama", "dtype": "auto", "save_dtype": None},
           "capture": {"n": None, "max_length": 48}, "task": {"target": {"n": 200}}}
    assert store.config_hash(new)[0] == store.config_hash(old)[0]
    asked = {**new, "model": {**new["model"], "save_dtype": "bfloat16"}}
    assert store.config_hash(asked)[0] != store.config_hash(old)[0]  # another saved dtype is another run


def test_config_hash_is_pinned():
    """The hash decides whether a finished run is skipped on resume: a changed hash would refuse every recorded run
    (resume=true) with 'other settings'."""
    assert store.config_hash(CFG)[0] == "2c573e1b9d58e7bd"
    assert store.config_hash({**CFG, "wandb": {"mode": "offline"}, "resume": True})[0] == "2c573e1b9d58e7bd"


def test_a_key_added_without_a_later_default_is_named(tmp_path):
    """A config key one side lacks is a named difference, not an empty '()' (the refusal once read 'other settings
    ()' when task.train.drop_response_lines was added without a LATER_KEYS entry)."""
    before = {"ratio": 0.1, "model": {"name_or_path": "tiny:llama"}}
    store.record_config(tmp_path, before)
    with pytest.raises(store.RunError, match=r"other settings \(task.extra: \(absent\) -> None\)"):
        store.check_resume(tmp_path, "prune", {**before, "task": {"extra": None}}, resume=True)


@pytest.mark.parametrize("group, key, later", [("task", "train", {"drop_response_lines": None}),
                                               ("eval", "kv_cache", "dynamic"),
                                               ("eval", "nll", {"max_batch_tokens": None})])
def test_keys_added_later_resume_runs_recorded_before_them(tmp_path, group, key, later):
    before = {"ratio": 0.1, "model": {"name_or_path": "tiny:llama"}}
    store.record_config(tmp_path, before)
    assert not store.check_resume(tmp_path, "prune", {**before, group: {key: later}}, resume=True)  # not refused


def test_composed_default_config_hash_is_pinned(compose_config):
    """Every hashed key of the default job, at its default: a new config key (or a changed default) changes this,
    and then every recorded run is refused on resume. A new key whose default behaves as before it existed goes
    into store.LATER_KEYS; a changed default updates this pin on purpose."""
    cfg = compose_config("prune", "data_dir=/D", "cache_dir=/C")
    from prunekit import recipes

    # eval.batch_size 16 -> 20 gave 962e2defeec90144; eval.nll.max_batch_tokens=1024 (null before) this one
    assert store.config_hash(recipes.plain(cfg))[0] == "9f9294b40f8dca06"
