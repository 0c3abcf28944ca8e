"""Equivariant scene synthesis (paper 000): encoders ``fc`` / ``fb``, renderer ``g`` and ``T_Z``.

The composed model renders (§3)::

    h(x_c, x_t1, x_t2, x_b) = g(T_Z(fc(x_t1), fc(x_t2)) ∘ fc(x_c) + fb(x_b))

and is trained on two frames ``(x1, x2)`` of one clip with eq. 4::

    L_scene = ||h(x1, x1, x2, x1) - x2||²
    L_equiv = ||T_Z(fc(x1), fc(x2)) ∘ fc(x1) - fc(x2)||²
    L_inv   = ||fb(x1) - fb(x2)||²

Choices where the paper is open (its architecture figures 22-24 are not in the text):

* ``ResidualEncoder`` (``fc`` and ``fb``: same architecture, separate weights, §4.1): a 3x3 conv
  stem at full resolution, then one stage per further entry of ``channels``, each a stride-2
  residual block followed by ``blocks_per_stage - 1`` stride-1 residual blocks; a final 1x1
  conv (no activation) gives a signed feature map of ``feature_channels`` channels at
  ``image_size / 2**(len(channels) - 1)``.
* ``Renderer`` (``g``): the transposition of the encoder without residual connections: 1x1
  conv, then per stage a stride-2 4x4 ``ConvTranspose2d`` (+ ``blocks_per_stage - 1`` 3x3
  convs), a 3x3 conv to RGB and a sigmoid (images are in [0, 1]).
* ``TransformNet`` (``T_Z``, §4.1): a small CNN over ``cat([fc(x_t1), fc(x_t2), coords])``
  along channels (so it depends on the input order), average-pooled to a 4x4 grid (the
  position of the character matters, so the grid is flattened rather than globally pooled),
  plus spatial soft-argmax keypoints of each map and their differences, then two linear
  layers to the 6 numbers of a 2x3 affine matrix. The last layer has zero weights and the
  identity as bias, so ``T_Z`` is exactly the identity at initialisation. Two normalised
  coordinate channels (CoordConv) help it locate the character.
* Transformations use ``F.affine_grid(theta, size, align_corners=False)`` and
  ``F.grid_sample(..., align_corners=False, padding_mode='zeros')``: normalised coordinates
  are resolution independent, so a ground-truth image-space ``T_X`` in the same convention
  can be applied to the feature map directly (the ``T_Z := T_X`` ablation, Fig. 18).
  ``grid_sample(layer_i, affine_grid(T))`` ≈ ``layer_j`` is the convention of
  ``datamodules.base.relative_affine``.
* Losses are means over elements (``F.mse_loss``), not sums: the weights ``α`` then do not
  depend on the image or feature-map size.
* ``zero_init_character`` (default): ``fc``'s last 1x1 conv starts at zero, so the scene
  starts as "background only" and the static background is learned by ``fb``. With ``T_Z``
  at its identity initialisation ``fc`` and ``fb`` are interchangeable for static content;
  if ``fc`` carries the background, moving it costs more than moving the character gains
  and ``T_Z`` stays pinned at the identity (observed on Moving MNIST). Starting ``fc`` at
  zero breaks that symmetry without changing the model or the loss.
* ``T_Z``'s keypoint path reaching the output layer directly is what lets ``T_Z`` leave the
  identity: its output layer starts at zero, so at first only that layer learns, from random
  hidden features. Measured on a Moving MNIST model after 1000 steps without the direct
  path: a linear fit of ``T_X``'s translation from ``T_Z``'s hidden layer had held-out r² ≈ 0,
  from the keypoint differences 0.66-0.69; with the path, ``T_Z``'s translation correlates
  0.96-0.98 with ``T_X``'s after 300-1000 steps.
* ``tz_head='pivot'`` (issue 13; the Moving MNIST configs use it, the paper's six free entries are
  ``'affine'``): ``T_Z`` predicts angle, log-scale, log-aspect, shear and translation about the
  energy centroid of the two character maps (``pivot_affine``), and its output layer also reads
  two rotation estimates, the Procrustes rotation of its keypoints and the angle that best
  matches the two maps' energy under candidate rotations (``TransformNet.matched_rotation``,
  entering with gain ``MATCHED_ROTATION_GAIN``). Measured on Moving MNIST (800-step probes,
  ``docs/experiments_equivariant.md``): the six free entries learned the translation but no
  rotation (rotation-angle r² 0.0005); the pivot alone did not change that (0.0006); with the
  matched angle 0.29, with its gain 0.66.
* ``norm`` picks ``'batch'`` (default), ``'group'`` or ``'none'`` normalisation in the
  encoders / renderer / ``T_Z``; ``'none'`` is the fastest on a CPU. Note that with batch
  norm in ``g`` the renderer is invariant to the scale of ``z``, so ``L_equiv`` and ``L_inv``
  (absolute squared errors, as in the paper) can also be lowered by shrinking the features;
  their logged values are comparable within a run, not across architectures.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from backbone.layers import norm_layer
from backbone.transform import IDENTITY_AFFINE, TZ_HEADS, TransformNet, apply_affine, identity_affine, pivot_affine  # noqa: F401 (public here)
from utils.torch_utils import eval_mode


class ResidualBlock(nn.Module):
    """``relu(norm(conv(relu(norm(conv(x))))) + shortcut(x))``; stride 2 halves the size."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, norm: str = "batch") -> None:
        super().__init__()
        bias = norm == "none"
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=bias)
        self.norm1 = norm_layer(norm, out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=bias)
        self.norm2 = norm_layer(norm, out_channels)
        # ResNet-D shortcut: average-pool, then a 1x1 conv. (A strided 1x1 conv is also what
        # crashes oneDNN's channels-last backward on CPUs for < 16 input channels, torch 2.14.)
        shortcut: list[nn.Module] = [nn.AvgPool2d(stride)] if stride != 1 else []
        if in_channels != out_channels:
            shortcut += [nn.Conv2d(in_channels, out_channels, 1, bias=bias), norm_layer(norm, out_channels)]
        self.shortcut: nn.Module = nn.Sequential(*shortcut) if shortcut else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.norm1(self.conv1(x)), inplace=True)
        y = self.norm2(self.conv2(y))
        return F.relu(y + self.shortcut(x), inplace=True)


def _check_widths(channels: Sequence[int], blocks_per_stage: int, feature_channels: int) -> None:
    if len(channels) < 1 or any(int(c) < 1 for c in channels):
        raise ValueError(f"channels must be a non-empty list of positive widths, got {list(channels)}.")
    if blocks_per_stage < 1:
        raise ValueError(f"blocks_per_stage must be >= 1, got {blocks_per_stage}.")
    if feature_channels < 1:
        raise ValueError(f"feature_channels must be >= 1, got {feature_channels}.")


class ResidualEncoder(nn.Module):
    """``f``: ``b 3 H W -> b F H/s W/s`` with ``s = 2**(len(channels) - 1)`` (§4.1, Fig. 22)."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), feature_channels: int = 64, blocks_per_stage: int = 1,
                 norm: str = "batch", in_channels: int = 3) -> None:
        super().__init__()
        _check_widths(channels, blocks_per_stage, feature_channels)
        channels = [int(c) for c in channels]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, channels[0], 3, 1, 1, bias=norm == "none"), norm_layer(norm, channels[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            stages.append(ResidualBlock(c_in, c_out, 2, norm))
            stages.extend(ResidualBlock(c_out, c_out, 1, norm) for _ in range(blocks_per_stage - 1))
        self.stages = nn.Sequential(*stages)
        self.head = nn.Conv2d(channels[-1], feature_channels, 1)
        self.downsample = 2 ** (len(channels) - 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.stages(self.stem(x)))


class Renderer(nn.Module):
    """``g``: ``b F H/s W/s -> b 3 H W`` in [0, 1]; the encoder transposed, no residuals (§4.1, Fig. 23)."""

    def __init__(self, channels: Sequence[int] = (32, 64, 128), feature_channels: int = 64, blocks_per_stage: int = 1,
                 norm: str = "batch", out_channels: int = 3) -> None:
        super().__init__()
        _check_widths(channels, blocks_per_stage, feature_channels)
        channels = [int(c) for c in channels]
        bias = norm == "none"
        layers: list[nn.Module] = [nn.Conv2d(feature_channels, channels[-1], 1, bias=bias), norm_layer(norm, channels[-1]), nn.ReLU(inplace=True)]
        for c_in, c_out in zip(channels[::-1][:-1], channels[::-1][1:]):
            layers += [nn.ConvTranspose2d(c_in, c_out, 4, 2, 1, bias=bias), norm_layer(norm, c_out), nn.ReLU(inplace=True)]
            for _ in range(blocks_per_stage - 1):
                layers += [nn.Conv2d(c_out, c_out, 3, 1, 1, bias=bias), norm_layer(norm, c_out), nn.ReLU(inplace=True)]
        layers += [nn.Conv2d(channels[0], out_channels, 3, 1, 1)]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(self.net(z))


@dataclass
class SceneOutput:
    """Everything one training pair produces (eq. 4): reconstruction, features, ``T_Z`` and losses."""

    reconstruction: torch.Tensor  # b 3 h w, h(x1, x1, x2, x1)
    theta: torch.Tensor  # b 2 3, T_Z(fc(x1), fc(x2)) (or T_X in the ablation), before any transform_noise
    scene: torch.Tensor  # L_scene
    equiv: torch.Tensor  # L_equiv
    inv: torch.Tensor  # L_inv
    character: torch.Tensor | None = None  # (2 b) F h' w', fc([x1, x2])
    background: torch.Tensor | None = None  # (2 b) F h' w', fb([x1, x2])

    def diagnostics(self) -> dict[str, torch.Tensor]:
        """Detached training-curve scalars: RMS of ``fc`` / ``fb`` and ``T_Z``'s distance from the identity
        (Frobenius norm of ``theta - I``, overall and of the 2x2 linear part)."""
        with torch.no_grad():
            delta = self.theta.detach() - identity_affine(self.theta.shape[0], self.theta.device, self.theta.dtype)
            out = {"tz_dist_identity": delta.flatten(1).norm(dim=1).mean(), "tz_linear_dist_identity": delta[:, :, :2].flatten(1).norm(dim=1).mean()}
            if self.character is not None:
                out["fc_rms"] = self.character.detach().float().pow(2).mean().sqrt()
            if self.background is not None:
                out["fb_rms"] = self.background.detach().float().pow(2).mean().sqrt()
        return out


def _manipulation(fn: Callable) -> Callable:
    """Run a user-facing manipulation in eval mode under ``torch.inference_mode`` (mode restored)."""

    @functools.wraps(fn)
    def wrapper(self: "EquivariantScene", *args, **kwargs):
        with eval_mode(self), torch.inference_mode():
            return fn(self, *args, **kwargs)

    return wrapper


class EquivariantScene(nn.Module):
    """``fc``, ``fb``, ``g`` and ``T_Z`` composed into ``h`` (§3) with the manipulations of §3 / Fig. 10, 16-17.

    Args:
        image_size: side of the (square) input frames; must be a multiple of the encoder's
            downsampling factor ``2**(len(channels) - 1)``.
        channels: encoder widths, full resolution first (the renderer mirrors them).
        feature_channels: channels of the scene representation ``z``.
        blocks_per_stage: residual blocks per encoder stage (and convs per renderer stage).
        tz_channels / tz_hidden: widths of ``T_Z``'s conv layers and hidden linear layer.
        tz_keypoints: soft-argmax keypoints per map in ``T_Z`` (0 = none).
        norm: ``'batch'``, ``'group'`` or ``'none'``.
        zero_init_character: start ``fc``'s last layer at zero (see the module docstring).
        tz_head: ``'affine'`` (six free entries, the paper) or ``'pivot'`` (``TransformNet``).

    Manipulations (batched ``b 3 h w`` tensors in [0, 1]; run in eval mode under
    ``torch.inference_mode``; frames of one call may come from different videos):
    ``reconstruct``, ``swap_background``, ``transfer_animation``,
    ``swap_background_and_animation``, ``remove_background``, ``render_background``,
    ``render_character``. ``h`` itself is differentiable (used for training).
    """

    def __init__(self, image_size: int = 64, channels: Sequence[int] = (32, 64, 128), feature_channels: int = 64,
                 blocks_per_stage: int = 1, tz_channels: Sequence[int] = (64, 64), tz_hidden: int = 128, norm: str = "batch",
                 zero_init_character: bool = True, tz_keypoints: int = 16, tz_head: str = "affine") -> None:
        super().__init__()
        self.image_size = int(image_size)
        self.fc = ResidualEncoder(channels, feature_channels, blocks_per_stage, norm)
        self.fb = ResidualEncoder(channels, feature_channels, blocks_per_stage, norm)
        if zero_init_character:
            nn.init.zeros_(self.fc.head.weight)
            nn.init.zeros_(self.fc.head.bias)
        self.g = Renderer(channels, feature_channels, blocks_per_stage, norm)
        self.tz = TransformNet(feature_channels, tz_channels, tz_hidden, norm, keypoints=tz_keypoints, head=tz_head)
        self.downsample = self.fc.downsample
        if self.image_size < self.downsample or self.image_size % self.downsample:
            raise ValueError(
                f"image_size={image_size} is not a multiple of the encoder's downsampling factor {self.downsample} "
                f"(2**(len(channels)-1) with channels={list(channels)}); change model image_size or the number of channels entries."
            )

    # ----------------------------------------------------------------- building blocks
    def check_images(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """Clear error for a wrong shape / image size (the model is built for one size)."""
        if x.ndim != 4 or x.shape[1] != 3:
            raise ValueError(f"{name} must be a batch of RGB frames 'b 3 h w', got shape {tuple(x.shape)}.")
        if x.shape[-2:] != (self.image_size, self.image_size):
            raise ValueError(
                f"{name} has {x.shape[-2]}x{x.shape[-1]} frames, but the model was built for image_size={self.image_size}. "
                f"Set the model's image_size (model.init_args.image_size) to the data's size "
                f"(a multiple of {self.downsample}), or resize the frames."
            )
        return x

    def encode_character(self, x: torch.Tensor) -> torch.Tensor:
        """``fc(x)``: ``b 3 h w -> b F h' w'``."""
        return self.fc(self.check_images(x, "character frame"))

    def encode_background(self, x: torch.Tensor) -> torch.Tensor:
        """``fb(x)``: ``b 3 h w -> b F h' w'``."""
        return self.fb(self.check_images(x, "background frame"))

    def transform(self, z_t1: torch.Tensor, z_t2: torch.Tensor) -> torch.Tensor:
        """``T_Z(fc(x_t1), fc(x_t2))``: ``(b, 2, 3)`` affine in ``affine_grid`` convention."""
        return self.tz(z_t1, z_t2)

    def compose(self, z_c: torch.Tensor, theta: torch.Tensor | None, z_b: torch.Tensor | None) -> torch.Tensor:
        """``g(theta ∘ z_c + z_b)``; ``theta=None`` means identity, ``z_b=None`` no background term."""
        z = z_c if theta is None else apply_affine(z_c, theta)
        return self.g(z if z_b is None else z + z_b)

    def h(self, x_c: torch.Tensor, x_t1: torch.Tensor, x_t2: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """``h(x_c, x_t1, x_t2, x_b) = g(T_Z(fc(x_t1), fc(x_t2)) ∘ fc(x_c) + fb(x_b))`` (§3); differentiable."""
        _same_batch(x_c=x_c, x_t1=x_t1, x_t2=x_t2, x_b=x_b)
        if x_t1 is x_c:  # common case: share the character encoding
            z_c = z_t1 = self.encode_character(x_c)
        else:
            z_c, z_t1 = self.encode_character(x_c), self.encode_character(x_t1)
        theta = self.transform(z_t1, self.encode_character(x_t2))
        return self.compose(z_c, theta, self.encode_background(x_b))

    forward = h

    def losses(self, x1: torch.Tensor, x2: torch.Tensor, theta: torch.Tensor | None = None, transform_noise: float = 0.0) -> SceneOutput:
        """Eq. 4 terms for a training pair; ``theta`` replaces ``T_Z`` (the ``T_Z := T_X`` ablation, Fig. 18).

        ``transform_noise`` > 0 adds Gaussian noise of that standard deviation to the six
        entries of the transform used in ``L_scene`` and ``L_equiv`` (a training aid, off by
        default; see ``EquivariantSceneModule``): static content carried by ``fc`` then costs
        loss, so the background moves to ``fb``.
        """
        _same_batch(x1=x1, x2=x2)
        b = x1.shape[0]
        # one pass of each encoder over both frames: 'b c h w, b c h w -> (2 b) c h w'
        z_c = self.encode_character(torch.cat([x1, x2]))
        z_b = self.encode_background(torch.cat([x1, x2]))
        z_c1, z_c2 = z_c[:b], z_c[b:]
        z_b1, z_b2 = z_b[:b], z_b[b:]
        if theta is None:
            theta = self.transform(z_c1, z_c2)
        elif theta.shape != (b, 2, 3):
            raise ValueError(f"The given transform must have shape ({b}, 2, 3), got {tuple(theta.shape)}.")
        used = theta + transform_noise * torch.randn_like(theta) if transform_noise > 0 else theta
        moved = apply_affine(z_c1, used)
        reconstruction = self.g(moved + z_b1)
        return SceneOutput(reconstruction=reconstruction, theta=theta, scene=F.mse_loss(reconstruction, x2),
                           equiv=F.mse_loss(moved, z_c2), inv=F.mse_loss(z_b1, z_b2), character=z_c, background=z_b)

    # ----------------------------------------------------------------- manipulations (§3)
    @_manipulation
    def reconstruct(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        """``h(x1, x1, x2, x1)``: the prediction of ``x2`` from ``x1`` (the training objective)."""
        return self.h(x1, x1, x2, x1)

    @_manipulation
    def swap_background(self, x_char: torch.Tensor, x_t2: torch.Tensor | None, x_bg: torch.Tensor) -> torch.Tensor:
        """§3 bullet 1, ``h(x_i1, x_i1, x_i2, x_j1)``: the character of ``x_char`` as seen in ``x_t2``
        (another frame of its video) on the background of ``x_bg``. ``x_t2=None`` keeps the
        character where it is (identity transform)."""
        if x_t2 is None:
            _same_batch(x_char=x_char, x_bg=x_bg)
            return self.compose(self.encode_character(x_char), None, self.encode_background(x_bg))
        return self.h(x_char, x_char, x_t2, x_bg)

    @_manipulation
    def transfer_animation(self, x_c: torch.Tensor, x_t1: torch.Tensor, x_t2: torch.Tensor, x_b: torch.Tensor | None = None) -> torch.Tensor:
        """§3 bullet 2, ``h(x_j1, x_i1, x_i2, x_j1)``: animate the character of ``x_c`` by the change
        ``x_t1 -> x_t2`` of another video, on ``x_c``'s own background (or ``x_b`` if given)."""
        return self.h(x_c, x_t1, x_t2, x_c if x_b is None else x_b)

    @_manipulation
    def swap_background_and_animation(self, x_c: torch.Tensor, x_t1: torch.Tensor, x_t2: torch.Tensor, x_b: torch.Tensor) -> torch.Tensor:
        """§3 bullet 3, ``h(x_i1, x_k1, x_k2, x_j1)``: character of ``x_c``, animation ``x_t1 -> x_t2``, background of ``x_b``."""
        return self.h(x_c, x_t1, x_t2, x_b)

    def canvas(self, like: torch.Tensor, color: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
        """A plain canvas of ``color`` (RGB in [0, 1]) shaped like ``like``."""
        if len(color) != 3 or not all(0.0 <= float(c) <= 1.0 for c in color):
            raise ValueError(f"canvas_color must be 3 RGB values in [0, 1], got {tuple(color)}.")
        return torch.tensor([float(c) for c in color], device=like.device, dtype=like.dtype).view(1, 3, 1, 1).expand_as(like).contiguous()

    @_manipulation
    def remove_background(self, x_c: torch.Tensor, x_t1: torch.Tensor | None = None, x_t2: torch.Tensor | None = None,
                          canvas_color: Sequence[float] = (0.5, 0.5, 0.5)) -> torch.Tensor:
        """Fig. 16-17 ('Ours-BG'): the character of ``x_c`` (animated by ``x_t1 -> x_t2`` if given)
        with the background encoder fed a plain canvas (gray by default: black never occurs in
        training, so it is out of distribution)."""
        z_b = self.encode_background(self.canvas(x_c, canvas_color))
        return self._render_character(x_c, x_t1, x_t2, z_b)

    @_manipulation
    def render_background(self, x_b: torch.Tensor) -> torch.Tensor:
        """Fig. 10, fifth column: ``g(fb(x_b))``."""
        return self.g(self.encode_background(x_b))

    @_manipulation
    def render_character(self, x_c: torch.Tensor, x_t1: torch.Tensor | None = None, x_t2: torch.Tensor | None = None) -> torch.Tensor:
        """Fig. 10, sixth column: ``g(T_Z(fc(x_t1), fc(x_t2)) ∘ fc(x_c))`` (identity ``T_Z`` when no pair is given)."""
        return self._render_character(x_c, x_t1, x_t2, None)

    def _render_character(self, x_c: torch.Tensor, x_t1: torch.Tensor | None, x_t2: torch.Tensor | None,
                          z_b: torch.Tensor | None) -> torch.Tensor:
        if (x_t1 is None) != (x_t2 is None):
            raise ValueError("Give both x_t1 and x_t2 (the animation pair) or neither.")
        z_c = self.encode_character(x_c)
        theta = None
        if x_t1 is not None:
            _same_batch(x_c=x_c, x_t1=x_t1, x_t2=x_t2)
            theta = self.transform(self.encode_character(x_t1), self.encode_character(x_t2))
        return self.compose(z_c, theta, z_b)

    @_manipulation
    def animate(self, x_c: torch.Tensor, x_t1: torch.Tensor, frames: torch.Tensor, x_b: torch.Tensor | None = None) -> torch.Tensor:
        """Animate ``x_c`` along a whole clip: ``frames`` is ``b t 3 h w``; frame ``k`` of the output is
        ``h(x_c, x_t1, frames[:, k], x_b)`` (Fig. 4). ``fc(x_c)``, ``fc(x_t1)`` and ``fb(x_b)`` are
        encoded once. Returns ``b t 3 h w``."""
        b, t = frames.shape[:2]
        z_c = self.encode_character(x_c)
        z_t1 = self.encode_character(x_t1)
        z_b = self.encode_background(x_c if x_b is None else x_b)
        z_t2 = self.encode_character(rearrange(frames, "b t c h w -> (b t) c h w"))
        rep = lambda z: z.repeat_interleave(t, dim=0)  # noqa: E731  'b ... -> (b t) ...'
        theta = self.transform(rep(z_t1), z_t2)
        out = self.compose(rep(z_c), theta, rep(z_b))
        return rearrange(out, "(b t) c h w -> b t c h w", b=b, t=t)


def _same_batch(**tensors: torch.Tensor) -> None:
    sizes = {name: t.shape[0] for name, t in tensors.items()}
    if len(set(sizes.values())) > 1:
        raise ValueError(f"All inputs must have the same batch size, got {sizes}.")
