"""Errors that users can act on: each message names the key or path at fault and the fix."""


class ConfigError(ValueError):
    """A configuration value is invalid (names the config key and a valid alternative)."""


class DatasetNotFoundError(FileNotFoundError):
    """The dataset is missing or corrupt (names the path and how to get the data)."""


class CheckpointError(RuntimeError):
    """A stored checkpoint or weight file is missing or unreadable (names the file)."""
