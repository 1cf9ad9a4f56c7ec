"""Shared fixtures live in tests/fixtures/, one module per owner, loaded as plugins."""

pytest_plugins = ["fixtures.artifacts", "fixtures.server", "fixtures.charlm_client", "fixtures.service_core"]
