"""PixNet: a dense gene expression map from an H&E image (PixNet paper, Eq. 1-4).

Encoder pyramid ``F_1..F_L`` (timm ``features_only``, levels of stride >= ``out_stride``) ->
U-Net-style decoder -> 1x1 head to the genes, kept at the finest decoder stride:

* ``D_0 = proj_L(F_L)`` (1x1 conv to the decoder width);
* for ``l = L-1 .. 1``: ``Y = Dconv(D) + delta_l * proj_l(F_l)`` with a 2x2 stride-2 transposed
  convolution ``Dconv`` and a learnable scalar ``delta_l`` (initialised to ``delta_init``), then
  ``D = Y + DFFN(Y)``;
* ``DFFN`` = per-pixel LayerNorm over channels -> 1x1 conv to ``hidden`` (512) -> depthwise 3x3
  conv -> GELU -> 1x1 conv back to ``width``. The residual keeps the skip path open at
  initialisation; the channel-only norm keeps every output cell a function of its receptive
  field alone (no statistics over the image), so tiled inference equals an untiled pass.
* head: 1x1 conv to ``n_genes`` ("field") or ``n_genes + 1`` followed by softplus ("density",
  the last channel is the total count density); see :func:`hexpress.models.predict_units`.

``fine_hidden`` (default: ``hidden``) sets the hidden width of the finest level's DFFN alone,
the block that costs most (with the defaults, 17.0 of the 44.2 kFLOP per input pixel at 250
genes; hidden 256 there brings the total to 35.7 kFLOP, 128 to 31.5 kFLOP).

The input is padded on the bottom/right with white (the colour the slide reader returns outside
the slide) to a multiple of the network's total reduction and the map is cropped back, so the map
has ``ceil(H / stride)`` rows and cell ``(i, j)`` covers input pixels
``[i*stride, (i+1)*stride) x [j*stride, (j+1)*stride)`` for any input size.
"""

from __future__ import annotations

import copy
import logging
import math

import torch
import torch.nn.functional as F
from timm.layers import LayerNorm2d
from torch import nn

from hexpress.errors import ConfigError
from hexpress.models._registry import register_alias, register_model
from hexpress.models.aggregate import MODES
from hexpress.models.encoders import (
    _memory_format,
    _strips_allowed,
    create_encoder,
    encoder_spec,
)
from hexpress.models.fuse import fold_batchnorms

__all__ = ["PixNet", "DFFN", "estimate_receptive_field", "estimate_effective_margin"]

log = logging.getLogger(__name__)

_PAD_VALUE = 1.0  # white, as read outside the slide


class DFFN(nn.Module):
    """Convolutional two-layer feed-forward block (pre-norm, depthwise 3x3 between the 1x1s).

    Without autograd (inference) on the CPU the block runs in strips of rows with a one-row halo for the
    depthwise convolution: the same numbers as one pass, but the ``hidden``-wide activations
    of a strip stay small (memory, cache) instead of spanning the whole map.
    """

    strip_bytes = 32 << 20
    """Size of one strip's hidden activation (float32) in inference."""

    def __init__(self, width: int, hidden: int) -> None:
        super().__init__()
        self.norm = LayerNorm2d(width)
        self.fc1 = nn.Conv2d(width, hidden, 1)
        self.dw = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Conv2d(hidden, width, 1)

    def _block(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.dw(self.fc1(self.norm(x)))))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # one halo row each side for the depthwise 3x3
        return _in_strips(self._block, x, self.fc1.out_channels, self.strip_bytes, halo=1)


def _in_strips(
    fn, x: torch.Tensor, width: int, strip_bytes: int, *, halo: int = 0, min_rows: int = 4
) -> torch.Tensor:
    """``fn(x)`` for a row-local ``fn`` (output row ``i`` depends on input rows ``i - halo ..
    i + halo`` only, same height out as in), computed in strips of rows in inference on the
    CPU (:func:`~hexpress.models.encoders._strips_allowed`), so that its ``width``-channel activations stay near ``strip_bytes`` (float32)
    instead of spanning the whole map. The same numbers as one pass.
    """
    b, _, h, w = x.shape
    rows = max(min_rows, strip_bytes // max(1, 4 * b * width * w))
    if h <= rows or not _strips_allowed(x):
        return fn(x)
    out = None
    for y0 in range(0, h, rows):
        y1 = min(h, y0 + rows)
        a, z = max(0, y0 - halo), min(h, y1 + halo)
        part = fn(x[:, :, a:z])[:, :, y0 - a : y1 - a]
        if out is None:
            out = torch.empty(
                (b, part.shape[1], h, w), dtype=part.dtype, device=x.device,
                memory_format=_memory_format(x),
            )  # fmt: skip
        out[:, :, y0:y1] = part
    return out


def _window(x: torch.Tensor, y0: int, x0: int, y1: int, x1: int) -> torch.Tensor:
    """``x[..., y0:y1, x0:x1]`` with zeros where the window leaves ``x``."""
    h, w = x.shape[-2:]
    a, b, c, d = max(y0, 0), max(x0, 0), min(y1, h), min(x1, w)
    out = x[..., a:c, b:d]
    pads = (b - x0, x1 - d, a - y0, y1 - c)
    return F.pad(out, pads) if any(pads) else out


def _decoder_regions(shapes, region, level: int, top: int):
    """Where the decoder must be right (``need[k]``) and where it is computed (``comp[k]``) on
    each level ``k`` from ``level`` up to ``top`` for the cells ``region`` of ``level``:
    ``comp`` is ``need`` grown by the DFFN's 3x3 halo, clipped to the level's ``shapes[k]``,
    and the level above needs the cells under it."""
    need, comp = {level: tuple(int(v) for v in region)}, {}
    for k in range(level, top):
        hk, wk = shapes[k]
        a, b, c, d = need[k]
        comp[k] = (max(a - 1, 0), max(b - 1, 0), min(c + 1, hk), min(d + 1, wk))
        a, b, c, d = comp[k]
        hn, wn = shapes[k + 1]
        need[k + 1] = (a // 2, b // 2, min(-(-c // 2), hn), min(-(-d // 2), wn))
    return need, comp


class PixNet(nn.Module):
    """Dense model: ``(B, 3, H, W)`` float RGB in ``[0, 1]`` -> ``(B, n_out, ceil(H/s), ceil(W/s))``.

    Attributes:
        kind: ``"dense"``.
        stride: input px per map cell.
        reduction: the network's total downsampling; tiles aligned to it give identical maps.
        n_genes: number of genes predicted.
        n_out: output channels (``n_genes``, +1 total channel in density mode).
        mode: ``"field"`` or ``"density"``.
        receptive_field_px: see the property.
    """

    kind = "dense"
    closed_form = False
    accepts_region = True  # forward(x, region=...) computes only those map cells

    def __init__(
        self,
        n_genes: int = 250,
        *,
        encoder: str = "tf_efficientnet_lite0",
        pretrained: bool = True,
        encoder_weights: str | None = None,
        mode: str = "density",
        out_stride: int = 4,
        width: int = 128,
        hidden: int = 512,
        fine_hidden: int | None = None,
        delta_init: float = 1.0,
    ) -> None:
        super().__init__()
        if mode not in MODES:
            raise ConfigError(f"PixNet mode must be one of {MODES}, got {mode!r}.")
        if int(n_genes) < 1:
            raise ConfigError(f"n_genes must be >= 1, got {n_genes}.")
        if not encoder_spec(encoder).dense:
            raise ConfigError(
                f"encoder {encoder!r} has a single-stride feature map and cannot feed PixNet's "
                "decoder; use it in a patch model, or choose a CNN encoder."
            )
        self.encoder = create_encoder(encoder, pretrained=pretrained, weights=encoder_weights)
        reductions = list(self.encoder.feature_info.reduction())
        channels = list(self.encoder.feature_info.channels())
        levels = [i for i, r in enumerate(reductions) if r >= out_stride]
        if len(levels) < 2 or reductions[levels[0]] != out_stride:
            raise ConfigError(
                f"out_stride must be one of the encoder's strides with a coarser level above it: "
                f"{sorted(set(reductions[:-1]))} for {encoder!r}, got {out_stride}."
            )
        self.levels = levels
        self.n_genes = int(n_genes)
        self.mode = mode
        self.n_out = self.n_genes + (1 if mode == "density" else 0)
        self.stride = int(out_stride)
        self.reduction = int(reductions[levels[-1]])
        for a, b in zip(levels[:-1], levels[1:], strict=False):
            if reductions[b] != 2 * reductions[a]:
                raise ConfigError(
                    f"encoder {encoder!r} levels must halve in resolution, got {reductions}."
                )
        self.proj = nn.ModuleList(nn.Conv2d(channels[i], width, 1) for i in levels)
        n_up = len(levels) - 1
        self.up = nn.ModuleList(nn.ConvTranspose2d(width, width, 2, stride=2) for _ in range(n_up))
        self.delta = nn.ParameterList(
            nn.Parameter(torch.full((1,), float(delta_init))) for _ in range(n_up)
        )
        hiddens = [int(fine_hidden or hidden)] + [int(hidden)] * (n_up - 1)
        self.dffn = nn.ModuleList(DFFN(width, hd) for hd in hiddens)
        self.head = nn.Conv2d(width, self.n_out, 1)
        self._receptive_field_px: int | None = None
        self._effective_margin: dict[float, int] = {}

    def forward(
        self, x: torch.Tensor, region: tuple[int, int, int, int] | None = None
    ) -> torch.Tensor:
        """The map of ``x``, or only its cells ``region = (y0, x0, y1, x1)`` (see :meth:`decode`)."""
        h, w = x.shape[-2:]
        return self.decode(self.encode(x), (h, w), region=region)

    def encode(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The pyramid the decoder reads: ``F_l`` of the levels used, finest first.

        ``x`` is padded bottom/right with white to a multiple of :attr:`reduction`, so level
        ``l`` (stride ``s_l``) has ``ceil(H / reduction) * reduction / s_l`` rows; cell ``(i, j)``
        of it covers input pixels ``[i*s_l, (i+1)*s_l) x [j*s_l, (j+1)*s_l)``.
        """
        if x.ndim != 4 or x.shape[1] != 3:
            raise ConfigError(f"PixNet takes (B, 3, H, W) RGB, got shape {tuple(x.shape)}.")
        h, w = x.shape[-2:]
        r = self.reduction
        ph, pw = (-h) % r, (-w) % r
        if ph or pw:
            x = F.pad(x, (0, pw, 0, ph), value=_PAD_VALUE)
        return self.encoder(x, levels=self.levels)

    @property
    def level_strides(self) -> list[int]:
        """Input px per cell of each level :meth:`encode` returns, finest first."""
        red = list(self.encoder.feature_info.reduction())
        return [int(red[i]) for i in self.levels]

    def decode(
        self,
        feats: list[torch.Tensor],
        size_px: tuple[int, int],
        region: tuple[int, int, int, int] | None = None,
    ) -> torch.Tensor:
        """The map from a pyramid (:meth:`encode`) of an input of ``size_px = (H, W)`` px:
        ``(B, n_out, ceil(H / stride), ceil(W / stride))``, or only the cells ``region =
        (y0, x0, y1, x1)``.

        With a region, each decoder level is computed only where the region depends on it
        (the region grown by the 3x3 halo of every DFFN on the way up), and the result equals
        the whole map's ``[..., y0:y1, x0:x1]``: tiled inference keeps only a tile's core, so
        the expensive fine levels skip the margins that only the encoder needs.
        """
        h, w = size_px
        oh, ow = math.ceil(h / self.stride), math.ceil(w / self.stride)
        if region is None:
            region = (0, 0, oh, ow)
        ry0, rx0, ry1, rx1 = (int(v) for v in region)
        if not (0 <= ry0 < ry1 <= oh and 0 <= rx0 < rx1 <= ow):
            raise ConfigError(f"region {region} is not inside the {oh} x {ow} map.")
        return self._head_in_strips(self.decode_to(feats, (ry0, rx0, ry1, rx1), 0))

    def decode_to(
        self, feats: list[torch.Tensor | None], region: tuple[int, int, int, int], level: int
    ) -> torch.Tensor:
        """The decoder's output ``D`` at ``level`` (0: the finest, before the head) on the
        cells ``region`` of that level, from the pyramid levels ``level ..`` of ``feats``
        (entries below ``level`` are not read).

        Each level is computed only where the region depends on it (the region grown by the
        3x3 halo of every DFFN on the way up), with zeros beyond ``feats``: the result equals
        the whole decoder's, cropped, wherever ``feats`` reach far enough around the region.
        """
        shapes = [None if f is None else tuple(f.shape[-2:]) for f in feats]
        top = len(feats) - 1
        need, comp = _decoder_regions(shapes, region, level, top)
        d = self.proj[top](_window(feats[top], *need[top]))
        return self._descend(d, need[top][:2], feats, need, comp, top, level)

    def decode_from(
        self,
        d: torch.Tensor,
        level: int,
        feats: list[torch.Tensor | None],
        region: tuple[int, int, int, int],
    ) -> torch.Tensor:
        """The map on the cells ``region`` from the decoder's output ``d`` at ``level`` (as
        :meth:`decode_to` gives it, cell ``(0, 0)`` of ``d`` above cell ``(0, 0)`` of
        ``feats[level - 1]``) and the pyramid levels below ``level`` of ``feats``."""
        shapes = [None if f is None else tuple(f.shape[-2:]) for f in feats[:level]]
        shapes.append(tuple(d.shape[-2:]))
        need, comp = _decoder_regions(shapes, region, 0, level)
        return self._head_in_strips(self._descend(d, (0, 0), feats, need, comp, level, 0))

    def _descend(self, d, origin, feats, need, comp, top: int, level: int) -> torch.Tensor:
        """``D`` of level ``top`` (``d``, whose cell ``(0, 0)`` is cell ``origin`` of that level)
        down to ``level``, on ``need[level]``."""
        oy, ox = origin
        for k in range(top - 1, level - 1, -1):
            a, b, c, e = comp[k]
            up = _window(self.up[k](d), a - 2 * oy, b - 2 * ox, c - 2 * oy, e - 2 * ox)
            y = up + self.delta[k] * self.proj[k](_window(feats[k], a, b, c, e))
            del up, d  # the finest level's tensors are the largest: keep few alive at once
            if torch.is_grad_enabled():
                y = y + self.dffn[k](y)
            else:
                y += self.dffn[k](y)
            oy, ox, ny1, nx1 = need[k]
            d = y[..., oy - a : ny1 - a, ox - b : nx1 - b]
        return d

    def _head_in_strips(self, d: torch.Tensor) -> torch.Tensor:
        # the head's n_out channels at the finest stride are the largest tensor of all: in
        # inference it (and the softplus) go strip by strip into the output
        return _in_strips(self._head, d, self.n_out, DFFN.strip_bytes)

    def _head(self, d: torch.Tensor) -> torch.Tensor:
        out = self.head(d)
        return F.softplus(out) if self.mode == "density" else out

    @torch.no_grad()
    def set_output_bias(self, target_mean: torch.Tensor, scale: float | None = None) -> None:
        """Start the head at the training mean so early steps do not fight a constant offset.

        Args:
            target_mean: ``(n_genes,)`` mean normalised expression of the training units.
            scale: the normalisation scale (density mode: ``log1p(scale * g / total)``).
        """
        m = torch.as_tensor(target_mean, dtype=self.head.bias.dtype).reshape(-1)
        if m.numel() != self.n_genes:
            raise ConfigError(f"target_mean has {m.numel()} values for {self.n_genes} genes.")
        if self.mode == "field":
            self.head.bias.copy_(m)
            return
        if scale is None or not scale > 0:
            raise ConfigError("density mode needs the normalisation scale to set the bias.")
        # softplus(b_total) = 1 and softplus(b_g) = expm1(mean) / scale.
        dens = torch.expm1(m).clamp_min(1e-6) / float(scale)
        self.head.bias[:-1] = dens + torch.log(-torch.expm1(-dens))
        self.head.bias[-1] = math.log(math.e - 1.0)

    @property
    def receptive_field_px(self) -> int:
        """Input px beyond a map cell's own ``stride`` block, on any side, that can change it.

        Measured once (then cached) by :func:`estimate_receptive_field`: the support of the
        gradient of one map cell with respect to the input, on a copy of the model whose weights
        are made positive so that no path is hidden, rounded up to a multiple of
        :attr:`reduction` plus one more. It depends on the architecture only, not on the
        weights. A tile margin of this many px makes tiled maps equal untiled ones.
        """
        if self._receptive_field_px is None:
            self._receptive_field_px = estimate_receptive_field(self)
        return self._receptive_field_px

    def effective_margin_px(self, tol: float = 1e-3) -> int:
        """The margin beyond which the input moves a map cell by less than ``tol`` of what moves
        it (see :func:`estimate_effective_margin`); measured once per ``tol`` with these weights.
        """
        tol = float(tol)
        if tol not in self._effective_margin:
            self._effective_margin[tol] = estimate_effective_margin(self, tol=tol)
        return self._effective_margin[tol]


def _structural_probe(model: nn.Module) -> nn.Module:
    """A copy of ``model`` whose every path from input to output carries a nonzero gradient.

    Trained or freshly initialised weights can hide paths (zero-initialised residual branches,
    dead ReLUs), so the copy gets positive weights scaled by their fan-in, identity norms and
    zero biases: with a positive input every activation stays positive and moderate.
    """
    probe = copy.deepcopy(model).float().eval()
    with torch.no_grad():
        for mod in probe.modules():
            for name, p in mod.named_parameters(recurse=False):
                if name == "weight" and p.ndim >= 2:
                    fan = p.shape[0] if isinstance(mod, nn.ConvTranspose2d) else p[0].numel()
                    p.uniform_(0.5, 1.0).div_(max(fan, 1))
                elif name == "bias":
                    p.zero_()
                else:
                    p.fill_(1.0)
            for name, b in mod.named_buffers(recurse=False):
                if name == "running_mean":
                    b.zero_()
                elif name == "running_var":
                    b.fill_(1.0)
    return probe


def estimate_receptive_field(model: nn.Module, *, max_px: int = 4096) -> int:
    """One-sided receptive field (input px beyond a cell's block) of a dense model.

    Measured on a structural copy (:func:`_structural_probe`) from the support of the gradient
    of one central map cell with respect to the input, on canvases long in one axis and 64 px
    in the other (doubling until the support stays inside), then rounded up to a multiple of
    the model's ``reduction`` plus one more.
    """
    stride = int(model.stride)
    align = int(getattr(model, "reduction", stride))
    probe = _structural_probe(model)
    margins = []
    for axis in (0, 1):
        size = 256
        while True:
            shape = [64, 64]
            shape[axis] = size
            gen = torch.Generator().manual_seed(0)
            # Positive after any encoder's mean/std normalisation.
            x = (0.7 + 0.3 * torch.rand(1, 3, *shape, generator=gen)).requires_grad_(True)
            with torch.enable_grad():
                out = probe(x)
                ci = [out.shape[-2] // 2, out.shape[-1] // 2]
                (g,) = torch.autograd.grad(out[0, :, ci[0], ci[1]].sum(), x)
            support = g.abs().sum(dim=(0, 1)).amax(dim=1 - axis) > 0
            idx = torch.nonzero(support).ravel()
            lo, hi = int(idx.min()), int(idx.max())
            touches = lo == 0 or hi == size - 1
            if touches and size < max_px:
                size *= 2
                continue
            if touches:
                log.warning(
                    "a map cell depends on input %d px away or more: the encoder has global "
                    "context (e.g. squeeze-excitation), so tiled inference will not equal "
                    "an untiled pass exactly",
                    max_px // 2,
                )
            start = ci[axis] * stride
            margins.append(max(start - lo, hi - (start + stride - 1), 0))
            break
    margin = max(margins)
    return (math.ceil(margin / align) + 1) * align


def _he_canvas(side: int, seed: int = 0) -> torch.Tensor:
    """A ``(1, 3, side, side)`` H&E-like input: pink stroma, purple nuclei, a little noise."""
    gen = torch.Generator().manual_seed(seed)
    pink = torch.tensor([0.89, 0.63, 0.77]).view(3, 1, 1)
    purple = torch.tensor([0.47, 0.27, 0.63]).view(3, 1, 1)
    dots = (torch.rand(1, side, side, generator=gen) < 0.02).float()
    dots = F.max_pool2d(dots[None], 5, stride=1, padding=2)[0]  # nuclei of ~5 px
    img = pink * (1 - dots) + purple * dots + 0.03 * torch.randn(3, side, side, generator=gen)
    return img.clamp(0, 1)[None]


def estimate_effective_margin(model: nn.Module, *, tol: float = 1e-3, side: int = 1024) -> int:
    """Input px beyond a cell's block that still matter, with the model's own weights.

    The gradient of a central map cell (all its channels summed) with respect to an H&E-like
    input (:func:`_he_canvas`) tells how much each input pixel moves it. The margin is the
    smallest multiple of ``reduction`` such that the pixels farther away (Chebyshev distance
    from the cell's block) hold less than ``tol`` of the total absolute gradient; it is never
    more than :attr:`PixNet.receptive_field_px`. This is a first-order measure on one input:
    the deviation from the exact map that a margin causes is measured on real tiles by
    ``benchmarks/bench_infer_speed.py`` (``largest_deviation``).
    """
    stride = int(model.stride)
    align = int(getattr(model, "reduction", stride))
    rf = int(getattr(model, "receptive_field_px", side // 2))
    side = max(int(side), 2 * rf + 2 * align)
    side = math.ceil(side / align) * align
    dev = next(model.parameters()).device
    # the inference copy (batch norms folded, channels-last): the same gradient up to float
    # rounding, with fewer activations kept for autograd and a faster pass
    probe = fold_batchnorms(model).to(memory_format=torch.channels_last)
    x = _he_canvas(side).to(dev).contiguous(memory_format=torch.channels_last)
    x.requires_grad_(True)
    ci = math.ceil(side / stride) // 2
    # only the central cell's decoder cone (the same numbers as the whole map's cell): autograd
    # then keeps the encoder's activations alone, not the wide decoder's over the canvas
    kw = {"region": (ci, ci, ci + 1, ci + 1)} if getattr(model, "accepts_region", False) else {}
    with torch.enable_grad():
        out = probe(x, **kw)
        c = 0 if kw else ci
        (g,) = torch.autograd.grad(out[0, :, c, c].sum(), x)
    del probe, out
    g = g.abs().sum(dim=(0, 1)).cpu()
    y0 = ci * stride
    idx = torch.arange(side)
    dist = torch.maximum(y0 - idx, idx - (y0 + stride - 1)).clamp_min(0)
    dist = torch.maximum(dist[:, None], dist[None, :])
    # total gradient at each distance, then the share at or beyond each distance
    per_d = torch.zeros(int(dist.max()) + 2, dtype=torch.float64)
    per_d.index_add_(0, dist.ravel(), g.ravel().double())
    tail = per_d.flip(0).cumsum(0).flip(0) / per_d.sum().clamp_min(1e-30)
    beyond = torch.nonzero(tail[1:] < tol).ravel()  # tail[1:][d] = share beyond distance d
    d = int(beyond[0]) if len(beyond) else rf
    return min(rf, (math.ceil(d / align) or 1) * align)


# -- registered variants -------------------------------------------------------------------------


@register_model(kind="dense", encoder="tf_efficientnet_lite0")
def pixnet(n_genes: int = 250, *, encoder: str = "tf_efficientnet_lite0", **kwargs) -> PixNet:
    """PixNet with an EfficientNet-Lite0 encoder (ImageNet weights packaged), stride 4."""
    return PixNet(n_genes, encoder=encoder, **kwargs)


# The same model under its earlier name, for checkpoints that recorded it.
register_alias("pixnet_lite0", "pixnet")


@register_model(kind="dense", encoder="tf_efficientnet_lite1")
def pixnet_lite1(n_genes: int = 250, **kwargs) -> PixNet:
    """PixNet with an EfficientNet-Lite1 encoder (ImageNet weights packaged), stride 4."""
    return PixNet(n_genes, encoder="tf_efficientnet_lite1", **kwargs)


@register_model(kind="dense", encoder="tf_efficientnet_lite2")
def pixnet_lite2(n_genes: int = 250, **kwargs) -> PixNet:
    """PixNet with an EfficientNet-Lite2 encoder (ImageNet weights packaged), stride 4."""
    return PixNet(n_genes, encoder="tf_efficientnet_lite2", **kwargs)


@register_model(kind="dense", encoder="resnet18")
def pixnet_resnet18(n_genes: int = 250, **kwargs) -> PixNet:
    """PixNet with a ResNet-18 encoder as in the paper (weights from a local file)."""
    return PixNet(n_genes, encoder="resnet18", **kwargs)


@register_model(kind="dense", encoder="test_resnet")
def test_pixnet(n_genes: int = 8, *, pretrained: bool = False, **kwargs) -> PixNet:
    """Tiny untrained PixNet (width 16) for tests."""
    kwargs.setdefault("width", 16)
    kwargs.setdefault("hidden", 32)
    return PixNet(n_genes, encoder="test_resnet", pretrained=pretrained, **kwargs)
