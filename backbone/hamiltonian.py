"""Linear Hamiltonian operators on per-action phase-space subspaces (paper 004, §3.1.1, App. A.2).

A motion subspace ``S^k`` holds a state ``s = (q, p)`` (position, momentum; ``d`` dims each).
Its dynamics are the linear Hamiltonian flow of the quadratic energy ``E = ½ sᵀ M_k s`` (eq. 7)

    ds/dt = J M_k s = H_k s,   s(t + τ) = exp(τ H_k) s(t)   (eq. 8; backward: τ < 0, eq. 13)

with ``J = [[0, I_d], [-I_d, 0]]``. ``H_k = J M_k`` with ``M_k`` symmetric is a Hamiltonian
matrix (``J H`` symmetric, the Lie algebra sp(2d), 2d² + d free parameters), so ``exp(τ H_k)``
is symplectic (``Φᵀ J Φ = J``) and conserves ``E`` (``Φᵀ M Φ = M``). (The paper's
Definition 1 states the group condition ``Hᵀ J H = J``; that is the property of ``exp(τH)``,
not of ``H`` itself.)

Two operator families (§4.1):

* ``"H"``: ``M = A + Aᵀ`` from a free ``A`` (the symplectic group Sp(2d));
* ``"skew-H"``: ``H`` both Hamiltonian *and* skew-symmetric (the symplectic orthogonal group
  SpO(2d) = Sp(2d) ∩ O(2d)): ``M = [[S, T], [-T, S]]`` with ``S`` symmetric and ``T``
  skew-symmetric (``M`` symmetric and commuting with ``J``), so ``H = J M = [[-T, S], [-S, -T]]``
  is skew-symmetric and ``exp(τH)`` is orthogonal *and* symplectic. This is the whole Lie
  algebra sp(2d) ∩ so(2d) ≅ u(d) (d² free parameters; the paper counts (d² - d)/2, which is
  the size of so(d) alone; we keep the full algebra).

The full motion operator is block diagonal ``diag(H_1, …, H_K)``; a clip of action ``k`` only
moves in ``S^k`` and every other subspace stays exactly zero (eq. 5, 9, 14), so we only ever
exponentiate the ``K`` small ``2d x 2d`` blocks. The trace of a Hamiltonian matrix is zero, so
the flow preserves volume and the ELBO has no Jacobian term (App. A.1, eq. 20–25).
"""

from __future__ import annotations

from typing import Literal

import torch
from einops import rearrange
from torch import Tensor, nn

OperatorKind = Literal["H", "skew-H"]
OPERATOR_KINDS: tuple[str, ...] = ("H", "skew-H")


def symplectic_form(d: int, dtype: torch.dtype | None = None, device: torch.device | str | None = None) -> Tensor:
    """``J = [[0, I_d], [-I_d, 0]]`` of shape ``(2d, 2d)`` for states ordered ``s = (q, p)``."""
    eye = torch.eye(d, dtype=dtype, device=device)
    zero = torch.zeros(d, d, dtype=dtype, device=device)
    return torch.cat([torch.cat([zero, eye], 1), torch.cat([-eye, zero], 1)], 0)


def quadratic_energy(states: Tensor, M: Tensor) -> Tensor:
    """``E = ½ sᵀ M s`` (eq. 7) for ``states (..., 2d)`` and ``M`` broadcastable to ``(..., 2d, 2d)``."""
    return 0.5 * torch.einsum("...i,...ij,...j->...", states, M, states)


class HamiltonianOperators(nn.Module):
    """``K`` learnable Hamiltonian operators ``H_k = J M_k`` acting on ``2d``-dim subspaces.

    Args:
        num_actions: ``K``, one operator (and one motion subspace) per action.
        dim: ``d``, the position (= momentum) dimension of each subspace (sprites: 6, MUG: 12).
        kind: ``"H"`` (symplectic) or ``"skew-H"`` (symplectic orthogonal), see module docstring.
        init_std: std of the Gaussian initialisation of the free parameters. Small values make
            ``exp(τH)`` close to (but not exactly) the identity at the start of training.
    """

    def __init__(self, num_actions: int, dim: int, kind: OperatorKind = "H", init_std: float = 0.01) -> None:
        super().__init__()
        if kind not in OPERATOR_KINDS:
            raise ValueError(f"Unknown Hamiltonian operator kind {kind!r}; choose one of {OPERATOR_KINDS}.")
        if num_actions < 1 or dim < 1:
            raise ValueError(f"num_actions and dim must be >= 1, got {num_actions} and {dim}.")
        if init_std < 0:
            raise ValueError(f"init_std must be >= 0, got {init_std}.")
        self.num_actions, self.dim, self.kind = num_actions, dim, kind
        if kind == "H":
            self.A = nn.Parameter(torch.randn(num_actions, 2 * dim, 2 * dim) * init_std)
        else:
            self.S = nn.Parameter(torch.randn(num_actions, dim, dim) * init_std)
            self.T = nn.Parameter(torch.randn(num_actions, dim, dim) * init_std)
        self.register_buffer("J", symplectic_form(dim), persistent=False)

    # ------------------------------------------------------------------ the matrices
    def energy_matrix(self) -> Tensor:
        """The symmetric ``M_k`` of every action, ``(K, 2d, 2d)``."""
        if self.kind == "H":
            return self.A + self.A.transpose(-1, -2)
        S = self.S + self.S.transpose(-1, -2)
        T = self.T - self.T.transpose(-1, -2)
        return torch.cat([torch.cat([S, T], -1), torch.cat([-T, S], -1)], -2)

    def generator(self) -> Tensor:
        """``H_k = J M_k`` of every action, ``(K, 2d, 2d)``."""
        return self.J @ self.energy_matrix()

    def propagators(self, times: Tensor, dtype: torch.dtype | None = None) -> Tensor:
        """``exp(τ H_k)`` for every ``τ`` in ``times (n,)`` and every action: ``(n, K, 2d, 2d)``.

        One batched ``torch.linalg.matrix_exp`` over ``n·K`` small matrices (differentiable),
        in ``dtype`` (default: the parameters'; float64 for conservation checks).
        """
        H = self.generator()
        H = H if dtype is None else H.to(dtype)
        tH = times.to(H.dtype)[:, None, None, None] * H[None]
        return torch.linalg.matrix_exp(tH)

    # ------------------------------------------------------------------ on states
    def rollout(self, start: Tensor, action: Tensor, offsets: Tensor, dtype: torch.dtype = torch.float32) -> Tensor:
        """States ``s(t_ref + τ) = exp(τ H_k) s(t_ref)`` for each clip's time offsets (eq. 8, 13).

        Args:
            start: ``(b, 2d)`` state ``s = (q, p)`` at each clip's reference time.
            action: ``(b,)`` action index ``k`` of each clip.
            offsets: ``(b, L)`` or ``(L,)`` time offsets ``τ`` (negative = backward in time).
            dtype: precision of the rollout (fp32, or float64 for conservation checks).
        Returns:
            ``(b, L, 2d)`` states in ``dtype``. The exponentials are computed once per distinct offset.
        """
        b = start.shape[0]
        if offsets.dim() == 1:
            offsets = offsets[None].expand(b, -1)
        self._check_actions(action)
        # Always fp32 (also under bf16/fp16 autocast): exp(τH) grows like exp(|τ|·|H|) and the
        # states feed every later frame, so low-precision rounding compounds along the rollout.
        with torch.autocast(device_type=start.device.type, enabled=False):
            times, inverse = torch.unique(offsets, return_inverse=True)  # inverse: (b, L)
            phi = self.propagators(times, dtype)  # (n, K, 2d, 2d)
            phi = phi[inverse, action[:, None].expand_as(inverse)]  # (b, L, 2d, 2d)
            return torch.einsum("blij,bj->bli", phi, start.to(dtype))

    def energy(self, states: Tensor, action: Tensor) -> Tensor:
        """``½ sᵀ M_k s`` for ``states (b, ..., 2d)`` of clips of action ``(b,)``: ``(b, ...)``."""
        self._check_actions(action)
        M = self.energy_matrix()[action].to(states.dtype)  # (b, 2d, 2d)
        extra = states.dim() - 2
        M = M.reshape(M.shape[0], *([1] * extra), *M.shape[-2:])
        return quadratic_energy(states, M)

    def _check_actions(self, action: Tensor) -> None:
        if action.numel() and (int(action.min()) < 0 or int(action.max()) >= self.num_actions):
            raise ValueError(
                f"action indices must lie in [0, {self.num_actions - 1}] (the model has {self.num_actions} "
                f"actions), got values in [{int(action.min())}, {int(action.max())}]."
            )


def embed_subspace(x: Tensor, action: Tensor, num_actions: int) -> Tensor:
    """Place each clip's ``d``-dim block into the ``K·d`` vector of all subspaces, zeros elsewhere.

    ``x (b, ..., d)`` and ``action (b,)`` -> ``(b, ..., K·d)`` with block ``action[i]`` holding
    ``x[i]`` (eq. 5/14: the subspaces of other actions are exactly zero).
    """
    onehot = torch.nn.functional.one_hot(action, num_actions).to(x.dtype)  # (b, K)
    onehot = onehot.reshape(onehot.shape[0], *([1] * (x.dim() - 2)), num_actions, 1)
    return rearrange(onehot * x.unsqueeze(-2), "... k d -> ... (k d)")


def select_subspace(x: Tensor, action: Tensor, num_actions: int) -> Tensor:
    """The block of action ``action[i]`` from ``x (b, ..., K·d)``: ``(b, ..., d)``."""
    blocks = rearrange(x, "... (k d) -> ... k d", k=num_actions)
    idx = action.reshape(action.shape[0], *([1] * (blocks.dim() - 3)), 1, 1)
    idx = idx.expand(*blocks.shape[:-2], 1, blocks.shape[-1])
    return blocks.gather(-2, idx).squeeze(-2)
