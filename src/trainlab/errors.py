"""Errors a user can cause. The CLI turns each into one line on stderr and exit status 2."""


class UserError(Exception):
    """A mistake in what the user asked for: bad config, unknown name, unreadable file."""


class ConfigError(UserError):
    """An invalid setting (unknown task or technique, bad number, conflicting techniques)."""


class DataError(UserError):
    """A data file that is missing, unreadable, corrupt or fails its checksum."""


class CheckpointError(UserError):
    """A checkpoint that cannot be read or does not match the run."""
