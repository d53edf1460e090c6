"""Streaming statistics and selectivity (paper eq. 2) on hand-built per-prompt activations."""

import pytest
import torch

from prunekit.scoring import EPS, RunningStats, layer_summary, merge_all, selectivity


def _values(n, seed, shift=0.0):
    return torch.rand(n, 3, 5, generator=torch.Generator().manual_seed(seed), dtype=torch.float64) + shift


def test_streaming_merge_equals_direct_statistics():
    values = _values(23, 0)
    streamed = RunningStats.empty(3, 5)
    for chunk in values.split(4):  # uneven chunks, like batches
        streamed = streamed.merge(RunningStats.of(chunk))
    assert streamed.count == 23
    torch.testing.assert_close(streamed.mean, values.mean(0))
    torch.testing.assert_close(streamed.std, values.std(0, unbiased=False))


def test_selectivity_matches_equation_2():
    target, squad, dialog = _values(10, 1, shift=0.5), _values(7, 2), _values(4, 3)
    distractor = torch.cat([squad, dialog])
    pooled = torch.cat([target, distractor])
    expected = (target.mean(0) - distractor.mean(0)) / (pooled.std(0, unbiased=False) + EPS)
    got = selectivity(RunningStats.of(target), [RunningStats.of(squad), RunningStats.of(dialog)])
    torch.testing.assert_close(got, expected.float())
    assert (got > 0).float().mean() > 0.9  # the target was shifted up


def test_selectivity_by_hand_numbers():
    # One layer, two neurons. Target prompts: [1, 2], [3, 2]; distractor: [1, 4], [3, 4].
    target = RunningStats.of(torch.tensor([[[1.0, 2.0]], [[3.0, 2.0]]]))
    distractor = RunningStats.of(torch.tensor([[[1.0, 4.0]], [[3.0, 4.0]]]))
    s = selectivity(target, [distractor])
    # neuron 0: equal means -> 0; neuron 1: (2 - 4) / std([2,2,4,4]) = -2 / 1
    torch.testing.assert_close(s, torch.tensor([[0.0, -2.0 / (1.0 + EPS)]]))


def test_merge_all_and_summary():
    groups = [RunningStats.of(_values(n, n)) for n in (2, 3, 4)]
    pooled = merge_all(groups)
    assert pooled.count == 9
    summary = layer_summary(torch.tensor([[1.0, -1.0, 0.0], [2.0, 3.0, -4.0]]))
    assert summary[0]["target_dominant"] == 1 and summary[0]["distractor_dominant"] == 1
    std = torch.tensor([2.0, 3, -4]).std(unbiased=False).item()
    assert summary[1] == {"layer": 1, "mean": pytest.approx(1 / 3), "std": pytest.approx(std),
                          "min": -4.0, "max": 3.0, "target_dominant": 2, "distractor_dominant": 1}


def test_selectivity_needs_both_kinds():
    with pytest.raises(ValueError, match="at least one target and one distractor"):
        selectivity(RunningStats.of(_values(2, 0)), [])
