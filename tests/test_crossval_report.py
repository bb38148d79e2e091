"""tools/crossval_report.py: pure logic over small eval reports (the committed biasing manifests as references)."""

import json

import pytest

from tools.crossval_report import Run, load_runs, main, table
from tools.data import ROOT, load_manifest

CALL = load_manifest(ROOT / "eval/biasing/speech-meeting/n100.jsonl")[0]
DEV = load_manifest(ROOT / "eval/biasing/speech-dev/n100.jsonl")[0]


def row(entry: dict, text: str) -> dict:
    return {"set": entry["set"], "id": entry["id"], "reference": entry["text"], "text": text, "errors": 0}


def write(folder, name: str, mode: str, rows: list[dict], context="manifest", manifests=(), fitted_on=None) -> None:
    report = {"mode": mode, "rows": rows, "context": context, "manifests": list(manifests)}
    if fitted_on is not None:
        report["calibration"] = {"path": "cal.json", "fitted_on": fitted_on}
    (folder / name).write_text(json.dumps(report))


def test_a_set_is_never_scored_with_a_calibration_fitted_on_it(tmp_path):
    without_sheila = CALL["text"].replace("Sheila", "Shayla")
    write(tmp_path, "asr-none.json", "asr", [row(CALL, without_sheila), row(DEV, DEV["text"])], context="none")
    write(tmp_path, "a.json", "uadf", [row(CALL, CALL["text"]), row(DEV, DEV["text"])],
          manifests=["eval/biasing/speech-meeting/n100.jsonl", "eval/biasing/speech-dev/n100.jsonl"], fitted_on=["speech-dev"])
    runs, left_out = load_runs(tmp_path)
    fused = Run("uadf", 100, ("speech-dev",))
    assert set(runs) == {Run("asr", None), fused}
    assert [r["set"] for r in runs[fused]] == ["speech-meeting"] and left_out == ["a.json: speech-dev/" + DEV["id"]]
    _, counts = table(runs, [100])
    base, held = counts[("speech-meeting", 100, Run("asr", None))], counts[("speech-meeting", 100, fused)]
    assert base.b_errors == 1 and base.missed == ["sheila"] and held.b_errors == 0 and held.wer == 0
    assert ("speech-dev", 100, fused) not in counts and ("speech-dev", 100, Run("asr", None)) in counts


def test_the_keyterm_list_length_comes_from_the_manifests_or_the_file_name(tmp_path):
    write(tmp_path, "asr-n500-speech-meeting.json", "asr", [row(CALL, CALL["text"])], context=None)
    write(tmp_path, "x.json", "asr", [row(DEV, DEV["text"])], manifests=["eval/biasing/speech-dev/n0.jsonl"])
    runs, _ = load_runs(tmp_path)
    assert {r["set"] for r in runs[Run("asr", 500)]} == {"speech-meeting"} and {r["set"] for r in runs[Run("asr", 0)]} == {"speech-dev"}


def test_a_fused_report_without_its_calibration_is_refused(tmp_path, capsys):
    write(tmp_path, "uadf-n100-speech-meeting.json", "uadf", [row(CALL, CALL["text"])])
    with pytest.raises(ValueError, match="without its calibration"):
        main([str(tmp_path)])
