"""Shared fixtures live in tests/fixtures/, one module per owner, loaded as plugins."""

import os

# The tests fork to start processes (pexpect's pty children, subprocess) while the in-process test server's gRPC
# threads run; each child execs at once, so gRPC's fork handlers are not needed, and with threads inside gRPC
# they can crash the child (a segfault seen once in CI before exec). Set before the plugins import grpc.
os.environ.setdefault("GRPC_ENABLE_FORK_SUPPORT", "0")

pytest_plugins = ["fixtures.artifacts", "fixtures.server", "fixtures.charlm_client", "fixtures.service_core",
                  "fixtures.tls"]
