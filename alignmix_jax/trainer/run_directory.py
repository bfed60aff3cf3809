"""The directory a run writes to."""

import pathlib
import tempfile


def prepare(workdir) -> pathlib.Path:
    """Creates `workdir` if needed and checks that files can be written there; a ValueError with
    one line naming the problem otherwise (a file in the way, a read-only folder, ...)."""
    workdir = pathlib.Path(workdir)
    if workdir.exists() and not workdir.is_dir():
        raise ValueError(f"workdir={str(workdir)!r} is a file; expected a directory")
    try:
        workdir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=workdir, prefix=".write_check"):
            pass
    except OSError as error:
        raise ValueError(
            f"workdir={str(workdir)!r} cannot be written: {error.strerror or error}"
        ) from None
    return workdir
