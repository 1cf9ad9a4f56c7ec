"""charlm client."""
