"""Frozen encoder + PCA + ridge regression, the HEST-Benchmark linear-probe protocol.

Features of the frozen, globally pooled encoder are reduced by PCA to 256 components (fit on the
training units) and mapped to the genes by ridge regression with HEST's fixed penalty
``alpha = 100 / (n_components * n_genes)`` (no cross-validated choice). One deviation: the ridge
fits an intercept (HEST uses ``fit_intercept=False``), so the MSE is meaningful; correlations are
unaffected. Everything fitted lives in buffers, so a fitted model saves to safetensors like any
other.
"""

from __future__ import annotations

import logging

import numpy as np
import torch
from torch import nn

from hexpress.errors import ConfigError
from hexpress.models._registry import register_model
from hexpress.models.encoders import create_encoder

__all__ = ["RidgeBaseline", "hest_alpha"]

log = logging.getLogger(__name__)


def hest_alpha(n_features: int, n_targets: int) -> float:
    """HEST-Benchmark's ridge penalty: ``100 / (n_features * n_targets)``."""
    return 100.0 / (n_features * n_targets)


class RidgeBaseline(nn.Module):
    """``(B, 3, H, W)`` float RGB in ``[0, 1]`` -> ``(B, n_genes)`` through a linear probe.

    Call :meth:`fit` with pooled features (:meth:`features`) and targets of the training units.
    ``n_components`` fixes the buffer shapes; with fewer training units than components the
    extra components are zero and contribute nothing.
    """

    kind = "patch"
    closed_form = True

    def __init__(
        self,
        n_genes: int = 250,
        *,
        encoder: str = "tf_efficientnet_lite0",
        pretrained: bool = True,
        encoder_weights: str | None = None,
        n_components: int = 256,
        patch_um: float = 112.0,
        input_px: int = 224,
    ) -> None:
        super().__init__()
        self.encoder = create_encoder(
            encoder, pretrained=pretrained, weights=encoder_weights, features_only=False
        )
        self.encoder.requires_grad_(False)
        self.n_genes = int(n_genes)
        self.n_components = int(n_components)
        self.patch_um = float(patch_um)
        self.input_px = int(input_px)
        f = self.encoder.num_features
        self.register_buffer("pca_mean", torch.zeros(f))
        self.register_buffer("pca_components", torch.zeros(self.n_components, f))
        self.register_buffer("coef", torch.zeros(self.n_genes, self.n_components))
        self.register_buffer("intercept", torch.zeros(self.n_genes))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    def train(self, mode: bool = True) -> RidgeBaseline:
        super().train(mode)
        self.encoder.eval()  # frozen: batch norm statistics never move
        return self

    @torch.no_grad()
    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled frozen-encoder features ``(B, num_features)``."""
        self.encoder.eval()
        return self.encoder(x)

    @torch.no_grad()
    def fit(
        self,
        features,
        targets,
        n_components: int | None = None,
        alpha: float | None = None,
    ) -> RidgeBaseline:
        """Fit PCA and ridge in closed form (scikit-learn), then copy them into the buffers.

        Args:
            features: ``(n, num_features)`` from :meth:`features`.
            targets: ``(n, n_genes)`` normalised expression.
            n_components: at most the constructor's ``n_components`` (default that).
            alpha: ridge penalty; default :func:`hest_alpha`.
        """
        from sklearn.decomposition import PCA
        from sklearn.linear_model import Ridge

        X = np.asarray(torch.as_tensor(features).cpu(), dtype=np.float64)
        Y = np.asarray(torch.as_tensor(targets).cpu(), dtype=np.float64)
        if X.ndim != 2 or X.shape[1] != self.pca_mean.numel():
            raise ConfigError(
                f"features must be (n, {self.pca_mean.numel()}), got {X.shape}; use .features()."
            )
        if Y.shape != (X.shape[0], self.n_genes):
            raise ConfigError(f"targets must be ({X.shape[0]}, {self.n_genes}), got {Y.shape}.")
        k_max = self.n_components if n_components is None else int(n_components)
        if k_max > self.n_components:
            raise ConfigError(f"n_components {k_max} exceeds the model's {self.n_components}.")
        k = min(k_max, X.shape[0], X.shape[1])
        pca = PCA(n_components=k, random_state=0).fit(X)
        Z = pca.transform(X)
        a = hest_alpha(k, self.n_genes) if alpha is None else float(alpha)
        reg = Ridge(alpha=a, fit_intercept=True).fit(Z, Y)
        self.pca_mean.copy_(torch.from_numpy(pca.mean_))
        self.pca_components.zero_()
        self.pca_components[:k] = torch.from_numpy(pca.components_)
        self.coef.zero_()
        self.coef[:, :k] = torch.from_numpy(np.atleast_2d(reg.coef_))
        self.intercept.copy_(torch.from_numpy(np.atleast_1d(reg.intercept_)))
        self.fitted.fill_(True)
        log.info("ridge baseline: PCA %d components, alpha %.3g, %d units", k, a, len(X))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.features(x)
        z = (f - self.pca_mean) @ self.pca_components.t()
        return z @ self.coef.t() + self.intercept


@register_model(kind="patch", encoder="tf_efficientnet_lite0")
def ridge_lite0(n_genes: int = 250, **kwargs) -> RidgeBaseline:
    """Frozen EfficientNet-Lite0 + PCA(256) + ridge (HEST-Benchmark protocol)."""
    return RidgeBaseline(n_genes, encoder="tf_efficientnet_lite0", **kwargs)


@register_model(kind="patch", encoder="tf_efficientnet_lite1")
def ridge_lite1(n_genes: int = 250, **kwargs) -> RidgeBaseline:
    """Frozen EfficientNet-Lite1 + PCA(256) + ridge (HEST-Benchmark protocol)."""
    return RidgeBaseline(n_genes, encoder="tf_efficientnet_lite1", **kwargs)


@register_model(kind="patch", encoder="tf_efficientnet_lite2")
def ridge_lite2(n_genes: int = 250, **kwargs) -> RidgeBaseline:
    """Frozen EfficientNet-Lite2 + PCA(256) + ridge (HEST-Benchmark protocol)."""
    return RidgeBaseline(n_genes, encoder="tf_efficientnet_lite2", **kwargs)


@register_model(kind="patch", encoder="resnet18")
def ridge_resnet18(n_genes: int = 250, **kwargs) -> RidgeBaseline:
    """Frozen ResNet-18 (local weights) + PCA(256) + ridge (HEST-Benchmark protocol)."""
    return RidgeBaseline(n_genes, encoder="resnet18", **kwargs)


@register_model(kind="patch", encoder="test_efficientnet")
def test_ridge(n_genes: int = 8, *, pretrained: bool = False, **kwargs) -> RidgeBaseline:
    """Tiny untrained frozen encoder + PCA + ridge for tests."""
    kwargs.setdefault("n_components", 16)
    kwargs.setdefault("input_px", 32)
    return RidgeBaseline(n_genes, encoder="test_efficientnet", pretrained=pretrained, **kwargs)
