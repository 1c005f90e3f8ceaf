"""Single-patch baselines: a spot-centred patch -> the spot's expression.

A :class:`PatchModel` is a timm encoder with global pooling and a linear head, fully fine-tuned
with the same loss as PixNet (ST-Net, DenseNet-121, is recommended with plain MSE: ``lam=0``).
The patch size in µm (``patch_um``) and the size it is resized to (``input_px``) are model
arguments, so they travel in the checkpoint. :class:`MeanBaseline` predicts the training mean.
"""

from __future__ import annotations

import torch
from torch import nn

from hexpress.errors import ConfigError
from hexpress.models._registry import register_model
from hexpress.models.encoders import create_encoder

__all__ = ["PatchModel", "MeanBaseline"]


class PatchModel(nn.Module):
    """``(B, 3, H, W)`` float RGB in ``[0, 1]`` -> ``(B, n_genes)``.

    Attributes:
        kind: ``"patch"``.
        n_genes: number of genes.
        patch_um: side of the spot-centred patch in µm.
        input_px: side in px the patch is resized to before the model.
    """

    kind = "patch"
    closed_form = False

    def __init__(
        self,
        n_genes: int = 250,
        *,
        encoder: str = "efficientnet_b0",
        pretrained: bool = True,
        encoder_weights: str | None = None,
        patch_um: float = 112.0,
        input_px: int = 224,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if int(n_genes) < 1:
            raise ConfigError(f"n_genes must be >= 1, got {n_genes}.")
        if not patch_um > 0 or int(input_px) < 16:
            raise ConfigError(
                f"patch_um must be > 0 µm and input_px >= 16, got {patch_um}, {input_px}."
            )
        self.encoder = create_encoder(
            encoder, pretrained=pretrained, weights=encoder_weights, features_only=False
        )
        self.n_genes = int(n_genes)
        self.patch_um = float(patch_um)
        self.input_px = int(input_px)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(self.encoder.num_features, self.n_genes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"patch models take (B, 3, H, W) RGB, got {tuple(x.shape)}.")
        return self.head(self.drop(self.encoder(x)))

    @torch.no_grad()
    def set_output_bias(self, target_mean: torch.Tensor, scale: float | None = None) -> None:
        """Start the head's bias at the training mean ``(n_genes,)``."""
        self.head.bias.copy_(torch.as_tensor(target_mean, dtype=self.head.bias.dtype))


class MeanBaseline(nn.Module):
    """Predicts the training mean for every patch: the floor every model must beat.

    ``fit(targets)`` stores the mean of ``(n, n_genes)`` training targets in a buffer.
    """

    kind = "patch"
    closed_form = True

    def __init__(self, n_genes: int = 250, *, patch_um: float = 112.0, input_px: int = 32) -> None:
        super().__init__()
        self.n_genes = int(n_genes)
        self.patch_um = float(patch_um)
        self.input_px = int(input_px)
        self.register_buffer("mean", torch.zeros(self.n_genes))

    @torch.no_grad()
    def fit(self, targets) -> MeanBaseline:
        t = torch.as_tensor(targets, dtype=torch.float32)
        if t.ndim != 2 or t.shape[1] != self.n_genes:
            raise ConfigError(f"targets must be (n, {self.n_genes}), got {tuple(t.shape)}.")
        self.mean.copy_(t.mean(0))
        return self

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mean.to(x.dtype).expand(x.shape[0], -1)


# -- registered variants -------------------------------------------------------------------------


def _patch(encoder: str, n_genes: int, **kwargs) -> PatchModel:
    return PatchModel(n_genes, encoder=encoder, **kwargs)


@register_model(kind="patch", encoder="efficientnet_b0")
def effnet_b0_patch(n_genes: int = 250, **kwargs) -> PatchModel:
    """EfficientNet-B0 single-patch regressor (lightweight baseline)."""
    return _patch("efficientnet_b0", n_genes, **kwargs)


@register_model(kind="patch", encoder="tf_efficientnet_lite0")
def lite0_patch(n_genes: int = 250, **kwargs) -> PatchModel:
    """EfficientNet-Lite0 single-patch regressor (ImageNet weights packaged)."""
    return _patch("tf_efficientnet_lite0", n_genes, **kwargs)


@register_model(kind="patch", encoder="tf_efficientnet_lite1")
def lite1_patch(n_genes: int = 250, **kwargs) -> PatchModel:
    """EfficientNet-Lite1 single-patch regressor (ImageNet weights packaged)."""
    return _patch("tf_efficientnet_lite1", n_genes, **kwargs)


@register_model(kind="patch", encoder="tf_efficientnet_lite2")
def lite2_patch(n_genes: int = 250, **kwargs) -> PatchModel:
    """EfficientNet-Lite2 single-patch regressor (ImageNet weights packaged)."""
    return _patch("tf_efficientnet_lite2", n_genes, **kwargs)


@register_model(kind="patch", encoder="resnet18")
def resnet18_patch(n_genes: int = 250, **kwargs) -> PatchModel:
    """ResNet-18 single-patch regressor."""
    return _patch("resnet18", n_genes, **kwargs)


@register_model(kind="patch", encoder="resnet50")
def resnet50_patch(n_genes: int = 250, **kwargs) -> PatchModel:
    """ResNet-50 single-patch regressor."""
    return _patch("resnet50", n_genes, **kwargs)


@register_model(kind="patch", encoder="densenet121", loss="mse")
def stnet(n_genes: int = 250, **kwargs) -> PatchModel:
    """ST-Net: DenseNet-121 single-patch regressor, trained with plain MSE (lam=0)."""
    return _patch("densenet121", n_genes, **kwargs)


@register_model(kind="patch", encoder="vit_tiny_patch16_224")
def vit_patch(n_genes: int = 250, **kwargs) -> PatchModel:
    """ViT-Tiny/16 single-patch regressor."""
    return _patch("vit_tiny_patch16_224", n_genes, **kwargs)


@register_model(kind="patch", encoder=None)
def mean_baseline(n_genes: int = 250, *, pretrained: bool = False, **kwargs) -> MeanBaseline:
    """Predicts the training mean expression (fit in closed form)."""
    return MeanBaseline(n_genes, **kwargs)


@register_model(kind="patch", encoder="test_efficientnet")
def test_patch(n_genes: int = 8, *, pretrained: bool = False, **kwargs) -> PatchModel:
    """Tiny untrained patch model for tests."""
    kwargs.setdefault("input_px", 32)
    return _patch("test_efficientnet", n_genes, pretrained=pretrained, **kwargs)


@register_model(kind="patch", encoder="test_vit")
def test_vit_patch(n_genes: int = 8, *, pretrained: bool = False, **kwargs) -> PatchModel:
    """Tiny untrained ViT patch model for tests."""
    kwargs.setdefault("input_px", 32)
    return _patch("test_vit", n_genes, pretrained=pretrained, **kwargs)
