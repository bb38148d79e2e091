"""The one-way house: package boundaries, no import cycles, and docs/architecture.md's graph is the code's."""

from __future__ import annotations

from pathlib import Path

from tools.import_graph import cycles, graph, markdown, violations

ROOT = Path(__file__).resolve().parents[1]


def test_imports_go_one_way():
    assert violations(graph()) == []


def test_no_import_cycles():
    assert cycles(graph()) == []


def test_architecture_doc_shows_the_current_graph():
    assert markdown(graph()) in (ROOT / "docs" / "architecture.md").read_text(), "run python -m tools.import_graph"


def test_a_detected_violation_and_cycle():
    """The checks can fail: a daemon module importing fusion, and a two-module cycle."""
    fake = {"streamer.engine": {"fusion.decoder"}, "fusion.decoder": {"core.types"}, "core.types": set()}
    assert violations(fake) == ["streamer.engine -> fusion.decoder"]
    assert cycles({"a.x": {"a.y"}, "a.y": {"a.x"}})
