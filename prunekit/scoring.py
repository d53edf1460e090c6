"""Neuron scores from captured statistics: selectivity (paper eq. 2) and the importance baselines.

Per prompt set, capture keeps two kinds of statistics in one pass: per-prompt masked means of |x| (RunningStats,
for selectivity) and token-level sums of x and x^2 (TokenStats, for Wanda-sp, FLAP and the contrastive score),
where x is the input of ``down_proj`` (the SwiGLU intermediate).
"""

from dataclasses import dataclass

import torch

EPS = 1e-6


@dataclass
class TokenStats:
    """Token-level sums over every non-padding token of a prompt set: count, sum of x and of x^2 ([layers, d_ff],
    float64). Additive, so shards and batches merge exactly."""

    count: int
    sum: torch.Tensor
    sumsq: torch.Tensor

    @classmethod
    def empty(cls, layers: int, d_ff: int) -> "TokenStats":
        zeros = torch.zeros(layers, d_ff, dtype=torch.float64)
        return cls(0, zeros, zeros.clone())

    def merge(self, other: "TokenStats | None") -> "TokenStats":
        if other is None:
            return self
        return TokenStats(self.count + other.count, self.sum + other.sum, self.sumsq + other.sumsq)

    @property
    def rms(self) -> torch.Tensor:
        """sqrt(mean of x^2) per neuron: Wanda's ||x_j||_2 divided by sqrt(tokens), comparable across sets."""
        return (self.sumsq / max(self.count, 1)).sqrt()

    @property
    def l2(self) -> torch.Tensor:
        """||x_j||_2 over all tokens (Wanda's activation norm)."""
        return self.sumsq.sqrt()

    @property
    def var(self) -> torch.Tensor:
        """Population variance of x_j over tokens (FLAP's fluctuation of the input feature)."""
        mean = self.sum / max(self.count, 1)
        return (self.sumsq / max(self.count, 1) - mean**2).clamp(min=0)

    def to_dict(self) -> dict:
        return {"count": self.count, "sum": self.sum, "sumsq": self.sumsq}

    @classmethod
    def from_dict(cls, d: dict | None) -> "TokenStats | None":
        return None if d is None else cls(int(d["count"]), d["sum"], d["sumsq"])


@dataclass
class RunningStats:
    """Streaming per-neuron statistics of per-prompt activations: count, mean and M2 (sum of squared deviations).

    Shapes are [layers, d_ff] in float64, so memory does not grow with the number of prompts.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor
    tokens: TokenStats | None = None  # token-level sums of the same prompts (capture fills them in)

    @classmethod
    def empty(cls, layers: int, d_ff: int) -> "RunningStats":
        zeros = torch.zeros(layers, d_ff, dtype=torch.float64)
        return cls(0, zeros, zeros.clone(), TokenStats.empty(layers, d_ff))

    @classmethod
    def of(cls, values: torch.Tensor) -> "RunningStats":
        """Statistics of a batch of per-prompt values shaped [prompts, layers, d_ff]."""
        values = values.double()
        mean = values.mean(0)
        return cls(values.shape[0], mean, ((values - mean) ** 2).sum(0))

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Exact combination of two groups (Chan et al.'s parallel Welford update)."""
        tokens = self.tokens.merge(other.tokens) if self.tokens is not None else other.tokens
        if other.count == 0:
            return RunningStats(self.count, self.mean, self.m2, tokens)
        if self.count == 0:
            return RunningStats(other.count, other.mean, other.m2, tokens)
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2, tokens)

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation (divides by count, as the paper's pooled sigma)."""
        return (self.m2 / self.count).sqrt()

    def to_dict(self) -> dict:
        tokens = self.tokens.to_dict() if self.tokens is not None else None
        return {"count": self.count, "mean": self.mean, "m2": self.m2, "tokens": tokens}

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        return cls(int(d["count"]), d["mean"], d["m2"], TokenStats.from_dict(d.get("tokens")))


def merge_all(groups: list[RunningStats]) -> RunningStats:
    """Pool several groups into one."""
    pooled = groups[0]
    for g in groups[1:]:
        pooled = pooled.merge(g)
    return pooled


def selectivity(target: RunningStats, distractors: list[RunningStats]) -> torch.Tensor:
    """S = (mu_target - mu_distractor) / (sigma + 1e-6) per neuron, shape [layers, d_ff] (float32).

    mu_distractor pools all distractor sets; sigma is the population std over all prompts of both kinds.
    """
    if target.count == 0 or not distractors or merge_all(distractors).count == 0:
        raise ValueError("selectivity needs at least one target and one distractor prompt")
    distractor = merge_all(distractors)
    pooled = target.merge(distractor)
    return ((target.mean - distractor.mean) / (pooled.std + EPS)).float()


def layer_summary(scores: torch.Tensor) -> list[dict]:
    """Per-layer summary of scores: mean, std, min, max, and target-/distractor-dominant counts (paper Fig. 6)."""
    return [
        {
            "layer": i,
            "mean": float(s.mean()),
            "std": float(s.std(unbiased=False)),
            "min": float(s.min()),
            "max": float(s.max()),
            "target_dominant": int((s > 0).sum()),
            "distractor_dominant": int((s < 0).sum()),
        }
        for i, s in enumerate(scores)
    ]


# ---------------------------------------------------------------------------------------------- importance baselines
def _tokens(stats: RunningStats, what: str) -> TokenStats:
    if stats.tokens is None or stats.tokens.count == 0:
        raise ValueError(f"{what} needs token-level statistics of the target set (re-capture: the cache predates them)")
    return stats.tokens


def _column_l1(down_weights) -> torch.Tensor:
    """sum_i |W_down[i, j]| per layer and neuron ([layers, d_ff], float64)."""
    return torch.stack([w.detach().abs().double().sum(0) for w in down_weights])


def wanda_sp(target: RunningStats, down_weights: torch.Tensor) -> torch.Tensor:
    """Structured Wanda per neuron j: sum_i |W_down[i, j]| * ||x_j||_2 over all target tokens ([layers, d_ff]).

    ``down_weights`` is [layers, hidden, d_ff] (or a list of [hidden, d_ff]); lowest = least important.
    """
    return (_column_l1(down_weights) * _tokens(target, "wanda_sp").l2).float()


def flap(target: RunningStats, down_weights: torch.Tensor) -> torch.Tensor:
    """FLAP's fluctuation metric per neuron j: Var_tokens(x_j) * ||W_down[:, j]||_2^2 over target tokens."""
    col_sq = torch.stack([w.detach().double().pow(2).sum(0) for w in down_weights])
    return (_tokens(target, "flap").var * col_sq).float()


def contrastive(target: RunningStats, distractors: list[RunningStats], down_weights, weight: float = 0.5) -> torch.Tensor:
    """Task-specific importance: I_t - weight * min(I_d, I_t), each I normalised by its layer mean.

    I_set[j] = sum_i |W_down[i, j]| * RMS over the set's tokens of x_j (Wanda's importance, per token so sets of
    different sizes compare). Capping the distractor term at I_t keeps the score >= (1 - weight) * I_t: a neuron
    the target relies on is never removed for being even more active on distractors, while among neurons the
    target uses equally little, those the distractors use most go first. weight=0 is target importance alone.
    """
    col_l1 = _column_l1(down_weights)
    pooled = merge_all(distractors)
    i_t = col_l1 * _tokens(target, "contrastive").rms
    i_d = col_l1 * _tokens(pooled, "contrastive (distractor sets)").rms
    i_t = i_t / i_t.mean(1, keepdim=True).clamp(min=EPS)
    i_d = i_d / i_d.mean(1, keepdim=True).clamp(min=EPS)
    return (i_t - weight * torch.minimum(i_d, i_t)).float()
