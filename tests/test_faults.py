"""Fault injection: damaged or mismatched caches are noticed, moved aside and rebuilt, and never change
the pruning; a job killed with SIGKILL at capture, save or evaluation is finished by the next run of the same
command with the same results; bad model directories and files are one-line errors; stale temps are cleaned."""

import json
import logging
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from prunekit import recipes
from prunekit.errors import DataError
from tests.helpers import REPO, TINY
from tests.helpers import prune_cfg as _cfg
from tests.helpers import subprocess_env as _env


def _cache_file(tmp_path):
    files = list((tmp_path / "cache" / "activations").glob("*.pt"))
    assert len(files) == 1
    return files[0]


def _kept(run):
    return json.loads((run / "pruning.json").read_text())["kept_indices"]


def _truncate(path):
    path.write_bytes(path.read_bytes()[:100])


def _garbage(path):
    path.write_bytes(b"\x00garbage" * 50)


def _empty(path):
    path.write_bytes(b"")


def _edit(change):
    def corrupt(path):
        data = torch.load(path, weights_only=True)
        change(data)
        torch.save(data, path)
    return corrupt


def _shape(data):  # statistics of a narrower model: neurons beyond 256 could never be pruned
    for k, v in data.items():
        if k != "_manifest":
            v["mean"], v["m2"] = v["mean"][:, :256], v["m2"][:, :256]


def _missing_set(data):
    data.pop("distractor/squad")


def _nan(data):
    data["target"]["mean"][0, 0] = float("nan")


def _count0(data):
    data["target"]["count"] = 0


CORRUPTIONS = {"truncated": _truncate, "garbage": _garbage, "empty": _empty, "wrong shape": _edit(_shape),
               "missing set": _edit(_missing_set), "NaN": _edit(_nan), "count 0": _edit(_count0)}


@pytest.fixture(scope="module")
def clean(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("clean")
    recipes.prune(_cfg(tmp, model_cache, "evaluate=false"), tmp / "run")
    return tmp, _kept(tmp / "run")


def _prune_over_damage(clean_dir, damage, entry_of, overrides, logger, tmp_path, model_cache, caplog):
    """Copy a clean run's cache, damage one entry, prune again: (the entry's path, metrics, warnings logged)."""
    import shutil

    shutil.copytree(clean_dir / "cache", tmp_path / "cache")
    path = entry_of(tmp_path)
    damage(path)
    with caplog.at_level(logging.WARNING, logger=logger):
        metrics = recipes.prune(_cfg(tmp_path, model_cache, *overrides), tmp_path / "run")
    return path, metrics, [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_damaged_activation_cache_is_moved_aside_and_rebuilt(kind, clean, tmp_path, model_cache, caplog):
    path, metrics, warnings = _prune_over_damage(clean[0], CORRUPTIONS[kind], _cache_file, ["evaluate=false"],
                                                 "prunekit.capture", tmp_path, model_cache, caplog)
    assert any(str(path) in w and "capturing again" in w for w in warnings), warnings
    assert metrics["capture/cached"] is False
    assert _kept(tmp_path / "run") == clean[1]  # the damage never changes which neurons are pruned
    assert len(list(path.parent.glob(f"{path.name}.bad-*"))) == 1  # kept aside for inspection
    again = recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false", "resume=false"), tmp_path / "run2")
    assert again["capture/cached"] is True  # the rebuilt entry is valid


def test_resume_refuses_a_changed_config_and_resume_false_redoes_it(clean, tmp_path, model_cache):
    import shutil

    from prunekit.runs.store import RunError

    shutil.copytree(clean[0] / "cache", tmp_path / "cache")
    run = tmp_path / "run"
    first = recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false"), run)
    assert recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false"), run) == first  # same settings: skipped
    with pytest.raises(RunError, match=r"other settings \(ratio: 0.1 -> 0.5; strategy.name: 'selective' -> "
                                            r"'reverse'\).*resume=false"):
        recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false", "ratio=0.5", "strategy=reverse"), run)
    assert json.loads((run / "pruning.json").read_text())["ratio"] == 0.1  # untouched
    redone = recipes.prune(_cfg(tmp_path, model_cache, "evaluate=false", "ratio=0.5", "strategy=reverse",
                                 "resume=false"), run)
    assert redone["prune/ratio"] == 0.5 and json.loads((run / "pruning.json").read_text())["strategy"] == "reverse"


def test_generations_file_bad_ids_encoding_and_partial_coverage(tmp_path, caplog):
    from prunekit.evaluation import suite

    bad = tmp_path / "g.jsonl"
    bad.write_text('{"id": 1.7, "output": "x"}\n')
    with pytest.raises(DataError, match=r"line 1: id 1.7 is not a GSM8K test index"):
        suite.read_outputs(bad, "gsm8k")
    bad.write_bytes(b'{"id": 1, "output": "caf\xe9"}\n')
    with pytest.raises(DataError, match=r"is not UTF-8 text"):
        suite.read_outputs(bad, "gsm8k")
    bad.write_text('{"id": "3", "output": "\\\\boxed{4}"}\n')
    assert suite.read_outputs(bad, "gsm8k")[0]["id"] == 3


# ------------------------------------------------------------------------------------------------ bad models
@pytest.fixture(scope="module")
def good_dir(tmp_path_factory, tokenizer):
    from prunekit.models import tiny_model

    path = tmp_path_factory.mktemp("good") / "model"
    tiny_model("llama", len(tokenizer)).save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def _config(path):
    return json.loads((path / "config.json").read_text())


def _no_weights(d):
    (d / "model.safetensors").unlink()


def _truncated_weights(d):
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])


def _garbage_weights(d):
    (d / "model.safetensors").write_bytes(b"\x01garbage" * 100)


def _unknown_type(d):
    (d / "config.json").write_text(json.dumps({**_config(d), "model_type": "no-such-arch"}))


def _config_list(d):
    (d / "config.json").write_text("[1, 2]")


def _config_invalid(d):
    (d / "config.json").write_text("{not json")


def _no_tokenizer(d):
    for f in d.iterdir():
        if "token" in f.name or f.name.endswith((".model", ".txt")) or f.name == "vocab.json":
            f.unlink()


def _shapes(d):
    (d / "config.json").write_text(json.dumps({**_config(d), "hidden_size": 96}))


BAD_DIRS = {"no weights": _no_weights, "truncated weights": _truncated_weights, "garbage weights": _garbage_weights,
            "unknown model_type": _unknown_type, "config not an object": _config_list,
            "config not JSON": _config_invalid, "no tokenizer": _no_tokenizer, "shapes disagree": _shapes}


@pytest.mark.parametrize("kind", list(BAD_DIRS))
def test_bad_model_directory_is_one_line_error(kind, good_dir, tmp_path):
    import shutil

    from prunekit import models
    from prunekit.errors import PrunekitError

    bad = tmp_path / "bad"
    shutil.copytree(good_dir, bad)
    BAD_DIRS[kind](bad)
    with pytest.raises(PrunekitError) as err:
        source = models.resolve(str(bad))
        models.load_config(source, tmp_path)
        models.load(source, tmp_path, dtype="float32")
    message = str(err.value)
    assert "\n" not in message and message.startswith("model.name_or_path=") and str(bad) in message


@pytest.mark.parametrize("content", [b"", b"GGUF", b"\x00garbage" * 64])
def test_bad_gguf_is_one_line_error(content, tmp_path):
    from prunekit import models
    from prunekit.errors import PrunekitError

    path = tmp_path / "m.gguf"
    path.write_bytes(content)
    with pytest.raises(PrunekitError, match=r"model.name_or_path='.*m.gguf': cannot load its config"):
        models.load_config(models.resolve(str(path)), tmp_path)


def test_stale_temps_of_dead_processes_are_cleaned_and_live_ones_kept(tmp_path):
    import subprocess
    import sys

    from prunekit.checkpoint import clean_stale_temps

    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead_pid, live_pid = int(dead.stdout), os.getpid()
    litter = [tmp_path / f".model.{dead_pid}.abc123.tmp", tmp_path / f".k.pt.{dead_pid}.x1y2.tmp",
              tmp_path / f".model.old-{dead_pid}", tmp_path / f".q.gguf.{dead_pid}.tmp"]
    kept = [tmp_path / f".model.{live_pid}.zz9.tmp", tmp_path / "k.pt", tmp_path / "k.pt.bad-123"]
    for path in litter[:2] + kept:
        path.write_text("x")
    for path in litter[2:]:
        path.mkdir()
    removed = clean_stale_temps(tmp_path)
    assert sorted(removed) == sorted(litter)
    assert all(p.exists() for p in kept)


# ------------------------------------------------------------------------------------------ kill -9
# Each script runs prune.py in a subprocess with one function wrapped so that the process SIGKILLs itself at that
# point (no cleanup code, no finally blocks run): inside capture after the first batch, inside the checkpoint
# write after the weights are in the temp dir, and inside the evaluation after its first generation batch.
KILL_AT = {
    "capture": """
import prunekit.capture as m
real = m._batches
def dying(*a, **k):
    for i, batch in enumerate(real(*a, **k)):
        if i == 1:
            os.kill(os.getpid(), signal.SIGKILL)
        yield batch
m._batches = dying
""",
    "save": """
import transformers
real = transformers.PreTrainedModel.save_pretrained
def dying(self, *a, **k):
    real(self, *a, **k)
    os.kill(os.getpid(), signal.SIGKILL)
transformers.PreTrainedModel.save_pretrained = dying
""",
    "evaluation": """
import pathlib
import prunekit.evaluation.generation as m
run = pathlib.Path(next(a.split("=", 1)[1] for a in sys.argv if a.startswith("hydra.run.dir=")))
real = m.generate
def dying(*a, **k):  # the pruned model's first target batch is in the run's journal: die before the next
    if (run / "generations.partial.jsonl").is_file():
        os.kill(os.getpid(), signal.SIGKILL)
    return real(*a, **k)
m.generate = dying
""",
}
KILLED = ("import os, runpy, signal, sys\n{patch}\n"
          "sys.argv = ['prune.py', *sys.argv[1:]]\nrunpy.run_path({prune!r}, run_name='__main__')\n")
EVAL = ["evaluate=true", "eval.parts=[task,traps,nll]", "eval.n=4", "eval.batch_size=2", "eval.max_new_tokens=8",
        "task.eval.distractors.conversations.n=2", "task.eval.distractors.squad.n=2"]


def _prune_cmd(tmp_path, model_cache, run, patch=None):
    args = [*TINY, *EVAL, "strategy=selective", "ratio=0.1", f"hydra.run.dir={run}", f"cache_dir={tmp_path}/cache",
            f"model.cache_dir={model_cache}"]
    if patch is None:
        return [sys.executable, str(REPO / "prune.py"), *args]
    return [sys.executable, "-c", KILLED.format(patch=patch, prune=str(REPO / "prune.py")), *args]


def _litter(*folders):
    return [p for f in folders if f.exists() for p in f.rglob(".*") if p.name.endswith(".tmp") or ".tmp." in p.name]


@pytest.fixture(scope="module")
def unkilled(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("unkilled")
    out = subprocess.run(_prune_cmd(tmp, model_cache, tmp / "run"), cwd=tmp, capture_output=True, text=True,
                         timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads((tmp / "run" / "metrics.json").read_text()), _kept(tmp / "run")


@pytest.mark.parametrize("stage", list(KILL_AT))
def test_sigkill_at_each_stage_then_the_same_command_finishes_with_the_same_results(stage, unkilled, tmp_path,
                                                                                    model_cache):
    run = tmp_path / "run"
    killed = subprocess.run(_prune_cmd(tmp_path, model_cache, run, KILL_AT[stage]), cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=_env())
    assert killed.returncode == -signal.SIGKILL, killed.stderr[-3000:]
    assert not (run / "complete-prune.json").exists() and not (run / "metrics.json").exists()
    if stage == "save":
        assert _litter(run) and not (run / "model").exists()  # the weights were in the temp dir, never renamed
    if stage == "evaluation":
        assert (run / "generations.partial.jsonl").read_text().count("\n") == 2  # the first target batch

    again = subprocess.run(_prune_cmd(tmp_path, model_cache, run), cwd=tmp_path, capture_output=True, text=True,
                           timeout=600, env=_env())
    assert again.returncode == 0, again.stderr[-3000:]
    metrics = json.loads((run / "metrics.json").read_text())
    assert _kept(run) == unkilled[1]
    for key in ("gsm8k/em", "gsm8k/trap_rate", "gsm8k/nll", "prune/kept_width"):
        assert metrics[key] == unkilled[0][key], key
    if stage == "evaluation":
        assert "resuming, 2 of 4 prompts already generated" in (run / "prune.log").read_text()
    assert not _litter(run, tmp_path / "cache") and not (run / "generations.partial.jsonl").exists()


# ------------------------------------------------------------------------------------------ two processes at once
SLOW_CAPTURE = """
import time
import prunekit.capture as m
real = m._batches
def slow(*a, **k):  # holds the capture lock for a while, so the second process surely arrives meanwhile
    time.sleep(4)
    yield from real(*a, **k)
m._batches = slow
"""


def test_two_prunes_sharing_a_cache_capture_once(tmp_path, model_cache):
    first = subprocess.Popen(_prune_cmd(tmp_path, model_cache, tmp_path / "a", SLOW_CAPTURE) + ["evaluate=false"],
                             cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=_env())
    deadline = time.time() + 120
    while not list((tmp_path / "cache" / "activations").glob("*.lock")):  # the first one holds the lock
        assert time.time() < deadline and first.poll() is None, first.stdout.read()[-3000:]
        time.sleep(0.2)
    second = subprocess.run(_prune_cmd(tmp_path, model_cache, tmp_path / "b") + ["evaluate=false"], cwd=tmp_path,
                            capture_output=True, text=True, timeout=600, env=_env())
    assert first.wait(timeout=600) == 0 and second.returncode == 0, second.stderr[-3000:]
    cached = [json.loads((tmp_path / r / "metrics.json").read_text())["capture/cached"] for r in ("a", "b")]
    assert cached == [False, True]  # the second waited on the lock and read the first one's statistics
    assert _kept(tmp_path / "a") == _kept(tmp_path / "b")
    assert len(list((tmp_path / "cache" / "activations").glob("*.pt"))) == 1


MATERIALIZE = """
import importlib, logging, sys, time
from prunekit import models
logging.basicConfig(level=logging.INFO)
if sys.argv[2] == "slow":
    conversion = importlib.import_module("prunekit.models.load")  # the module (models.load is the function)
    real = conversion._gguf_to_dir
    def slow(gguf, out):
        time.sleep(4)
        real(gguf, out)
    conversion._gguf_to_dir = slow
print(models.materialize(models.resolve("pip:smollm2-135m-instruct"), sys.argv[1]), flush=True)
"""


def test_two_processes_materialising_one_pip_model_convert_it_once(tmp_path, caplog):
    cache = tmp_path / "models"
    env = {**_env(), "PYTHONPATH": str(REPO)}
    first = subprocess.Popen([sys.executable, "-c", MATERIALIZE, str(cache), "slow"], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.time() + 120
    while not list(cache.glob("*.lock")):
        assert time.time() < deadline and first.poll() is None, first.stderr.read()[-3000:]
        time.sleep(0.2)
    second = subprocess.run([sys.executable, "-c", MATERIALIZE, str(cache), "fast"], capture_output=True, text=True,
                            timeout=600, env=env)
    out, err = first.communicate(timeout=600)
    assert first.returncode == 0 and second.returncode == 0, (err + second.stderr)[-3000:]
    assert out.strip() == second.stdout.strip() and Path(out.strip()).is_dir()
    logs = err + second.stderr
    assert logs.count("(one time)") == 1 and "damaged" not in logs  # converted once, never taken for damaged
    assert not list(cache.glob("*.bad-*")) and not _litter(cache)
    from prunekit.models.load import _converted_ok
    assert _converted_ok(Path(out.strip()))


# ------------------------------------------------------------------------------------------ attribution cache
def _layer_file(tmp_path):
    (path,) = (tmp_path / "cache" / "attribution").glob("*/layer001.pt")
    return path


ATTRIBUTION_DAMAGE = {
    "truncated": _truncate, "garbage": _garbage, "empty": _empty,
    "bare tensor (no manifest)": lambda p: torch.save(torch.zeros(384), p),
    "wrong width": _edit(lambda d: d.update(scores=d["scores"][:256])),
    "NaN": _edit(lambda d: d["scores"].__setitem__(0, float("nan"))),
    "other key": _edit(lambda d: d["_manifest"].update(key="0" * 20)),
}
ATTRIBUTION = ["strategy=attribution", "strategy.samples=2", "strategy.steps=4", "evaluate=false"]


@pytest.fixture(scope="module")
def attributed(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("attributed")
    recipes.prune(_cfg(tmp, model_cache, *ATTRIBUTION), tmp / "run")
    return tmp, _kept(tmp / "run")


@pytest.mark.parametrize("kind", list(ATTRIBUTION_DAMAGE))
def test_damaged_attribution_cache_is_moved_aside_and_recomputed(kind, attributed, tmp_path, model_cache, caplog):
    path, _, warnings = _prune_over_damage(attributed[0], ATTRIBUTION_DAMAGE[kind], _layer_file, ATTRIBUTION,
                                           "prunekit.attribution", tmp_path, model_cache, caplog)
    assert any(str(path) in w and "computing again" in w for w in warnings), warnings
    assert _kept(tmp_path / "run") == attributed[1]  # the damage never changes which neurons are pruned
    assert len(list(path.parent.glob(f"{path.name}.bad-*"))) == 1
    assert torch.load(path, weights_only=True)["_manifest"]["layer"] == 1  # rebuilt, valid


# ------------------------------------------------------------------------------------------ full disk
@pytest.fixture
def small_disk(tmp_path):
    """A 4 MB tmpfs (the tiny model's checkpoint needs ~13 MB); skipped where mounting is not allowed."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.decode().strip()[:200]}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def test_a_full_disk_for_the_checkpoint_is_one_line_and_leaves_nothing_half_written(small_disk, tmp_path,
                                                                                     model_cache):
    earlier = small_disk / "earlier.json"
    earlier.write_text('{"kept": true}')
    run = small_disk / "run"
    out = subprocess.run(_prune_cmd(tmp_path, model_cache, run) + ["evaluate=false"], cwd=tmp_path,
                         capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 2, out.stderr[-3000:]
    errors = [line for line in out.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "no space left on the device writing" in errors[0] and str(run) in errors[0]
    assert "Traceback" not in out.stderr
    assert earlier.read_text() == '{"kept": true}' and not (run / "model").exists() and not _litter(run)
    assert not (run / "complete-prune.json").exists()


def test_a_full_cache_disk_is_a_warning_and_the_job_finishes(small_disk, tmp_path, model_cache):
    filler = small_disk / "filler"
    with open(filler, "wb") as f:  # fill the tmpfs to the last byte
        try:
            while True:
                f.write(b"\\0" * (1 << 16))
                f.flush()
        except OSError:
            pass
    cmd = _prune_cmd(tmp_path, model_cache, tmp_path / "run") + ["evaluate=false", f"capture.cache_dir={small_disk}/acts"]
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600, env=_env())
    assert out.returncode == 0, out.stderr[-3000:]
    log = (tmp_path / "run" / "prune.log").read_text()
    assert "could not write the activation cache" in log and "continuing without it" in log
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["capture/cached"] is False


# ------------------------------------------------------------------------------------------ converted models, references
def _safetensors(folder: Path) -> Path:
    return folder / "model.safetensors"


@pytest.mark.parametrize("damage", [_truncate, _garbage, lambda d: d.unlink()])
def test_damaged_converted_model_is_moved_aside_and_converted_again(damage, converted_model, tmp_path, caplog):
    import shutil

    from prunekit import models

    converted = converted_model
    shutil.copytree(converted, tmp_path / converted.name)
    damage(_safetensors(tmp_path / converted.name))
    source = models.resolve("pip:smollm2-135m-instruct")
    with caplog.at_level(logging.WARNING, logger="prunekit.models"):
        out = models.materialize(source, tmp_path)
    assert any("is damaged" in r.getMessage() and str(out) in r.getMessage() for r in caplog.records)
    assert len(list(tmp_path.glob(f"{converted.name}.bad-*"))) == 1
    assert _safetensors(out).read_bytes() == _safetensors(converted).read_bytes()  # the same conversion again


REFERENCE_DAMAGE = {"truncated": _truncate, "garbage": _garbage, "empty": _empty,
                    "missing set": lambda p: p.write_text(json.dumps(
                        {k: v for k, v in json.loads(p.read_text()).items() if k != "squad"}))}
SIMILARITY = ["evaluate=true", "eval.parts=[similarity]", "eval.similarity.max_new_tokens=6",
              "task.eval.distractors.conversations.n=2", "task.eval.distractors.squad.n=2"]


@pytest.fixture(scope="module")
def referenced(tmp_path_factory, model_cache):
    tmp = tmp_path_factory.mktemp("referenced")
    metrics = recipes.prune(_cfg(tmp, model_cache, *SIMILARITY), tmp / "run")
    return tmp, metrics


@pytest.mark.parametrize("kind", list(REFERENCE_DAMAGE))
def test_damaged_reference_outputs_are_moved_aside_and_generated_again(kind, referenced, tmp_path, model_cache,
                                                                       caplog):
    path, metrics, warnings = _prune_over_damage(
        referenced[0], REFERENCE_DAMAGE[kind], lambda t: next((t / "cache" / "references").glob("*.json")),
        SIMILARITY, "prunekit.evaluation.baseline", tmp_path, model_cache, caplog)
    assert any(str(path) in w and "generating again" in w for w in warnings), warnings
    assert metrics["distractor/sss"] == referenced[1]["distractor/sss"]  # rebuilt reference, same similarity
    assert len(list(path.parent.glob(f"{path.name}.bad-*"))) == 1


def test_report_usage_errors_are_one_line_from_the_command_line(tmp_path):
    out = subprocess.run([sys.executable, "-m", "prunekit.report", str(tmp_path / "nope")], capture_output=True,
                         text=True, timeout=120, cwd=REPO)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert [line for line in out.stderr.splitlines() if line.startswith("error: ")] == [
        f"error: sweep directory {tmp_path / 'nope'} does not exist"]
