"""HumanEval and MBPP pass@1: the paper's prompt, a sanitiser from model output to code, execution in the sandbox."""

from __future__ import annotations

import ast
import logging
import re
import textwrap
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

from tqdm.auto import tqdm

from prunekit.errors import ConfigError, DataError
from prunekit.evaluation.benchmarks.base import Benchmark, register
from prunekit.evaluation.benchmarks.sandbox import run_python

log = logging.getLogger(__name__)

__all__ = [
    "CODE_ONLY_INSTRUCTION", "HUMANEVAL_INSTRUCTION", "CodeBenchmark", "HumanEval", "MBPP", "build_prompt", "check",
    "has_complete_function", "pass_at_1", "sanitize",
]

# The paper's setup (Table 8): an instruction that asks for top-level function definitions only.
CODE_ONLY_INSTRUCTION = (
    "Respond with valid Python code only: the requested function as "
    "one or more top-level function definitions (imports are allowed). Do not use markdown or backticks. "
    "Do not write explanations, prose or comments outside the functions. Do not add examples, tests, "
    "print statements, other top-level statements or an `if __name__ == \"__main__\":` block."
)
HUMANEVAL_INSTRUCTION = f"You are solving a HumanEval problem. {CODE_ONLY_INSTRUCTION}"
REQUIRED_FIELDS = ("task_id", "prompt", "entry_point", "test")

# A ``` fence and the rest of its line (a language tag, or prose after a closing fence); it may follow text.
_FENCE = re.compile(r"```[^`\n]*$", re.MULTILINE)
_CODE_START = re.compile(r"^(def |async def |class |import |from \S+ import |@)")
_KEEP = (ast.Import, ast.ImportFrom, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)


def build_prompt(problem: Mapping) -> str:
    """Instruction + the official prompt, as one user turn (the chat template is applied by the engine)."""
    return f"{HUMANEVAL_INSTRUCTION}\n\n{problem['prompt']}"


def _fenced_blocks(text: str) -> list[tuple[str, bool]]:
    """(code, closed) for each ``` fenced block; an unclosed last fence (cut by the token limit) runs to the end."""
    marks = list(_FENCE.finditer(text))
    blocks, i = [], 0
    while i < len(marks):
        start = marks[i].end() + 1
        if i + 1 < len(marks):
            blocks.append((text[start:marks[i + 1].start()], True))
            i += 2
        else:
            blocks.append((text[start:], False))
            i += 1
    return blocks


def _extract_code(text: str, entry_point: str | None) -> tuple[str, bool]:
    """The code part of a model output, and whether it was a closed fenced block.

    The first fenced block that defines `entry_point` wins, else the first fenced block, else the whole text.
    """
    blocks = _fenced_blocks(text)
    if not blocks:
        return text, False
    if entry_point:
        pattern = re.compile(rf"^\s*(async\s+)?def\s+{re.escape(entry_point)}\s*\(", re.MULTILINE)
        for code, closed in blocks:
            if pattern.search(code):
                return code, closed
    return blocks[0]


def _parses(code: str) -> bool:
    try:
        ast.parse(code)
    except (SyntaxError, ValueError):  # ValueError: NUL bytes in the source
        return False
    return True


def _longest_parsable(lines: list[str], start: int) -> int | None:
    """Largest end such that lines[start:end] parses (None if none does).

    A syntax error at line L stays in every longer run, so the search jumps to L-1 instead of stepping by one.
    """
    end = len(lines)
    while end > start:
        try:
            ast.parse("\n".join(lines[start:end]))
            return end
        except SyntaxError as err:
            bad = start + (err.lineno or end - start) - 1  # index of the offending line
            end = min(end - 1, max(bad, start))
        except ValueError:
            end -= 1
    return None


def _parsable_segments(code: str) -> str:
    """Line-based fallback for text that does not parse as a whole (prose between code, a truncated tail).

    From each line that starts top-level code (def/class/import/decorator), keep the longest run of lines
    that parses; lines outside such runs (prose, half-written code) are dropped.
    """
    lines = code.splitlines()
    kept, i = [], 0
    while i < len(lines):
        if not _CODE_START.match(lines[i]):
            i += 1
            continue
        end = _longest_parsable(lines, i)
        if end is None:
            i += 1
            continue
        kept.append("\n".join(lines[i:end]))
        i = end
    return "\n\n".join(kept)


def _has_call(node: ast.AST) -> bool:
    return any(isinstance(n, (ast.Call, ast.Await, ast.Yield, ast.YieldFrom)) for n in ast.walk(node))


def _keep_top_level(code: str) -> str:
    """Imports, defs, classes and call-free constant assignments of `code`; prints, tests, main blocks dropped."""
    if not _parses(code):
        code = _parsable_segments(code)
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return ""
    keep = [n for n in tree.body if isinstance(n, _KEEP)
            or (isinstance(n, (ast.Assign, ast.AnnAssign)) and n.value is not None and not _has_call(n))]
    return "\n\n".join(ast.get_source_segment(code, n, padded=False) for n in keep if n is not None) + (
        "\n" if keep else "")


def _defined(code: str) -> dict[str, ast.AST]:
    """Top-level defs/classes by name (empty when `code` does not parse)."""
    try:
        tree = ast.parse(code)
    except (SyntaxError, ValueError):
        return {}
    return {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}


def _has_body(fn: ast.AST) -> bool:
    """The function does something: not only a docstring, `pass` or `...`."""
    trivial = (ast.Pass,)
    for stmt in fn.body:
        if isinstance(stmt, trivial):
            continue
        if isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Constant):
            continue
        return True
    return False


def _prompt_context(prompt: str, code: str, entry_point: str) -> str:
    """The prompt's imports and helper functions the code relies on but does not define itself."""
    try:
        tree = ast.parse(prompt)
    except SyntaxError:
        return ""
    own = _defined(code)
    parts = []
    for node in tree.body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            parts.append(ast.get_source_segment(prompt, node))
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            if node.name != entry_point and node.name not in own:
                parts.append(ast.get_source_segment(prompt, node))
    return "\n\n".join(p for p in parts if p) + ("\n\n" if parts else "")


def sanitize(completion: str, problem: Mapping) -> str:
    """Model output -> program body: code from a fence or the raw text, only imports/defs/classes kept.

    A full solution gets the prompt's imports and helpers put in front (as prompt + completion would); an
    output that only continues the function body is appended to the official prompt.
    """
    entry = problem["entry_point"]
    code, _ = _extract_code(completion, entry)
    # A whole solution indented as a block (e.g. inside a markdown list) is dedented first.
    for candidate in dict.fromkeys([code, textwrap.dedent(code)]):
        clean = _keep_top_level(candidate)
        fn = _defined(clean).get(entry)
        if fn is not None and _has_body(fn):
            return _prompt_context(problem["prompt"], clean, entry) + clean
    clean = _keep_top_level(code)
    continued = _keep_top_level(problem["prompt"] + code)
    fn = _defined(continued).get(entry)
    if fn is not None and _has_body(fn):
        return continued
    return _prompt_context(problem["prompt"], clean, entry) + clean


def has_complete_function(text: str, entry_point: str, *, truncated: bool = True) -> bool:
    """True when the output holds a finished, non-trivial definition of `entry_point` (Type 1 traps).

    With `truncated` (the text was cut by a loop or the token limit) the function must visibly end: a
    closed code fence, a later top-level line, or a final `return`/`raise`, so a loop inside the body does
    not count as an answer.
    """
    code, closed = _extract_code(text, entry_point)
    clean = _keep_top_level(code)
    fn = _defined(clean).get(entry_point)
    if fn is None or not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) or not _has_body(fn):
        return False
    if not truncated or closed or isinstance(fn.body[-1], (ast.Return, ast.Raise)):
        return True
    # Something at column 0 after the function's text in the raw code means the body was left.
    source = ast.get_source_segment(clean, fn)
    at = code.find(source) if source else -1
    if at < 0:
        return False
    rest = code[at + len(source):]
    return any(line.strip() and not line[0].isspace() for line in rest.splitlines())


def program(problem: Mapping, completion: str) -> str:
    """The program the sandbox runs: the sanitized completion, the problem's tests and the call of `check`."""
    return f"{sanitize(completion, problem)}\n\n{problem['test']}\n\ncheck({problem['entry_point']})\n"


def run_program(problem: Mapping, source: str, timeout_s: float = 3.0) -> dict:
    """Run one built program in the sandbox; a sandbox fault is a failure, not a crash. Thread-safe (no `ast`)."""
    try:
        res = run_python(source, timeout_s=timeout_s)
        status, tail = res.status, res.stderr_tail
    except Exception as exc:  # noqa: BLE001 - one broken run must not end the evaluation
        log.warning("sandbox crashed on %s: %r", problem["task_id"], exc)
        status, tail = "error", repr(exc)
    return {"task_id": problem["task_id"], "passed": status == "passed", "status": status,
            "program": source, "stderr_tail": tail}


def check(problem: Mapping, completion: str, timeout_s: float = 3.0) -> dict:
    """Run one completion against the problem's tests in the sandbox."""
    return run_program(problem, program(problem, completion), timeout_s)


def _align(problems: Sequence[Mapping], completions: Mapping[str, str] | Sequence[str]) -> list[str]:
    """Completions in problem order, from a {task_id: text} mapping or a list in the same order."""
    if isinstance(completions, Mapping):
        missing = [p["task_id"] for p in problems if p["task_id"] not in completions]
        if missing:
            raise DataError(f"pass_at_1: no completion for {len(missing)} task(s), e.g. {missing[:3]}; "
                                "completions must have one entry per problem task_id")
        return [completions[p["task_id"]] for p in problems]
    if isinstance(completions, str) or len(completions) != len(problems):
        raise DataError(f"pass_at_1: completions must be a {{task_id: text}} mapping or a list of "
                            f"{len(problems)} texts (one per problem), got {type(completions).__name__}")
    return list(completions)


def pass_at_1(
    problems: Sequence[Mapping],
    completions: Mapping[str, str] | Sequence[str],
    workers: int = 2,
    timeout_s: float = 3.0,
    progress: bool = True,
) -> dict:
    """Greedy pass@1 (fraction of problems whose completion passes) and the per-task results, in parallel."""
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"pass_at_1: workers={workers!r} is invalid; allowed: an integer >= 1")
    if not problems:
        raise DataError("pass_at_1: problems is empty; at least one problem is needed for a rate")
    texts = _align(problems, completions)
    # Programs are built here, in one thread: CPython 3.11's ast.parse is not thread-safe (concurrent parses
    # raise "SystemError: AST constructor recursion depth mismatch", python/cpython#106905; seen in our CI).
    programs = [program(p, t) for p, t in zip(problems, texts)]
    # Threads suffice for the rest: each waits on its own sandbox subprocess, which is where the work happens.
    with ThreadPoolExecutor(max_workers=workers) as pool:
        futures = pool.map(lambda pp: run_program(pp[0], pp[1], timeout_s), zip(problems, programs))
        results = list(tqdm(futures, total=len(problems), desc="sandbox", unit="task", disable=not progress))
    passed = sum(r["passed"] for r in results)
    statuses = [r["status"] for r in results]
    log.info("pass@1 %d/%d (timeouts %d, sandbox errors %d)", passed, len(results),
             statuses.count("timeout"), statuses.count("error"))
    return {"humaneval/pass@1": passed / len(results), "humaneval/passed": passed, "humaneval/n": len(results),
            "results": results}


# ---------------------------------------------------------------------------------------------- the benchmarks
class CodeBenchmark(Benchmark):
    """Shared by benchmarks scored by running the output against tests in the sandbox."""

    domain = "Code"
    executes_code = True

    def problem(self, record: Mapping, gold) -> dict:
        """A HumanEval-shaped problem (task_id, prompt, entry_point, test) for check / pass_at_1."""
        raise NotImplementedError

    def has_answer(self, text: str, sample: dict) -> bool:
        return has_complete_function(text, sample["record"]["entry_point"], truncated=True)

    def score(self, samples: list[dict], rows: list[dict], settings: dict) -> None:
        res = pass_at_1([s["record"] for s in samples], [r["output"] for r in rows],
                             workers=settings["code"]["workers"], timeout_s=float(settings["code"]["timeout_s"]))
        for row, r in zip(rows, res["results"]):
            row["correct"], row["status"] = r["passed"], r["status"]

    def extra_metrics(self, rows: list[dict]) -> dict:
        statuses = Counter(r.get("status") for r in rows)
        return {f"{self.name}/timeouts": statuses["timeout"], f"{self.name}/sandbox_errors": statuses["error"]}


@register
class HumanEval(CodeBenchmark):
    """HumanEval pass@1 (paper Table 8: the instruction + official prompt, 512 new tokens, 3 s per task);
    ids are task_ids; `nll_gold` scores the official prompt followed by the canonical solution."""

    name = "humaneval"
    primary = "pass@1"
    max_new_tokens = 512
    in_paper = True

    def sample(self, index: int, record, prompt_text: str, gold) -> dict:
        missing = [k for k in REQUIRED_FIELDS if k != "test" and k not in record]
        if missing:
            raise DataError(f"task.eval.target: HumanEval record {index} lacks {missing}; "
                                 f"required: {list(REQUIRED_FIELDS)}")
        problem = {**record, "test": gold}
        return {"id": record["task_id"], "prompt": build_prompt(problem), "gold": gold, "record": problem}

    def nll_pair(self, sample: dict) -> tuple[str, str]:
        rec = sample["record"]
        if "canonical_solution" not in rec:
            raise DataError("nll: HumanEval records need canonical_solution; drop `nll` from eval.parts")
        return sample["prompt"], rec["prompt"] + rec["canonical_solution"]


# The MBPP paper's prompt (Austin et al. 2021, section 2.1), with the first test only, then the HumanEval-style
# request for code only (an instruct model otherwise wraps the code in prose).
MBPP_PROMPT = ("You are an expert Python programmer, and here is your task: {text} "
               "Your code should pass this test:\n\n{test}\n\nRespond with valid Python code only.")
_ASSERTED_CALL = re.compile(r"assert\s+\(?\s*(?:not\s+)?(?:\w+\s*\(\s*)?([A-Za-z_]\w*)\s*\(")


@register
class MBPP(CodeBenchmark):
    """MBPP pass@1 (Austin et al. 2021): the problem text plus its first test as the prompt, every test in the
    sandbox. Records need task_id, text, code, test_list (test_setup_code optional); ids are task_ids."""

    name = "mbpp"
    primary = "pass@1"
    max_new_tokens = 512

    def sample(self, index: int, record, prompt_text: str, gold) -> dict:
        tests = list(gold) if isinstance(gold, (list, tuple)) else []
        missing = [k for k in ("task_id", "text", "code") if k not in record]
        if missing or not tests:
            raise DataError(f"task.eval.target: MBPP record {index} lacks {missing or ['test_list']}; "
                                 "required: task_id, text, code, test_list")
        entry = self.entry_point(record, tests)
        setup = record.get("test_setup_code") or ""
        test = f"{setup}\n\ndef check(candidate):\n" + "".join(f"    {t}\n" for t in tests)
        problem = {"task_id": record["task_id"], "prompt": "", "entry_point": entry, "test": test,
                   "canonical_solution": record["code"]}
        prompt = MBPP_PROMPT.format(text=prompt_text, test=tests[0])
        return {"id": record["task_id"], "prompt": prompt, "gold": tests, "record": problem}

    @staticmethod
    def entry_point(record, tests: list[str]) -> str:
        """The function the tests call (the first asserted call), else the reference solution's first def."""
        m = _ASSERTED_CALL.search(tests[0])
        if m:
            return m.group(1)
        names = [n.name for n in ast.parse(record["code"]).body if isinstance(n, ast.FunctionDef)]
        if not names:
            raise DataError(f"MBPP task {record['task_id']}: no function name in its tests or reference code")
        return names[0]

    def parse_id(self, raw):
        return int(raw) if isinstance(raw, str) and raw.strip().isdigit() else raw

    def nll_pair(self, sample: dict) -> tuple[str, str]:
        return sample["prompt"], sample["record"]["canonical_solution"]
