"""The PixNet loss equals a numpy/scipy reference and stays finite on constant genes."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import pearsonr

from hexpress.errors import ConfigError
from hexpress.models.loss import per_gene_pcc, pixnet_loss


def _reference(pred, target, lam):
    mse = np.mean((pred - target) ** 2)
    pccs = [pearsonr(pred[:, g], target[:, g])[0] for g in range(pred.shape[1])]
    return mse + lam * (1 - np.mean(pccs))


@pytest.mark.parametrize("lam", [0.0, 0.5, 2.0])
def test_loss_equals_reference(rng, lam):
    pred = rng.normal(size=(40, 12))
    target = 0.5 * pred + rng.normal(size=(40, 12))
    got = pixnet_loss(torch.from_numpy(pred), torch.from_numpy(target), lam=lam)
    assert got.item() == pytest.approx(_reference(pred, target, lam), rel=1e-10)


def test_mask_keeps_only_measured_units(rng):
    pred = rng.normal(size=(30, 5))
    target = rng.normal(size=(30, 5))
    mask = rng.uniform(size=30) < 0.6
    got = pixnet_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    assert got.item() == pytest.approx(_reference(pred[mask], target[mask], 0.5), rel=1e-10)
    # Unmeasured units may hold anything, even NaN targets: they do not count.
    target[~mask] = np.nan
    got2 = pixnet_loss(torch.from_numpy(pred), torch.from_numpy(target), torch.from_numpy(mask))
    assert got2.item() == pytest.approx(got.item(), rel=1e-12)


def test_constant_gene_gives_finite_loss_and_gradient(rng):
    pred = torch.from_numpy(rng.normal(size=(20, 4))).float().requires_grad_(True)
    target = torch.from_numpy(rng.normal(size=(20, 4))).float()
    target[:, 1] = 3.0  # constant in the truth
    loss = pixnet_loss(pred, target)
    assert torch.isfinite(loss)
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    # The constant gene is left out of the mean PCC, not counted as 0.
    p, t = pred.detach().numpy().astype(np.float64), target.numpy().astype(np.float64)
    keep = [0, 2, 3]
    pcc = np.mean([pearsonr(p[:, g], t[:, g])[0] for g in keep])
    want = np.mean((p - t) ** 2) + 0.5 * (1 - pcc)
    assert loss.item() == pytest.approx(want, rel=1e-5)
    _, valid = per_gene_pcc(pred.detach(), target)
    assert valid.tolist() == [True, False, True, True]


def test_degenerate_batches_are_finite():
    pred = torch.zeros(1, 3, requires_grad=True)  # one unit: no correlation defined
    loss = pixnet_loss(pred, torch.ones(1, 3))
    assert loss.item() == pytest.approx(1.0)  # MSE only
    loss.backward()
    assert torch.isfinite(pred.grad).all()
    empty = pixnet_loss(pred, torch.ones(1, 3), mask=torch.tensor([False]))
    assert empty.item() == 0.0
    with pytest.raises(ConfigError, match="n_units, n_genes"):
        pixnet_loss(torch.zeros(3, 2), torch.zeros(3, 3))
