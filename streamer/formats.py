"""Transcript renderings: plain text, SubRip and WebVTT, from committed finals."""

from __future__ import annotations

import html

from streamer.protocol import Final


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def cues(finals: list[Final]) -> list[tuple[float, float, str]]:
    """One caption cue per utterance: finals joined up to each endpoint."""
    out: list[tuple[float, float, str]] = []
    current: list[Final] = []
    for f in finals:
        if f.text:
            current.append(f)
        if f.endpoint and current:
            out.append((current[0].start, current[-1].end, " ".join(x.text for x in current)))
            current = []
    if current:
        out.append((current[0].start, current[-1].end, " ".join(x.text for x in current)))
    return out


def to_txt(finals: list[Final]) -> str:
    return "".join(text + "\n" for _, _, text in cues(finals))


def cue_text(text: str) -> str:
    """Cue text that cannot break its cue: one line (a blank line ends a cue), and `<`, `&`, `>` as entities
    (WebVTT's escapes; a `-->` would start a timing line). SubRip has no escapes of its own; its renderers
    read the same tags as WebVTT's, so it gets the same."""
    return html.escape(" ".join(text.split()), quote=False)


def to_srt(finals: list[Final]) -> str:
    blocks = [f"{i}\n{_stamp(a, ',')} --> {_stamp(b, ',')}\n{cue_text(text)}\n" for i, (a, b, text) in enumerate(cues(finals), 1)]
    return "\n".join(blocks)


def to_vtt(finals: list[Final]) -> str:
    blocks = [f"{_stamp(a, '.')} --> {_stamp(b, '.')}\n{cue_text(text)}\n" for a, b, text in cues(finals)]
    return "WEBVTT\n\n" + "\n".join(blocks)


RENDERERS = {"txt": (to_txt, "text/plain"), "srt": (to_srt, "application/x-subrip"), "vtt": (to_vtt, "text/vtt")}
