"""hexpress.train."""

__all__: list[str] = []
