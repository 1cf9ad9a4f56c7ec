"""charlm service."""
