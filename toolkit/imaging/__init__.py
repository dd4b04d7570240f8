"""Pixels: decoding, the decoded cache, image hashing and duplicate search — what every stage needs of images."""
