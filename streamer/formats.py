"""Transcript renderings: plain text, SubRip and WebVTT, from committed finals, with speakers where labelled."""

from __future__ import annotations

import html
from dataclasses import dataclass, field

from core.types import Word
from streamer.protocol import Final


@dataclass
class Cue:
    """One caption: an utterance, or the part of one that one speaker said."""

    start: float
    end: float
    text: str
    words: list[Word] = field(default_factory=list)
    speaker: int | None = None  # None: speakers are not labelled


def speaker_name(label: int) -> str:
    """How exports and the captions page name a speaker: labels count from 0, names from 1."""
    return f"Speaker {label + 1}"


def _stamp(seconds: float, sep: str) -> str:
    ms = int(round(max(seconds, 0.0) * 1000))
    h, ms = divmod(ms, 3_600_000)
    m, ms = divmod(ms, 60_000)
    s, ms = divmod(ms, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def turns(final: Final) -> list[Cue]:
    """A final cut where its words change speaker (`speaker_change`); otherwise the final as one piece. A piece's
    text is the final's own text between its words (so "181.8" stays written as the model wrote it)."""
    if not final.speaker_change:
        return [Cue(final.start, final.end, final.text, list(final.words), final.speaker)]
    ends: list[int] = []  # where each word ends in the text
    pos = 0
    for w in final.words:
        at = final.text.find(w.word, pos)
        if at < 0:  # the text does not follow the words: the words are the text
            ends = []
            break
        pos = at + len(w.word)
        ends.append(pos)
    out: list[Cue] = []
    a = 0
    for b in range(1, len(final.words) + 1):
        if b < len(final.words) and final.words[b].speaker == final.words[a].speaker:
            continue
        words = final.words[a:b]
        text = final.text[ends[a - 1] if a else 0 : ends[b - 1]].strip() if ends else " ".join(w.word for w in words)
        out.append(Cue(words[0].start, words[-1].end, text, list(words), words[0].speaker))
        a = b
    return out


def cues(finals: list[Final]) -> list[Cue]:
    """One caption cue per utterance (finals joined up to each endpoint), cut also where the speaker changes."""
    out: list[Cue] = []
    current: list[Cue] = []

    def close() -> None:
        if current:
            out.append(Cue(current[0].start, current[-1].end, " ".join(c.text for c in current),
                           [w for c in current for w in c.words], current[0].speaker))
            current.clear()

    for f in finals:
        if f.text:
            for piece in turns(f):
                if current and piece.speaker != current[-1].speaker:
                    close()
                current.append(piece)
        if f.endpoint:
            close()
    close()
    return out


def _txt_line(cue: Cue) -> str:
    return cue.text if cue.speaker is None else f"{speaker_name(cue.speaker)}: {cue.text}"


def to_txt(finals: list[Final]) -> str:
    return "".join(_txt_line(c) + "\n" for c in cues(finals))


def cue_text(text: str) -> str:
    """Cue text that cannot break its cue: one line (a blank line ends a cue), and `<`, `&`, `>` as entities
    (WebVTT's escapes; a `-->` would start a timing line). SubRip has no escapes of its own; its renderers
    read the same tags as WebVTT's, so it gets the same."""
    return html.escape(" ".join(text.split()), quote=False)


def to_srt(finals: list[Final]) -> str:
    """SubRip has no speaker markup: a labelled cue starts with the speaker's name."""
    blocks = [f"{i}\n{_stamp(c.start, ',')} --> {_stamp(c.end, ',')}\n{cue_text(_txt_line(c))}\n" for i, c in enumerate(cues(finals), 1)]
    return "\n".join(blocks)


def to_vtt(finals: list[Final]) -> str:
    """A labelled cue is a WebVTT voice span: `<v Speaker 1>text`."""
    blocks = []
    for c in cues(finals):
        voice = "" if c.speaker is None else f"<v {speaker_name(c.speaker)}>"
        blocks.append(f"{_stamp(c.start, '.')} --> {_stamp(c.end, '.')}\n{voice}{cue_text(c.text)}\n")
    return "WEBVTT\n\n" + "\n".join(blocks)


RENDERERS = {"txt": (to_txt, "text/plain"), "srt": (to_srt, "application/x-subrip"), "vtt": (to_vtt, "text/vtt")}
