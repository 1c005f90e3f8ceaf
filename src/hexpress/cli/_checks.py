"""Checks of command-line values made before any work starts, with suggestions."""

from __future__ import annotations

import difflib
from collections.abc import Sequence
from pathlib import Path

from hexpress.errors import CheckpointError, ConfigError, InputFileError

__all__ = ["check_checkpoint_path", "check_names"]

# suffixes of the two files of a hexpress checkpoint (see hexpress.models.checkpoint)
_CHECKPOINT_SUFFIXES = (".safetensors", ".json")


def check_names(
    given: Sequence[str], valid: Sequence[str], *, option: str, what: str = "gene"
) -> None:
    """Refuse names that are not in ``valid``, suggesting the closest valid ones.

    Raises:
        ConfigError: naming each unknown name, its close matches (``difflib``) and a few
            valid names.
    """
    known = set(valid)
    unknown = [g for g in given if g not in known]
    if not unknown:
        return
    lowered = {str(v).lower(): v for v in valid}
    hints = []
    for name in unknown[:5]:
        close = difflib.get_close_matches(name, list(valid), n=3, cutoff=0.6)
        same_case = lowered.get(name.lower())
        if same_case is not None and same_case not in close:
            close.insert(0, same_case)
        hints.append(f"{name!r} (did you mean {', '.join(close)}?)" if close else repr(name))
    more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
    raise ConfigError(
        f"{option}: unknown {what}(s) {', '.join(hints)}{more}. The model predicts "
        f"{len(valid)} {what}s, e.g. {', '.join(map(str, list(valid)[:8]))}; "
        'the checkpoint\'s .json lists them all ("genes").'
    )


def check_checkpoint_path(path: Path) -> None:
    """Refuse, before anything runs, a path that cannot be a hexpress checkpoint.

    A hexpress checkpoint is two files, ``NAME.safetensors`` and ``NAME.json``, that ``hexpress
    train`` writes together into the run folder; either file or the common ``NAME`` is accepted.
    """
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob("*.json")) + sorted(p.glob("*/*.json"))
        hint = f" e.g. {found[0].with_suffix('')}" if found else ""
        raise InputFileError(
            f"--checkpoint {p} is a folder; give the checkpoint inside it (NAME.safetensors + "
            f"NAME.json, or their common NAME){hint}."
        )
    if p.suffix and p.suffix not in _CHECKPOINT_SUFFIXES and p.is_file():
        raise CheckpointError(
            f"--checkpoint {p} is a {p.suffix} file, not a hexpress checkpoint. A hexpress "
            "checkpoint is a pair NAME.safetensors + NAME.json written by `hexpress train` "
            "(give either file or NAME); hexpress never unpickles .pt / .pth / .ckpt files. To "
            "start from an encoder's weights in such a file, train with encoder_weights=PATH."
        )
    if not p.exists() and not any(p.with_name(p.name + s).is_file() for s in _CHECKPOINT_SUFFIXES):
        raise InputFileError(
            f"--checkpoint {p}: no such checkpoint (looked for {p}, {p.name}.safetensors and "
            f"{p.name}.json); `hexpress train` prints the path of the checkpoint it writes."
        )
