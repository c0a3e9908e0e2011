"""msir models: architectures, preprocessing and the safe checkpoint format shared by every other package."""

from models.checkpoint import (
    CheckpointError,
    CheckpointMeta,
    LoadedCheckpoint,
    load_checkpoint,
    read_checkpoint_meta,
    save_checkpoint,
    sha256_file,
)
from models.output import ModelOutput
from models.preprocessing import (
    ImageDecodeError,
    ImageTooLargeError,
    PreprocessSpec,
    UnsupportedImageError,
    normalize,
    open_image,
    original_size,
    preprocess,
    to_uint8,
)
from models.registry import UnknownModelError, available, build, options_of

__all__ = [
    "CheckpointError",
    "CheckpointMeta",
    "ImageDecodeError",
    "ImageTooLargeError",
    "LoadedCheckpoint",
    "ModelOutput",
    "PreprocessSpec",
    "UnknownModelError",
    "UnsupportedImageError",
    "available",
    "build",
    "load_checkpoint",
    "normalize",
    "open_image",
    "options_of",
    "original_size",
    "preprocess",
    "read_checkpoint_meta",
    "save_checkpoint",
    "sha256_file",
    "to_uint8",
]
