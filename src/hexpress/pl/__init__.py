"""hexpress.pl."""

__all__: list[str] = []
