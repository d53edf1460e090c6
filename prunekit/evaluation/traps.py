"""Trap detection: token-limit hits and degenerate loops (offline on outputs, online as stopping criteria).

A trap is a generation that reaches the token limit without EOS or ends in a loop. Type 1: a complete answer
appears before the loop (or anywhere, for a limit hit without a loop); Type 2: it does not (paper, "Traps").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch
from transformers import StoppingCriteria

from prunekit.errors import ConfigError

# Defaults for a token loop: a block of p <= MAX_PERIOD tokens repeated back to back until the periodic tail
# covers >= MIN_REPEATS * p tokens AND >= MIN_SPAN tokens. Three copies separate a loop from a phrase said
# twice; the span floor keeps short legitimate runs ("0000" in 1,000,000, "+ 5 + 5 + 5", a `|---|---|` rule)
# from counting, since a period-1 or period-2 block needs 40 tokens. 64 tokens covers a repeated sentence or
# a short repeated line; longer blocks are caught by the line detector.
MAX_PERIOD = 64
MIN_REPEATS = 3
MIN_SPAN = 40
# Four identical non-blank lines in a row: code can close three nested blocks with the same line, prose and
# step-by-step math practically never repeat a whole line four times.
MIN_LINE_REPEATS = 4


def _check_thresholds(max_period: int, min_repeats: int, min_span: int) -> None:
    """Reject thresholds that would flag every sequence or none."""
    if max_period < 1:
        raise ConfigError(f"max_period must be an integer >= 1, got {max_period}")
    if min_repeats < 2:
        raise ConfigError(f"min_repeats must be an integer >= 2 (one copy is not a loop), got {min_repeats}")
    if min_span < 2:
        raise ConfigError(f"min_span must be an integer >= 2, got {min_span}")


def _loop_condition(run: np.ndarray | torch.Tensor, periods, min_repeats: int, min_span: int):
    """Per period: the periodic tail (run + p tokens) is long enough in copies and in tokens."""
    span = run + periods
    return (run > 0) & (span >= min_repeats * periods) & (span >= min_span)


def _trailing_loop(token_ids: Sequence[int], max_period: int, min_repeats: int, min_span: int):
    """(start, period) of the earliest-starting trailing loop (smallest period on ties), else None."""
    x = np.asarray(token_ids, dtype=np.int64)
    n = len(x)
    best = None
    for p in range(1, min(max_period, n - 1) + 1):
        mismatch = np.flatnonzero(x[p:] != x[:-p])
        run = (n - p) - (mismatch[-1] + 1) if len(mismatch) else n - p  # trailing run of x[t] == x[t-p]
        if _loop_condition(np.int64(run), p, min_repeats, min_span):
            start = n - run - p
            if best is None or start < best[0]:
                best = (start, p)
    return best


def find_loop(
    token_ids: Sequence[int],
    *,
    max_period: int = MAX_PERIOD,
    min_repeats: int = MIN_REPEATS,
    min_span: int = MIN_SPAN,
) -> int | None:
    """Start index of the trailing repetition of `token_ids` (earliest over periods 1..max_period), else None."""
    _check_thresholds(max_period, min_repeats, min_span)
    found = _trailing_loop(token_ids, max_period, min_repeats, min_span)
    return None if found is None else found[0]


def find_repeated_lines(text: str, *, min_repeats: int = MIN_LINE_REPEATS) -> int | None:
    """Char index where a trailing run of >= min_repeats identical non-blank lines starts, else None.

    Blank lines between copies are ignored and a cut-off last line that is a prefix of the repeated line is
    allowed, since a limit hit usually stops mid-copy.
    """
    if min_repeats < 2:
        raise ConfigError(f"min_repeats must be an integer >= 2, got {min_repeats}")
    lines, pos = [], 0
    for raw in text.splitlines(keepends=True):
        if raw.strip():
            lines.append((pos, raw.rstrip()))
        pos += len(raw)
    if len(lines) > 1 and lines[-1][1] != lines[-2][1] and lines[-2][1].startswith(lines[-1][1]):
        lines.pop()  # partial last copy
    if not lines:
        return None
    last = lines[-1][1]
    count, start = 0, None
    for line_pos, line in reversed(lines):
        if line != last:
            break
        count, start = count + 1, line_pos
    return start if count >= min_repeats else None


@dataclass(frozen=True)
class TrapVerdict:
    """Trap label of one generation; `loop_start` is a char index into the text (None without a loop)."""

    trap: bool
    kind: Literal[1, 2] | None
    reason: Literal["length", "token_loop", "line_loop"] | None
    loop_start: int | None


def _char_pos(token_index: int, token_ids: Sequence[int], text: str, tokenizer, token_to_char) -> int:
    """Character position of a token index, through `token_to_char` or by decoding the token prefix."""
    if token_to_char is not None:
        pos = token_to_char(token_index)
    else:
        pos = len(tokenizer.decode(list(token_ids[:token_index]), skip_special_tokens=True))
    return max(0, min(int(pos), len(text)))


def classify(
    text: str,
    token_ids: Sequence[int] | None,
    *,
    hit_limit: bool,
    has_answer: Callable[[str], bool],
    tokenizer=None,
    token_to_char: Callable[[int], int] | None = None,
    max_period: int = MAX_PERIOD,
    min_repeats: int = MIN_REPEATS,
    min_span: int = MIN_SPAN,
    min_line_repeats: int = MIN_LINE_REPEATS,
) -> TrapVerdict:
    """Label one generation: trap or not, Type 1 or 2, why, and where the loop starts.

    `token_ids` are the generated tokens without EOS/padding (None: only line loops and the limit are checked);
    mapping a token loop to text needs `tokenizer` (`.decode`) or `token_to_char`. For Type 1 the answer may
    close inside the first copy of the loop: a model repeating its boxed answer did answer.
    """
    if token_ids is not None and tokenizer is None and token_to_char is None:
        raise ConfigError("classify: token_ids given without tokenizer= or token_to_char= to map them to text")
    loops = []  # (char start, char end of the first copy, reason)
    if token_ids is not None and len(token_ids) > 1:
        _check_thresholds(max_period, min_repeats, min_span)
        found = _trailing_loop(token_ids, max_period, min_repeats, min_span)
        if found is not None:
            t0, period = found
            loops.append((_char_pos(t0, token_ids, text, tokenizer, token_to_char),
                          _char_pos(t0 + period, token_ids, text, tokenizer, token_to_char), "token_loop"))
    c0 = find_repeated_lines(text, min_repeats=min_line_repeats)
    if c0 is not None:
        nl = text.find("\n", c0)
        loops.append((c0, len(text) if nl < 0 else nl, "line_loop"))
    if loops:
        start, first_copy_end, reason = min(loops)
        kind = 1 if has_answer(text[:first_copy_end]) else 2
        return TrapVerdict(True, kind, reason, start)
    if hit_limit:
        return TrapVerdict(True, 1 if has_answer(text) else 2, "length", None)
    return TrapVerdict(False, None, None, None)


def summarize(verdicts: Iterable[TrapVerdict]) -> dict:
    """Trap rate and Type 1 / Type 2 counts and rates (fractions of all generations)."""
    verdicts = list(verdicts)
    if not verdicts:
        raise ValueError("summarize: verdicts is empty; at least one generation is needed for a rate")
    n = len(verdicts)
    traps = sum(v.trap for v in verdicts)
    t1 = sum(v.trap and v.kind == 1 for v in verdicts)
    t2 = sum(v.trap and v.kind == 2 for v in verdicts)
    return {"n": n, "traps": traps, "trap_rate": traps / n, "trap_type1": t1, "trap_type2": t2,
            "trap_type1_rate": t1 / n, "trap_type2_rate": t2 / n}


def _eos_set(eos_token_id: int | Sequence[int] | None) -> list[int]:
    """EOS ids as a list (transformers allows an int or a list)."""
    if eos_token_id is None:
        return []
    return [int(eos_token_id)] if isinstance(eos_token_id, int) else [int(e) for e in eos_token_id]


class LoopStoppingCriteria(StoppingCriteria):
    """Stops rows whose generated tokens end in a loop, with the same rule as `find_loop` (online trap detector).

    Per step it compares only the newest token with the `max_period` tokens before it and keeps, per row and
    period, the length of the trailing run where x[t] == x[t-p]: O(batch * max_period) tensor work, no Python
    loop over the sequence. `flagged_at[b]` is the number of generated tokens when row b was stopped (-1: not).
    Rows that already emitted an EOS are never flagged (their padding would look like a loop).
    """

    def __init__(
        self,
        prompt_length: int,
        *,
        max_period: int = MAX_PERIOD,
        min_repeats: int = MIN_REPEATS,
        min_span: int = MIN_SPAN,
        eos_token_id: int | Sequence[int] | None = None,
    ):
        _check_thresholds(max_period, min_repeats, min_span)
        if prompt_length < 0:
            raise ConfigError(f"prompt_length must be >= 0, got {prompt_length}")
        self.prompt_length = prompt_length
        self.max_period, self.min_repeats, self.min_span = max_period, min_repeats, min_span
        self.eos = _eos_set(eos_token_id)
        self.reset()

    def reset(self) -> None:
        """Forget all rows (called automatically when a new batch shows up)."""
        self._seen = self.prompt_length
        self._run = None
        self.flagged_at = None
        self._ended = None

    def _start(self, input_ids: torch.Tensor) -> None:
        """Fresh per-row state on the batch's device."""
        b, dev = input_ids.shape[0], input_ids.device
        self._seen = self.prompt_length
        self._run = torch.zeros(b, self.max_period, dtype=torch.long, device=dev)
        self._periods = torch.arange(1, self.max_period + 1, device=dev)
        self._eos = torch.tensor(self.eos, dtype=input_ids.dtype, device=dev)
        self.flagged_at = torch.full((b,), -1, dtype=torch.long, device=dev)
        self._ended = torch.zeros(b, dtype=torch.bool, device=dev)

    def _step(self, input_ids: torch.Tensor, cur: int) -> None:
        """Take in the token at absolute position `cur` (generated token number t = cur - prompt_length)."""
        t = cur - self.prompt_length
        tok = input_ids[:, cur]
        k = min(self.max_period, t)  # periods with a partner inside the generated tokens
        eq = torch.zeros_like(self._run, dtype=torch.bool)
        if k > 0:
            eq[:, :k] = input_ids[:, cur - k : cur].flip(1) == tok[:, None]
        self._run = torch.where(eq, self._run + 1, torch.zeros_like(self._run))
        if len(self.eos):
            self._ended |= torch.isin(tok, self._eos)
        hit = _loop_condition(self._run, self._periods, self.min_repeats, self.min_span).any(1)
        new = hit & ~self._ended & (self.flagged_at < 0)
        self.flagged_at = torch.where(new, torch.full_like(self.flagged_at, t + 1), self.flagged_at)

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        """Bool tensor [batch]: True for rows whose generated tokens end (or ended) in a loop."""
        length = input_ids.shape[1]
        if self._run is None or input_ids.shape[0] != self._run.shape[0] or length < self._seen:
            self._start(input_ids)
        for cur in range(self._seen, length):  # normally one new token per call
            self._step(input_ids, cur)
        self._seen = length
        return self.flagged_at >= 0

    @property
    def stopped(self) -> torch.BoolTensor | None:
        """Rows stopped by the loop detector so far (None before the first call)."""
        return None if self.flagged_at is None else self.flagged_at >= 0


class AnswerStoppingCriteria(StoppingCriteria):
    """Stops a row once its generated text holds a complete answer (`stop_on_answer=true`).

    Text is decoded incrementally: pending tokens are decoded together and committed once they end a line or
    reach `chunk` tokens (so multi-byte characters are not split), and the predicate runs only when the text grew.
    """

    def __init__(self, tokenizer, has_answer: Callable[[str], bool], prompt_length: int, *, chunk: int = 16):
        if prompt_length < 0:
            raise ConfigError(f"prompt_length must be >= 0, got {prompt_length}")
        if chunk < 1:
            raise ConfigError(f"chunk must be >= 1, got {chunk}")
        self.tokenizer, self.has_answer = tokenizer, has_answer
        self.prompt_length, self.chunk = prompt_length, chunk
        self.reset()

    def reset(self) -> None:
        """Forget all rows (called automatically when a new batch shows up)."""
        self._seen = self.prompt_length
        self._done_text: list[str] = []
        self._pending: list[list[int]] = []
        self._last_len: list[int] = []
        self._stopped: torch.Tensor | None = None

    def _row_text(self, b: int, new_tokens: list[int]) -> str:
        """Append tokens to row b and return its current text (committed + decoded pending)."""
        self._pending[b].extend(new_tokens)
        piece = self.tokenizer.decode(self._pending[b], skip_special_tokens=True)
        text = self._done_text[b] + piece
        if (piece.endswith("\n") or len(self._pending[b]) >= self.chunk) and not piece.endswith("\ufffd"):
            self._done_text[b], self._pending[b] = text, []
        return text

    def __call__(self, input_ids: torch.LongTensor, scores=None, **kwargs) -> torch.BoolTensor:
        """Bool tensor [batch]: True for rows whose generated text contains a complete answer."""
        batch, length = input_ids.shape
        if self._stopped is None or batch != len(self._stopped) or length < self._seen:
            self.reset()
            self._done_text, self._pending = [""] * batch, [[] for _ in range(batch)]
            self._last_len = [0] * batch
            self._stopped = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
        new = input_ids[:, self._seen : length].tolist()
        self._seen = length
        for b in range(batch):  # rows need their own text; only the tail is decoded
            if self._stopped[b] or not new[b]:
                continue
            text = self._row_text(b, new[b])
            grew, self._last_len[b] = len(text) != self._last_len[b], len(text)
            if grew and self.has_answer(text):
                self._stopped[b] = True
        return self._stopped.clone()

    @property
    def stopped(self) -> torch.BoolTensor | None:
        """Rows stopped on a complete answer so far (None before the first call)."""
        return self._stopped
