"""hexpress.infer."""

__all__: list[str] = []
