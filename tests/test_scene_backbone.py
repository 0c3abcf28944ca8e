"""Maths of the equivariant scene model (paper 000 §3-4.1) on tensors: T_Z, h, losses, manipulations."""

import math

import pytest
import torch
import torch.nn.functional as F

from backbone.scene import EquivariantScene, TransformNet, apply_affine, identity_affine

SIZE = 32


def tiny(**kw) -> EquivariantScene:
    torch.manual_seed(0)
    args = dict(image_size=SIZE, channels=(8, 16, 16), feature_channels=8, tz_channels=(8,), tz_hidden=16, tz_keypoints=4,
                zero_init_character=False)  # random fc, so that the maths below is not trivially zero
    args.update(kw)
    return EquivariantScene(**args)


def perturb_tz(model: EquivariantScene) -> None:
    """Give T_Z's zero-initialised output layer random weights (as after training)."""
    with torch.no_grad():
        model.tz.out.weight.normal_(0, 0.5)


@pytest.fixture
def frames():
    g = torch.Generator().manual_seed(1)
    return [torch.rand(3, 3, SIZE, SIZE, generator=g) for _ in range(4)]


def test_tz_is_exactly_the_identity_at_initialisation(frames):
    model = tiny()
    z1, z2 = model.encode_character(frames[0]), model.encode_character(frames[1])
    theta = model.transform(z1, z2)
    assert theta.shape == (3, 2, 3)
    assert torch.equal(theta, identity_affine(3))
    # and the identity warp leaves a feature map unchanged
    torch.testing.assert_close(apply_affine(z1, theta), z1, atol=1e-5, rtol=0)


def test_default_character_encoder_starts_at_zero_so_the_scene_starts_as_background(frames):
    model = tiny(zero_init_character=True).eval()
    x = frames[0]
    with torch.no_grad():
        assert torch.equal(model.encode_character(x), torch.zeros(3, 8, SIZE // 4, SIZE // 4))
        torch.testing.assert_close(model.h(x, frames[1], frames[2], frames[3]), model.g(model.fb(frames[3])))
    assert model.encode_background(x).abs().sum() > 0


def test_tz_depends_on_input_order(frames):
    model = tiny()
    perturb_tz(model)
    z1, z2 = model.encode_character(frames[0]), model.encode_character(frames[1])
    forward, backward = model.transform(z1, z2), model.transform(z2, z1)
    assert (forward - backward).abs().max() > 1e-3
    # the same pair in the same order gives the same answer
    torch.testing.assert_close(model.transform(z1, z2), forward)


def test_h_with_identity_tz_and_one_frame_is_g_of_fc_plus_fb(frames):
    model = tiny().eval()
    x = frames[0]
    with torch.no_grad():
        expected = model.g(model.fc(x) + model.fb(x))
        torch.testing.assert_close(model.h(x, x, x, x), expected, atol=1e-5, rtol=0)
        # identity T_Z also for two different frames at initialisation: only fc(x_c) and fb(x_b) matter
        torch.testing.assert_close(model.h(x, frames[1], frames[2], frames[3]), model.g(model.fc(x) + model.fb(frames[3])), atol=1e-5, rtol=0)


def test_apply_affine_follows_the_affine_grid_convention():
    """A translation theta [[1,0,tx],[0,1,0]] samples at x + tx: content moves LEFT by tx/2 of the width."""
    z = torch.zeros(1, 1, 8, 8)
    z[0, 0, 3, 5] = 1.0
    theta = torch.tensor([[[1.0, 0.0, 0.5], [0.0, 1.0, 0.0]]])  # 0.5 normalised = 2 cells of 8
    moved = apply_affine(z, theta)
    assert moved[0, 0, 3, 3] == pytest.approx(1.0)
    assert moved.sum() == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"theta must have shape \(1, 2, 3\)"):
        apply_affine(z, torch.zeros(2, 2, 3))


def test_swap_background_with_the_frames_own_background_is_the_reconstruction(frames):
    model = tiny()
    perturb_tz(model)
    x1, x2 = frames[0], frames[1]
    torch.testing.assert_close(model.swap_background(x1, x2, x1), model.reconstruct(x1, x2))
    # and with another background it differs
    assert (model.swap_background(x1, x2, frames[2]) - model.reconstruct(x1, x2)).abs().max() > 1e-4


def test_manipulations_are_the_formulas_of_section_3(frames):
    model = tiny()
    perturb_tz(model)
    model.eval()
    a, b, c, d = frames
    with torch.no_grad():
        torch.testing.assert_close(model.transfer_animation(a, b, c), model.h(a, b, c, a))
        torch.testing.assert_close(model.transfer_animation(a, b, c, d), model.h(a, b, c, d))
        torch.testing.assert_close(model.swap_background_and_animation(a, b, c, d), model.h(a, b, c, d))
        gray = torch.full_like(a, 0.5)
        torch.testing.assert_close(model.remove_background(a, b, c), model.h(a, b, c, gray))
        torch.testing.assert_close(model.render_background(d), model.g(model.fb(d)))
        theta = model.transform(model.fc(b), model.fc(c))
        torch.testing.assert_close(model.render_character(a, b, c), model.g(apply_affine(model.fc(a), theta)))
        torch.testing.assert_close(model.render_character(a), model.g(model.fc(a)))
        torch.testing.assert_close(model.swap_background(a, None, d), model.g(model.fc(a) + model.fb(d)))
        clip = torch.stack([b, c, d], dim=1)  # b t c h w
        animated = model.animate(a, b, clip)
        assert animated.shape == (3, 3, 3, SIZE, SIZE)
        torch.testing.assert_close(animated[:, 1], model.h(a, b, c, a), atol=1e-5, rtol=0)


def test_manipulations_run_in_eval_and_inference_mode_and_restore_the_mode(frames):
    model = tiny()
    model.train()
    out = model.swap_background(frames[0], frames[1], frames[2])
    assert model.training  # restored
    assert not out.requires_grad and out.is_inference()
    assert out.shape == (3, 3, SIZE, SIZE) and 0.0 <= out.min() and out.max() <= 1.0
    # eval mode inside: batch statistics are not used, so one frame gives the same answer alone or in a batch
    single = model.swap_background(frames[0][:1], frames[1][:1], frames[2][:1])
    torch.testing.assert_close(single, out[:1], atol=1e-5, rtol=0)


def test_losses_are_zero_on_identical_inputs_where_the_maths_says_so(frames):
    model = tiny()
    x = frames[0]
    out = model.losses(x, x)
    # identity T_Z at init: T_Z(fc(x), fc(x)) ∘ fc(x) = fc(x); fb(x) = fb(x)
    assert out.equiv.item() == pytest.approx(0.0, abs=1e-10)
    assert out.inv.item() == 0.0
    assert out.scene.item() > 0.0  # an untrained renderer does not reproduce x
    torch.testing.assert_close(out.scene, F.mse_loss(out.reconstruction, x))
    # with a given (ground-truth) identity transform the same holds, even with a trained T_Z
    perturb_tz(model)
    given = model.losses(x, x, identity_affine(3))
    assert given.equiv.item() == pytest.approx(0.0, abs=1e-10)
    assert torch.equal(given.theta, identity_affine(3))
    # different frames: all three terms are positive
    other = model.losses(frames[0], frames[1])
    assert other.equiv.item() > 0 and other.inv.item() > 0


def test_losses_backpropagate_into_every_network(frames):
    model = tiny()
    out = model.losses(frames[0], frames[1])
    (out.scene + out.equiv + out.inv).backward()
    for name in ("fc", "fb", "g", "tz"):
        grads = [p.grad for p in getattr(model, name).parameters() if p.requires_grad]
        assert any(g is not None and g.abs().sum() > 0 for g in grads), name


def test_wrong_image_sizes_fail_with_a_clear_message(frames):
    model = tiny()
    small = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"16x16 frames, but the model was built for image_size=32.*image_size"):
        model.reconstruct(small, small)
    with pytest.raises(ValueError, match=r"RGB frames 'b 3 h w'"):
        model.render_background(torch.rand(2, 1, SIZE, SIZE))
    with pytest.raises(ValueError, match=r"image_size=30 is not a multiple of the encoder's downsampling factor 4"):
        EquivariantScene(image_size=30, channels=(8, 16, 16))
    with pytest.raises(ValueError, match="same batch size"):
        model.h(frames[0], frames[1][:2], frames[2], frames[3])
    with pytest.raises(ValueError, match="canvas_color"):
        model.remove_background(frames[0], canvas_color=(2.0, 0.0, 0.0))
    with pytest.raises(ValueError, match="Unknown norm"):
        tiny(norm="layer")


@pytest.mark.parametrize("norm", ["batch", "group", "none"])
def test_norm_choices_and_channels_last_give_the_same_shapes(norm, frames):
    model = tiny(norm=norm)
    cl = model.to(memory_format=torch.channels_last)
    out = cl.losses(frames[0].contiguous(memory_format=torch.channels_last), frames[1].contiguous(memory_format=torch.channels_last))
    assert out.reconstruction.shape == frames[0].shape
    assert model.downsample == 4 and model.encode_character(frames[0]).shape == (3, 8, SIZE // 4, SIZE // 4)


def test_transform_net_learns_a_translation_from_features():
    """T_Z can represent the motion between two feature maps (a few optimisation steps)."""
    torch.manual_seed(0)
    net = TransformNet(feature_channels=1, channels=(8,), hidden=32, norm="none")
    opt = torch.optim.Adam(net.parameters(), 1e-2)
    z = torch.zeros(16, 1, 8, 8)
    shifts = torch.randint(-2, 3, (16,))
    for k, s in enumerate(shifts):
        z[k, 0, 3:5, 3:5] = 1.0
    moved = torch.stack([torch.roll(z[k], int(s), dims=-1) for k, s in enumerate(shifts)])
    target = identity_affine(16).clone()
    target[:, 0, 2] = -shifts.float() * 2 / 8  # affine_grid theta that maps z onto moved
    torch.testing.assert_close(apply_affine(z, target), moved, atol=1e-5, rtol=0)
    for _ in range(150):
        loss = (net(z, moved) - target).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 0.01 * target[:, 0, 2].pow(2).mean().item() + 1e-4
    assert math.isfinite(loss.item())


def test_tz_keypoints_are_soft_argmax_positions_that_follow_a_shift():
    """The keypoint path of T_Z: expected (x, y) of a spatial softmax, moving with the content."""
    net = TransformNet(feature_channels=1, channels=(4,), hidden=8, norm="none", keypoints=1)
    with torch.no_grad():
        net.keypoints.weight.zero_()
        net.keypoints.weight[0, 0, 1, 1] = 50.0  # the keypoint map is (a sharp copy of) the feature map
        net.keypoints.bias.zero_()
    z = torch.zeros(1, 1, 8, 8)
    z[0, 0, 2, 5] = 1.0  # row 2, column 5
    coords = net._coords(z)
    k = net._soft_argmax(z, coords)[0, 0]
    torch.testing.assert_close(k, torch.tensor([(2 * 5 + 1) / 8 - 1, (2 * 2 + 1) / 8 - 1]), atol=1e-4, rtol=0)
    shifted = net._soft_argmax(torch.roll(z, 2, dims=-1), coords)[0, 0]
    torch.testing.assert_close(shifted - k, torch.tensor([0.5, 0.0]), atol=1e-4, rtol=0)


def test_transform_noise_only_perturbs_the_training_transform(frames):
    model = tiny()
    torch.manual_seed(0)
    noisy = model.losses(frames[0], frames[1], transform_noise=0.1)
    clean = model.losses(frames[0], frames[1])
    # the noise moves the character in the losses; the reported T_Z (and the diagnostics) stay noise-free
    assert (noisy.reconstruction - clean.reconstruction).abs().max() > 1e-4
    assert torch.equal(noisy.theta, identity_affine(3)) and torch.equal(clean.theta, identity_affine(3))
