"""The project's exception types.

Every error the library raises for bad input is an ``AvatarError`` whose message is one
sentence naming the input and what was expected. The CLI prints that sentence and exits
non-zero; the Blender operators report it and cancel.
"""


class AvatarError(Exception):
    """Base class of every error HeadSplat raises on purpose."""


class HeadModelError(AvatarError):
    """A head-model file is missing, corrupt or not a head model."""


class ParameterError(AvatarError, ValueError):
    """Parameters of the wrong shape, an unknown expression name, NaN/inf values."""


class AvatarFileError(AvatarError):
    """An avatar or PLY file is missing, truncated, foreign or of a newer version."""


class ImageError(AvatarError):
    """A file is not a readable image."""


class FaceNotFoundError(AvatarError):
    """No usable face in the image."""


class FaceTooSmallError(AvatarError):
    """The face is too small to reconstruct."""


class MotionError(AvatarError):
    """A motion file is missing, malformed or in an unknown expression space."""


class CheckpointError(AvatarError):
    """A feed-forward checkpoint is missing or does not match the configuration."""


class Cancelled(AvatarError):
    """A long operation was cancelled by the user (cancel event or Ctrl-C)."""
