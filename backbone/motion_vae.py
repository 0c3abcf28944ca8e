"""The Hamiltonian content/motion sequential VAE of paper 004 as a plain ``nn.Module``.

Generative model (§3.1, eq. 2–6): content ``z ~ N(0, I)``; for a clip of action ``k`` a
phase-space state ``s^k = (q^k, p^k) ~ N(0, I_2d)`` unrolled by ``exp(τ H_k)``
(``backbone.hamiltonian``); every other action's subspace is exactly zero; frame ``t`` is
decoded from ``(z, q_t)`` with ``q_t = [q_t^1, …, q_t^K]`` (only block ``k`` non-zero).

Inference (§3.2, eq. 11–16, Table 5), all diagonal Gaussians with a ``log σ`` head:

* ``q(z | x_{1:T})``: a bidirectional LSTM over the per-frame features (hidden ``|Z|/2`` each
  way; the forward state after the last frame and the backward state after the first frame
  are concatenated to ``|Z|``, as in DSVAE), then ``Linear_μ`` / ``Linear_logσ``;
* ``q(q_t^k | x_t, u)``: ``[h_t, one_hot(k)]`` -> Linear/BN/LReLU x2 -> ``μ, log σ`` of *all*
  ``K·d`` position coordinates (Table 5 outputs ``|Q| = K x d``); the block of action ``k``
  is kept, the rest discarded (the subspace of another action is held at zero, eq. 14);
* ``q(p_t^k | x_{t-w+1:t}, u)``: the same per-frame MLP, then a *causal* temporal convolution
  (kernel ``w = 4``, left padding 3) so ``p_t`` sees frames ``t-3 … t``; before the first frame
  the padding is zeros, so a clip's first frame (and a single image at generation) gets its
  momentum from that frame alone, exactly as a reference frame ``t = 1`` does in training.

Encoder / decoder follow Tables 3–4 with configurable widths: the paper's layout is five 5x5
convolutions of 256 channels (strides 1, 2, 2, 2, 1), linears 4096 -> 2048 -> ``h``; decoder
linears ``(|Z| + K·d) -> 4096 -> 256·4·4`` and five transposed convolutions (strides
2, 2, 2, 2, 1); ~108 M parameters at 64x64. The CPU configs shrink channels and linears.
The decoder ends in a sigmoid (images are in [0, 1] here; the paper's Tanh targets [-1, 1])
and its last layer has no BatchNorm.
"""

from __future__ import annotations

from typing import Sequence

import torch
from einops import rearrange, repeat
from torch import Tensor, nn

from backbone.hamiltonian import HamiltonianOperators, OperatorKind, embed_subspace
from backbone.motion_networks import OUTPUT_ACTIVATIONS, ContentPosterior, DiagonalGaussian, FrameDecoder, FrameEncoder, GaussianHeads, MotionPosterior, Posterior  # noqa: F401 (public here)
from utils.checks import check_int


# --------------------------------------------------------------------------- the model
class MotionVAE(nn.Module):
    """Content ``z`` + per-action Hamiltonian motion subspaces (paper 004). See module docstring.

    Args:
        num_actions: ``K`` (sprites 3, MUG 6).
        position_dim: ``d`` per subspace (``|Q| = |P| = K x d``; sprites 6, MUG 12).
        content_dim: ``|Z|`` (sprites 256, MUG 512).
        frame_dim: ``h``, the per-frame feature size of the encoder.
        image_size, in_channels: frame size and channels.
        encoder_channels, encoder_strides, encoder_hidden: Table 3 widths.
        decoder_hidden, decoder_channels, decoder_strides: Table 4 widths.
        kernel_size: conv kernel (paper 5).
        batchnorm: BatchNorm after every hidden layer (paper: yes).
        motion_hidden: width of the position/momentum MLPs (Table 5: ``K·d``; default).
        momentum_window: ``w``, the temporal-conv kernel of the momentum posterior (paper 4).
        operator: ``"H"`` or ``"skew-H"`` (``backbone.hamiltonian``).
        operator_init_std: initial scale of the operators' free parameters.
        output_activation: decoder output, ``"sigmoid"`` or ``"linear"`` (``FrameDecoder``).
        output_bias: initial bias of the decoder's last layer (``FrameDecoder``).
    """

    def __init__(
        self,
        num_actions: int = 3,
        position_dim: int = 6,
        content_dim: int = 256,
        frame_dim: int = 256,
        image_size: int = 64,
        in_channels: int = 3,
        encoder_channels: Sequence[int] = (256, 256, 256, 256, 256),
        encoder_strides: Sequence[int] = (1, 2, 2, 2, 1),
        encoder_hidden: Sequence[int] = (4096, 2048),
        decoder_hidden: Sequence[int] = (4096,),
        decoder_channels: Sequence[int] = (256, 256, 256, 256, 256),
        decoder_strides: Sequence[int] = (2, 2, 2, 2, 1),
        kernel_size: int = 5,
        batchnorm: bool = True,
        motion_hidden: int | None = None,
        momentum_window: int = 4,
        operator: OperatorKind = "H",
        operator_init_std: float = 0.01,
        output_activation: str = "sigmoid",
        output_bias: float = 0.0,
    ) -> None:
        super().__init__()
        if momentum_window < 1:
            raise ValueError(f"momentum_window must be >= 1, got {momentum_window}.")
        for name, value in (("position_dim", position_dim), ("content_dim", content_dim), ("frame_dim", frame_dim)):
            check_int(value, name)
        check_int(motion_hidden, "motion_hidden", optional=True,
                  message="{name} must be an integer >= 1, or null for the default num_actions * position_dim; got {value!r}.")
        self.num_actions, self.dim, self.content_dim = num_actions, position_dim, content_dim
        self.image_size, self.in_channels = image_size, in_channels
        hidden = motion_hidden or num_actions * position_dim
        self.encoder = FrameEncoder(image_size, in_channels, encoder_channels, encoder_strides, encoder_hidden, frame_dim, kernel_size, batchnorm)
        self.content = ContentPosterior(frame_dim, content_dim)
        self.position = MotionPosterior(frame_dim, num_actions, position_dim, hidden, 1, batchnorm)
        self.momentum = MotionPosterior(frame_dim, num_actions, position_dim, hidden, momentum_window, batchnorm)
        self.operators = HamiltonianOperators(num_actions, position_dim, operator, operator_init_std)
        self.decoder = FrameDecoder(content_dim + num_actions * position_dim, image_size, in_channels, decoder_hidden, decoder_channels, decoder_strides, kernel_size, batchnorm, output_activation, output_bias)
        self.memory_format = torch.contiguous_format

    # ------------------------------------------------------------------ checks
    def check_frames(self, frames: Tensor, name: str = "frames") -> None:
        expect = (self.in_channels, self.image_size, self.image_size)
        if frames.dim() != 5 or tuple(frames.shape[-3:]) != expect:
            raise ValueError(
                f"{name} must be clips (b, t, {expect[0]}, {expect[1]}, {expect[2]}) in [0, 1] for this model, "
                f"got shape {tuple(frames.shape)}; resize the data (e.g. the source's image_size) or change model.image_size."
            )

    def as_actions(self, action: Tensor | int | Sequence[int], batch: int, device: torch.device) -> Tensor:
        """An action index per clip, ``(batch,)`` int64 (an int is broadcast); checked in range."""
        a = torch.as_tensor(action, device=device, dtype=torch.long)
        a = a.expand(batch) if a.dim() == 0 else a
        if a.shape != (batch,):
            raise ValueError(f"need one action per clip ({batch}), got shape {tuple(a.shape)}.")
        self.operators._check_actions(a)
        return a

    # ------------------------------------------------------------------ building blocks
    def encode_frames(self, frames: Tensor) -> Tensor:
        """Per-frame features ``h``: ``(b, t, c, H, W) -> (b, t, f)``."""
        self.check_frames(frames)
        b = frames.shape[0]
        x = rearrange(frames, "b t c h w -> (b t) c h w").contiguous(memory_format=self.memory_format)
        return rearrange(self.encoder(x), "(b t) f -> b t f", b=b)

    def posterior(
        self, frames: Tensor, action: Tensor, content_frames: Tensor | None = None, content_index: Tensor | None = None
    ) -> Posterior:
        """``q(z | x_{1:T})``, ``q(q_t | x_t, u)``, ``q(p_t | x_{t-w+1:t}, u)`` for every frame.

        ``content_frames`` (default: ``frames``) is the clip the content posterior reads;
        ``content_index`` ``(b, L)`` instead picks the frames of ``frames`` it reads, per clip.
        """
        h = self.encode_frames(frames)
        hz = h if content_frames is None else self.encode_frames(content_frames)
        if content_index is not None:
            hz = torch.gather(hz, 1, repeat(content_index, "b l -> b l f", f=hz.shape[-1]))
        return Posterior(self.content(hz), self.position(h, action), self.momentum(h, action))

    def rollout(self, start: Tensor, action: Tensor, offsets: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """``s(t_ref + τ) = exp(τ H_k) s(t_ref)``: ``start (b, 2d)``, offsets ``(b, L)`` or ``(L,)`` -> ``(b, L, 2d)``."""
        return self.operators.rollout(start, action, offsets, dtype)

    def decode(self, z: Tensor, positions: Tensor, action: Tensor) -> Tensor:
        """Frames from content ``z (b, |Z|)`` and active-subspace positions ``q (b, L, d)``: ``(b, L, c, H, W)``.

        The decoder input is ``[z, q_t^1, …, q_t^K]`` with every block but the clip's action zero.
        """
        b, length = positions.shape[:2]
        q_all = embed_subspace(positions, action, self.num_actions)  # (b, L, K·d)
        codes = torch.cat([repeat(z, "b z -> b l z", l=length), q_all], -1)
        x = self.decoder(rearrange(codes, "b l f -> (b l) f"))
        return rearrange(x.contiguous(), "(b l) c h w -> b l c h w", b=b)

    def decode_states(self, z: Tensor, states: Tensor, action: Tensor) -> Tensor:
        """Decode phase-space states ``(b, L, 2d)`` (only the positions ``q`` are rendered)."""
        return self.decode(z, states[..., : self.dim], action)

    # ------------------------------------------------------------------ training pass
    def forward(
        self, frames: Tensor, action: Tensor, reference: Tensor, sample: bool = True, content_index: Tensor | None = None
    ) -> dict[str, object]:
        """One pass of eq. 11–14: posterior, reference-frame state, forward/backward unroll, decode.

        Args:
            frames: ``(b, T, c, H, W)`` clips in [0, 1].
            action: ``(b,)`` action of each clip.
            reference: ``(b,)`` reference frame ``t`` of each clip (eq. 11: ``t ~ U{1..T}``).
            sample: reparameterised samples (training) or posterior means.
            content_index: ``(b, L)`` frames the content posterior reads (default: all ``T``).
        Returns a dict with ``recon (b, T, c, H, W)``, ``posterior``, ``states (b, T, 2d)``,
        ``z (b, |Z|)`` and the reference-frame Gaussians ``q_ref``, ``p_ref`` (``(b, d)``).
        """
        post = self.posterior(frames, action, content_index=content_index)
        b, T = frames.shape[:2]
        rows = torch.arange(b, device=frames.device)
        q_ref, p_ref = post.q.index(rows, reference), post.p.index(rows, reference)
        z = post.z.rsample() if sample else post.z.mu
        s_ref = torch.cat([q_ref.rsample(), p_ref.rsample()], -1) if sample else torch.cat([q_ref.mu, p_ref.mu], -1)
        offsets = torch.arange(T, device=frames.device)[None] - reference[:, None]  # (b, T)
        states = self.rollout(s_ref, action, offsets)
        recon = self.decode_states(z, states, action)
        return {"recon": recon, "posterior": post, "states": states, "z": z, "q_ref": q_ref, "p_ref": p_ref}

    def elbo(self, frames: Tensor, action: Tensor, reference: Tensor, alpha: float = 1.0,
             content_index: Tensor | None = None) -> dict[str, Tensor]:
        """The terms of ``-ELBO`` (eq. 17) per clip, ``(b,)`` each: ``nll``, ``kl_z``, ``kl_q``, ``kl_p``,
        their sum ``loss``, and the sampled reconstruction ``recon (b, T, c, H, W)``.

        ``NLL = Σ_{t', pixels} (x - x̂)² / (2 α²)`` (up to a constant) in the paper's pixel units: its
        images (Tanh decoder) live in [-1, 1], ours in [0, 1], so ``x - x̂`` is doubled before dividing
        by ``α`` (the likelihood std, §3.1). KLs are analytic and only the active action's ``d``-dim
        position / momentum blocks at the reference frame enter (eq. 17, 25).
        """
        out = self(frames, action, reference, sample=True, content_index=content_index)
        recon = out["recon"].float()
        residual = 2.0 * (recon - frames.float())  # paper units: images in [-1, 1]
        terms = {
            "nll": residual.square().flatten(1).sum(1) / (2.0 * alpha**2),
            "kl_z": out["posterior"].z.kl_standard_normal(),
            "kl_q": out["q_ref"].kl_standard_normal(),
            "kl_p": out["p_ref"].kl_standard_normal(),
        }
        return {**terms, "loss": terms["nll"] + terms["kl_z"] + terms["kl_q"] + terms["kl_p"], "recon": recon}

    # ------------------------------------------------------------------ inference
    @torch.no_grad()
    def reconstruct(self, clip: Tensor, action: Tensor, reference: int | None = None) -> Tensor:
        """Posterior-mean reconstruction: ``z`` from the clip, state at ``reference`` (default
        ``min(w-1, T-1)``, the first frame with a full momentum window), unrolled over the clip."""
        self.check_frames(clip, "clip")
        b, T = clip.shape[:2]
        action = self.as_actions(action, b, clip.device)
        ref = self._reference(reference, T, b, clip.device)
        return self(clip, action, ref, sample=False)["recon"].clamp_(0, 1)

    @torch.no_grad()
    def generate(
        self, frames0: Tensor, action: Tensor, length: int, content: Tensor | None = None, still_frames: int = 1
    ) -> Tensor:
        """Image -> sequence (§4.1, Fig. 4/7): ``length`` frames of action ``k`` from one frame.

        ``q_1, p_1`` are the posterior means from ``frames0 (b, c, H, W)`` alone (the momentum's
        causal window is zero-padded before it); ``z`` is the content posterior mean of
        ``content (b, T, c, H, W)`` when given, else of ``frames0`` read as a still clip of
        ``still_frames`` frames (the frame repeated; 1 = a one-frame clip). The content LSTM is
        trained on T-frame clips, so a still clip of T frames keeps its input length.
        Returns ``(b, length, c, H, W)``; frame 0 is the model's rendering of ``frames0``.
        """
        if frames0.dim() != 4:
            raise ValueError(f"frames0 must be images (b, c, H, W), got shape {tuple(frames0.shape)}.")
        if length < 1:
            raise ValueError(f"length must be >= 1, got {length}.")
        if still_frames < 1:
            raise ValueError(f"still_frames must be >= 1, got {still_frames}.")
        b = frames0.shape[0]
        action = self.as_actions(action, b, frames0.device)
        still = None  # the frame's features repeated: the frame is encoded once, not still_frames times
        if content is None and still_frames > 1:
            still = torch.zeros(b, still_frames, dtype=torch.long, device=frames0.device)
        post = self.posterior(frames0[:, None], action, content, content_index=still)
        zero = torch.zeros(b, dtype=torch.long, device=frames0.device)
        states = self.rollout(post.state(zero), action, torch.arange(length, device=frames0.device))
        return self.decode_states(post.z.mu, states, action).clamp_(0, 1)

    @torch.no_grad()
    def swap_motion(
        self, clip_a: Tensor, clip_b: Tensor, action_a: Tensor, action_b: Tensor, reference: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Motion swap (§4.1, Fig. 3): ``(z_a, q^b_{1:T})`` and ``(z_b, q^a_{1:T})``.

        Each clip's motion is its posterior-mean state at ``reference`` unrolled over its length.
        Returns ``(ab, ba)``: ``ab`` has the content of ``a`` and the motion of ``b``.
        """
        self.check_frames(clip_a, "clip_a")
        self.check_frames(clip_b, "clip_b")
        if clip_a.shape[0] != clip_b.shape[0]:
            raise ValueError(f"clip_a and clip_b need the same batch size, got {clip_a.shape[0]} and {clip_b.shape[0]}.")
        action_a = self.as_actions(action_a, clip_a.shape[0], clip_a.device)
        action_b = self.as_actions(action_b, clip_b.shape[0], clip_b.device)
        pa, pb = self.posterior(clip_a, action_a), self.posterior(clip_b, action_b)
        sa = self._unroll(pa, action_a, clip_a.shape[1], reference)
        sb = self._unroll(pb, action_b, clip_b.shape[1], reference)
        return self.decode_states(pa.z.mu, sb, action_b).clamp_(0, 1), self.decode_states(pb.z.mu, sa, action_a).clamp_(0, 1)

    @torch.no_grad()
    def sample(
        self,
        num: int,
        action: Tensor,
        length: int,
        content_from: Tensor | None = None,
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Unconditional generation (eq. 2–6): ``s_1 ~ N(0, I_2d)`` unrolled ``length`` steps by ``H_k``;
        ``z ~ N(0, I)``, or the content posterior mean of the clips ``content_from (num, T, c, H, W)``
        (the Table 2 protocol). Returns ``(num, length, c, H, W)``."""
        device = self.operators.J.device
        dtype = self.operators.J.dtype
        action = self.as_actions(action, num, device)
        if content_from is not None:
            if content_from.shape[0] != num:
                raise ValueError(f"content_from has {content_from.shape[0]} clips but num={num}.")
            z = self.content(self.encode_frames(content_from)).mu
        else:
            z = torch.randn(num, self.content_dim, generator=generator, device=device, dtype=dtype)
        return self.prior_motion(z, action, length, generator)

    @torch.no_grad()
    def prior_motion(
        self, z: Tensor, action: Tensor, length: int, generator: torch.Generator | None = None, start: Tensor | None = None
    ) -> Tensor:
        """Content ``z (b, |Z|)`` with prior motion: ``s_1 ~ N(0, I_2d)`` (or the given ``start (b, 2d)``)
        unrolled ``length`` steps by ``H_k`` of ``action (b,)`` (eq. 2–6). Returns ``(b, length, c, H, W)`` in [0, 1]."""
        s1 = torch.randn(z.shape[0], 2 * self.dim, generator=generator, device=z.device, dtype=z.dtype) if start is None else start
        states = self.rollout(s1, action, torch.arange(length, device=z.device))
        return self.decode_states(z, states, action).clamp_(0, 1)

    def energy(self, states: Tensor, action: Tensor) -> Tensor:
        """``½ sᵀ M_k s`` (eq. 7) of states ``(b, ..., 2d)``: ``(b, ...)``; conserved along rollouts."""
        return self.operators.energy(states, self.as_actions(action, states.shape[0], states.device))

    @torch.no_grad()
    def state_trajectory(self, frames0: Tensor, action: Tensor, length: int, dtype: torch.dtype = torch.float32) -> Tensor:
        """Posterior-mean state of ``frames0 (b, c, H, W)`` unrolled ``length`` steps in ``dtype``: ``(b, length, 2d)``."""
        action = self.as_actions(action, frames0.shape[0], frames0.device)
        post = self.posterior(frames0[:, None], action)
        zero = torch.zeros(frames0.shape[0], dtype=torch.long, device=frames0.device)
        return self.rollout(post.state(zero), action, torch.arange(length, device=frames0.device), dtype)

    # ------------------------------------------------------------------ helpers
    def _reference(self, reference: int | None, T: int, b: int, device: torch.device) -> Tensor:
        w = self.momentum.window
        ref = min(w - 1, T - 1) if reference is None else reference
        if not -T <= ref < T:
            raise ValueError(f"reference frame {ref} is outside a clip of {T} frames.")
        return torch.full((b,), ref % T, dtype=torch.long, device=device)

    def _unroll(self, post: Posterior, action: Tensor, T: int, reference: int | None) -> Tensor:
        b = action.shape[0]
        ref = self._reference(reference, T, b, action.device)
        offsets = torch.arange(T, device=action.device)[None] - ref[:, None]
        return self.rollout(post.state(ref), action, offsets)
