"""Disentanglement diagnostics of the Hamiltonian model (lightning_modules.evaluation.disentanglement)."""

import math

import pytest
import torch

from backbone.hamiltonian import HamiltonianOperators
from lightning_modules.evaluation.disentanglement import action_view_confusion, linear_probe_accuracy, mode_power, posterior_spread
from lightning_modules.hamiltonian_module import HamiltonianMotionModule

TINY = dict(content_dim=16, frame_dim=16, image_size=64, encoder_channels=[8, 8, 8, 8], encoder_strides=[2, 2, 2, 2],
            encoder_hidden=[32], decoder_hidden=[32], decoder_channels=[8, 8, 8, 8], decoder_strides=[2, 2, 2, 2],
            kernel_size=3)  # fmt: skip


def test_linear_probe_reads_a_linear_code_and_not_noise():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 4, (600,), generator=g)
    code = torch.nn.functional.one_hot(y, 4).double() @ torch.randn(4, 10, generator=g, dtype=torch.float64)
    x = code + 0.05 * torch.randn(600, 10, generator=g, dtype=torch.float64)
    assert linear_probe_accuracy(x[:400], y[:400], x[400:], y[400:], 4) == 1.0
    noise = torch.randn(600, 10, generator=g)
    assert linear_probe_accuracy(noise[:400], y[:400], noise[400:], y[400:], 4) < 0.4  # chance 0.25
    with torch.inference_mode():  # the test stage: inference tensors in, still fits
        assert linear_probe_accuracy(x[:400].clone(), y[:400], x[400:], y[400:], 4) == 1.0


def test_posterior_spread_of_a_posterior_that_matches_the_prior():
    g = torch.Generator().manual_seed(0)
    n, dim, sigma = 20000, 4, 0.6
    mu = torch.randn(n, dim, generator=g) * math.sqrt(1 - sigma**2)  # aggregate = N(0, I)
    log_sigma = torch.full((n, dim), math.log(sigma))
    stats = posterior_spread(mu, log_sigma, torch.zeros(n, dtype=torch.long), num_actions=2)
    assert set(stats) == {"action_0"}  # no clips of action 1
    s = stats["action_0"]
    assert s["aggregate_kl_per_dim"] == pytest.approx(0.0, abs=2e-3)
    assert s["mean_eigenvalues"] == pytest.approx([1 - sigma**2] * dim, abs=0.03)
    assert s["aggregate_eigenvalues"] == pytest.approx([1.0] * dim, abs=0.03)
    kl = 0.5 * (1 - sigma**2 + sigma**2) - math.log(sigma) - 0.5  # E[KL(q || N(0, 1))] per dim
    assert s["kl_per_dim"] == pytest.approx(kl, abs=0.02)
    # collapsed and overfull directions
    shifted = posterior_spread(3 * mu + 2, log_sigma, torch.zeros(n, dtype=torch.long), 1)["action_0"]
    assert shifted["mean_norm"] == pytest.approx(4.0, abs=0.05) and shifted["aggregate_kl_per_dim"] > 1


def test_mode_power_finds_the_excited_rotation_mode():
    # Two rotation planes: 45 deg/step on (q1, p1), 10 deg/step on (q2, p2). States on the first plane only.
    w1, w2 = math.radians(45), math.radians(10)
    H = torch.zeros(1, 4, 4, dtype=torch.float64)
    H[0, 0, 2], H[0, 2, 0], H[0, 1, 3], H[0, 3, 1] = w1, -w1, w2, -w2
    g = torch.Generator().manual_seed(0)
    states = torch.zeros(500, 4, dtype=torch.float64)
    states[:, [0, 2]] = 3.0 * torch.randn(500, 2, generator=g, dtype=torch.float64)
    modes = {round(m["deg_per_step"]): m for m in mode_power(states, torch.zeros(500, dtype=torch.long), H)["action_0"]}
    assert set(modes) == {10, 45}
    assert modes[45]["posterior_power"] == pytest.approx(float(states.square().sum(1).mean()), rel=1e-9)
    assert modes[10]["posterior_power"] == pytest.approx(0.0, abs=1e-12)
    for m in modes.values():  # orthogonal eigenvectors: N(0, I) puts one unit per real dimension of a mode
        assert m["prior_power"] == pytest.approx(2.0, rel=1e-9)
        assert m["decay"] == pytest.approx(0.0, abs=1e-12)


def test_mode_power_of_learned_operators_sums_to_the_state_power_for_skew_h():
    ops = HamiltonianOperators(2, 3, "skew-H", init_std=0.5)  # orthogonal flow: V is unitary
    states = torch.randn(200, 6, generator=torch.Generator().manual_seed(1))
    action = torch.arange(200) % 2
    out = mode_power(states, action, ops.generator())
    for k in range(2):
        total = sum(m["posterior_power"] for m in out[f"action_{k}"])
        assert total == pytest.approx(float(states[action == k].double().square().sum(1).mean()), rel=1e-6)
        assert sum(m["prior_power"] for m in out[f"action_{k}"]) == pytest.approx(6.0, rel=1e-6)


def test_action_view_confusion_tells_the_action_from_the_view():
    A, V = 3, 3
    perfect = torch.diag(torch.full((9,), 10.0))
    out = action_view_confusion(perfect, A, V)
    assert all(out[f"action_{k}"]["accuracy"] == 1.0 for k in range(A))
    # action right, view always shifted by one
    c = torch.zeros(9, 9)
    for a in range(A):
        for v in range(V):
            c[V * a + v, V * a + (v + 1) % V] = 5
    out = action_view_confusion(c, A, V)["action_1"]
    assert out["accuracy"] == 0 and out["action_accuracy"] == 1 and out["view_accuracy"] == 0
    assert out["judged_action"] == [0.0, 1.0, 0.0] and out["generations"] == 15
    assert torch.tensor(out["matrix"]).sum(1).tolist() == [1.0, 1.0, 1.0]


def test_bad_probe_clips_is_refused():
    with pytest.raises(ValueError, match="probe_clips"):
        HamiltonianMotionModule(**TINY, probe_clips=-1)
