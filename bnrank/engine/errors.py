"""Every refusal the engine makes is one of these, with a message a user can act on.

The service maps them to HTTP 422 and the CLI prints them; neither has to know the details.
"""

from __future__ import annotations


class BNRankError(Exception):
    """Base class: a problem with the user's input, never a bug in BNRank."""


class CheckpointError(BNRankError):
    """A checkpoint file cannot be used."""


class UnsafeCheckpointError(CheckpointError):
    """The file would need an unrestricted unpickle (arbitrary code) to load; it is refused unopened."""


class CorruptCheckpointError(CheckpointError):
    """The file is truncated, has a lying header, or is not a checkpoint at all."""


class UnknownArchitectureError(BNRankError):
    """The architecture name is not registered, or a checkpoint's keys match none that is."""


class ArchitectureMismatchError(CheckpointError):
    """The checkpoint matches too little of the architecture; carries the load report."""

    def __init__(self, message: str, report: object | None = None) -> None:
        super().__init__(message)
        self.report = report


class NetworkDefError(BNRankError):
    """A MONAI network description is malformed or names a class outside the allow-list."""


class DatasetError(BNRankError):
    """A dataset cannot be used at all (no usable case, unreadable dataset.json, unknown layout)."""


class TrainingError(BNRankError):
    """Training could not run or diverged (NaN loss, patch larger than every volume, ...)."""


class LimitExceededError(BNRankError):
    """The input is well-formed but would cost more memory or time than the configured limit allows.

    A separate class so a caller can answer it differently (say 413 rather than 422) and so tests can tell
    a refusal by size from a refusal by content.
    """


class CheckpointTooLargeError(CheckpointError, LimitExceededError):
    """Reading or building the checkpoint would exceed a size limit (decompressed bytes, parameters)."""


class NetworkTooLargeError(NetworkDefError, LimitExceededError):
    """A network_def describes a network with more parameters than allowed; refused before it is built."""


class InspectionLimitError(CheckpointError, LimitExceededError):
    """Inspecting a checkpoint in its isolated process ran out of its memory or time limit."""
