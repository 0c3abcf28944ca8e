"""Issue 13 diagnostics and the 'pivot' T_Z head: the T_Z analysis oracle, ghost metrics, training curves."""

import math

import numpy as np
import pytest
import torch

from backbone.scene import EquivariantScene, TransformNet, apply_affine, identity_affine, pivot_affine
from lightning_modules.evaluation import scene as ev
from lightning_modules.evaluation import scene_metrics
from lightning_modules.evaluation import tz
from tests.test_equivariant_module import small_mnist


def rotation_about(deg: float, centre: torch.Tensor, shift: torch.Tensor = torch.zeros(2)) -> torch.Tensor:
    """``p -> R (p - c) + c + t`` as a ``2 3`` affine."""
    a = math.radians(deg)
    r = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]], dtype=torch.float64)
    centre, shift = centre.double(), shift.double()
    return torch.cat([r, (centre - r @ centre + shift)[:, None]], dim=1)


# ---------------------------------------------------------------------------- T_Z analysis oracle
def test_tz_analysis_oracle_true_transform_scores_one_and_a_constant_scores_zero(cache_dir):
    source = small_mnist()
    tx = torch.cat([source.tz_analysis_pairs(200, 0, 1, start=s)["theta"] for s in (0, 200)]).double()
    assert tx[:, :, :2].std(0).min() > 1e-3  # the pairs rotate, so every output varies
    oracle = tz.tz_statistics(tx, tx)["results"]
    assert oracle["r2_tx_to_tz"] == pytest.approx(1.0, abs=1e-9)
    assert oracle["r2_tx_to_tz_variance_weighted"] == pytest.approx(1.0, abs=1e-9)
    np.testing.assert_allclose(oracle["r2_tx_to_tz_per_output"], 1.0, atol=1e-9)
    assert oracle["r2_angle"] == pytest.approx(1.0, abs=1e-9)
    # T_Z stuck at the identity explains nothing (sklearn would call a constant output perfectly fit)
    stuck = tz.tz_statistics(tx, identity_affine(len(tx), dtype=torch.float64))["results"]
    assert stuck["r2_tx_to_tz"] == 0.0 and stuck["r2_tx_to_tz_variance_weighted"] == 0.0
    # a T_Z unrelated to T_X: about zero
    noise = tz.tz_statistics(tx, identity_affine(len(tx), dtype=torch.float64) + 0.1 * torch.randn(len(tx), 2, 3, dtype=torch.float64))
    assert noise["results"]["r2_tx_to_tz"] < 0.05 and noise["results"]["r2_angle"] < 0.05
    # a T_Z that only got the translation right: the four linear outputs fail, the angle r² is ~0
    translation_only = identity_affine(len(tx), dtype=torch.float64).clone()
    translation_only[:, :, 2] = tx[:, :, 2]
    res = tz.tz_statistics(tx, translation_only)["results"]
    assert res["r2_tx_to_tz_per_output"][2] == pytest.approx(1.0) and res["r2_tx_to_tz_per_output"][5] == pytest.approx(1.0)
    assert max(res["r2_tx_to_tz_per_output"][i] for i in (0, 1, 3, 4)) == 0.0
    assert "r2 rotation angle" in tz.tz_table(res)


# ---------------------------------------------------------------------------- ghost metrics
def ghost_scene(size: int = 16):
    g = torch.Generator().manual_seed(0)
    background = torch.full((2, 3, size, size), 0.3)
    background[:, :, 2:6, 2:6] = torch.tensor([0.9, 0.1, 0.5]).view(3, 1, 1)  # a 'diamond'
    mask = torch.zeros(2, 1, size, size)
    mask[:, :, 8:13, 8:13] = 1.0
    character = torch.rand(2, 3, size, size, generator=g)
    canvas = torch.full_like(background, 0.5)
    return background, mask, character, mask * character + (1 - mask) * canvas


def test_ghost_metrics_are_zero_for_a_perfect_render_and_large_for_a_ghosted_one():
    background, mask, character, on_canvas = ghost_scene()
    frame = mask * character + (1 - mask) * background
    perfect = scene_metrics.ghost_metrics(background, background, on_canvas, on_canvas, mask, frame)
    for v in perfect.values():
        torch.testing.assert_close(v, torch.zeros(2))
    assert scene_metrics.ghost_metrics(background, background, on_canvas, on_canvas, mask)["bg_ghost_strength"].isnan().all()
    # the character left in the background render, the diamond left in the character render
    bg_ghost = frame
    char_ghost = on_canvas.clone()
    char_ghost[:, :, 2:6, 2:6] = background[:, :, 2:6, 2:6]
    noise = 0.02 * torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    values = scene_metrics.ghost_metrics(bg_ghost + noise, background, char_ghost + noise, on_canvas, mask, frame)
    ratios = scene_metrics.ghost_ratios({k: v.numpy() for k, v in values.items()})
    assert ratios["background_ghost_ratio"] > 20 and ratios["character_ghost_ratio"] > 20
    assert abs(ratios["background_ghost_strength"] - 1.0) < 0.05  # the render copies the character
    half = scene_metrics.ghost_metrics(0.5 * (bg_ghost + background), background, on_canvas, on_canvas, mask, frame)
    torch.testing.assert_close(half["bg_ghost_strength"], torch.full((2,), 0.5))
    clean = scene_metrics.ghost_ratios({k: v.numpy() for k, v in scene_metrics.ghost_metrics(background + noise, background, on_canvas + noise, on_canvas, mask, frame).items()})
    assert 0.5 < clean["background_ghost_ratio"] < 1.5 and 0.5 < clean["character_ghost_ratio"] < 1.5
    assert abs(clean["background_ghost_strength"]) < 0.05  # an error unrelated to the character: no ghost
    # inpainting: a wrong but character-free guess under the mask raises the ratio, not the strength
    guess = mask * torch.rand(2, 3, 16, 16, generator=torch.Generator().manual_seed(2)) + (1 - mask) * background + noise
    inpainted = scene_metrics.ghost_ratios({k: v.numpy() for k, v in scene_metrics.ghost_metrics(guess, background, on_canvas, on_canvas, mask, frame).items()})
    assert inpainted["background_ghost_ratio"] > 20 and abs(inpainted["background_ghost_strength"]) < 0.3


def test_structure_mask_finds_the_diamonds_of_a_background():
    background, *_ = ghost_scene()
    structure = scene_metrics.structure_mask(background)
    assert structure[:, :, 2:6, 2:6].eq(1).all() and structure.sum() == 2 * 16


def test_fig3_protocol_reports_ghost_ratios(cache_dir):
    scene = EquivariantScene(64, (8, 16, 16), 8, tz_channels=(8,), tz_hidden=16, tz_keypoints=4)
    result = ev.fig3_protocol(scene, small_mnist(), count=6, chunk=3, progress=False)
    ghosts = result["summary"]["ghosts"]
    assert all(math.isfinite(ghosts[k]) and ghosts[k] > 0 for k in ("background_ghost_ratio", "character_ghost_ratio"))
    assert result["per_example"]["ghosts/bg_inside"].shape == (6,)


# ---------------------------------------------------------------------------- the pivot head
def test_pivot_affine_is_the_identity_at_zero_and_rotates_about_the_pivot():
    pivot = torch.tensor([[0.4, -0.2], [-0.5, 0.3]], dtype=torch.float64)
    torch.testing.assert_close(pivot_affine(torch.zeros(2, 6, dtype=torch.float64), pivot), identity_affine(2, dtype=torch.float64))
    params = torch.zeros(2, 6, dtype=torch.float64)
    params[:, 0] = math.radians(20.0)
    params[:, 4:] = torch.tensor([0.1, -0.05], dtype=torch.float64)
    theta = pivot_affine(params, pivot)
    for k in range(2):
        torch.testing.assert_close(theta[k], rotation_about(20.0, pivot[k], torch.tensor([0.1, -0.05], dtype=torch.float64)))
    # the rotation is exact for a character centred on the pivot: its nearest-rotation angle is the angle
    torch.testing.assert_close(tz.nearest_rotation_angle(theta), torch.full((2,), 20.0, dtype=torch.float64))
    # and scale / aspect / shear reach every orientation-preserving linear map
    params = torch.tensor([[0.3, 0.2, -0.1, 0.4, 0.0, 0.0]], dtype=torch.float64)
    lin = pivot_affine(params, torch.zeros(1, 2, dtype=torch.float64))[0, :, :2]
    assert torch.linalg.det(lin) > 0 and not torch.allclose(lin, lin.T)


def test_pivot_head_is_exactly_the_identity_at_init_and_learns_a_rotation_about_the_character():
    torch.manual_seed(0)
    net = TransformNet(feature_channels=4, channels=(8,), hidden=16, keypoints=8, head="pivot")
    z1, z2 = torch.randn(3, 4, 16, 16), torch.randn(3, 4, 16, 16)
    assert torch.equal(net(z1, z2), identity_affine(3))
    # gradient reaches the angle output when rotating about the pivot lowers an equivariance loss
    z = torch.zeros(1, 4, 16, 16)
    z[:, :, 4:12, 7:9] = 1.0  # a bar at the centre
    rotated = apply_affine(z, rotation_about(30.0, torch.zeros(2)).float()[None])
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    for _ in range(150):
        opt.zero_grad()
        loss = (apply_affine(z, net(z, rotated)) - rotated).pow(2).mean()
        loss.backward()
        opt.step()
    angle = tz.nearest_rotation_angle(net(z, rotated).detach())
    assert abs(abs(float(angle)) - 30.0) < 6.0


def test_rigid_head_outputs_only_rotations_and_translations():
    torch.manual_seed(0)
    net = TransformNet(feature_channels=4, channels=(8,), hidden=16, keypoints=8, head="rigid")
    z1, z2 = torch.randn(5, 4, 16, 16), torch.randn(5, 4, 16, 16)
    assert torch.equal(net(z1, z2), identity_affine(5))
    with torch.no_grad():  # any output layer: the linear part stays a rotation (orthonormal, det 1)
        net.out.weight.normal_(std=0.3)
        net.out.bias.normal_(std=0.3)
    linear = net(z1, z2)[:, :, :2]
    torch.testing.assert_close(linear @ linear.transpose(1, 2), torch.eye(2).expand(5, 2, 2), atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.linalg.det(linear), torch.ones(5), atol=1e-5, rtol=0)
    assert not torch.allclose(linear, torch.eye(2).expand(5, 2, 2), atol=1e-3)


def test_procrustes_features_read_the_rotation_of_keypoints():
    g = torch.Generator().manual_seed(0)
    k2 = torch.randn(2, 10, 2, generator=g)
    a = math.radians(25.0)
    r = torch.tensor([[math.cos(a), -math.sin(a)], [math.sin(a), math.cos(a)]])
    k1 = k2 @ r.T + torch.tensor([0.3, -0.1])  # k1 = R k2 + t
    feats = TransformNet.procrustes_features(k1, k2)
    torch.testing.assert_close(feats[:, 0], torch.full((2,), math.sin(a)), atol=1e-3, rtol=0)
    torch.testing.assert_close(feats[:, 1], torch.full((2,), math.cos(a) - 1), atol=1e-3, rtol=0)
    torch.testing.assert_close(TransformNet.procrustes_features(torch.zeros(2, 10, 2), torch.zeros(2, 10, 2)), torch.zeros(2, 2))


def test_unknown_head_is_refused():
    with pytest.raises(ValueError, match="T_Z head"):
        TransformNet(head="euler")


# ---------------------------------------------------------------------------- training curves
def test_losses_report_feature_scales_and_the_distance_of_tz_from_the_identity():
    torch.manual_seed(0)
    scene = EquivariantScene(32, (8, 16, 16), 8, tz_channels=(8,), tz_hidden=16, tz_keypoints=4, zero_init_character=False)
    x1, x2 = torch.rand(2, 3, 32, 32), torch.rand(2, 3, 32, 32)
    d = scene.losses(x1, x2).diagnostics()
    assert d["tz_dist_identity"] == 0.0 and d["fc_rms"] > 0 and d["fb_rms"] > 0
    theta = identity_affine(2).clone()
    theta[:, 0, 2] = 0.3
    assert scene.losses(x1, x2, theta).diagnostics()["tz_dist_identity"] == pytest.approx(0.3)
    assert scene.losses(x1, x2, theta).diagnostics()["tz_linear_dist_identity"] == 0.0


def test_matched_rotation_finds_the_angle_between_a_map_and_its_rotated_copy():
    z = torch.zeros(3, 4, 16, 16)
    z[:, :, 3:13, 7:9] = 1.0
    z[:, :, 3:5, 9:12] = 1.0  # an asymmetric 'digit'
    params = torch.zeros(3, 6)
    params[:, 0] = torch.deg2rad(torch.tensor([-25.0, 0.0, 35.0]))
    params[:, 4] = 0.2  # moved as well as turned
    z2 = apply_affine(z, pivot_affine(params, torch.full((3, 2), 0.05)))
    got = torch.rad2deg(TransformNet.matched_rotation(z, z2, TransformNet._coords(z)))
    torch.testing.assert_close(got, torch.tensor([-25.0, 0.0, 35.0]), atol=3.0, rtol=0)
