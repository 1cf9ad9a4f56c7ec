"""Benchmarks of charlm (issue 7): run each as python -m bench.<name> --help."""
