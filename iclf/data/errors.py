"""The one error type of :mod:`iclf.data`: bad input on disk, named precisely."""

from __future__ import annotations

import os


class DatasetError(Exception):
    """Bad dataset input. The message names the file, the record index and the field.

    ``record`` is the 0-based index of the record in the annotation file (``None`` when the
    problem concerns the file as a whole); ``field`` is the JSON field at fault (``None`` when
    no single field is). ``file`` is the path of the offending file (an annotation file, an
    image, or a directory that should exist).
    """

    def __init__(
        self,
        file: str | os.PathLike[str],
        record: int | None = None,
        field: str | None = None,
        message: str = "",
    ) -> None:
        self.file = os.fspath(file)
        self.record = record
        self.field = field
        self.message = message
        super().__init__(self._format())

    def _format(self) -> str:
        where = [self.file]
        if self.record is not None:
            where.append(f"record {self.record}")
        if self.field is not None:
            where.append(f"field '{self.field}'")
        return f"{', '.join(where)}: {self.message}"
