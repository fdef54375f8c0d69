"""Errors that users can act on: each message names the key or path at fault and the fix.

Every entry point turns a `UserError` into one line `error: <message>` and exit status 2
(`robust_ensembles.core.cli`); anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input the user can fix: a config value, a missing dataset, a missing or corrupt file."""


class ConfigError(UserError, ValueError):
    """A configuration value is invalid (names the config key and a valid alternative)."""


class DatasetNotFoundError(UserError, FileNotFoundError):
    """The dataset is missing or corrupt (names the path and how to get the data)."""


class CheckpointError(UserError, RuntimeError):
    """A stored checkpoint or weight file is missing or unreadable (names the file)."""


class StoreBusyError(UserError, RuntimeError):
    """Another job held a store entry longer than `store.lock.timeout_s` (names the entry, its holder and the fix)."""


class StoreIntegrityError(UserError, RuntimeError):
    """A store entry's files do not match the digests recorded when it was completed (names the entry and the fix)."""


class StoreSchemeError(UserError, RuntimeError):
    """The store was written under an older identity scheme (names the migrate command)."""
