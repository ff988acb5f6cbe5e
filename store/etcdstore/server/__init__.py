"""The server layer: proposals, apply, read index, membership."""
