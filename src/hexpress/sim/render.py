"""Render the H&E image in optical-density space (Beer-Lambert).

Two stain amount maps, haematoxylin ``H`` and eosin ``E``, are built at full resolution:
background per domain (collagen fibre texture in stroma, pale cytoplasm in tumour nests, fat
vacuoles with thin membranes, blood in vessel lumens), then every cell stamped on its small
bounding box (cytoplasm, nucleus with type-specific size, shape, darkness and chromatin). The
optical density is ``H * h_vec + E * e_vec`` with per-slide jittered stain vectors; intensity is
``255 * exp(-OD)``, then blurred (optics) and noised (camera), strip by strip to bound memory.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
from scipy import ndimage
from scipy.spatial import cKDTree

from hexpress.sim._fields import smooth_field, tile_texture, upsample_rows
from hexpress.sim.cells import TYPE_PARAMS, T
from hexpress.sim.config import CELL_TYPES, SimConfig
from hexpress.sim.tissue import D, Tissue

__all__ = ["render_he", "stain_vectors"]

# Reference stain optical densities (Macenko et al.'s H&E reference), per RGB channel
H_REF = np.array([0.5626, 0.7201, 0.4062])
E_REF = np.array([0.2159, 0.8012, 0.5581])
GLASS_OD = np.array([0.025, 0.03, 0.02])

_E_BASE = {"glass": 0.0, "stroma": 0.45, "tumour": 0.2, "immune": 0.3, "fat": 0.0, "vessel": 0.55}
_H_BASE = {"glass": 0.0, "stroma": 0.02, "tumour": 0.06, "immune": 0.05, "fat": 0.0, "vessel": 0.04}
_STRIP = 512


def stain_vectors(config: SimConfig, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per-slide stain vectors and amount scales (the slide's staining batch)."""
    sv = config.stain_variation
    h = H_REF * (1 + sv * rng.standard_normal(3))
    e = E_REF * (1 + sv * rng.standard_normal(3))
    return {
        "h_vec": np.abs(h) / np.linalg.norm(h),
        "e_vec": np.abs(e) / np.linalg.norm(e),
        "h_scale": np.array(math.exp(sv * 1.5 * rng.standard_normal())),
        "e_scale": np.array(math.exp(sv * 1.5 * rng.standard_normal())),
    }


def _fat_membranes(tissue: Tissue, cells: pd.DataFrame) -> np.ndarray:
    """Distance in µm to the nearest membrane between two fat cells, on the layout grid."""
    fat = tissue.domain == D["fat"]
    out = np.full(tissue.shape, 1e3, np.float32)
    ad = cells["type_id"].to_numpy() == T["adipocyte"]
    if ad.sum() < 2 or not fat.any():
        return out
    # grow the fat mask by a cell so membranes at the domain border are drawn too
    grown = ndimage.binary_dilation(fat, iterations=3)
    ii, jj = np.nonzero(grown)
    pts = np.stack([(jj + 0.5) * tissue.step_um, (ii + 0.5) * tissue.step_um], 1)
    centres = cells.loc[ad, ["x_um", "y_um"]].to_numpy()
    radius = cells.loc[ad, "cell_a_um"].to_numpy()
    d, idx = cKDTree(centres).query(pts, k=2)
    # half the gap between the two nearest centres' "power" distances: 0 on the shared wall
    gap = 0.5 * np.abs(d[:, 1] - d[:, 0])
    # and a closed rim where a fat cell borders non-fat tissue
    rim = np.abs(d[:, 0] - radius[idx[:, 0]])
    out[ii, jj] = np.minimum(gap, rim)
    return out


def _blood(tissue: Tissue, rng: np.random.Generator) -> np.ndarray:
    """Red blood cell centres (µm) filling part of the vessel lumens."""
    ii, jj = np.nonzero(tissue.lumen)
    if ii.size == 0:
        return np.zeros((0, 2))
    area = ii.size * tissue.step_um**2
    n = rng.poisson(0.35 * area / (math.pi * 3.6**2))
    pick = rng.integers(0, ii.size, n)
    return np.stack(
        [(jj[pick] + rng.random(n)) * tissue.step_um, (ii[pick] + rng.random(n)) * tissue.step_um],
        1,
    )


def _background(
    tissue: Tissue,
    cells: pd.DataFrame,
    rng: np.random.Generator,
    mpp: float,
    shape: tuple[int, int],
) -> tuple[np.ndarray, np.ndarray]:
    """Domain background ``(H, E)`` at ``mpp`` (stroma fibres, fat membranes, lumens)."""
    height, width = shape
    H = np.empty(shape, np.float32)
    E = np.empty(shape, np.float32)
    step = tissue.step_um
    dom = tissue.domain
    from hexpress.sim.config import DOMAINS

    e_lut = np.array([_E_BASE[d] for d in DOMAINS], np.float32)
    h_lut = np.array([_H_BASE[d] for d in DOMAINS], np.float32)
    e_base = e_lut[dom]
    e_base[tissue.lumen] = 0.06  # plasma in the lumen, pale
    e_base = ndimage.gaussian_filter(e_base, 0.7)
    h_base = ndimage.gaussian_filter(h_lut[dom], 0.7)
    fibrous = ndimage.gaussian_filter(
        np.isin(dom, [D["stroma"], D["vessel"], D["immune"]]).astype(np.float32) * (~tissue.lumen),
        0.7,
    )
    thickness = 1.0 + 0.1 * smooth_field(rng, tissue.shape, step, 400.0)
    warp = smooth_field(rng, tissue.shape, step, 30.0) * 2.5  # µm of fibre waviness
    fat_m = _fat_membranes(tissue, cells)
    on_tissue = ndimage.gaussian_filter((dom != D["glass"]).astype(np.float32), 0.7)
    amp_field = 0.5 + 0.5 * np.clip(smooth_field(rng, tissue.shape, step, 60.0), -1, 1)
    tex = tile_texture(rng, 256, 1.5 / mpp)
    n_dir = 8
    angles = np.arange(n_dir) * math.pi / n_dir
    period_um = 7.0
    xs_um = (np.arange(width) + 0.5) * mpp
    tx = np.arange(width) % 256
    for y0 in range(0, height, _STRIP):
        y1 = min(height, y0 + _STRIP)

        def up(g, y0=y0, y1=y1):
            return upsample_rows(g, step, mpp, y0, y1, width)

        ys_um = ((np.arange(y0, y1) + 0.5) * mpp)[:, None]
        theta = np.mod(up(tissue.fibre_angle), math.pi) / (math.pi / n_dir)
        k0 = np.floor(theta).astype(np.int64)
        frac = (theta - k0).astype(np.float32)
        k0 %= n_dir
        k1 = (k0 + 1) % n_dir
        wv = up(warp)
        ca, sa = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
        # stripes across the local fibre direction, blended between the two nearest directions
        ph0 = (xs_um[None, :] * -sa[k0] + ys_um * ca[k0] + wv) * (2 * math.pi / period_um)
        ph1 = (xs_um[None, :] * -sa[k1] + ys_um * ca[k1] + wv) * (2 * math.pi / period_um)
        stripes = (1 - frac) * np.cos(ph0) + frac * np.cos(ph1)
        t_strip = tex[(np.arange(y0, y1) % 256)[:, None], tx[None, :]]
        # bundles: stripes that fade in and out, broken by blotchy texture, with thin clefts
        amp = up(amp_field)
        fibre = 0.62 + 0.38 * stripes * amp + 1.1 * (t_strip - 0.5)
        fibre = np.where(stripes * amp > 0.55, fibre * 0.55, fibre)
        fibre = np.clip(fibre, 0.0, 1.3)
        fib_w = up(fibrous)
        e = up(e_base) * (1 - fib_w + fib_w * (0.35 + 0.85 * fibre))
        memb = up(fat_m)
        e += 0.5 * np.exp(-((memb / 0.9) ** 2)) * up(on_tissue)
        th = up(thickness)
        E[y0:y1] = e * th
        H[y0:y1] = up(h_base) * th * (0.7 + 0.6 * t_strip)
    return H, E


def _cell_patches(c: dict, t: int, k: int, chrom: np.ndarray, mpp: float):
    """Haematoxylin and eosin patches ``(n, k, k)`` for cells of one type, all at once, and the
    factor ``(n, k, k)`` the eosin already there is multiplied by.

    ``c`` holds per-cell arrays in pixels (``ox``/``oy`` patch origin, centres, axes, ...).
    """
    par = TYPE_PARAMS[CELL_TYPES[t]]
    n = len(c["ox"])
    ar = np.arange(k, dtype=np.float32) + 0.5
    px = (c["ox"][:, None] + ar[None, :]).astype(np.float32)[:, None, :]  # (n, 1, k)
    py = (c["oy"][:, None] + ar[None, :]).astype(np.float32)[:, :, None]  # (n, k, 1)
    cs = np.cos(c["th"]).astype(np.float32)[:, None, None]
    sn = np.sin(c["th"]).astype(np.float32)[:, None, None]
    iy = (c["oy"][:, None] + np.arange(k)[None, :]) % chrom.shape[0]
    ix = (c["ox"][:, None] + np.arange(k)[None, :]) % chrom.shape[1]
    tex = chrom[iy[:, :, None], ix[:, None, :]]
    col = lambda name: c[name].astype(np.float32)[:, None, None]  # noqa: E731
    H = np.zeros((n, k, k), np.float32)
    E = np.zeros((n, k, k), np.float32)
    fat = CELL_TYPES[t] == "adipocyte"
    if not fat and par["cyto"] > 0:
        dx, dy = px - col("cx"), py - col("cy")
        u, v = dx * cs + dy * sn, -dx * sn + dy * cs
        d = np.sqrt((u / col("ca")) ** 2 + (v / col("cb")) ** 2)
        edge = 0.45 if t == T["tumour"] else 0.18
        w = np.clip((1.0 - d) / edge, 0.0, 1.0)
        E += par["cyto"] * w * (0.8 + 0.4 * tex)
        if t == T["tumour"]:  # visible cell borders, slightly amphophilic cytoplasm
            E += 0.06 * np.exp(-(((d - 1.0) / 0.08) ** 2))
            H += 0.07 * w
        elif t == T["plasma"]:
            H += 0.12 * w
    dx, dy = px - col("nx"), py - col("ny")
    u, v = dx * cs + dy * sn, -dx * sn + dy * cs
    phi = np.arctan2(v, u)
    h0, h1, amp = col("h0"), col("h1"), col("amp")
    r_mod = 1.0 + amp * (np.sin(2 * phi + h0) + 0.7 * np.sin(3 * phi + h1))
    dn = np.sqrt((u / col("na")) ** 2 + (v / col("nb")) ** 2) / r_mod
    wn = np.clip((1.0 - dn) / 0.14, 0.0, 1.0)
    ta = par["tex"]
    if t == T["tumour"]:  # vesicular: chromatin along the rim, pale centre, a nucleolus
        body = (0.55 + 0.6 * dn**3) * (1 - ta + ta * 2 * tex)
        sig2 = 2 * (0.55 / mpp) ** 2
        body += col("nucleolus") * 0.9 * np.exp(-(u**2 + v**2) / sig2)
    elif t == T["plasma"]:  # clock-face chromatin
        body = 0.7 + 0.6 * (tex > 0.55) + 0.2 * dn**2
    else:
        body = 1 - ta + ta * 2 * tex
    H += col("dark") * wn * body
    E += 0.08 * wn
    # chromatin displaces the eosin below: nuclei read blue-purple, not magenta
    keep = 1.0 - 0.8 * wn
    return H, E, keep


def _stamp_cells(cells: pd.DataFrame, config: SimConfig, rng: np.random.Generator, H, E) -> None:
    """Add every cell's cytoplasm and nucleus to the stain maps.

    Patches are computed vectorised for batches of cells of one type, then added on each cell's
    own bounding box (one small addition per cell).
    """
    mpp = config.mpp
    height, width = H.shape
    chrom = tile_texture(rng, 256, 0.45 / mpp)  # chromatin clumps of ~1 µm
    n = len(cells)
    f = 1.0 / mpp
    types = cells["type_id"].to_numpy()
    c_all = {
        "cx": cells["x_um"].to_numpy() * f,
        "cy": cells["y_um"].to_numpy() * f,
        "nx": cells["nucleus_x_um"].to_numpy() * f,
        "ny": cells["nucleus_y_um"].to_numpy() * f,
        "na": cells["nucleus_a_um"].to_numpy() * f,
        "nb": cells["nucleus_b_um"].to_numpy() * f,
        "ca": cells["cell_a_um"].to_numpy() * f,
        "cb": cells["cell_b_um"].to_numpy() * f,
        "th": cells["angle"].to_numpy(),
        "dark": cells["darkness"].to_numpy(),
        # irregular nuclear outlines: random low-order harmonics per cell
        "h0": rng.uniform(0, 2 * math.pi, n),
        "h1": rng.uniform(0, 2 * math.pi, n),
        "amp": rng.uniform(0.02, 0.09, n),
        "nucleolus": (rng.random(n) < 0.75).astype(np.float64),
    }
    fat = types == T["adipocyte"]
    reach = np.where(
        fat,
        c_all["na"] + 3,
        np.maximum(
            c_all["ca"],
            np.hypot(c_all["nx"] - c_all["cx"], c_all["ny"] - c_all["cy"]) + c_all["na"],
        )
        + 2,
    )
    centre_x = np.where(fat, c_all["nx"], c_all["cx"])
    centre_y = np.where(fat, c_all["ny"], c_all["cy"])
    batch = max(64, int(4e6 // max(1, (2 * int(reach.max()) + 3) ** 2)))
    for t in range(len(CELL_TYPES)):
        idx = np.flatnonzero(types == t)
        if idx.size == 0:
            continue
        k = 2 * int(math.ceil(reach[idx].max())) + 2
        for b0 in range(0, idx.size, batch):
            sel = idx[b0 : b0 + batch]
            c = {key: val[sel] for key, val in c_all.items()}
            c["ox"] = np.floor(centre_x[sel]).astype(np.int64) - k // 2
            c["oy"] = np.floor(centre_y[sel]).astype(np.int64) - k // 2
            hp, ep, kp = _cell_patches(c, t, k, chrom, mpp)
            for i in range(len(sel)):
                x0, y0 = int(c["ox"][i]), int(c["oy"][i])
                a0, b0_ = max(0, -x0), max(0, -y0)
                x1, y1 = min(width, x0 + k), min(height, y0 + k)
                if x1 <= x0 + a0 or y1 <= y0 + b0_:
                    continue
                H[y0 + b0_ : y1, x0 + a0 : x1] += hp[i, b0_ : y1 - y0, a0 : x1 - x0]
                e_view = E[y0 + b0_ : y1, x0 + a0 : x1]
                e_view *= kp[i, b0_ : y1 - y0, a0 : x1 - x0]
                e_view += ep[i, b0_ : y1 - y0, a0 : x1 - x0]


def _stamp_blood(blood: np.ndarray, config: SimConfig, H, E) -> None:
    mpp = config.mpp
    r = 3.6 / mpp
    k = int(math.ceil(r)) + 1
    yy, xx = np.mgrid[-k : k + 1, -k : k + 1].astype(np.float32)
    height, width = E.shape
    for bx, by in blood / mpp:
        ix, iy = int(bx), int(by)
        x0, x1, y0, y1 = ix - k, ix + k + 1, iy - k, iy + k + 1
        if x0 < 0 or y0 < 0 or x1 > width or y1 > height:
            continue
        d = np.sqrt((xx + ix + 0.5 - bx) ** 2 + (yy + iy + 0.5 - by) ** 2) / r
        # biconcave: paler centre
        E[y0:y1, x0:x1] += np.clip((1 - d) / 0.2, 0, 1) * (0.75 + 0.3 * d**2)


def render_he(
    tissue: Tissue, cells: pd.DataFrame, config: SimConfig, rng: np.random.Generator
) -> tuple[np.ndarray, dict]:
    """Render the slide.

    Returns:
        ``(image, stain)``: ``(H, W, 3)`` uint8 RGB at ``config.mpp``, and the slide's stain
        vectors (``h_vec``, ``e_vec``, ``h_scale``, ``e_scale``).
    """
    height, width = config.shape_px
    stain = stain_vectors(config, rng)
    # the background is smooth at the scale of a pixel: render it at half resolution (when
    # pixels are small), then interpolate and add pixel-scale grain
    f = 2 if config.mpp <= 0.6 else 1
    bg_shape = (math.ceil(height / f), math.ceil(width / f))
    Hb, Eb = _background(tissue, cells, rng, config.mpp * f, bg_shape)
    fine = tile_texture(rng, 256, 0.35 / config.mpp)
    H = np.empty((height, width), np.float32)
    E = np.empty((height, width), np.float32)
    tx = np.arange(width) % 256
    for y0 in range(0, height, _STRIP):
        y1 = min(height, y0 + _STRIP)
        H[y0:y1] = upsample_rows(Hb, config.mpp * f, config.mpp, y0, y1, width)
        grain = fine[(np.arange(y0, y1) % 256)[:, None], tx[None, :]]
        E[y0:y1] = upsample_rows(Eb, config.mpp * f, config.mpp, y0, y1, width) * (
            0.85 + 0.3 * grain
        )
    del Hb, Eb
    _stamp_blood(_blood(tissue, rng), config, H, E)
    _stamp_cells(cells, config, rng, H, E)
    image = np.empty((height, width, 3), np.uint8)
    hv = (stain["h_vec"] * stain["h_scale"]).astype(np.float32)
    ev = (stain["e_vec"] * stain["e_scale"]).astype(np.float32)
    glass = (GLASS_OD * (1 + 0.3 * config.stain_variation * rng.standard_normal(3))).astype(
        np.float32
    )
    sigma = config.blur_um / config.mpp
    margin = int(math.ceil(4 * sigma)) + 1 if sigma > 0 else 0
    noise_rng = np.random.default_rng(rng.integers(2**63))
    for y0 in range(0, height, _STRIP):
        y1 = min(height, y0 + _STRIP)
        a0, a1 = max(0, y0 - margin), min(height, y1 + margin)
        h, e = H[a0:a1], E[a0:a1]
        noise = None
        if config.noise_std > 0:
            noise = noise_rng.standard_normal((y1 - y0, width), dtype=np.float32)
            noise *= float(config.noise_std)
        for ch in range(3):
            od = h * -hv[ch]
            od -= e * ev[ch]
            od -= glass[ch]
            inten = np.exp(od, out=od)
            inten *= 255.0
            if sigma > 0:
                inten = ndimage.gaussian_filter(inten, sigma, mode="nearest", truncate=3.0)
            inten = inten[y0 - a0 : y0 - a0 + (y1 - y0)]
            if noise is not None:  # camera noise, mostly shared by the channels (luminance)
                inten += noise
            image[y0:y1, :, ch] = np.clip(inten + 0.5, 0, 255).astype(np.uint8)
    return image, stain
