"""Errors a user can act on: the message names the config key, the file or the row."""


class PtuneError(Exception):
    """Base of the errors `ptune` reports as one line instead of a traceback."""


class ConfigError(PtuneError, ValueError):
    pass


class DataError(PtuneError, ValueError):
    pass


class CheckpointError(PtuneError):
    pass
