"""``T_Z``, the learned affine transform of the character features (paper 000 §3): ``TransformNet``
with the ``affine`` and ``pivot`` heads, and ``apply_affine`` (``affine_grid`` + ``grid_sample``)."""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import nn

from backbone.layers import norm_layer
from utils.checks import check_int


IDENTITY_AFFINE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)


TZ_HEADS = ("affine", "pivot", "rigid")
PIVOT_HEADS = ("pivot", "rigid")  # heads that predict pivot_affine parameters
RIGID_PARAMS = (1.0, 0.0, 0.0, 0.0, 1.0, 1.0)  # angle and translation kept; scale, aspect, shear held at 0


def pivot_affine(params: torch.Tensor, pivot: torch.Tensor) -> torch.Tensor:
    """``b 6, b 2 -> b 2 3``: the affine ``p -> A (p - c) + c + t`` from (angle, log-scale, log-aspect,
    shear, t_x, t_y) about the pivot ``c`` (normalised (x, y) coordinates).

    ``A = exp(s) R(angle) [[exp(q), shear], [0, exp(-q)]]`` covers every orientation-preserving
    linear map; all-zero ``params`` give exactly the identity for any pivot. A rotation of a
    character about its own centre ``c`` is ``(angle, 0, 0, 0, 0, 0)``: the translation
    ``(I - A) c`` that the six free entries would have to learn as a product of the angle and
    the position comes from the pivot.
    """
    angle, log_scale, log_aspect, shear, tx, ty = params.unbind(dim=1)
    cos, sin = torch.cos(angle), torch.sin(angle)
    rot = torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)
    upper = torch.stack([torch.stack([torch.exp(log_aspect), shear], -1),
                         torch.stack([torch.zeros_like(shear), torch.exp(-log_aspect)], -1)], -2)
    linear = torch.exp(log_scale)[:, None, None] * rot @ upper
    translation = pivot - torch.einsum("bij,bj->bi", linear, pivot) + torch.stack([tx, ty], dim=-1)
    return torch.cat([linear, translation[..., None]], dim=-1)


class TransformNet(nn.Module):
    """``T_Z(z_t1, z_t2) -> (b, 2, 3)``: order-dependent, exact identity at initialisation (§4.1, Fig. 24).

    Two paths feed a two-layer head: (1) a CNN over ``cat([z_t1, z_t2, coords])`` average-pooled
    to a ``pool_size`` grid and flattened; (2) ``keypoints`` spatial soft-argmax keypoints of
    each map (a shared 3x3 conv, softmax over positions, expected coordinates) as positions
    ``k1``, ``k2`` and their difference ``k2 - k1``, which also reach the output layer directly.
    Keypoint differences make translations of a character nearly linear in the input of the
    output layer; since that layer starts at zero, the layers before it get no gradient at
    first, and without this direct path ``T_Z`` cannot pick up the weak early gradients of
    ``L_scene`` (on Moving MNIST it then stays at the identity). The last layer has zero
    weights and the identity as bias.

    ``head`` chooses what the output layer predicts:

    * ``'affine'`` (the paper): the six free entries of the 2x3 matrix.
    * ``'pivot'`` (a departure, measured in ``docs/experiments_equivariant.md``): angle,
      log-scale, log-aspect, shear and translation (``pivot_affine``) about the energy centroid
      of the two character maps, and the keypoint path also carries two rotation estimates:
      the Procrustes rotation of the centred keypoints (its sine and cosine - 1,
      ``procrustes_features``) and the angle found by matching the maps' energy under
      candidate rotations (``matched_rotation``). With six
      free entries a rotation about the character's own centre needs a translation ``(I - R) c``
      that is a product of angle and position, which the linear paths cannot express.
    * ``'rigid'``: the ``'pivot'`` head with scale, aspect and shear held at zero (a rotation about
      the pivot plus a translation), for data whose characters only turn and move (the Moving MNIST
      configs; measured in ``docs/experiments_equivariant.md`` section 5).
    """

    # The matched angle (radians) enters the zero-initialised output layer multiplied by this gain: passing
    # it on then needs a weight of 1 / gain, which Adam (steps of about lr per step) reaches in ~100
    # steps at lr 1e-3 instead of > 1000 (Moving MNIST, 800 steps: rotation-angle r² 0.29 without it).
    MATCHED_ROTATION_GAIN = 10.0

    def __init__(self, feature_channels: int = 64, channels: Sequence[int] = (64, 64), hidden: int = 128, norm: str = "batch",
                 pool_size: int = 4, keypoints: int = 16, head: str = "affine") -> None:
        super().__init__()
        if head not in TZ_HEADS:
            raise ValueError(f"Unknown T_Z head {head!r}; expected one of {TZ_HEADS}.")
        if head in PIVOT_HEADS and keypoints < 2:
            raise ValueError(f"The {head!r} T_Z head needs at least 2 keypoints (for its Procrustes rotation), got {keypoints}.")
        check_int(hidden, "tz_hidden", message="{name} must be an integer >= 1 (the width of T_Z's hidden layer), got {value!r}.")
        if any(int(c) < 1 for c in channels):
            raise ValueError(f"tz_channels must be positive widths, got {list(channels)}.")
        self.head = head
        layers: list[nn.Module] = []
        c_prev = 2 * feature_channels + 2  # both feature maps + 2 coordinate channels
        for c in channels:
            layers += [nn.Conv2d(c_prev, int(c), 3, 2, 1, bias=norm == "none"), norm_layer(norm, int(c)), nn.ReLU(inplace=True)]
            c_prev = int(c)
        self.convs = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(pool_size)
        self.keypoints = nn.Conv2d(feature_channels, keypoints, 3, 1, 1) if keypoints > 0 else None
        extra = 6 * max(keypoints, 0) + (3 if head in PIVOT_HEADS else 0)
        self.fc = nn.Sequential(nn.Linear(c_prev * pool_size * pool_size + extra, hidden), nn.ReLU(inplace=True))
        self.out = nn.Linear(hidden + extra, 6)  # keypoints also reach the (zero-initialised) output directly
        self.reset_identity()

    def reset_identity(self) -> None:
        """Zero weights and identity bias: ``T_Z`` outputs ``[[1, 0, 0], [0, 1, 0]]`` for any input."""
        nn.init.zeros_(self.out.weight)
        with torch.no_grad():
            self.out.bias.copy_(torch.tensor(IDENTITY_AFFINE) if self.head == "affine" else torch.zeros(6))

    @staticmethod
    def _coords(z: torch.Tensor) -> torch.Tensor:
        """``2 h w`` normalised (y, x) pixel-centre coordinates (``align_corners=False``)."""
        h, w = z.shape[-2:]
        ys = (torch.arange(h, device=z.device, dtype=z.dtype) * 2 + 1) / h - 1
        xs = (torch.arange(w, device=z.device, dtype=z.dtype) * 2 + 1) / w - 1
        return torch.stack(torch.meshgrid(ys, xs, indexing="ij"))

    def _soft_argmax(self, z: torch.Tensor, coords: torch.Tensor) -> torch.Tensor:
        """``b F h w -> b K 2``: expected (x, y) under a spatial softmax of each keypoint map."""
        weights = torch.softmax(rearrange(self.keypoints(z), "b k h w -> b k (h w)"), dim=-1)
        return torch.einsum("bkp,cp->bkc", weights, rearrange(coords.flip(0), "c h w -> c (h w)"))

    @staticmethod
    def energy_centroid(z: torch.Tensor, coords: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
        """``b F h w -> b 2``: (x, y) centroid of the feature energy ``sum_F z²`` (the image centre for ``z = 0``)."""
        energy = rearrange(z.float().pow(2).sum(1), "b h w -> b (h w)") + eps
        return torch.einsum("bp,cp->bc", energy / energy.sum(1, keepdim=True), rearrange(coords.flip(0), "c h w -> c (h w)").float()).to(z.dtype)

    @staticmethod
    def matched_rotation(z_t1: torch.Tensor, z_t2: torch.Tensor, coords: torch.Tensor, max_degrees: float = 60.0,
                         step_degrees: float = 5.0, temperature: float = 0.02) -> torch.Tensor:
        """``b F h w, b F h w -> b``: the rotation angle (radians, ``pivot_affine``'s convention) that best
        matches the two maps' energy ``sum_F z²``, by search (no learned weights; detached).

        Frame 1's energy, normalised, is warped by ``p -> R(a) (p - c2) + c1`` (``c`` the energy
        centroids) for candidate angles ``a`` every ``step_degrees`` in ``±max_degrees`` and compared
        with frame 2's by cosine similarity; the estimate is the softmax(similarity / temperature)
        -weighted mean angle. A character's energy map turns with the character, so the estimate
        carries the rotation as soon as ``fc`` has any spatial structure; ``T_Z``'s head still has
        to learn how much to trust it (its weight starts at zero).
        """
        with torch.no_grad():
            e1, e2 = z_t1.detach().float().pow(2).sum(1, keepdim=True), z_t2.detach().float().pow(2).sum(1, keepdim=True)
            c1, c2 = TransformNet.energy_centroid(e1, coords.float()), TransformNet.energy_centroid(e2, coords.float())
            angles = torch.deg2rad(torch.arange(-max_degrees, max_degrees + 1e-6, step_degrees, device=z_t1.device))
            b, k = e1.shape[0], len(angles)
            params = torch.zeros(b, k, 6, device=z_t1.device)
            params[..., 0] = angles
            rep = lambda t: t.repeat_interleave(k, dim=0)  # noqa: E731  'b ... -> (b k) ...'
            # p -> R (p - c2) + c2 + (c1 - c2) = R (p - c2) + c1
            params[..., 4:] = (c1 - c2)[:, None]
            theta = pivot_affine(rearrange(params, "b k p -> (b k) p"), rep(c2))
            warped = rearrange(apply_affine(rep(e1), theta), "(b k) 1 h w -> b k (h w)", b=b, k=k)
            target = rearrange(e2, "b 1 h w -> b 1 (h w)")
            sim = (warped * target).sum(-1) / (warped.norm(dim=-1) * target.norm(dim=-1) + 1e-12)
            weights = torch.softmax(sim / temperature, dim=1)
            return (weights * angles).sum(1).to(z_t1.dtype)

    @staticmethod
    def procrustes_features(k1: torch.Tensor, k2: torch.Tensor, eps: float = 1e-4) -> torch.Tensor:
        """``b K 2, b K 2 -> b 2``: (sin, cos - 1) of the rotation taking the centred ``k2`` onto the centred
        ``k1`` (least squares, 2-D Procrustes); (0, 0) when the keypoints carry no rotation."""
        a = k1 - k1.mean(1, keepdim=True)
        b = k2 - k2.mean(1, keepdim=True)
        cross = (b[..., 0] * a[..., 1] - b[..., 1] * a[..., 0]).sum(1)
        dot = (b * a).sum(-1).sum(1)
        norm = torch.sqrt(cross**2 + dot**2 + eps**2)
        return torch.stack([cross / norm, dot / norm - 1 + eps / norm], dim=1)

    def forward(self, z_t1: torch.Tensor, z_t2: torch.Tensor) -> torch.Tensor:
        b = z_t1.shape[0]
        coords = self._coords(z_t1)
        y = self.pool(self.convs(torch.cat([z_t1, z_t2, coords.expand(b, -1, -1, -1)], dim=1)))
        keys: list[torch.Tensor] = []
        if self.keypoints is not None:
            k1, k2 = self._soft_argmax(z_t1, coords), self._soft_argmax(z_t2, coords)
            keys = [rearrange(k, "b k c -> b (k c)") for k in (k1, k2, k2 - k1)]
            if self.head in PIVOT_HEADS:
                keys += [self.procrustes_features(k1, k2), self.MATCHED_ROTATION_GAIN * self.matched_rotation(z_t1, z_t2, coords)[:, None]]
        hidden = self.fc(torch.cat([rearrange(y, "b c h w -> b (c h w)"), *keys], dim=1))
        params = self.out(torch.cat([hidden, *keys], dim=1))
        if self.head == "rigid":
            params = params * params.new_tensor(RIGID_PARAMS)
        if self.head in PIVOT_HEADS:
            pivot = 0.5 * (self.energy_centroid(z_t1, coords) + self.energy_centroid(z_t2, coords))
            return pivot_affine(params, pivot)
        return rearrange(params, "b (r k) -> b r k", r=2, k=3)


def apply_affine(z: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
    """``T ∘ z``: ``grid_sample(z, affine_grid(theta))`` (``align_corners=False``, zeros outside)."""
    if theta.shape != (z.shape[0], 2, 3):
        raise ValueError(f"theta must have shape ({z.shape[0]}, 2, 3) for {z.shape[0]} feature maps, got {tuple(theta.shape)}.")
    grid = F.affine_grid(theta.to(z.dtype), list(z.shape), align_corners=False)
    return F.grid_sample(z, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def identity_affine(batch: int, device: torch.device | None = None, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """``(batch, 2, 3)`` identity matrices."""
    return torch.tensor(IDENTITY_AFFINE, device=device, dtype=dtype).view(1, 2, 3).expand(batch, 2, 3).contiguous()
