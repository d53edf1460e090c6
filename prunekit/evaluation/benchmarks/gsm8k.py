"""GSM8K answer checking: prompt, `\\boxed{}` extraction, gold parsing and equivalence (math-verify + GSM8K rules)."""

from __future__ import annotations

import logging
import re
import threading
from collections import Counter
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Literal

# Imported here, not inside the check: a broken math-verify must fail loudly, not mark every non-numeric answer wrong.
from math_verify import parse, verify

from prunekit.errors import DataError
from prunekit.evaluation.benchmarks.base import Benchmark, register

logger = logging.getLogger(__name__)

PROMPT_SUFFIX = "Please reason step by step, and put your final answer within \\boxed{}."

# `\boxed` / `\fbox` not followed by more letters (so `\boxedanswer` is not a box).
_BOX_CMD = re.compile(r"\\(?:boxed|fbox)(?![A-Za-z])")
# A number as written in prose: thousands groups of exactly three digits, optional decimals.
_NUMBER = re.compile(r"-?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d+)?|-?\.\d+")
_PLAIN_NUMBER = re.compile(r"[-+]?(?:\d{1,3}(?:,\d{3})+|\d+)(?:\.\d*)?|[-+]?\.\d+")

# Inputs longer than this skip math-verify when its signal-based timeout is unavailable (non-main thread):
# sympy can hang on huge expressions and C-level big-int work cannot be interrupted from Python.
_UNGUARDED_MAX_CHARS = 64
VERIFY_TIMEOUT_S = 3


def build_prompt(question: str) -> str:
    """The paper's GSM8K prompt: the question, a newline, then the `\\boxed{}` instruction."""
    return f"{question.strip()}\n{PROMPT_SUFFIX}"


@dataclass(frozen=True)
class Extraction:
    """What was taken as the model's answer and from where (`number` flags the no-box fallback)."""

    answer: str | None
    source: Literal["boxed", "number"] | None


def _match_brace(text: str, open_idx: int) -> int | None:
    """Index of the `}` closing the `{` at `open_idx` (escaped `\\{`/`\\}` skipped), or None if unclosed."""
    depth = 0
    i = open_idx
    while i < len(text):
        ch = text[i]
        if ch == "\\":
            i += 2
            continue
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return None


def _boxes(text: str) -> list[tuple[int, int, str]]:
    """All complete, non-empty boxes as (start, end, content), in order of their start.

    `end` is the index right after the box. Empty boxes are skipped: the prompt itself contains `\\boxed{}`
    and a model echoing the instruction has not answered.
    """
    found = []
    for m in _BOX_CMD.finditer(text):
        j = m.end()
        while j < len(text) and text[j] in " \t":
            j += 1
        if j < len(text) and text[j] == "{":
            close = _match_brace(text, j)
            if close is None:
                continue  # unclosed box: ignored
            content, end = text[j + 1 : close].strip(), close + 1
        elif j > m.end():
            # `\boxed 42`: the argument runs to the next whitespace or `$` (convention of MATH graders).
            arg = re.match(r"[^\s$]+", text[j:])
            if arg is None:
                continue
            content, end = arg.group(0).rstrip(".,;:"), j + arg.end()
        else:
            continue
        if content:
            found.append((m.start(), end, content))
    return found


def extract_answer(text: str) -> Extraction:
    """The last complete `\\boxed{...}` (nested braces matched); the last number only if no complete box exists."""
    boxes = _boxes(text)
    if boxes:
        return Extraction(boxes[-1][2], "boxed")
    numbers = _NUMBER.findall(text)
    if numbers:
        return Extraction(numbers[-1].replace(",", ""), "number")
    return Extraction(None, None)


def has_complete_answer(text: str) -> bool:
    """True when the text holds a closed, non-empty `\\boxed{}` (Type 1 traps, `stop_on_answer`)."""
    return first_answer_end(text) is not None


def first_answer_end(text: str) -> int | None:
    """Character index right after the first complete box, so generation can be cut there."""
    boxes = _boxes(text)
    return min(end for _, end, _ in boxes) if boxes else None


def gold_answer(solution: str) -> str:
    """The number after `####` in a GSM8K solution, commas removed."""
    if "####" not in solution:
        raise ValueError("gold_answer: the GSM8K solution has no '####' final-answer marker")
    answer = solution.rsplit("####", 1)[1].strip().replace(",", "")
    if not answer:
        raise ValueError("gold_answer: nothing follows '####' in the GSM8K solution")
    return answer


def _unwrap_text(s: str) -> str:
    r"""Replace `\text{...}`-like groups by their content (`\text{18 apples}` -> `18 apples`)."""
    pattern = re.compile(r"\\(?:text|textbf|mathrm|mbox|textrm|mathbf)\s*\{([^{}]*)\}")
    while True:
        new = pattern.sub(r" \1 ", s)
        if new == s:
            return s
        s = new


def _normalize(s: str) -> str:
    """GSM8K clean-up before comparison: `$` and `\\$`, `\\text{}`, `{,}`, `\\!`, `\\%`, trailing unit words."""
    s = _unwrap_text(s)
    s = s.replace("\u2212", "-").replace("\\$", " ").replace("$", " ").replace("{,}", ",")
    s = s.replace("\\!", "").replace("\\,", "")
    s = re.sub(r"\\?%", " ", s)
    s = re.sub(r"\\(?:left|right)\b", "", s)
    s = s.strip().rstrip(".")
    # "18 dollars", "18 apples per day": a number followed only by words keeps the number.
    m = re.fullmatch(rf"({_PLAIN_NUMBER.pattern})\s*[A-Za-z][A-Za-z\s/.-]*", s)
    if m:
        s = m.group(1)
    return s.strip()


def _as_decimal(s: str) -> Decimal | None:
    """A plain number (commas only as thousands groups of three) as Decimal, else None."""
    if not _PLAIN_NUMBER.fullmatch(s):
        return None
    try:
        return Decimal(s.replace(",", ""))
    except InvalidOperation:
        return None


def _math_verify_equal(pred: str, gold: str) -> bool:
    """math-verify on both strings as LaTeX, with its timeout when usable, else a size guard."""
    in_main = threading.current_thread() is threading.main_thread()
    if not in_main and (len(pred) > _UNGUARDED_MAX_CHARS or "^" in pred or "!" in pred):
        logger.debug("math-verify skipped outside the main thread for a risky prediction: %r", pred[:80])
        return False
    timeout = VERIFY_TIMEOUT_S if in_main else None
    gold_parsed = parse(f"${gold}$", parsing_timeout=timeout)
    pred_parsed = parse(f"${pred}$", parsing_timeout=timeout)
    if not gold_parsed or not pred_parsed:
        return False
    return bool(verify(gold_parsed, pred_parsed, timeout_seconds=timeout))


def is_equivalent(pred: str | None, gold: str) -> bool:
    """True when a predicted answer equals the gold one (numbers exactly, else through math-verify).

    `1,000` == 1000, `\\$18` == `18 dollars` == 18.0 == 18; `0.18` != 18; a tuple `1,2` is not 12.
    """
    if pred is None:
        return False
    p, g = _normalize(str(pred)), _normalize(str(gold))
    if not p or not g:
        return False
    pd, gd = _as_decimal(p), _as_decimal(g)
    if pd is not None and gd is not None:
        return pd == gd
    try:
        return _math_verify_equal(p, g)
    except Exception:  # a parser crash on junk output is a wrong answer, not a crashed evaluation
        logger.debug("math-verify failed on pred=%r gold=%r", p[:80], g, exc_info=True)
        return False


def score(output: str, gold: str) -> dict:
    """Extract the answer from a generation and check it: `correct`, `extracted`, `source`."""
    ext = extract_answer(output)
    return {"correct": is_equivalent(ext.answer, gold), "extracted": ext.answer, "source": ext.source}


# ---------------------------------------------------------------------------------------------- the benchmark
def gold_of(value) -> str:
    """Gold answer from a GSM8K solution ('... #### 72') or a bare final answer ('72')."""
    text = str(value)
    return gold_answer(text) if "####" in text else text.strip().replace(",", "")


@register
class GSM8K(Benchmark):
    """GSM8K exact match on the last \\boxed{} (paper method 1); 1024 "unconstrained" new tokens for the trap
    analysis. Ids are positions in the eval set (+ offset); `nll_gold` scores the worked solution."""

    name = "gsm8k"
    primary = "em"
    domain = "Math"
    max_new_tokens = 1024
    stops_on_answer = True
    in_paper = True

    def sample(self, index: int, record, prompt_text: str, gold) -> dict:
        return {"id": index, "prompt": build_prompt(prompt_text), "gold": gold_of(gold), "record": record}

    def parse_id(self, raw):
        whole = (isinstance(raw, int) and not isinstance(raw, bool)) or (
            isinstance(raw, str) and raw.strip().lstrip("-").isdigit())
        if not whole:  # 1.7 or "1.7" is never read as 1
            raise DataError(f"id {raw!r} is not a GSM8K test index (an integer)")
        return int(raw)

    def verdict(self, output: str, sample: dict) -> dict:
        scored = score(output, sample["gold"])
        return {"correct": scored["correct"], "extracted": scored["extracted"], "source": scored["source"]}

    def has_answer(self, text: str, sample: dict) -> bool:
        return has_complete_answer(text)

    def nll_pair(self, sample: dict) -> tuple[str, str]:
        """The worked solution: GSM8K `answer`, or GSM-Symbolic `metadata.answer_cot` (its `answer` is a number)."""
        rec = sample["record"]
        answer = str(rec.get("answer", ""))
        cot = (rec.get("metadata") or {}).get("answer_cot") if isinstance(rec.get("metadata"), dict) else None
        if "####" not in answer and cot:
            answer = str(cot)
        if not answer.strip():
            raise DataError("nll: GSM8K records need a worked solution in `answer`; drop `nll` from eval.parts")
        return sample["prompt"], answer

    def extra_metrics(self, rows: list[dict]) -> dict:
        n = len(rows)
        sources = Counter(r.get("source") for r in rows)
        return {"gsm8k/boxed_rate": sources["boxed"] / n, "gsm8k/fallback_number": sources["number"],
                "gsm8k/no_answer": sources[None]}
