"""hexpress.models."""

__all__: list[str] = []
