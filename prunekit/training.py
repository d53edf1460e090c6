"""LoRA recovery fine-tuning of a pruned model (paper eq. 4, Table 7) on Accelerate + peft, and the merge.

`LoraSettings` holds `lora.*` and checks it when built; `build_examples` turns task records into masked token
sequences, `validate` checks what needs the model and data before any compute, `train_lora` runs the (resumable,
checkpointed) loop, `merge` writes the adapter and a stock merged checkpoint. The functions take a LoraSettings or a
Mapping of its fields (see `conf/lora/*.yaml`).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import logging
import math
import os
import re
import shutil
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from prunekit import text
from prunekit.errors import ConfigError
from prunekit.schema import SEED_MAX, Checked, from_mapping
from prunekit.text import IGNORE

log_ = logging.getLogger(__name__)

SCHEDULERS = ("cosine", "linear")
OVERLONG = ("drop", "truncate")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
STATE_FILE = "trainer_state.json"
# Fields a checkpoint must agree on with the resumed run, or skipping batches would land on the wrong data.
_RESUME_KEYS = ("n_examples", "effective_batch_size", "per_device_batch_size", "num_processes", "epochs",
                "steps_per_epoch", "seed")

REQUIRED = ("r", "alpha", "lr", "effective_batch_size")


# ----------------------------------------------------------------------------------------------- settings
@dataclass
class LoraSettings(Checked):
    """`lora.*`, checked once when built (before any weights load); the target module names are checked against
    the model once it is loaded (`validate`). Its defaults are the `lora/schema` node (config.register) that the
    conf/lora/ presets extend. r, alpha, lr and effective_batch_size have no default: each preset (paper Table 7)
    sets them."""

    r: int | None = None                   # LoRA rank
    alpha: float | None = None             # the update is scaled by alpha / r
    lr: float | None = None                # peak learning rate (AdamW)
    effective_batch_size: int | None = None  # = per_device_batch_size x processes x gradient-accumulation steps
    dropout: float = 0.1                   # dropout on the LoRA input
    target_modules: list = dataclasses.field(default_factory=lambda: [
        "q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])  # Linear module names to adapt
    epochs: int = 2
    per_device_batch_size: int = 1         # must divide effective_batch_size / processes
    scheduler: str = "cosine"              # cosine | linear (warm-up, then decay to 0)
    warmup_ratio: float = 0.03             # fraction of the optimizer steps spent warming up
    weight_decay: float = 0.0
    max_grad_norm: float = 1.0             # gradient clipping; 0 = no clipping
    max_length: int = 1024                 # tokens per example (prompt + answer + EOS)
    # An example longer than max_length: drop it (an answer cut short ends without EOS, so it teaches the model to
    # go on writing: the Type 1 traps), or truncate it to its first max_length tokens.
    overlong: str = "drop"
    save_every_steps: int = 0              # checkpoint (checkpoints/step-N) every N optimizer steps; 0 = none
    mixed_precision: str = "auto"          # auto (bf16 on CUDA, no on CPU) | no | bf16 | fp16
    seed: int = 42
    _prefix: str = dataclasses.field(default="lora.", repr=False, kw_only=True, compare=False)

    @classmethod
    def of(cls, lora: Mapping | LoraSettings, prefix: str = "lora.") -> LoraSettings:
        """The settings of a Mapping (an OmegaConf DictConfig too; keys it does not know are other readers')."""
        return lora if isinstance(lora, LoraSettings) else from_mapping(cls, lora, prefix)

    def check(self) -> None:
        missing = [k for k in REQUIRED if getattr(self, k) is None]
        if missing:
            raise self.error(f"lora settings miss {missing}; required fields are {list(REQUIRED)}")
        self.target_modules = [str(t) for t in self.target_modules]
        if self._finite("r") <= 0:
            raise self.error(f"lora.r must be a positive integer, got {self.r!r}")
        for key in ("alpha", "lr"):
            if self._finite(key) <= 0:
                raise self.error(f"lora.{key} must be > 0, got {getattr(self, key)!r}")
        for key in ("dropout", "warmup_ratio"):
            if not 0 <= self._finite(key) < 1:
                raise self.error(f"lora.{key} must be in [0, 1), got {getattr(self, key)!r}")
        for key in ("epochs", "per_device_batch_size", "effective_batch_size", "max_length"):
            if getattr(self, key) < 1:
                raise self.error(f"lora.{key} must be a positive integer, got {getattr(self, key)!r}")
        if not 0 <= self.seed <= SEED_MAX:  # numpy's range (accelerate's set_seed seeds numpy)
            raise self.error(f"lora.seed must be an integer in 0..{SEED_MAX}, got {self.seed!r}")
        if self.save_every_steps < 0:
            raise self.error(f"lora.save_every_steps must be >= 0 (0 = no checkpoints), got {self.save_every_steps!r}")
        if self.scheduler not in SCHEDULERS:
            raise self.error(f"lora.scheduler={self.scheduler!r} is unknown; allowed: {list(SCHEDULERS)}")
        if self.overlong not in OVERLONG:
            raise self.error(f"lora.overlong={self.overlong!r} is unknown; allowed: {list(OVERLONG)}")
        if self.mixed_precision not in MIXED_PRECISION:
            raise self.error(f"lora.mixed_precision={self.mixed_precision!r} is unknown; allowed: "
                             f"{list(MIXED_PRECISION)}")
        self.check_processes(1)
        if not self.target_modules:
            raise self.error("lora.target_modules is empty; name at least one Linear module")

    def _finite(self, key: str) -> float:
        """nan compares false with every bound, so it would pass any range check."""
        value = getattr(self, key)
        if not math.isfinite(value):
            raise self.error(f"lora.{key} must be a finite number, got {value!r}")
        return value

    def check_processes(self, num_processes: int) -> None:
        """The effective batch splits into whole micro-batches on every process."""
        per_step = self.per_device_batch_size * num_processes
        if self.effective_batch_size % per_step:
            raise self.error(
                f"lora.effective_batch_size={self.effective_batch_size} is not divisible by per_device_batch_size x "
                f"processes = {self.per_device_batch_size} x {num_processes} = {per_step}; choose an effective "
                f"batch that is a multiple of {per_step}")


def linear_module_names(model: nn.Module) -> list[str]:
    """Distinct last name components of the model's Linear modules (what LoRA `target_modules` can name).

    On a model that already has LoRA layers, `q_proj.base_layer` counts as `q_proj` and the adapters are skipped.
    """
    names = set()
    for name, mod in model.named_modules():
        parts = name.split(".")
        if not isinstance(mod, nn.Linear) or {"lora_A", "lora_B"} & set(parts):
            continue
        names.add(parts[-2] if parts[-1] == "base_layer" and len(parts) > 1 else parts[-1])
    return sorted(names)


def validate(model: nn.Module, lora: Mapping | LoraSettings, n_examples: int, num_processes: int = 1) -> LoraSettings:
    """The settings (checked when built), then what needs the model, the data and the process count: the target
    modules, the data size and the batch split; returns the settings or raises one line."""
    s = LoraSettings.of(lora)
    s.check_processes(num_processes)
    have = linear_module_names(model)
    unknown = [t for t in s.target_modules if t not in have]
    if unknown:
        raise ConfigError(
            f"lora.target_modules {unknown} are not Linear modules of this model; it has: {have}")
    if n_examples <= 0:
        raise ConfigError("the training set is empty (0 usable examples); check the task's training data "
                          "path/field names and lora.max_length")
    return s


# ------------------------------------------------------------------------------------------------- data
class Examples(list):
    """A list of tokenised examples that also records how many records were dropped or truncated."""

    dropped: int = 0
    truncated: int = 0
    unfinished: int = 0  # responses=source: records whose source answer never ended (left out)


def field(record: Mapping, path: str):
    """Value at a dotted path (`"answer.text"`) in a nested record; clear error naming the missing part."""
    from prunekit.data import MissingField, lookup

    try:
        return lookup(record, path)
    except MissingField as e:
        raise ConfigError(f"response_field={path!r}: no {e.key!r} in record (available: {e.available})") from None


CHAT_CHOICES = (True, False, "auto")
# Where the training answers come from: the dataset's (response_field / response_template), or the unpruned source
# model's own greedy answers to the same prompts (self-data distillation, prunekit.distill).
RESPONSES = ("dataset", "source")


@dataclass
class TrainFormat(Checked):
    """`task.train`'s keys for how a record becomes a training example (its other keys, the rows to read, are
    data.spec.PromptSetSpec's). Checked once, before any weight loads."""

    prompt_template: str | None = None     # the prompt, `str.format_map(record)`
    response_field: str | None = None      # the response: this (dotted) field's value ...
    response_template: str | None = None   # ... or this template of the record (e.g. a markdown code block)
    # false: raw prompt + response + EOS (the paper's `### Question/### Answer` format); true: a user turn and an
    # assistant turn of the tokenizer's chat template, the format the evaluation prompts in (eval.chat_template);
    # auto: true when the tokenizer has a chat template.
    chat_template: Any = False
    # Regular expressions (re.search); a response line matching one is left out of the answer, e.g. the scaffold
    # comments CodeIO's solutions share ('^\\s*# import necessary packages$'), which recovered models copy.
    drop_response_lines: list | None = None
    responses: str = "dataset"             # one of RESPONSES
    _prefix: str = dataclasses.field(default="task.train.", repr=False, kw_only=True, compare=False)

    @classmethod
    def of(cls, spec: Mapping | TrainFormat) -> TrainFormat:
        return spec if isinstance(spec, TrainFormat) else from_mapping(cls, spec, "task.train.")

    def check(self) -> None:
        if not self.prompt_template:
            raise self.error("task.train.prompt_template is missing: the training prompt, a template of the record")
        if self.responses not in RESPONSES:
            raise self.error(f"task.train.responses={self.responses!r}: allowed: {', '.join(RESPONSES)}")
        if self.responses == "dataset" and (self.response_field is None) == (self.response_template is None):
            raise self.error("task.train: set exactly one of response_field (a record field) and response_template "
                             f"(a template of the record); got response_field={self.response_field!r}, "
                             f"response_template={self.response_template!r}")
        if self.chat_template not in CHAT_CHOICES:
            raise self.error(f"task.train.chat_template={self.chat_template!r}: allowed: true, false, auto")
        drop = self.drop_response_lines
        if drop is not None and (not isinstance(drop, (list, tuple)) or not all(isinstance(p, str) for p in drop)):
            raise self.error(f"task.train.drop_response_lines={drop!r}: must be a list of regular expressions")
        for pattern in drop or ():
            try:
                re.compile(pattern)
            except re.error as e:
                raise self.error(f"task.train.drop_response_lines: {pattern!r} is not a regular expression ({e})") from None

    def prompt(self, record: Mapping, i: int) -> str:
        """The training prompt of one record."""
        return self._format("prompt_template", record, i)

    def render(self, record: Mapping, i: int, answer: str | None = None) -> tuple[str, str]:
        """(prompt, response) text of one record; ``answer``: the response instead of the dataset's (a source
        model's answer, responses=source)."""
        prompt = self.prompt(record, i)
        if answer is not None:
            response = answer
        elif self.response_template is not None:
            response = self._format("response_template", record, i)
        else:
            response = str(field(record, self.response_field))
        if self.drop_response_lines:
            response = "\n".join(line for line in response.split("\n") if not self._dropped(line))
        return prompt, response

    def _format(self, option: str, record: Mapping, i: int) -> str:
        """The template of ``option`` (prompt_template, response_template) filled in with one record."""
        template = getattr(self, option)
        try:
            return template.format_map(record)
        except (KeyError, IndexError) as e:
            raise ConfigError(f"{option} {template!r} names {e} which record {i} lacks "
                              f"(keys: {list(record)})") from None

    def _dropped(self, line: str) -> bool:
        return any(re.search(p, line) for p in self.drop_response_lines)


def chat_ids(tokenizer, prompt: str, response: str) -> tuple[list[int], list[int]]:
    """(prompt ids, response ids) of a user turn and the assistant's answer in the tokenizer's chat template. The
    prompt part is exactly what the evaluation feeds (text.format_prompt: the user turn + the generation prompt);
    the response part is the rest of the rendered conversation, so it ends with the template's own end-of-turn
    (Qwen's `<|im_end|>`, the token generation stops at) instead of an appended EOS."""
    prompt_text = text.format_prompt(tokenizer, prompt, True)
    full = tokenizer.apply_chat_template([{"role": "user", "content": prompt},
                                          {"role": "assistant", "content": response}], tokenize=False)
    if not full.startswith(prompt_text):  # a template that renders the user turn differently when answered
        raise ConfigError("task.train.chat_template=true: this tokenizer's chat template does not render a "
                          "conversation as the generation prompt + the answer; use task.train.chat_template=false")
    ids = lambda s: tokenizer(s, add_special_tokens=False)["input_ids"]  # noqa: E731 (the template has its own)
    return list(ids(prompt_text)), list(ids(full[len(prompt_text):]))


def build_examples(records: Iterable[Mapping], *, tokenizer, prompt_template: str | None = None,
                   response_field: str | None = None, max_length: int, response_template: str | None = None,
                   chat_template: Any = False, overlong: str = "drop",
                   drop_response_lines: list | None = None, responses: str = "dataset",
                   answers: list[str | None] | None = None) -> Examples:
    """Tokenise prompt + response (+ EOS) with prompt labels = -100. An example over max_length is dropped, or with
    overlong="truncate" right-truncated (dropped all the same when not one answer token would be left).
    responses="source": ``answers[i]`` (the source model's answer to record i) is the response, and a record whose
    answer is None (it never ended: a loop, or the budget) is left out.

    The prompt and the response are tokenised separately so the mask boundary is exact. A raw example ends with
    EOS, which teaches the model to stop (traps are loops without EOS); a chat example ends with the template's
    end-of-turn (TrainFormat.chat_template).
    """
    if overlong not in OVERLONG:
        raise ConfigError(f"lora.overlong={overlong!r} is unknown; allowed: {list(OVERLONG)}")
    fmt = TrainFormat(prompt_template=prompt_template, response_field=response_field,
                      response_template=response_template, chat_template=chat_template,
                      drop_response_lines=drop_response_lines, responses=responses)
    records = list(records)
    if responses == "source" and (answers is None or len(answers) != len(records)):
        raise ValueError(f"responses='source' needs one source answer per record ({len(records)} records, "
                         f"{'none' if answers is None else len(answers)} answers)")
    if tokenizer.eos_token_id is None:
        raise ConfigError("the tokenizer has no eos_token; set one so answers can end with EOS")
    chat = text.resolve_chat(fmt.chat_template, tokenizer)
    if chat and not getattr(tokenizer, "chat_template", None):
        raise ConfigError("task.train.chat_template=true but the tokenizer has no chat template; use false")
    out = Examples()
    for i, rec in enumerate(records):
        if responses == "source" and answers[i] is None:
            out.unfinished += 1
            continue
        prompt, response = fmt.render(rec, i, answers[i] if responses == "source" else None)
        if chat:
            p_ids, r_ids = chat_ids(tokenizer, prompt, response)
        else:
            p_ids = text.encode(tokenizer, [prompt], chat_template=False)[0]  # a raw prompt, special tokens added
            r_ids = tokenizer(response, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
        ids = list(p_ids) + list(r_ids)
        if len(ids) > max_length and (overlong == "drop" or len(p_ids) >= max_length):
            out.dropped += 1  # (a truncation that leaves no answer token has nothing to learn from)
            continue
        if len(ids) > max_length:
            out.truncated += 1
            ids = ids[:max_length]
        out.append({"input_ids": ids, "labels": [IGNORE] * len(p_ids) + ids[len(p_ids):]})
    if out.dropped or out.truncated:
        log_.warning("build_examples: %d kept, %d dropped (over max_length=%d, lora.overlong=%s), %d answers "
                     "truncated", len(out), out.dropped, max_length, overlong, out.truncated)
    if out.unfinished:
        log_.warning("build_examples: %d records left out, their source answer never ended (a loop or the budget)",
                     out.unfinished)
    return out


class LengthBucketBatchSampler:
    """Batches of similar length: shuffle (seed + epoch), sort by length inside buckets, cut into batches.

    Uses transformers' `get_length_grouped_indices` (mega-batches of up to 50 batches, longest batch first).
    """

    drop_last = False

    def __init__(self, lengths: list[int], batch_size: int, seed: int = 0):
        self.lengths, self.batch_size, self.seed, self.epoch = list(lengths), int(batch_size), int(seed), 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __iter__(self):
        from transformers.trainer_pt_utils import get_length_grouped_indices

        g = torch.Generator().manual_seed(self.seed + self.epoch)
        idx = get_length_grouped_indices(self.lengths, self.batch_size, generator=g)
        for i in range(0, len(idx), self.batch_size):
            yield idx[i:i + self.batch_size]

    def __len__(self) -> int:
        return math.ceil(len(self.lengths) / self.batch_size)


def collate(batch: list[dict], pad_token_id: int) -> dict[str, torch.Tensor]:
    """Right-padded input_ids, attention_mask, and labels padded with IGNORE (the one collator, prunekit.text)."""
    return text.collate([b["input_ids"] for b in batch], pad_token_id, labels=[b["labels"] for b in batch])


def make_dataloader(examples: list[dict], tokenizer, batch_size: int, seed: int):
    """DataLoader over examples with length-bucketed batches and the padding collator (no workers)."""
    pad = text.pad_id(tokenizer)
    sampler = LengthBucketBatchSampler([len(e["input_ids"]) for e in examples], batch_size, seed)
    # Own generator: keeps the DataLoader from drawing on the global RNG, so resumed dropout masks match.
    return torch.utils.data.DataLoader(examples, batch_sampler=sampler, collate_fn=functools.partial(collate, pad_token_id=pad),
                                       generator=torch.Generator().manual_seed(seed)), sampler


# ------------------------------------------------------------------------------------------------ model
def make_peft_model(model: nn.Module, lora: Mapping | LoraSettings):
    """Wrap `model` with LoRA adapters per the settings (injects layers into `model` in place)."""
    from peft import LoraConfig, PeftModel, get_peft_model

    if isinstance(model, PeftModel):
        return model
    s = LoraSettings.of(lora)
    cfg = LoraConfig(r=int(s.r), lora_alpha=float(s.alpha), lora_dropout=float(s.dropout),
                     target_modules=list(s.target_modules), bias="none", task_type="CAUSAL_LM")
    return get_peft_model(model, cfg)


def resolve_mixed_precision(value: str) -> str:
    """`auto` -> bf16 on a CUDA device that supports it, else no (CPU autocast buys little for training)."""
    if value != "auto":
        return value
    return "bf16" if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else "no"


def latest_checkpoint(out_dir: str | os.PathLike) -> Path | None:
    """The highest `out_dir/checkpoints/step-N` (complete ones only), or None."""
    root = Path(out_dir) / "checkpoints"
    steps = [(int(m.group(1)), p) for p in root.glob("step-*") if (m := re.fullmatch(r"step-(\d+)", p.name))
             and (p / STATE_FILE).exists()] if root.is_dir() else []
    return max(steps)[1] if steps else None


def _save_checkpoint(accelerator, out_dir: Path, step: int, state: dict) -> Path:
    """`accelerator.save_state` into a temp dir, then rename to `checkpoints/step-N` (atomic on one filesystem)."""
    final = out_dir / "checkpoints" / f"step-{step}"
    tmp = out_dir / "checkpoints" / f".tmp-step-{step}"
    if accelerator.is_main_process and tmp.exists():
        shutil.rmtree(tmp)
    accelerator.wait_for_everyone()
    accelerator.save_state(str(tmp))
    accelerator.wait_for_everyone()
    if accelerator.is_main_process:
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=1))
        if final.exists():
            shutil.rmtree(final)
        os.replace(tmp, final)
    accelerator.wait_for_everyone()
    return final


def _keep_trainable_only(models, weights, _output_dir) -> None:
    """save_state hook: store only trainable (LoRA) tensors, not a copy of the frozen base model per checkpoint."""
    for model, w in zip(models, weights):
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for key in [k for k in w if k not in trainable]:
            del w[key]


def check_resume_checkpoint(resume_from: str | os.PathLike, base_model: str | None = None) -> dict:
    """The state of a ``checkpoints/step-N`` directory, checked before any weights load: it is complete, and it
    was trained from ``base_model`` (model.name_or_path) when it says which model it was trained from."""
    path = Path(resume_from)
    if not (path / STATE_FILE).is_file():
        raise ConfigError(f"resume_from={str(path)!r} is not a complete checkpoint (no {STATE_FILE}); "
                                  "pass a checkpoints/step-N directory")
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"resume_from={str(path)!r}: {STATE_FILE} is unreadable ({exc})") from None
    trained_from = state.get("base_model") if isinstance(state, dict) else None
    if base_model is not None and trained_from is not None and trained_from != str(base_model):
        raise ConfigError(f"resume_from={str(path)!r} was trained from {trained_from}, not from "
                                  f"model.name_or_path={base_model}; resume only from this run's checkpoints")
    return state


def _check_tensor_shapes(resume_from: Path, peft_model: nn.Module) -> None:
    """The checkpoint's LoRA tensors have this model's names and shapes (read from the safetensors headers, no
    tensor loaded): a checkpoint of another base model would otherwise fail in load_state with a page of size
    mismatches."""
    from safetensors import safe_open

    ours = {n: tuple(p.shape) for n, p in peft_model.named_parameters() if p.requires_grad}
    theirs = {}
    for file in sorted(Path(resume_from).glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            theirs.update({k: tuple(f.get_slice(k).get_shape()) for k in f.keys()})
    wrong = [(k, theirs[k], shape) for k, shape in ours.items() if k in theirs and theirs[k] != shape]
    if theirs and (wrong or not set(ours) & set(theirs)):
        what = (f"{wrong[0][0]} has shape {list(wrong[0][1])} there, {list(wrong[0][2])} here"
                f"{f' ({len(wrong)} tensors differ)' if len(wrong) > 1 else ''}" if wrong
                else "none of its tensors belongs to this model's LoRA adapters")
        raise ConfigError(f"resume_from={str(resume_from)!r} is a checkpoint of another model or LoRA "
                                  f"setting: {what}; resume only from this run's checkpoints")


def _read_resume_state(resume_from: str | os.PathLike, expect: dict) -> dict:
    path = Path(resume_from)
    state = check_resume_checkpoint(path)
    diff = {k: (state.get(k), expect[k]) for k in _RESUME_KEYS if state.get(k) != expect[k]}
    if diff:
        raise ConfigError(f"resume_from={str(path)!r} was written by a different run; (checkpoint, now) "
                                  f"differ for {diff}")
    return state


# --------------------------------------------------------------------------------------------- training
def train_lora(model: nn.Module, tokenizer, examples: list[dict], lora: Mapping | LoraSettings, *, out_dir: str | os.PathLike,
               resume_from: str | os.PathLike | None = None, log: Callable[[dict, int], None] | None = None,
               progress: bool = True, base_model: str | None = None) -> dict[str, Any]:
    """Fine-tune LoRA adapters on `examples` with Accelerate; return a summary (+ the PeftModel under `peft_model`).

    Gradient accumulation reaches `effective_batch_size`; clipping, warm-up + cosine/linear schedule;
    `checkpoints/step-N` every `save_every_steps` optimizer steps; `resume_from` continues such a checkpoint
    at the same step and data position. `log(metrics, step)` gets train/loss, lr, grad_norm, tokens_per_s.
    """
    from accelerate import Accelerator
    from accelerate.utils import set_seed
    from transformers import get_scheduler

    from prunekit.dist import process_state

    # The process count is needed to validate before the Accelerator exists (CPU processes form a gloo group).
    num_processes = process_state().num_processes
    s = validate(model, lora, len(examples), num_processes)
    per_device, eff = int(s.per_device_batch_size), int(s.effective_batch_size)
    accum = eff // (per_device * num_processes)
    accelerator = Accelerator(gradient_accumulation_steps=accum,
                              mixed_precision=resolve_mixed_precision(s.mixed_precision))
    set_seed(int(s.seed))
    peft_model = make_peft_model(model, s)
    out_dir = Path(out_dir)

    params = [p for p in peft_model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=float(s.lr), weight_decay=float(s.weight_decay))
    loader, sampler = make_dataloader(examples, tokenizer, per_device, int(s.seed))
    wrapped, optimizer, loader = accelerator.prepare(peft_model, optimizer, loader)
    steps_per_epoch = math.ceil(len(loader) / accum)
    total_steps = steps_per_epoch * int(s.epochs)
    # Not prepared: an AcceleratedScheduler steps num_processes times per call; we step it once per update.
    scheduler = get_scheduler(s.scheduler, optimizer, num_warmup_steps=round(float(s.warmup_ratio) * total_steps),
                              num_training_steps=total_steps)
    accelerator.register_for_checkpointing(scheduler)
    accelerator.register_save_state_pre_hook(_keep_trainable_only)

    run = {"n_examples": len(examples), "effective_batch_size": eff, "per_device_batch_size": per_device,
           "num_processes": num_processes, "epochs": int(s.epochs), "steps_per_epoch": steps_per_epoch,
           "seed": int(s.seed), "total_steps": total_steps, "gradient_accumulation_steps": accum}
    step, tokens, elapsed = 0, 0, 0.0
    if resume_from is not None:
        state = _read_resume_state(resume_from, run)
        _check_tensor_shapes(Path(resume_from), peft_model)
        accelerator.load_state(str(resume_from), strict=False)  # strict=False: checkpoints hold LoRA tensors only
        step, tokens, elapsed = int(state["step"]), int(state["tokens"]), float(state["elapsed_s"])
        log_.info("resuming from %s at optimizer step %d/%d", resume_from, step, total_steps)
    start_step = step

    save_every = int(s.save_every_steps)
    bar = tqdm(total=total_steps, initial=step, desc="lora", disable=not progress or not accelerator.is_local_main_process)
    wrapped.train()
    loss_val, t0, last_ckpt = float("nan"), time.perf_counter(), None
    loss_curve = []  # (optimizer step, mean loss): kept in training.json, so the curve survives without W&B
    for epoch in range(step // steps_per_epoch, int(s.epochs)):
        sampler.set_epoch(epoch)
        skip = (step - epoch * steps_per_epoch) * accum
        batches = accelerator.skip_first_batches(loader, skip) if skip else loader
        micro_losses, step_tokens, t_step = [], 0, time.perf_counter()
        for batch in batches:
            with accelerator.accumulate(wrapped):
                loss = wrapped(**batch).loss  # keep no reference to the logits past this line (vocab-sized)
                accelerator.backward(loss)
                micro_losses.append(loss.detach())
                step_tokens += int(batch["attention_mask"].sum())
                grad_norm = None
                if accelerator.sync_gradients:
                    max_norm = float(s.max_grad_norm) if s.max_grad_norm else float("inf")
                    grad_norm = accelerator.clip_grad_norm_(params, max_norm)
                optimizer.step()
                optimizer.zero_grad()
            if not accelerator.sync_gradients:
                continue
            lr = scheduler.get_last_lr()[0]
            scheduler.step()
            step += 1
            loss_val = accelerator.reduce(torch.stack(micro_losses).mean(), "mean").item()
            n_tok = int(accelerator.reduce(torch.tensor(step_tokens, device=accelerator.device), "sum").item())
            dt = time.perf_counter() - t_step
            tokens += n_tok
            loss_curve.append((step, round(loss_val, 5)))
            metrics = {"train/loss": loss_val, "train/lr": lr, "train/grad_norm": float(grad_norm),
                       "train/tokens_per_s": n_tok / dt if dt > 0 else float("nan")}
            bar.update(1)
            bar.set_postfix(loss=f"{loss_val:.4f}")
            if log is not None and accelerator.is_main_process:
                log(metrics, step)
            if save_every and step % save_every == 0 and step < total_steps:
                last_ckpt = _save_checkpoint(accelerator, out_dir, step, {
                    **run, "base_model": base_model, "step": step, "epoch": epoch, "tokens": tokens, "loss": loss_val,
                    "elapsed_s": elapsed + time.perf_counter() - t0})
            micro_losses, step_tokens, t_step = [], 0, time.perf_counter()
    bar.close()
    accelerator.wait_for_everyone()
    elapsed += time.perf_counter() - t0
    summary = {**run, "start_step": start_step, "steps": step, "final_loss": loss_val, "tokens": tokens,
               "loss_curve": loss_curve,
               "time_s": elapsed, "tokens_per_s": tokens / elapsed if elapsed > 0 else float("nan"),
               "mixed_precision": accelerator.mixed_precision, "last_checkpoint": str(last_ckpt) if last_ckpt else None,
               "lora": {k: getattr(s, k) for k in ("r", "alpha", "dropout", "target_modules", "lr", "scheduler",
                                          "warmup_ratio", "max_grad_norm", "max_length")}}
    summary["peft_model"] = accelerator.unwrap_model(wrapped)
    accelerator.free_memory()
    return summary


# -------------------------------------------------------------------------------------------------- merge
def merge(peft_model, tokenizer, out_dir: str | os.PathLike, save: bool = True) -> nn.Module:
    """Merge the adapter into the model (in place, `merge_and_unload`) and return it; with ``save`` (the main
    process of a multi-process run), first the adapter to `out_dir/adapter/`, then the merged model + tokenizer to
    `out_dir/model/`, a stock checkpoint for plain `from_pretrained`. Each directory is written to a temp dir first
    and renamed into place.
    """
    from prunekit.checkpoint import atomic_dir, save_model

    out_dir = Path(out_dir)
    if save:
        with atomic_dir(out_dir / "adapter") as tmp:
            peft_model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
    merged = peft_model.merge_and_unload()
    if save:
        save_model(merged, tokenizer, out_dir / "model")
        log_.info("saved adapter and merged model under %s", out_dir)
    return merged
