"""Every config in conf/ composes, and the CLI's bad-input paths fail fast with a one-line message: in this process
through each entry's guarded recipe (what the entry scripts run once Hydra has composed the config), and a few
through the real entry scripts."""

import contextlib
import io
import os
import subprocess
import sys

import pytest
from hydra.errors import ConfigCompositionException
from omegaconf import OmegaConf

from prunekit import recipes
from prunekit.cli import guarded
from tests.helpers import CONF, MODEL_CACHE, REPO, compose

GROUPS = sorted(p.name for p in CONF.iterdir() if p.is_dir() and p.name not in ("hydra", "experiment"))


def _options(group: str) -> list[str]:
    return sorted(p.stem for p in (CONF / group).glob("*.yaml"))


# The groups each job's primary config composes (conf/prune.yaml, evaluate.yaml, train.yaml).
JOB_GROUPS = {"prune": {"model", "task", "strategy", "eval", "wandb"}, "evaluate": {"model", "task", "eval", "wandb"},
              "train": {"model", "task", "lora", "eval", "wandb"}}


@pytest.mark.parametrize("job, group, option",
                         [(j, g, o) for j, groups in JOB_GROUPS.items() for g in GROUPS if g in groups
                          for o in _options(g)])
def test_every_config_composes_and_resolves(job, group, option, monkeypatch, compose_config):
    monkeypatch.setenv("PRUNEKIT_CACHE", "/tmp/prunekit-compose")
    cfg = compose_config(job, f"{group}={option}")
    plain = OmegaConf.to_container(cfg, resolve=True)  # every interpolation resolves
    assert plain[group] is not None
    assert {g for g in GROUPS if g in plain} == JOB_GROUPS[job]  # a job carries only its own groups
    assert ("ratio" in plain) == ("capture" in plain) == (job == "prune")
    if job == "prune":
        assert isinstance(plain["ratio"], float) and 0 < plain["ratio"] < 1


@pytest.mark.parametrize("job", ["prune", "evaluate"])
@pytest.mark.parametrize("experiment", sorted(p.stem for p in (CONF / "experiment").glob("paper_*.yaml")))
def test_paper_experiments_compose_for_prune_and_the_baseline_evaluation(job, experiment, monkeypatch,
                                                                         compose_config):
    monkeypatch.setenv("PRUNEKIT_CACHE", "/tmp/prunekit-compose")
    plain = OmegaConf.to_container(compose_config(job, f"experiment={experiment}"), resolve=True)
    assert plain["model"]["name_or_path"].startswith("Qwen/") and plain["task"]["name"] in ("math", "code")


def test_defaults_are_the_offline_default(compose_config):
    cfg = compose_config()
    assert cfg.model.name_or_path == "pip:qwen2.5-coder-0.5b-instruct" and cfg.task.name == "code_offline"
    assert cfg.strategy.name == "contrastive" and cfg.strategy.weight == 0.5
    assert cfg.ratio == 0.05 and cfg.capture.chat_template is False and cfg.capture.max_length == 1024


def test_code_only_puts_the_evaluations_instruction_ahead_of_a_training_template(compose_config):
    """`${code_only:...}` (quoted on the command line: Hydra's override grammar has no unquoted nested
    interpolation) is the HumanEval instruction without its first sentence, then the template itself."""
    from prunekit.evaluation.benchmarks.humaneval import HUMANEVAL_INSTRUCTION

    cfg = compose_config("train", "task=code_offline",
                         "task.train.prompt_template='${code_only:${task.target.template}}'")
    template = recipes.plain(cfg.task)["train"]["prompt_template"]
    first, rest = HUMANEVAL_INSTRUCTION.split(". ", 1)
    assert first == "You are solving a HumanEval problem"
    assert template == f"{rest}\n\n{recipes.plain(cfg.task)['target']['template']}"
    assert "{task_description}" in template  # still a template of the record


def test_cli_fields_reach_every_spec(compose_config):
    cfg = compose_config("prune", "task=math", "task.target.path=my.jsonl", "task.distractors.squad.n=200",
                         "model.name_or_path=/some/dir", "ratio=0.25")
    assert cfg.task.target.path == "my.jsonl" and cfg.task.distractors.squad.n == 200
    assert cfg.model.name_or_path == "/some/dir" and cfg.ratio == 0.25


def _subprocess(*overrides, cwd, script="prune.py"):
    """The real entry script, as a user runs it (Hydra's short error report, no traceback)."""
    return subprocess.run([sys.executable, str(REPO / script), *overrides], cwd=cwd, capture_output=True,
                          text=True, timeout=300, env={**os.environ, "HYDRA_FULL_ERROR": "0"})


def _in_process(*overrides, run_dir, script="prune.py") -> subprocess.CompletedProcess:
    """The entry script `script` in this process: its config composed from `overrides` as Hydra composes it, then
    what its main() runs, the recipe under cli.guarded (a usage error: one `error:` line, exit status 2). A
    composition error is what hydra.main reports without HYDRA_FULL_ERROR: the message, exit status 1. Returns the
    exit status and stderr as the subprocess would."""
    job = script.removesuffix(".py")
    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        try:
            cfg = compose(job, overrides)
        except ConfigCompositionException as exc:
            return subprocess.CompletedProcess(script, 1, "", f"{exc}\n")
        try:
            guarded(getattr(recipes, job), cfg, run_dir=str(run_dir), sweep_dir=None)
        except SystemExit as exc:
            return subprocess.CompletedProcess(script, exc.code, "", err.getvalue())
    return subprocess.CompletedProcess(script, 0, "", err.getvalue())


@pytest.fixture
def cli(tmp_path, monkeypatch):
    """cli(*overrides, script="prune.py"): `_in_process` run from tmp_path (as the subprocess was), its run directory
    tmp_path/run."""
    monkeypatch.chdir(tmp_path)
    return lambda *overrides, script="prune.py": _in_process(*overrides, run_dir=tmp_path / "run", script=script)


@pytest.mark.parametrize("overrides, message", [
    (["ratio=1.5"], "ratio=1.5: must be in the open interval (0, 1)"),
    (["ratio=0"], "ratio=0"),
    (["capture.max_length=0"], "capture.max_length=0: must be an integer >= 1"),
    (["ratio=abc"], "ratio='abc': must be a number in (0, 1)"),
    (["seed=abc"], "seed='abc': must be an integer"),
    (["capture.batch_size=1.5"], "capture.batch_size=1.5: must be an integer >= 1"),
    (["evaluate=maybe"], "evaluate='maybe': must be true or false"),
    (["model.save_dtype=fp8"], "model.save_dtype='fp8': unknown dtype; allowed: null (the source's stored dtype), "
                               "float32, bfloat16, float16"),
    (["capture.n=0"], "capture.n=0: must be an integer >= 1"),
    (["strategy.name=best"], "strategy.name='best': unknown strategy; allowed: selective, reverse, random, "),
    (["model.name_or_path=/no/such/dir"], "model.name_or_path='/no/such/dir': no such directory or file"),
    (["model.name_or_path=pip:nope"], "model.name_or_path='pip:nope': unknown pip model"),
    (["task.target.path=/no/such.jsonl"], "task.target.path='/no/such.jsonl'"),
    (["model=tiny", "ratio=0.9", f"model.cache_dir={MODEL_CACHE}"],
     "ratio=0.9: keeps 0 of 384 neurons per layer"),
    (["model=tiny", "prune.align=100", f"model.cache_dir={MODEL_CACHE}"],
     "prune.align=100: must be a positive multiple of 32"),
    (["prune.align=abc"], "prune.align='abc': must be a positive multiple of 32"),
    (["task.target.n=0"], "task.target"),
    (["strategy=detrimental", "strategy.layer=99", "model=tiny", f"model.cache_dir={MODEL_CACHE}"],
     "strategy.layer=99"),
])
def test_bad_input_fails_fast_with_one_line(overrides, message, tmp_path, cli):
    out = cli(*overrides)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], out.stderr[-2000:]
    assert "Traceback" not in out.stderr
    assert not (tmp_path / "run" / "model").exists()


@pytest.mark.parametrize("script, overrides, message", [
    ("evaluate.py", ["seed=abc"], "seed='abc': must be an integer"),
    ("evaluate.py", ["resume=sometimes"], "resume='sometimes': must be true or false"),
    ("train.py", ["evaluate=maybe"], "evaluate='maybe': must be true or false"),
    ("train.py", ["model.dtype=3"], "model.dtype=3: must be auto, float32, bfloat16 or float16"),
    ("train.py", ["lora.r=abc"], "lora.r='abc': must be an integer"),
    ("train.py", ["lora.r=0"], "lora.r must be a positive integer, got 0"),
    ("evaluate.py", ["task.eval.target.offset=x"], "task.eval.target.offset='x': must be an integer"),
    ("train.py", ["lora.scheduler=step"], "lora.scheduler='step' is unknown; allowed: ['cosine', 'linear']"),
    ("evaluate.py", ["eval.n=abc"], "eval.n='abc': must be an integer"),
    ("evaluate.py", ["generations=/no/such.jsonl"], "generations='/no/such.jsonl': no such file"),
])
def test_evaluate_and_train_reject_bad_values_in_one_line(script, overrides, message, cli):
    out = cli(*overrides, script=script)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out.stderr, out.stderr[-2000:]


@pytest.mark.parametrize("script, key", [("evaluate.py", "ratio"), ("train.py", "ratio"),
                                         ("evaluate.py", "eval.generations")])  # one key re-scores: generations=
def test_keys_a_job_does_not_have_are_refused(script, key, cli):
    out = cli(f"{key}=0.2", script=script)
    assert out.returncode != 0 and f"Could not override '{key}'" in out.stderr


@pytest.mark.parametrize("group, bad, listed", [
    ("strategy", "best", "selective"), ("model", "gpt5", "smollm2-135m"), ("task", "poetry", "math_offline")])
def test_unknown_group_option_lists_the_options(group, bad, listed, cli):
    out = cli(f"{group}={bad}")
    assert out.returncode != 0
    assert f"Could not find '{group}/{bad}'" in out.stderr and f"Available options in '{group}'" in out.stderr
    assert f"\t{listed}\n" in out.stderr



# The real entry scripts: the contract the in-process cases stand for (one `error:` line, exit 2, nothing written).
@pytest.mark.parametrize("script, overrides, message", [
    ("prune.py", ["ratio=1.5"], "ratio=1.5: must be in the open interval (0, 1)"),
    ("evaluate.py", ["seed=abc"], "seed='abc': must be an integer"),
    ("train.py", ["lora.r=0"], "lora.r must be a positive integer, got 0"),
])
def test_entry_scripts_fail_with_one_line_and_status_2(script, overrides, message, tmp_path):
    out = _subprocess(*overrides, f"hydra.run.dir={tmp_path}/run", cwd=tmp_path, script=script)
    assert out.returncode == 2, out.stderr[-2000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0] and "Traceback" not in out.stderr, out.stderr[-2000:]
    assert not (tmp_path / "run" / "model").exists()


def test_entry_script_lists_the_options_of_an_unknown_group_option(tmp_path):
    out = _subprocess("strategy=best", cwd=tmp_path)
    assert out.returncode != 0 and "Traceback" not in out.stderr
    assert "Could not find 'strategy/best'" in out.stderr and "Available options in 'strategy'" in out.stderr
    assert "\tselective\n" in out.stderr

def test_job_and_sweep_dirnames_are_stable_short_and_distinct():
    from prunekit.cli import job_dirname, sweep_id

    argv = ["-m", "strategy.percent=0.1,0.5", "model=tiny", "strategy.layer=range(0,2)", "cache_dir=/x"]
    job = ["model=tiny", "strategy.layer=1", "strategy.percent=0.5", "cache_dir=/x", "eval.parts=[task,nll]"]
    assert job_dirname(job, argv=argv) == "strategy.percent=0.5,strategy.layer=1,eval.parts=[task,nll],model=tiny"
    assert job_dirname(["model.name_or_path=/a/b", "ratio=0.1"], argv=[]) == "model.name_or_path=_a_b,ratio=0.1"
    assert job_dirname([], argv=[]) == "defaults"
    long_a, long_b = ["x=" + "a" * 300, "ratio=0.1"], ["x=" + "a" * 300, "ratio=0.2"]
    assert len(job_dirname(long_a, argv=[])) == 120 and job_dirname(long_a, argv=[]) != job_dirname(long_b, argv=[])
    assert job_dirname(long_a, argv=["ratio=0.1,0.2"]).startswith("ratio=0.1,x=aaa")  # swept keys stay readable
    same = sweep_id(["-m", "strategy=selective,reverse", "ratio=0.05,0.1"])
    assert same == sweep_id(["ratio=0.05,0.1", "--multirun", "strategy=selective,reverse", "hydra.verbose=true"])
    assert same != sweep_id(["-m", "ratio=0.05,0.1"])
