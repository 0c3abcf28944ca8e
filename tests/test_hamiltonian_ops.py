"""Maths of the Hamiltonian operators and the Gaussian posteriors (paper 004 §3.1.1, §3.3, App. A)."""

import pytest
import torch

from backbone.hamiltonian import (
    HamiltonianOperators,
    embed_subspace,
    quadratic_energy,
    select_subspace,
    symplectic_form,
)
from backbone.motion_vae import DiagonalGaussian, MotionVAE

TIMES = torch.arange(-16, 17)


def elliptic_operators(kind: str, dtype=torch.float32, seed: int = 0) -> HamiltonianOperators:
    """Operators with a positive-definite energy matrix (bounded, rotating flows: trained-like)."""
    torch.manual_seed(seed)
    ops = HamiltonianOperators(3, 6, kind, init_std=0.1).to(dtype)
    with torch.no_grad():
        if kind == "H":
            R = torch.randn(3, 12, 12, dtype=dtype) * 0.15
            ops.A.copy_(0.5 * (R @ R.transpose(-1, -2)) + 0.2 * torch.eye(12, dtype=dtype))
    return ops


@pytest.mark.parametrize("kind", ["H", "skew-H"])
def test_generator_is_hamiltonian(kind):
    ops = HamiltonianOperators(3, 6, kind, init_std=0.3)
    J, H, M = ops.J, ops.generator(), ops.energy_matrix()
    torch.testing.assert_close(M, M.transpose(-1, -2))  # M symmetric
    torch.testing.assert_close(J @ H, (J @ H).transpose(-1, -2))  # J H symmetric: H in sp(2d)
    assert H.diagonal(dim1=-2, dim2=-1).sum(-1).abs().max() < 1e-5  # trace 0: volume preserving
    if kind == "skew-H":
        torch.testing.assert_close(H, -H.transpose(-1, -2))  # skew-symmetric: H in so(2d) too


@pytest.mark.parametrize("kind", ["H", "skew-H"])
@pytest.mark.parametrize("init_std", [0.01, None])
def test_exp_is_symplectic_and_conserves_energy(kind, init_std):
    """Φᵀ J Φ = J and Φᵀ M Φ = M to 1e-5 for |t| <= 16 (float32)."""
    ops = HamiltonianOperators(3, 6, kind, init_std=init_std) if init_std else elliptic_operators(kind)
    phi = ops.propagators(TIMES)  # (33, K, 12, 12)
    assert phi.shape == (33, 3, 12, 12)
    J, M = ops.J, ops.energy_matrix()
    assert (phi.transpose(-1, -2) @ J @ phi - J).abs().max() < 1e-5
    scale = M.abs().max()
    assert ((phi.transpose(-1, -2) @ M @ phi - M).abs().max() / scale) < 1e-5
    assert phi.abs().max() > 1.0 - 1e-6 and (phi - torch.eye(12)).abs().max() > 1e-3  # not trivially I


def test_exp_symplectic_for_hyperbolic_operators_float64():
    """A generic (indefinite M) operator grows exponentially; symplecticity holds relatively."""
    torch.manual_seed(1)
    ops = HamiltonianOperators(3, 6, "H", init_std=0.1).double()
    phi = ops.propagators(TIMES)
    assert phi.abs().max() > 10  # genuinely hyperbolic
    err = (phi.transpose(-1, -2) @ ops.J @ phi - ops.J).abs().amax((-1, -2))
    assert (err / phi.abs().amax((-1, -2)).square()).max() < 1e-12


def test_skew_exp_is_orthogonal():
    torch.manual_seed(0)
    ops = HamiltonianOperators(3, 6, "skew-H", init_std=0.1)
    phi = ops.propagators(TIMES)
    eye = torch.eye(12).expand_as(phi)
    assert (phi.transpose(-1, -2) @ phi - eye).abs().max() < 1e-5
    s = torch.randn(5, 12)
    states = ops.rollout(s, torch.tensor([0, 1, 2, 1, 0]), TIMES)
    torch.testing.assert_close(states.norm(dim=-1), s.norm(dim=-1, keepdim=True).expand(5, 33), atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("kind", ["H", "skew-H"])
def test_backward_undoes_forward(kind):
    """exp(-tH) exp(tH) = I: unrolling backward from a forward rollout returns the start (eq. 13)."""
    ops = elliptic_operators(kind)
    fwd, bwd = ops.propagators(TIMES), ops.propagators(-TIMES)
    assert (bwd @ fwd - torch.eye(12)).abs().max() < 1e-5
    torch.testing.assert_close(ops.propagators(torch.tensor([3]))[0], torch.linalg.matrix_power(ops.propagators(torch.tensor([1]))[0], 3), atol=1e-5, rtol=1e-5)


def test_rollout_matches_exp_and_energy_is_conserved():
    ops = elliptic_operators("H")
    s0 = torch.randn(4, 12)
    action = torch.tensor([2, 0, 1, 2])
    offsets = torch.stack([torch.arange(-3, 13)] * 4) + torch.tensor([0, 1, 2, 3])[:, None]
    states = ops.rollout(s0, action, offsets)
    assert states.shape == (4, 16, 12)
    H = ops.generator()
    for i in range(4):
        for j in (0, 7, 15):
            expect = torch.linalg.matrix_exp(offsets[i, j] * H[action[i]]) @ s0[i]
            torch.testing.assert_close(states[i, j], expect, atol=1e-5, rtol=1e-5)
    energy = ops.energy(states, action)  # (4, 16)
    assert energy.shape == (4, 16)
    assert ((energy - energy[:, :1]).abs() / energy[:, :1].abs()).max() < 1e-4
    torch.testing.assert_close(energy[:, 0], quadratic_energy(states[:, 0], ops.energy_matrix()[action]))


def test_rollout_gradients_reach_the_operators():
    ops = HamiltonianOperators(2, 3, "skew-H")
    states = ops.rollout(torch.randn(3, 6), torch.tensor([0, 1, 1]), torch.arange(-2, 5))
    states.square().sum().backward()
    assert ops.S.grad.abs().sum() > 0 and ops.T.grad.abs().sum() > 0


def test_symplectic_form():
    J = symplectic_form(3)
    torch.testing.assert_close(J @ J, -torch.eye(6))
    torch.testing.assert_close(J.T, -J)


def test_subspaces_of_other_actions_stay_zero():
    x = torch.randn(4, 5, 6)
    action = torch.tensor([0, 2, 1, 2])
    full = embed_subspace(x, action, 3)
    assert full.shape == (4, 5, 18)
    blocks = full.reshape(4, 5, 3, 6)
    for i, k in enumerate(action.tolist()):
        torch.testing.assert_close(blocks[i, :, k], x[i])
        others = [j for j in range(3) if j != k]
        assert (blocks[i, :, others] == 0).all()
    torch.testing.assert_close(select_subspace(full, action, 3), x)


def test_decoder_input_only_holds_the_active_subspace():
    """The decoder sees [z, q^1..q^K] with every block but the clip's action exactly zero (eq. 5, 14)."""
    model = MotionVAE(num_actions=3, position_dim=2, content_dim=4, frame_dim=8, image_size=16,
                      encoder_channels=[4, 4], encoder_strides=[2, 2], encoder_hidden=[8], decoder_hidden=[8],
                      decoder_channels=[4, 4], decoder_strides=[2, 2], kernel_size=3).eval()
    seen = []
    model.decoder.net[0].register_forward_hook(lambda m, inp, out: seen.append(inp[0].detach()))
    clip = torch.rand(3, 5, 3, 16, 16)
    action = torch.tensor([1, 0, 2])
    out = model(clip, action, torch.tensor([0, 4, 2]))
    codes = seen[0].reshape(3, 5, 4 + 6)[..., 4:].reshape(3, 5, 3, 2)
    for i, k in enumerate(action.tolist()):
        torch.testing.assert_close(codes[i, :, k], out["states"][i, :, :2])  # the unrolled positions q_t
        assert (codes[i, :, [j for j in range(3) if j != k]] == 0).all()
    # the unrolled states pass through the reference state: s(t_ref) is the posterior sample
    assert out["states"].shape == (3, 5, 4)


def test_kl_matches_torch_distributions():
    torch.manual_seed(0)
    g = DiagonalGaussian(torch.randn(7, 6), torch.randn(7, 6) * 0.5)
    prior = torch.distributions.Normal(torch.zeros(7, 6), torch.ones(7, 6))
    expect = torch.distributions.kl_divergence(g.distribution(), prior).sum(-1)
    torch.testing.assert_close(g.kl_standard_normal(), expect)


def test_model_kl_terms_match_torch_distributions():
    """Each of the three KL terms of eq. 17 as computed by the model equals kl_divergence."""
    from lightning_modules.hamiltonian_module import HamiltonianMotionModule

    torch.manual_seed(0)
    module = HamiltonianMotionModule(content_dim=8, frame_dim=16, image_size=16, encoder_channels=[4, 4],
                                     encoder_strides=[2, 2], encoder_hidden=[16], decoder_hidden=[16],
                                     decoder_channels=[4, 4], decoder_strides=[2, 2], kernel_size=3)
    clip, action, ref = torch.rand(4, 6, 3, 16, 16), torch.tensor([0, 1, 2, 0]), torch.tensor([0, 3, 5, 1])
    torch.manual_seed(1)
    terms = module.elbo_terms(clip, action, ref)
    post = module.model.posterior(clip, action)  # same network (train-mode BN on the same batch)
    rows = torch.arange(4)

    def std_normal(x):
        return torch.distributions.Normal(torch.zeros_like(x), torch.ones_like(x))

    for name, g in (("kl_z", post.z), ("kl_q", post.q.index(rows, ref)), ("kl_p", post.p.index(rows, ref))):
        expect = torch.distributions.kl_divergence(g.distribution(), std_normal(g.mu)).sum(-1)
        torch.testing.assert_close(terms[name], expect, atol=1e-5, rtol=1e-5)
    assert terms["kl_q"].shape == (4,) and (terms["kl_q"] >= 0).all()
    # Gaussian NLL in the paper's [-1, 1] units with alpha = 1: sum of (2 (x - x̂))² / 2
    torch.testing.assert_close(terms["nll"], 2.0 * (terms["recon"] - clip).square().flatten(1).sum(1))


def test_bad_operator_kind_and_actions():
    with pytest.raises(ValueError, match="skew-H"):
        HamiltonianOperators(3, 6, "symplectic")
    ops = HamiltonianOperators(3, 6)
    with pytest.raises(ValueError, match=r"action indices must lie in \[0, 2\]"):
        ops.rollout(torch.zeros(2, 12), torch.tensor([0, 3]), torch.arange(4))
