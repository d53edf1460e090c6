"""Neuron scores from captured statistics: selectivity (paper eq. 2)."""

from dataclasses import dataclass

import torch

EPS = 1e-6


@dataclass
class RunningStats:
    """Streaming per-neuron statistics of per-prompt activations: count, mean and M2 (sum of squared deviations).

    Shapes are [layers, d_ff] in float64, so memory does not grow with the number of prompts.
    """

    count: int
    mean: torch.Tensor
    m2: torch.Tensor

    @classmethod
    def empty(cls, layers: int, d_ff: int) -> "RunningStats":
        zeros = torch.zeros(layers, d_ff, dtype=torch.float64)
        return cls(0, zeros, zeros.clone())

    @classmethod
    def of(cls, values: torch.Tensor) -> "RunningStats":
        """Statistics of a batch of per-prompt values shaped [prompts, layers, d_ff]."""
        values = values.double()
        mean = values.mean(0)
        return cls(values.shape[0], mean, ((values - mean) ** 2).sum(0))

    def merge(self, other: "RunningStats") -> "RunningStats":
        """Exact combination of two groups (Chan et al.'s parallel Welford update)."""
        if other.count == 0:
            return self
        if self.count == 0:
            return other
        n = self.count + other.count
        delta = other.mean - self.mean
        mean = self.mean + delta * (other.count / n)
        m2 = self.m2 + other.m2 + delta**2 * (self.count * other.count / n)
        return RunningStats(n, mean, m2)

    @property
    def std(self) -> torch.Tensor:
        """Population standard deviation (divides by count, as the paper's pooled sigma)."""
        return (self.m2 / self.count).sqrt()

    def to_dict(self) -> dict:
        return {"count": self.count, "mean": self.mean, "m2": self.m2}

    @classmethod
    def from_dict(cls, d: dict) -> "RunningStats":
        return cls(int(d["count"]), d["mean"], d["m2"])


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
