"""The `eval` and `calibrate` subcommands end to end, as a user runs them, on tiny manifests (one or two dev clips)."""

from __future__ import annotations

import json
import subprocess
import sys

from conftest import ROOT, manifest

CLIPS = ("jfk", "206o0103")


def tiny_manifest(folder, clips: tuple[str, ...] = CLIPS):
    """A manifest of short speech-dev clips (absolute audio paths), in a folder of its own (its set name)."""
    entries = [e for e in manifest("speech-dev") if e["id"] in clips]
    folder.mkdir()
    path = folder / "manifest.jsonl"
    rows = [{k: v for k, v in e.items() if k not in ("path", "set")} | {"audio": e["path"]} for e in entries]
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def uadf_stream(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """`uadf-stream ARGS` with this checkout's code (python -m puts it first on sys.path)."""
    run = subprocess.run([sys.executable, "-m", "streamer", *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, run.stderr[-3000:]
    return run


def test_eval_reports_wer_per_set(tmp_path):
    out = tmp_path / "report.json"
    run = uadf_stream("eval", "--manifest", str(tiny_manifest(tmp_path / "tiny")), "--mode", "asr", "--llm", "", "--json", str(out))
    report = json.loads(out.read_text())
    tiny = report["sets"]["tiny"]
    assert tiny["utterances"] == 2 and tiny["ref_words"] > 20 and tiny["wer"] < 0.2, tiny
    assert {r["id"] for r in report["rows"]} == set(CLIPS) and all(r["text"] for r in report["rows"])
    assert "tiny" in run.stdout


def test_calibrate_writes_a_calibration_the_daemon_can_load(tmp_path):
    out = tmp_path / "calibration.json"
    tiny = tiny_manifest(tmp_path / "tiny", CLIPS[1:])  # one 3 s clip: the command, not the fit, is under test
    uadf_stream("calibrate", "--manifest", str(tiny), "--llm", "gemma3-270m", "--out", str(out), "--gates", "0.5,1.0")
    from fusion.calibration import Calibration

    calibration = Calibration.load(str(out))
    assert calibration.llm == "gemma3-270m" and calibration.asr_tau > 0 and calibration.llm_tau > 0
    assert calibration.details["manifests"] == [str(tiny)]


def test_a_missing_calibration_file_is_an_error_not_uncalibrated_fusion(tmp_path):
    """A misspelt `fusion.calibration` once fused with default temperatures and gate, with only a log warning."""
    missing = tmp_path / "no-such-calibration.json"
    run = subprocess.run(
        [sys.executable, "-m", "streamer", "eval", "--manifest", str(tiny_manifest(tmp_path / "tiny", CLIPS[1:])),
         "--mode", "uadf", "--set", f"fusion.calibration={missing}"],
        cwd=ROOT, capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 2, run.stderr[-2000:]
    assert f"fusion.calibration: no file {missing}" in run.stderr and "Traceback" not in run.stderr
