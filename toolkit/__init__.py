"""clsctl: image classification for competitions and projects, from a folder of images to a submission."""

__version__ = "0.1.0"
