"""Disentanglement diagnostics of the Hamiltonian motion model (paper 004 §5, Table 2): where
content and motion stay tied together.

* ``linear_probe_accuracy``: leakage probes. A multinomial logistic regression fitted on
  training clips' latents and scored on test clips' latents: which attributes (and the view)
  can be read from the motion state ``s = (q, p)`` and from the content ``z``. Ideally the
  appearance attributes read at chance from ``s`` and near 1.0 from ``z``.
* ``posterior_spread``: the aggregate posterior of ``s`` at the first frame (where the Table 2
  protocol draws ``s_1 ~ N(0, I)``) against that prior, per action: the mean's norm, the
  covariance spectrum of the posterior means, the average ``KL(q(s|x) || N(0, I))`` per
  dimension and the KL of a Gaussian fitted to the aggregate. Collapsed (eigenvalue ≈ 0) or
  overfull (≫ 1) directions put prior samples where the decoder never trained.
* ``mode_power``: the start state's power in each rotation mode of ``H_k`` (its eigenvector
  pairs, by rotation per step), posterior against N(0, I). A prior sample that excites modes
  the posterior leaves empty, or under-excites the animation's cycle, renders the wrong motion.
* ``aggregate_gaussian`` / ``cholesky_factor`` / ``sample_gaussian``: the Gaussian fitted to the training posterior of
  ``s`` per action, for Table 2's labelled extra row (not the paper's N(0, I) prior).
* ``action_view_confusion``: prior-motion generations judged as action x view, per generated
  action: is the action wrong, or the view?
"""

from __future__ import annotations

import torch
from torch import Tensor


def linear_probe_accuracy(
    train_x: Tensor, train_y: Tensor, test_x: Tensor, test_y: Tensor, num_classes: int,
    weight_decay: float = 1e-3, iterations: int = 200,
) -> float:
    """Test accuracy of a softmax regression fitted (L-BFGS, L2 ``weight_decay``) on standardised
    ``train_x (n, f)`` -> ``train_y (n,)``; deterministic (zero initialisation)."""
    if train_x.shape[0] != train_y.shape[0] or test_x.shape[0] != test_y.shape[0]:
        raise ValueError("features and labels need the same number of rows.")
    # the test stage runs under inference mode: fit on ordinary copies, with autograd on
    with torch.inference_mode(False), torch.enable_grad():
        x, xt, y = train_x.clone().double(), test_x.clone().double(), train_y.clone().long()
        mean, std = x.mean(0), x.std(0).clamp_min(1e-6)
        x, xt = (x - mean) / std, (xt - mean) / std
        w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
        b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
        opt = torch.optim.LBFGS([w, b], max_iter=iterations, line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            opt.zero_grad()
            loss = torch.nn.functional.cross_entropy(x @ w + b, y) + weight_decay * w.square().sum()
            loss.backward()
            return loss

        opt.step(closure)
        with torch.no_grad():
            return float(((xt @ w + b).argmax(1) == test_y.to(xt.device).long()).double().mean())


def _kl_gaussian_to_standard(mean: Tensor, cov: Tensor) -> float:
    """``KL(N(mean, cov) || N(0, I))`` in nats (float64)."""
    n = mean.shape[0]
    eig = torch.linalg.eigvalsh(cov).clamp_min(1e-12)
    return float(0.5 * (eig.sum() + mean.square().sum() - n - eig.log().sum()))


def aggregate_gaussian(mu: Tensor, log_sigma: Tensor) -> tuple[Tensor, Tensor]:
    """The moment-matched Gaussian of a posterior mixture ``N(mu_i, diag(σ_i²))`` (``(n, D)`` each):
    mean and covariance (covariance of the means plus the mean posterior variance), float64."""
    m, ls = mu.double(), log_sigma.double()
    return m.mean(0), torch.cov(m.T) + torch.diag((2 * ls).exp().mean(0))


def cholesky_factor(cov: Tensor) -> Tensor:
    """Lower Cholesky factor of ``cov`` (a jitter of 1e-6 keeps a flat covariance factorable)."""
    return torch.linalg.cholesky(cov + 1e-6 * torch.eye(cov.shape[0], dtype=cov.dtype, device=cov.device))


def sample_gaussian(mean: Tensor, chol: Tensor, num: int, generator: torch.Generator | None = None) -> Tensor:
    """``num`` draws from ``N(mean, chol cholᵀ)``: ``(num, D)`` (``cholesky_factor`` gives ``chol``)."""
    eps = torch.randn(num, chol.shape[0], generator=generator, dtype=chol.dtype, device=chol.device)
    return mean + eps @ chol.T


def posterior_spread(mu: Tensor, log_sigma: Tensor, action: Tensor, num_actions: int) -> dict[str, dict]:
    """Aggregate posterior of the active-subspace state ``s`` (``mu, log_sigma (n, 2d)``) per action.

    Returns ``{action_k: {clips, mean_norm, mean_eigenvalues (of the covariance of the posterior
    means, ascending), aggregate_eigenvalues (that plus the mean posterior variance: the moment-
    matched aggregate), kl_per_dim (average KL(q(s|x) || N(0, I)) per dimension),
    aggregate_kl_per_dim (KL of the moment-matched Gaussian to N(0, I), per dimension)}}``.
    """
    out: dict[str, dict] = {}
    for k in range(num_actions):
        sel = action == k
        if int(sel.sum()) < 2:
            continue
        m, ls = mu[sel].double(), log_sigma[sel].double()
        dim = m.shape[1]
        cov_means = torch.cov(m.T)
        centre, aggregate = aggregate_gaussian(m, ls)
        kl = (0.5 * (m.square() + (2 * ls).exp()) - ls - 0.5).sum(1).mean()
        out[f"action_{k}"] = {
            "clips": int(sel.sum()),
            "mean_norm": float(centre.norm()),
            "mean_eigenvalues": [float(v) for v in torch.linalg.eigvalsh(cov_means)],
            "aggregate_eigenvalues": [float(v) for v in torch.linalg.eigvalsh(aggregate)],
            "kl_per_dim": float(kl) / dim,
            "aggregate_kl_per_dim": _kl_gaussian_to_standard(centre, aggregate) / dim,
        }
    return out


def mode_power(states: Tensor, action: Tensor, generators: Tensor, decimals: int = 6) -> dict[str, list[dict]]:
    """Mean power of start states ``(n, 2d)`` in the rotation modes of their action's ``H_k``
    (``generators (K, 2d, 2d)``), against ``s ~ N(0, I)``, per action.

    With ``H_k = V Λ V⁻¹`` the rollout is ``exp(τH_k) s = V exp(τΛ) V⁻¹ s``: the coefficient
    ``(V⁻¹ s)_j`` rotates by ``Im λ_j`` per step. The power of a mode is ``E|(V⁻¹ s)_j|²`` summed
    over eigenvalues with the same ``|Im λ|`` (rounded to ``decimals``: a conjugate pair, or a
    degenerate set); for N(0, I) it is exactly ``Σ_j ||row_j(V⁻¹)||²``. Returns ``{action_k:
    [{deg_per_step, decay (max |Re λ|), posterior_power, prior_power}, ...]}`` by rotation speed.
    """
    out: dict[str, list[dict]] = {}
    for k in range(generators.shape[0]):
        sel = action == k
        if not bool(sel.any()):
            continue
        eigenvalues, vectors = torch.linalg.eig(generators[k].detach().double().cpu())
        inverse = torch.linalg.inv(vectors)
        coeff = states[sel].detach().double().cpu().to(torch.complex128) @ inverse.T  # (n, 2d)
        posterior = coeff.abs().square().mean(0)
        prior = inverse.abs().square().sum(1)
        speed = eigenvalues.imag.abs().round(decimals=decimals)
        modes = []
        for w in torch.unique(speed).tolist():
            group = speed == w
            modes.append({
                "deg_per_step": float(torch.rad2deg(torch.tensor(w))),
                "decay": float(eigenvalues.real[group].abs().max()),
                "posterior_power": float(posterior[group].sum()),
                "prior_power": float(prior[group].sum()),
            })
        out[f"action_{k}"] = modes
    return out


def action_view_confusion(confusion: Tensor, num_actions: int, num_views: int) -> dict[str, dict]:
    """Per generated action ``k``: the fractions of its generations judged as each (action, view)
    (``matrix[true view][predicted action * num_views + predicted view]`` flattened to a
    ``num_views x (num_actions * num_views)`` table), and the action-only / view-only accuracy.

    ``confusion (C, C)`` counts ``[target, predicted]`` with ``label = num_views * action + view``.
    """
    c = confusion.double()
    labels = torch.arange(c.shape[0])
    act, view = labels // num_views, labels % num_views
    out: dict[str, dict] = {}
    for k in range(num_actions):
        rows = c[act == k]  # (views, C): targets (k, v)
        total = rows.sum()
        if total == 0:
            continue
        judged = rows.sum(0)  # (C,) over predicted labels
        out[f"action_{k}"] = {
            "generations": int(total),
            "accuracy": float(rows[torch.arange(num_views), labels[act == k]].sum() / total),
            "action_accuracy": float(judged[act == k].sum() / total),
            "view_accuracy": float(sum(rows[v, view == v].sum() for v in range(num_views)) / total),
            "judged_action": [float(judged[act == a].sum() / total) for a in range(num_actions)],
            "judged_view": [float(judged[view == v].sum() / total) for v in range(num_views)],
            "matrix": (rows / rows.sum(1, keepdim=True).clamp_min(1)).tolist(),
        }
    return out
