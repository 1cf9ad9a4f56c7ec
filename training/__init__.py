"""charlm training."""
