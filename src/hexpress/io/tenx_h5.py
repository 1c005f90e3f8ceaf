"""The 10x Genomics HDF5 feature-barcode matrix (``*_feature_bc_matrix.h5``).

Layout written by Cell Ranger >= 3, Space Ranger and Xenium Onboard Analysis (format version 2)::

    /matrix/barcodes               (n_barcodes,) bytes
    /matrix/data                   (nnz,) int32 counts
    /matrix/indices                (nnz,) int64 feature (row) index of each value
    /matrix/indptr                 (n_barcodes + 1,) int64 column pointers
    /matrix/shape                  (2,) int32: n_features, n_barcodes
    /matrix/features/id            (n_features,) bytes, e.g. Ensembl ids
    /matrix/features/name          (n_features,) bytes, gene symbols
    /matrix/features/feature_type  (n_features,) bytes, "Gene Expression", ...
    /matrix/features/genome        (n_features,) bytes
    /matrix/features/_all_tag_keys (k,) bytes

The matrix is compressed sparse **column** over a features x barcodes matrix, which is the same
bytes as compressed sparse **row** over barcodes x features: that is what both functions here take
and return. Files of Cell Ranger 2 (format version 1: one group per genome with ``genes`` and
``gene_names``) are read too.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np
import scipy.sparse as sp

from hexpress._files import atomic_path
from hexpress.errors import FormatError, InputFileError

__all__ = ["TenxMatrix", "read_10x_h5", "write_10x_h5"]

log = logging.getLogger(__name__)

GENE_EXPRESSION = "Gene Expression"


@dataclass
class TenxMatrix:
    """A feature-barcode matrix as read from a 10x HDF5 file.

    Attributes:
        counts: ``(n_barcodes, n_features)`` CSR counts, dtype as stored.
        barcodes: barcode of each row.
        genes: feature name (gene symbol) of each column.
        gene_ids: feature id (e.g. Ensembl) of each column.
        feature_types: feature type of each column (``"Gene Expression"``, control types...).
    """

    counts: sp.csr_matrix
    barcodes: list[str]
    genes: list[str]
    gene_ids: list[str]
    feature_types: list[str]

    def select_features(self, keep: np.ndarray) -> TenxMatrix:
        """The same matrix restricted to the features where ``keep`` is true."""
        keep = np.asarray(keep, dtype=bool)
        idx = np.flatnonzero(keep)
        return TenxMatrix(
            counts=self.counts[:, idx].tocsr(),
            barcodes=self.barcodes,
            genes=[self.genes[i] for i in idx],
            gene_ids=[self.gene_ids[i] for i in idx],
            feature_types=[self.feature_types[i] for i in idx],
        )


def _strings(ds) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else str(v) for v in ds[()]]


def read_10x_h5(path: str | Path) -> TenxMatrix:
    """Read a 10x HDF5 feature-barcode matrix.

    Args:
        path: ``filtered_feature_bc_matrix.h5``, ``raw_feature_bc_matrix.h5`` or
            ``cell_feature_matrix.h5``.

    Returns:
        The matrix with barcodes as rows (see :class:`TenxMatrix`).

    Raises:
        InputFileError: the file does not exist.
        FormatError: the file is not a 10x feature-barcode matrix.
    """
    path = Path(path)
    if not path.is_file():
        raise InputFileError(f"10x HDF5 matrix not found: {path}.")
    try:
        f = h5py.File(path, "r")
    except OSError as e:
        raise FormatError(f"{path} is not a readable HDF5 file: {e}.") from e
    with f:
        if "matrix" in f:
            grp = f["matrix"]
            if "features" not in grp:
                raise FormatError(f"{path}: /matrix has no 'features' group; not a 10x matrix.")
            feat = grp["features"]
            names = _strings(feat["name"])
            ids = _strings(feat["id"]) if "id" in feat else list(names)
            types = (
                _strings(feat["feature_type"])
                if "feature_type" in feat
                else [GENE_EXPRESSION] * len(names)
            )
        else:  # format version 1: one group per genome
            groups = [k for k in f if isinstance(f[k], h5py.Group) and "gene_names" in f[k]]
            if not groups:
                raise FormatError(
                    f"{path}: neither a /matrix group (Cell Ranger >= 3, Space Ranger) nor a "
                    "genome group with gene_names (Cell Ranger 2); not a 10x feature-barcode matrix."
                )
            if len(groups) > 1:
                log.warning("%s: several genomes %s; reading %s", path, groups, groups[0])
            grp = f[groups[0]]
            names = _strings(grp["gene_names"])
            ids = _strings(grp["genes"])
            types = [GENE_EXPRESSION] * len(names)
        missing = [k for k in ("data", "indices", "indptr", "shape", "barcodes") if k not in grp]
        if missing:
            raise FormatError(f"{path}: the matrix lacks {missing}; the file is incomplete.")
        n_features, n_barcodes = (int(v) for v in grp["shape"][()])
        data = grp["data"][()]
        indices = grp["indices"][()]
        indptr = grp["indptr"][()]
        barcodes = _strings(grp["barcodes"])
    if len(barcodes) != n_barcodes or len(names) != n_features or len(indptr) != n_barcodes + 1:
        raise FormatError(
            f"{path}: shape says {n_features} features x {n_barcodes} barcodes but the file holds "
            f"{len(names)} feature names, {len(barcodes)} barcodes and {len(indptr) - 1} columns."
        )
    # CSC over features x barcodes == CSR over barcodes x features
    counts = sp.csr_matrix((data, indices, indptr), shape=(n_barcodes, n_features))
    return TenxMatrix(counts, barcodes, names, ids, types)


def write_10x_h5(
    path: str | Path,
    counts_csr,
    barcodes: Sequence[str],
    genes: Sequence[str],
    gene_ids: Sequence[str] | None = None,
    *,
    feature_types: Sequence[str] | None = None,
    genome: str = "unknown",
    library_id: str = "hexpress",
    software_version: str = "hexpress",
) -> Path:
    """Write a feature-barcode matrix in the 10x HDF5 layout (format version 2), atomically.

    What Space Ranger writes, so scanpy's ``read_10x_h5``, Seurat's ``Read10X_h5`` and
    :func:`read_10x_h5` open it.

    Args:
        path: output ``.h5`` file.
        counts_csr: ``(n_barcodes, n_genes)`` non-negative integer counts (dense or sparse; floats
            are rounded, as the format stores int32).
        barcodes: one per row.
        genes: gene symbols, one per column (``features/name``).
        gene_ids: feature ids (``features/id``); default the gene symbols.
        feature_types: default ``"Gene Expression"`` for every feature.
        genome: ``features/genome`` value.
        library_id: the file's ``library_ids`` attribute.
        software_version: the file's ``software_version`` attribute.

    Returns:
        ``path``.
    """
    path = Path(path)
    X = sp.csr_matrix(counts_csr)
    X.sort_indices()
    n, g = X.shape
    barcodes = [str(b) for b in barcodes]
    genes = [str(x) for x in genes]
    gene_ids = genes if gene_ids is None else [str(x) for x in gene_ids]
    types = [GENE_EXPRESSION] * g if feature_types is None else [str(x) for x in feature_types]
    if len(barcodes) != n or len(genes) != g or len(gene_ids) != g or len(types) != g:
        raise ValueError(
            f"write_10x_h5: counts are {n} x {g} but got {len(barcodes)} barcodes, {len(genes)} "
            f"genes, {len(gene_ids)} gene ids, {len(types)} feature types."
        )
    data = np.rint(X.data).astype(np.int32)

    def _bytes(values: Sequence[str]) -> np.ndarray:
        return np.array([v.encode() for v in values], dtype=f"S{max([1, *map(len, values)])}")

    with atomic_path(path) as tmp, h5py.File(tmp, "w") as f:
        f.attrs["filetype"] = np.bytes_("matrix")
        f.attrs["version"] = np.int32(2)
        f.attrs["library_ids"] = np.array([library_id.encode()])
        f.attrs["original_gem_groups"] = np.array([1], dtype=np.int64)
        f.attrs["chemistry_description"] = np.bytes_("Spatial 3' v1")
        f.attrs["software_version"] = software_version
        m = f.create_group("matrix")
        m.create_dataset("barcodes", data=_bytes(barcodes))
        m.create_dataset("data", data=data, compression="gzip")
        m.create_dataset("indices", data=X.indices.astype(np.int64), compression="gzip")
        m.create_dataset("indptr", data=X.indptr.astype(np.int64))
        m.create_dataset("shape", data=np.array([g, n], dtype=np.int32))
        feat = m.create_group("features")
        feat.create_dataset("_all_tag_keys", data=np.array([b"genome"]))
        feat.create_dataset("feature_type", data=_bytes(types))
        feat.create_dataset("genome", data=_bytes([genome] * g))
        feat.create_dataset("id", data=_bytes(gene_ids))
        feat.create_dataset("name", data=_bytes(genes))
    return path
