"""Image IO that carries geometry; the only place where ITK/NIfTI axis order is converted."""
from osmedseg.io.backends import SUPPORTED_ENDINGS, file_ending
from osmedseg.io.geometry import Geometry
from osmedseg.io.images import read_array, read_image, read_label, write_image, write_label

__all__ = ["Geometry", "SUPPORTED_ENDINGS", "file_ending", "read_array", "read_image", "read_label", "write_image",
           "write_label"]
