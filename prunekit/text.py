"""The one text layer: how a prompt becomes token ids, how prompts are grouped into batches by length, and how a
batch of ids is padded into tensors. Capture, attribution, generation, NLL and training all go through it, so a
prompt is encoded the same way wherever it is used.
"""

from collections.abc import Sequence

import torch

from prunekit.errors import ConfigError

IGNORE = -100  # label of a position that carries no loss (prompt tokens, padding): torch's cross-entropy default


def resolve_chat(chat_template, tokenizer) -> bool:
    """A chat_template setting (true, false or 'auto': apply it when the tokenizer has one) as a flag."""
    if chat_template == "auto":
        return bool(getattr(tokenizer, "chat_template", None))
    return bool(chat_template)


def format_prompt(tokenizer, prompt: str, chat_template: bool) -> str:
    """The text fed to the model: the raw prompt (the paper's capture), or the prompt as the user turn of the
    tokenizer's chat template, ending with the generation prompt."""
    if not chat_template:
        return prompt
    if not getattr(tokenizer, "chat_template", None):
        raise ConfigError("chat_template=true but the tokenizer has no chat template; use chat_template=false")
    return tokenizer.apply_chat_template([{"role": "user", "content": prompt}], add_generation_prompt=True, tokenize=False)


def encode(tokenizer, prompts: Sequence[str], chat_template: bool, max_length: int | None = None) -> list[list[int]]:
    """Token ids per prompt, unpadded. Special tokens (e.g. BOS) are added only to raw prompts: a chat template
    already has its own. ``max_length`` keeps each prompt's first tokens."""
    texts = [format_prompt(tokenizer, p, chat_template) for p in prompts]
    return tokenizer(texts, add_special_tokens=not chat_template, truncation=max_length is not None,
                     max_length=max_length)["input_ids"]


def pad_id(tokenizer) -> int:
    """The id padding uses: the pad token, else EOS, else 0 (padded positions are masked and carry no label, so
    any valid id works). The tokenizer itself is never changed (it may be saved into a checkpoint afterwards)."""
    return int(next(c for c in (tokenizer.pad_token_id, tokenizer.eos_token_id, 0) if c is not None))


def length_batches(lengths: Sequence[int], batch_size: int, *, order: str = "longest",
                   max_tokens: int | None = None) -> list[list[int]]:
    """Index batches of at most ``batch_size`` rows and (when set) at most ``max_tokens`` padded tokens, so one
    very long prompt does not pad a whole batch to its length.

    order: ``longest`` first (similar lengths share a batch, and an out-of-memory shows at once), ``shortest``
    first, or ``given`` (the input order). Sorting is stable: equal lengths keep their input order.
    """
    if order not in ("longest", "shortest", "given"):
        raise ConfigError(f"order={order!r}: allowed: longest, shortest, given")
    idx = list(range(len(lengths)))
    if order != "given":
        idx.sort(key=lambda i: -lengths[i] if order == "longest" else lengths[i])
    out, i = [], 0
    while i < len(idx):
        rows = batch_size
        if max_tokens is not None:
            rows = max(1, min(batch_size, max_tokens // max(1, max(lengths[j] for j in idx[i : i + batch_size]))))
        out.append(idx[i : i + rows])
        i += rows
    return out


def collate(rows: Sequence[Sequence[int]], pad: int, *, labels: Sequence[Sequence[int]] | None = None,
            left: bool = False) -> dict[str, torch.Tensor]:
    """Pad token-id rows into ``input_ids`` and ``attention_mask`` (and ``labels``, padded with IGNORE, when given).

    Right padding keeps every real token at the position it has unpadded (capture, NLL, training); left padding
    aligns the prompt ends (batched generation)."""
    width = max(len(r) for r in rows)
    input_ids = torch.full((len(rows), width), pad, dtype=torch.long)
    attention_mask = torch.zeros_like(input_ids)
    out_labels = torch.full_like(input_ids, IGNORE) if labels is not None else None
    for n, row in enumerate(rows):
        cols = slice(width - len(row), width) if left else slice(0, len(row))
        input_ids[n, cols] = torch.as_tensor(list(row), dtype=torch.long)
        attention_mask[n, cols] = 1
        if out_labels is not None:
            out_labels[n, cols] = torch.as_tensor(list(labels[n]), dtype=torch.long)
    batch = {"input_ids": input_ids, "attention_mask": attention_mask}
    if out_labels is not None:
        batch["labels"] = out_labels
    return batch


def key_note(chat_template: bool) -> dict:
    """What the cache keys of chat-template encodings carry: since this module, no special tokens are added on top
    of a chat template (capture and attribution used to add them), so such older entries must not match. Raw
    prompts encode exactly as before, so their keys are unchanged."""
    return {"chat_special_tokens": False} if chat_template else {}
