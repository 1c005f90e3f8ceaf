"""AnnData keys hexpress reads and writes, defined once.

Conventions (see the README's "Data model"):

* ``obsm["spatial"]``: unit centres, ``(n, 2)`` float, **x then y**, in level-0 (full-resolution)
  pixels of the sample's image, as scanpy and squidpy expect.
* ``obs["geometry"]``: footprint kind of each unit, one of :data:`GEOMETRIES`.
* ``obs["size_um"]``: footprint size in micrometres: disc diameter or square side. Polygons keep
  their vertices in ``uns["hexpress"]["polygons"]`` or come from a segmentation file.
* ``X``: raw counts (float32, CSR) as read; :func:`hexpress.data.normalize` keeps them in
  ``layers["counts"]`` and records what it did in ``uns["hexpress"]["normalization"]``.
* ``uns["hexpress"]``: sample metadata: ``sample_id``, ``patient_id``, ``technology``, ``mpp``
  (µm per level-0 pixel), ``image_path``, ``image_size`` ``[width, height]``.
"""

SPATIAL = "spatial"
GEOMETRY = "geometry"
SIZE_UM = "size_um"
IN_TISSUE = "in_tissue"
COUNTS = "counts"
UNS = "hexpress"
NORMALIZATION = "normalization"

DISC = "disc"
SQUARE = "square"
POLYGON = "polygon"
GEOMETRIES = (DISC, SQUARE, POLYGON)

TECHNOLOGIES = ("legacy-st", "visium", "visium-hd", "xenium", "h5ad", "synthetic")
