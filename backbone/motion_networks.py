"""The networks of ``MotionVAE`` (paper 004, Tables 3-5): diagonal Gaussians, the frame encoder and
decoder, the content posterior (an LSTM over the clip) and the position / momentum posteriors."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from einops import rearrange, repeat
from torch import Tensor, nn

from backbone.hamiltonian import select_subspace
from backbone.layers import norm_layer


# --------------------------------------------------------------------------- Gaussians
@dataclass
class DiagonalGaussian:
    """``N(μ, diag(σ²))`` with ``σ = exp(log_sigma)``; shapes ``(..., n)``."""

    mu: Tensor
    log_sigma: Tensor

    @property
    def sigma(self) -> Tensor:
        return self.log_sigma.exp()

    def rsample(self, generator: torch.Generator | None = None) -> Tensor:
        """Reparameterised sample ``μ + σ ⊙ ε`` (§3.2)."""
        eps = torch.randn(self.mu.shape, generator=generator, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.sigma * eps

    def kl_standard_normal(self) -> Tensor:
        """Analytic ``KL(N(μ, σ²) || N(0, I))`` summed over the last dim:
        ``Σ ½(μ² + σ²) - log σ - ½``."""
        return (0.5 * (self.mu.square() + (2 * self.log_sigma).exp()) - self.log_sigma - 0.5).sum(-1)

    def index(self, *idx) -> "DiagonalGaussian":
        return DiagonalGaussian(self.mu[idx], self.log_sigma[idx])

    def distribution(self) -> torch.distributions.Normal:
        return torch.distributions.Normal(self.mu, self.sigma)


@dataclass
class Posterior:
    """``q(z | x_{1:T})`` ``(b, |Z|)``; ``q(q_t^k | ·)`` and ``q(p_t^k | ·)`` for every frame ``(b, t, d)``."""

    z: DiagonalGaussian
    q: DiagonalGaussian
    p: DiagonalGaussian

    def state(self, reference: Tensor, sample: bool = False, generator: torch.Generator | None = None) -> Tensor:
        """``s_t = (q_t, p_t)`` at each clip's reference frame ``(b,)``: ``(b, 2d)`` (mean or sample)."""
        rows = torch.arange(reference.shape[0], device=reference.device)
        q, p = self.q.index(rows, reference), self.p.index(rows, reference)
        if sample:
            return torch.cat([q.rsample(generator), p.rsample(generator)], -1)
        return torch.cat([q.mu, p.mu], -1)


# --------------------------------------------------------------------------- frame networks
def _check_kernel(kernel_size: int, strides: Sequence[int]) -> None:
    if kernel_size < 1:
        raise ValueError(f"kernel_size must be >= 1, got {kernel_size}.")
    if kernel_size % 2 == 0 and any(s != 2 for s in strides):
        raise ValueError(
            f"an even kernel_size ({kernel_size}) only keeps sizes exact with stride 2 everywhere; "
            f"got strides {list(strides)}. Use an odd kernel_size or stride-2 layers only."
        )


def _padding(kernel_size: int) -> int:
    """Odd k: ``k//2`` (stride 1 keeps, stride 2 halves the size); even k (stride 2): ``k//2 - 1``."""
    return kernel_size // 2 if kernel_size % 2 else kernel_size // 2 - 1


def _check_strides(strides: Sequence[int], image_size: int, what: str) -> int:
    if any(s not in (1, 2) for s in strides):
        raise ValueError(f"{what} strides must each be 1 or 2, got {list(strides)}.")
    down = 2 ** sum(s == 2 for s in strides)
    if image_size % down:
        raise ValueError(f"image_size={image_size} is not divisible by {down} (the {what} strides {list(strides)}).")
    return image_size // down


class FrameEncoder(nn.Module):
    """Table 3: conv (k x k) / BN / LReLU(0.2) layers, flatten, Linear / BN / LReLU layers -> ``h``.

    ``frames (n, c, H, W) -> (n, out_dim)``.
    """

    def __init__(
        self,
        image_size: int = 64,
        in_channels: int = 3,
        channels: Sequence[int] = (256, 256, 256, 256, 256),
        strides: Sequence[int] = (1, 2, 2, 2, 1),
        hidden: Sequence[int] = (4096, 2048),
        out_dim: int = 256,
        kernel_size: int = 5,
        batchnorm: bool = True,
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size, strides)
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"encoder channels {list(channels)} and strides {list(strides)} need the same non-zero length.")
        side = _check_strides(strides, image_size, "encoder")
        layers: list[nn.Module] = []
        c_in = in_channels
        for c, s in zip(channels, strides):
            layers += [nn.Conv2d(c_in, c, kernel_size, s, _padding(kernel_size), bias=not batchnorm), norm_layer(batchnorm, c), nn.LeakyReLU(0.2, inplace=True)]
            c_in = c
        layers.append(nn.Flatten())
        f_in = c_in * side * side
        for f in [*hidden, out_dim]:
            layers += [nn.Linear(f_in, f), norm_layer(batchnorm, f, dims=1), nn.LeakyReLU(0.2, inplace=True)]
            f_in = f
        self.net = nn.Sequential(*layers)
        self.image_size, self.in_channels, self.out_dim = image_size, in_channels, out_dim

    def forward(self, frames: Tensor) -> Tensor:
        return self.net(frames)


OUTPUT_ACTIVATIONS = ("sigmoid", "linear")


class FrameDecoder(nn.Module):
    """Table 4: Linear / BN / LReLU layers -> reshape ``(channels[0], s, s)`` -> transposed convs.

    Transposed conv ``i`` maps ``channels[i] -> channels[i+1]`` (the last one -> ``out_channels``)
    with stride ``strides[i]`` (odd k: padding ``k//2``, output padding ``stride - 1``; even k,
    stride 2 only: padding ``k//2 - 1``; either way sizes double exactly);
    all but the last are followed by BN / LReLU(0.2); the last by ``output_activation``:
    ``"sigmoid"`` (default: the paper's Tanh moved to [0, 1]) or ``"linear"`` (an unbounded
    Gaussian mean; images are clamped to [0, 1] by the evaluation). ``output_bias`` initialises
    the last layer's bias (e.g. -4: a sigmoid starting near 0.02 suits mostly-black frames).
    ``codes (n, in_dim) -> (n, out_channels, H, W)`` in [0, 1].
    """

    def __init__(
        self,
        in_dim: int,
        image_size: int = 64,
        out_channels: int = 3,
        hidden: Sequence[int] = (4096,),
        channels: Sequence[int] = (256, 256, 256, 256, 256),
        strides: Sequence[int] = (2, 2, 2, 2, 1),
        kernel_size: int = 5,
        batchnorm: bool = True,
        output_activation: str = "sigmoid",
        output_bias: float = 0.0,
    ) -> None:
        super().__init__()
        _check_kernel(kernel_size, strides)
        if output_activation not in OUTPUT_ACTIVATIONS:
            raise ValueError(f"output_activation must be one of {OUTPUT_ACTIVATIONS}, got {output_activation!r}.")
        if len(channels) != len(strides) or not channels:
            raise ValueError(f"decoder channels {list(channels)} and strides {list(strides)} need the same non-zero length.")
        side = _check_strides(strides, image_size, "decoder")
        layers: list[nn.Module] = []
        f_in = in_dim
        for f in [*hidden, channels[0] * side * side]:
            layers += [nn.Linear(f_in, f), norm_layer(batchnorm, f, dims=1), nn.LeakyReLU(0.2, inplace=True)]
            f_in = f
        layers.append(nn.Unflatten(1, (channels[0], side, side)))
        outs = [*channels[1:], out_channels]
        for i, (c_in, c_out, s) in enumerate(zip(channels, outs, strides)):
            last = i == len(strides) - 1
            layers.append(nn.ConvTranspose2d(c_in, c_out, kernel_size, s, _padding(kernel_size), output_padding=(s - 1) * (kernel_size % 2), bias=last or not batchnorm))
            final = nn.Sigmoid() if output_activation == "sigmoid" else nn.Identity()
            layers += [final] if last else [norm_layer(batchnorm, c_out), nn.LeakyReLU(0.2, inplace=True)]
        self.net = nn.Sequential(*layers)
        last = [m for m in layers if isinstance(m, nn.ConvTranspose2d)][-1]
        nn.init.constant_(last.bias, output_bias)

    def forward(self, codes: Tensor) -> Tensor:
        return self.net(codes)


# --------------------------------------------------------------------------- posteriors
class GaussianHeads(nn.Module):
    """``Linear_μ`` and ``Linear_log σ`` (Table 5)."""

    def __init__(self, in_dim: int, out_dim: int) -> None:
        super().__init__()
        self.mu = nn.Linear(in_dim, out_dim)
        self.log_sigma = nn.Linear(in_dim, out_dim)

    def forward(self, x: Tensor) -> DiagonalGaussian:
        return DiagonalGaussian(self.mu(x), self.log_sigma(x))


class ContentPosterior(nn.Module):
    """``q(z | x_{1:T})`` (eq. 15): bidirectional LSTM over frame features, then Gaussian heads."""

    def __init__(self, frame_dim: int, content_dim: int) -> None:
        super().__init__()
        if content_dim % 2:
            raise ValueError(f"content_dim must be even (two LSTM directions of content_dim/2), got {content_dim}.")
        self.lstm = nn.LSTM(frame_dim, content_dim // 2, batch_first=True, bidirectional=True)
        self.heads = GaussianHeads(content_dim, content_dim)

    def forward(self, h: Tensor) -> DiagonalGaussian:
        out, _ = self.lstm(h)  # (b, t, Z)
        half = out.shape[-1] // 2
        summary = torch.cat([out[:, -1, :half], out[:, 0, half:]], -1)
        return self.heads(summary)


class MotionPosterior(nn.Module):
    """``q(q_t^k | x_t, u)`` or, with ``window > 1``, ``q(p_t^k | x_{t-w+1:t}, u)`` (eq. 15–16, Table 5).

    ``h (b, t, f)``, ``action (b,)`` -> Gaussian over the active block, ``(b, t, d)``.
    """

    def __init__(self, frame_dim: int, num_actions: int, dim: int, hidden: int, window: int = 1, batchnorm: bool = True) -> None:
        super().__init__()
        self.num_actions, self.dim, self.window = num_actions, dim, window
        full = num_actions * dim
        self.mlp = nn.Sequential(
            nn.Linear(frame_dim + num_actions, hidden), norm_layer(batchnorm, hidden, dims=1), nn.LeakyReLU(0.2, inplace=True),
            nn.Linear(hidden, hidden), norm_layer(batchnorm, hidden, dims=1), nn.LeakyReLU(0.2, inplace=True),
        )
        self.tcn = nn.Conv1d(hidden, hidden, window, padding=window - 1) if window > 1 else None
        self.heads = GaussianHeads(hidden, full)

    def forward(self, h: Tensor, action: Tensor) -> DiagonalGaussian:
        b, t, _ = h.shape
        u = repeat(F.one_hot(action, self.num_actions).to(h.dtype), "b k -> b t k", t=t)
        x = rearrange(torch.cat([h, u], -1), "b t f -> (b t) f")
        x = rearrange(self.mlp(x), "(b t) f -> b t f", b=b)
        if self.tcn is not None:  # causal: keep the first t outputs of the zero-padded conv
            x = rearrange(self.tcn(rearrange(x, "b t f -> b f t"))[..., :t], "b f t -> b t f")
        g = self.heads(x)  # (b, t, K·d)
        return DiagonalGaussian(
            select_subspace(g.mu, action, self.num_actions), select_subspace(g.log_sigma, action, self.num_actions)
        )
