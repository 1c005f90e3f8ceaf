"""The training loss (PixNet paper, Eq. 6): MSE + lambda * (1 - mean per-gene Pearson).

The Pearson term is computed per gene over the units of a batch and averaged over genes. A gene
whose predictions or targets are constant over those units (standard deviation below
:data:`PCC_EPS`) has no defined correlation: it is left out of the mean, and when no gene is
left (e.g. a batch of one unit) the Pearson term is 0. The loss therefore stays finite and so do
its gradients (the masked genes get exactly zero gradient from that term).
"""

from __future__ import annotations

import torch

from hexpress.errors import ConfigError

__all__ = ["pixnet_loss", "per_gene_pcc", "PCC_EPS"]

PCC_EPS = 1e-6
"""Standard deviation (over units) below which a gene's correlation is treated as undefined."""


def per_gene_pcc(pred: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson correlation of each gene over units.

    Args:
        pred: ``(n, G)`` predictions.
        target: ``(n, G)`` targets.

    Returns:
        ``(pcc, valid)``: ``(G,)`` correlations (0 where undefined) and ``(G,)`` bool, False for
        genes constant in ``pred`` or ``target`` (std <= :data:`PCC_EPS`).
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ConfigError(
            f"pred and target must both be (n_units, n_genes), got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    pc = pred - pred.mean(0, keepdim=True)
    tc = target - target.mean(0, keepdim=True)
    vp = pc.pow(2).mean(0) if len(pred) else pred.new_zeros(pred.shape[1])
    vt = tc.pow(2).mean(0) if len(pred) else pred.new_zeros(pred.shape[1])
    valid = (vp > PCC_EPS**2) & (vt > PCC_EPS**2)
    # sqrt only of safe values, so that masked genes give zero gradients, never NaN (the
    # derivative of sqrt at 0 is infinite).
    denom = torch.where(valid, vp * vt, torch.ones_like(vp)).sqrt()
    cov = (pc * tc).mean(0)
    pcc = torch.where(valid, cov / denom, torch.zeros_like(cov))
    return pcc, valid


def pixnet_loss(
    pred: torch.Tensor,
    target: torch.Tensor,
    mask: torch.Tensor | None = None,
    lam: float = 0.5,
) -> torch.Tensor:
    """MSE + ``lam`` * (1 - mean per-gene PCC) over the units with measured expression.

    Args:
        pred: ``(n, G)`` predicted normalised expression.
        target: ``(n, G)`` measured normalised expression.
        mask: ``(n,)`` bool, True for units with measured expression; all units when None.
        lam: weight of the correlation term (paper: 0.5; 0 gives plain MSE, as ST-Net).

    Returns:
        Scalar loss (0 when no unit is measured, still attached to ``pred``'s graph).
    """
    if pred.shape != target.shape or pred.ndim != 2:
        raise ConfigError(
            f"pred and target must both be (n_units, n_genes), got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}."
        )
    if mask is not None:
        mask = torch.as_tensor(mask, device=pred.device).bool().reshape(-1)
        if mask.shape[0] != pred.shape[0]:
            raise ConfigError(f"mask has {mask.shape[0]} entries for {pred.shape[0]} units.")
        pred, target = pred[mask], target[mask]
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    mse = (pred - target).pow(2).mean()
    if lam == 0:
        return mse
    pcc, valid = per_gene_pcc(pred, target)
    n_valid = valid.sum()
    mean_pcc = torch.where(n_valid > 0, pcc.sum() / n_valid.clamp_min(1), pcc.new_ones(()))
    return mse + lam * (1.0 - mean_pcc)
