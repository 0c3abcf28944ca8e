"""The judge classifier (paper 004 Table 2 protocol) and the metrics that score generated clips."""

import math
import sys
from pathlib import Path

import pytest
import torch

import cli
from backbone.judge import SequenceJudge
from lightning_modules.judge_module import SequenceJudgeModule
from lightning_modules.evaluation.sequence_metrics import ClassifierScores, MeanStd, MultiHeadAccuracy

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.fixture(autouse=True)
def _cli_argv(monkeypatch):
    monkeypatch.setattr(sys, "argv", ["cli.py"])  # the CLI reads `args`, not pytest's command line


def reference_scores(probs: torch.Tensor, target: torch.Tensor) -> dict[str, float]:
    """Direct definitions: accuracy, IS = exp(E_x KL(p(y|x) || p(y))), H(y|x), H(y)."""
    p_y = probs.mean(0)
    kl = (probs * (probs.log() - p_y.log())).sum(1)
    return {
        "accuracy": (probs.argmax(1) == target).float().mean().item(),
        "inception_score": kl.mean().exp().item(),
        "entropy_conditional": (-(probs * probs.log()).sum(1)).mean().item(),
        "entropy_marginal": (-(p_y * p_y.log()).sum()).item(),
    }


def test_classifier_scores_match_their_definitions():
    torch.manual_seed(0)
    probs = torch.softmax(torch.randn(50, 9) * 3, 1)
    target = torch.randint(0, 9, (50,))
    metric = ClassifierScores(9)
    metric.update(probs[:20], target[:20])
    metric.update(probs[20:], target[20:])
    got = {k: v.item() for k, v in metric.compute().items()}
    for k, v in reference_scores(probs, target).items():
        assert got[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k


def test_classifier_scores_extremes():
    """Confident, balanced predictions over 9 classes: IS = 9, H(y|x) = 0, H(y) = ln 9 (the peers' 2.197)."""
    metric = ClassifierScores(9)
    labels = torch.arange(9).repeat(4)
    metric.update(torch.nn.functional.one_hot(labels, 9).float(), labels)
    out = metric.compute()
    assert out["inception_score"].item() == pytest.approx(9.0, rel=1e-5)
    assert out["entropy_conditional"].item() == pytest.approx(0.0, abs=1e-6)
    assert out["entropy_marginal"].item() == pytest.approx(math.log(9), rel=1e-6)
    assert out["accuracy"].item() == 1.0
    collapsed = ClassifierScores(9)
    collapsed.update(torch.full((10, 9), 1 / 9))
    assert collapsed.compute()["inception_score"].item() == pytest.approx(1.0, rel=1e-5)
    assert math.isnan(collapsed.compute()["accuracy"].item())


def test_metric_states_sum_across_ranks():
    """Every state reduces by sum: merging two ranks' states equals one pass over all samples."""
    torch.manual_seed(1)
    probs, target = torch.softmax(torch.randn(30, 9), 1), torch.randint(0, 9, (30,))
    whole, rank0, rank1 = ClassifierScores(9), ClassifierScores(9), ClassifierScores(9)
    whole.update(probs, target)
    rank0.update(probs[:11], target[:11])
    rank1.update(probs[11:], target[11:])
    for name, reduce in rank0._reductions.items():
        assert reduce is not None and "sum" in getattr(reduce, "__name__", str(reduce)), name
    rank0.merge_state(rank1)
    for k, v in whole.compute().items():
        torch.testing.assert_close(rank0.compute()[k], v)
    # and the IS of the union is not the mean of the per-rank IS (why states are gathered, not averaged)
    r0, r1 = ClassifierScores(9), ClassifierScores(9)
    r0.update(torch.nn.functional.one_hot(torch.zeros(5, dtype=torch.long), 9).float())
    r1.update(torch.nn.functional.one_hot(torch.ones(5, dtype=torch.long), 9).float())
    r0.merge_state(r1)
    assert r0.compute()["inception_score"].item() == pytest.approx(2.0, rel=1e-5)


def test_multihead_accuracy_and_mean_std():
    acc = MultiHeadAccuracy(2)
    target = torch.tensor([[0, 1], [1, 1], [2, 0]])
    acc.update([torch.eye(3)[[0, 1, 1]], torch.eye(2)[[1, 1, 1]]], target)
    torch.testing.assert_close(acc.compute(), torch.tensor([2 / 3, 2 / 3]))
    ms = MeanStd()
    values = torch.tensor([1.0, 2.0, 3.0, 6.0])
    ms.update(values[:1])
    ms.update(values[1:])
    out = ms.compute()
    assert out["mean"].item() == pytest.approx(3.0)
    assert out["std"].item() == pytest.approx(values.std(unbiased=False).item(), rel=1e-6)


def test_judge_network_shapes():
    judge = SequenceJudge(9, (6, 6, 6, 6), image_size=32, channels=(8, 8), feature_dim=16, hidden=8)
    out = judge(torch.rand(3, 8, 3, 64, 64))
    assert out["label"].shape == (3, 9) and [a.shape for a in out["attributes"]] == [(3, 6)] * 4
    probs = judge.probabilities(torch.rand(2, 5, 3, 64, 64))  # any clip length
    torch.testing.assert_close(probs["label"].sum(1), torch.ones(2))
    with pytest.raises(ValueError, match=r"clips \(b, t, c, h, w\)"):
        judge(torch.rand(3, 3, 64, 64))


@pytest.mark.parametrize("config", ["sprites_judge_cpu.yaml", "sprites_judge.yaml"])
def test_judge_config_fast_dev_run(config, tmp_path, cache_dir):
    run = cli.main([
        "fit", "--config", str(CONFIGS / config), "--trainer.fast_dev_run", "1",
        "--trainer.default_root_dir", str(tmp_path),
        "--trainer.accelerator", "cpu", "--trainer.devices", "1",
        "--data.init_args.cache_dir", str(cache_dir), "--data.init_args.num_workers", "0",
        "--data.init_args.batch_size", "4",
    ])  # fmt: skip
    assert isinstance(run.model, SequenceJudgeModule)
    logged = run.trainer.logged_metrics
    for key in ("train/loss", "train/acc", "val/loss", "val/acc", "val/acc_skin", "val/acc_hair"):
        assert key in logged, key


def test_judge_refuses_data_with_other_classes(tmp_path, cache_dir):
    with pytest.raises(ValueError, match="num_classes 6"):
        cli.main([
            "fit", "--config", str(CONFIGS / "sprites_judge_cpu.yaml"), "--trainer.fast_dev_run", "1",
            "--trainer.default_root_dir", str(tmp_path),
            "--data.init_args.cache_dir", str(cache_dir), "--data.init_args.num_workers", "0",
            "--data.init_args.source.init_args.actions", "[walk, slash]",
        ])  # fmt: skip
