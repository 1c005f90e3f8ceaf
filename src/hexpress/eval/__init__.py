"""hexpress.eval."""

__all__: list[str] = []
