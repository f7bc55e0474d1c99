"""Exception types, one per kind of failure. Messages name file, frame and field."""


class MlpotError(Exception):
    """Base class of every error mlpot raises on purpose. Its message is one line (the
    line breaks of a message quoted from a library, e.g. YAML's, become spaces)."""

    def __init__(self, message: str = "", *args):
        if isinstance(message, str) and "\n" in message:
            message = " ".join(message.split())
        super().__init__(message, *args)


class DataError(MlpotError, ValueError):
    """Input data is malformed, incomplete or unphysical."""

    def __init__(self, message: str, *, source: str | None = None, frame: int | None = None,
                 field: str | None = None):
        where = []
        if source is not None:
            where.append(f"file {source}")
        if frame is not None:
            where.append(f"frame {frame}")
        if field is not None:
            where.append(f"field '{field}'")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.source, self.frame, self.field = source, frame, field
        self.detail = message  # the message without the place


class ConfigError(MlpotError, ValueError):
    """A configuration file or option is invalid."""


class ModelFileError(MlpotError, ValueError):
    """A saved model is missing, incomplete or of an unknown format."""
