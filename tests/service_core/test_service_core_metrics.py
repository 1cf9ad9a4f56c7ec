"""The metrics' step histograms: K equal samples in one update read as K of prometheus_client's own."""

from __future__ import annotations

import random

import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.metrics import ModelHistogram

BUCKETS = (1e-5, 2.5e-5, 1e-4, 1e-3, 1.0)


def samples(registry: CollectorRegistry) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every exposed sample but the ``_created`` times (prometheus_client's own histograms add them)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(generate_latest(registry).decode())
            for s in family.samples if not s.name.endswith("_created")}


def test_a_model_histogram_reads_as_prometheus_histogram_fed_one_sample_at_a_time() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    mine = ModelHistogram("charlm_x", "Doc.", BUCKETS, ours)
    reference = Histogram("charlm_x", "Doc.", ["model"], buckets=BUCKETS, registry=theirs)
    rng = random.Random(0)
    values = [*BUCKETS, 0.0, 2.0, *(rng.uniform(0, 2e-3) for _ in range(40))]  # bounds themselves included
    for i, value in enumerate(values):
        model, count = ("a:1", "b:2")[i % 2], 1 + i % 8
        mine.observe(model, value, count)
        for _ in range(count):
            reference.labels(model).observe(value)
    got, want = samples(ours), samples(theirs)
    assert got.keys() == want.keys() and len(got) == 2 * (len(BUCKETS) + 3)  # +Inf, _count and _sum a model
    for key, value in want.items():  # counts exactly; the sums up to the order of the additions
        assert got[key] == (pytest.approx(value, rel=1e-12) if key[0].endswith("_sum") else value), key


def test_a_model_histogram_is_declared_before_any_sample() -> None:
    registry = CollectorRegistry()
    ModelHistogram("charlm_y", "Doc.", BUCKETS, registry)
    assert b"# TYPE charlm_y histogram" in generate_latest(registry)
