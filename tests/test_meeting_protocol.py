"""Meeting context on the wire (protocol v1): `keyterms` and `context` in `start`, the mid-stream `context`
message, their limits and error codes; the new meeting reaching Whisper's prompt and the LLM's prefix."""

import asyncio
import json
from dataclasses import replace

import pytest

from clients.stream import connect
from core.types import MeetingContext, Mode
from fusion.decoder import FusionContext
from streamer.errors import StreamError
from streamer.processor import StreamingProcessor
from streamer.protocol import MAX_CONTEXT_WORDS, MAX_KEYTERM_CHARS, MAX_KEYTERMS, Context, Start, parse_client_message
from streamer.wire.v1 import V1Adapter
from tools.biasing import OUT as BIASING
from streamutil import ERROR_CODES, expect_end, pcm16, speech, start


def test_start_carries_keyterms_and_context_round_trip():
    msg = parse_client_message(start(keyterms=["Maintz", "  Peter   Schoeffer "], context="Agenda: early printing."))
    assert isinstance(msg, Start) and msg.keyterms == ["Maintz", "Peter Schoeffer"] and msg.context == "Agenda: early printing."
    assert parse_client_message(json.dumps(msg.to_dict())) == msg
    plain = parse_client_message(start())
    assert plain.keyterms == [] and plain.context is None and "keyterms" not in plain.to_dict()


def test_context_message_replaces_both_fields():
    msg = parse_client_message(json.dumps({"type": "context", "keyterms": ["Gutenberg", "Gutenberg"]}))
    assert isinstance(msg, Context) and msg.keyterms == ["Gutenberg"] and msg.context == ""
    assert parse_client_message(json.dumps(msg.to_dict())) == msg


@pytest.mark.parametrize(
    "fields, code",
    [
        ({"keyterms": "Maintz"}, "bad_keyterms"),
        ({"keyterms": {"a": 1}}, "bad_keyterms"),
        ({"keyterms": 0}, "bad_keyterms"),
        ({"keyterms": ["ok", 5]}, "bad_keyterms"),
        ({"keyterms": ["ok", "   "]}, "bad_keyterms"),
        ({"keyterms": ["x" * (MAX_KEYTERM_CHARS + 1)]}, "bad_keyterms"),
        ({"keyterms": [f"term{k}" for k in range(MAX_KEYTERMS + 1)]}, "bad_keyterms"),
        ({"context": ["agenda"]}, "bad_context"),
        ({"context": 7}, "bad_context"),
        ({"context": "word " * (MAX_CONTEXT_WORDS + 1)}, "bad_context"),
        ({"context": "x" * 20001}, "bad_context"),
    ],
)
@pytest.mark.parametrize("kind", ["start", "context"])
def test_meeting_limits_have_stable_codes(kind, fields, code):
    text = start(**fields) if kind == "start" else json.dumps({"type": "context", **fields})
    with pytest.raises(StreamError) as err:
        parse_client_message(text)
    assert err.value.code == code and err.value.message and not err.value.fatal
    assert code in ERROR_CODES  # documented in docs/protocol.md


def test_limits_themselves_are_accepted():
    terms = [f"term{k}" for k in range(MAX_KEYTERMS - 1)] + ["x" * MAX_KEYTERM_CHARS]
    msg = parse_client_message(start(keyterms=terms, context="word " * MAX_CONTEXT_WORDS))
    assert len(msg.keyterms) == MAX_KEYTERMS and len(msg.context.split()) == MAX_CONTEXT_WORDS


def test_a_bad_context_inside_a_session_is_not_fatal():
    adapter = V1Adapter(262144)
    with pytest.raises(StreamError) as err:
        adapter.parse(json.dumps({"type": "context", "keyterms": [1]}), started=True)
    assert err.value.code == "bad_keyterms" and not err.value.fatal


def test_fusion_context_takes_a_new_meeting_at_the_next_decode_only():
    """set_meeting comes from the event loop while a decode may run in a worker thread: nothing of the
    running decode's state changes until the next decode takes it."""
    ctx = FusionContext(None, meeting=MeetingContext(("old",)))
    ctx._prefix_ids, ctx.memo[("step",)] = [1, 2], 7
    ctx.set_meeting(MeetingContext(("new",), "notes"))
    assert ctx.meeting.keyterms == ("old",) and ctx._prefix_ids == [1, 2] and ctx.memo
    ctx.take_meeting()
    assert ctx.meeting == MeetingContext(("new",), "notes") and ctx._prefix_ids is None and not ctx.memo
    ctx._prefix_ids = [3]
    ctx.take_meeting()  # nothing new: the prefix stays
    assert ctx._prefix_ids == [3]


def test_the_prompt_carries_the_keyterms_heard_and_new_ones_replace_them(engine):
    """Real model: a window's prompt carries the session's keyterms spelled close to words the stream has
    (JFK's "fellow Americans" and "country" bring in "fellow Americans" and "countree", not "Gutenberg"); a
    new meeting's keyterms replace them at the next window."""
    terms = ("Gutenberg", "fellow Americans", "Schoeffer", "countree", "Maintz")
    processor = engine.new_processor(Mode.ASR, meeting=MeetingContext(terms))
    audio = speech("jfk")
    prompts, _ = _window_keyterms(processor, engine, audio[: 16000 * 9])
    assert prompts[0] == () and {"fellow Americans", "countree"} <= set(prompts[-1]), prompts
    assert not {"Gutenberg", "Schoeffer", "Maintz"} & set(prompts[-1]), prompts
    processor.set_meeting(MeetingContext(("Berlin",)))
    processor.insert_audio(audio[16000 * 9 : 16000 * 10])
    request = processor.next_request()
    assert request is not None and request.keyterms == ()


def _window_keyterms(processor: StreamingProcessor, engine, audio) -> tuple[list[tuple[str, ...]], set[str]]:
    """Each window's prompt keyterms, and every word (lower case) a window heard."""
    prompts, words = [], set()
    for i in range(0, len(audio), 1600):
        processor.insert_audio(audio[i : i + 1600])
        if (request := processor.next_request()) is not None:
            prompts.append(request.keyterms)
            hypothesis = engine.transcribe([request])[0]
            words |= {w.word.strip(" ,.?!").lower() for w in hypothesis.words}
            processor.accept_hypothesis(hypothesis, request)
    return prompts, words


def test_a_long_list_puts_at_most_keyterm_terms_look_alikes_in_a_prompt(engine):
    """Real model, the 500-distractor list of jfk in eval/biasing: many distractors are spelled within ratio 60 of
    JFK's words ("fur", "dee"); a window's prompt carries at most `keyterm_terms` of them besides the terms heard."""
    lines = (BIASING / "speech-dev-noisy" / "n500.jsonl").read_text().splitlines()
    entry = next(e for e in map(json.loads, lines) if e["id"] == "jfk_pink5db")
    meeting = MeetingContext(tuple(entry["keyterms"]))
    options = engine.config.streaming
    bounded, heard = _window_keyterms(StreamingProcessor(options, Mode.ASR, meeting=meeting), engine, speech("jfk"))
    unbounded, _ = _window_keyterms(
        StreamingProcessor(replace(options, keyterm_terms=0), Mode.ASR, meeting=meeting), engine, speech("jfk")
    )
    assert options.keyterm_terms == 5 and max(len(set(p) - heard) for p in bounded) == 5, bounded
    assert max(len(set(p) - heard) for p in unbounded) > 10, unbounded


def test_daemon_takes_keyterms_and_context_messages(daemon):
    """Real socket: keyterms in `start` and a mid-stream `context` are accepted silently; a bad `context`
    gets its error and the session goes on to its `end`; a bad `start` can be followed by a good one."""

    async def go():
        async with connect(daemon.ws_url) as ws:
            await ws.send(start(keyterms=["x" * (MAX_KEYTERM_CHARS + 1)]))
            assert json.loads(await ws.recv())["code"] == "bad_keyterms"
            await ws.send(start(keyterms=["Berlin"], context="A speech by John F. Kennedy."))
            assert json.loads(await ws.recv())["type"] == "ready"
            audio = speech("jfk")
            half = len(audio) // 2
            await ws.send(pcm16(audio[:half]))
            await ws.send(json.dumps({"type": "context", "keyterms": ["fellow Americans"], "context": ""}))
            await ws.send(json.dumps({"type": "context", "context": 7}))
            await ws.send(pcm16(audio[half:]))
            await ws.send(json.dumps({"type": "stop"}))
            messages = await expect_end(ws)
            errors = [m["code"] for m in messages if m["type"] == "error"]
            assert errors == ["bad_context"]
            text = " ".join(m["text"] for m in messages if m["type"] == "final").lower()
            assert "country" in text and "fellow americans" in text

    asyncio.run(go())


def test_transcribe_command_checks_keyterms_like_the_protocol():
    from streamer.cli import main

    with pytest.raises(SystemExit, match="bad_keyterms"):
        main(["transcribe", "--keyterm", "x" * (MAX_KEYTERM_CHARS + 1), "clip.wav"])


def test_the_python_clients_send_keyterms_and_the_daemon_spells_them(daemon, tmp_path, capsys):
    """The file client's `--keyterm` (the mic client's too: one ResumableSession) reaches the daemon in `start`:
    over a real socket, "Joyans" in the bus-noise clip becomes the keyterm "Joynes" with the list, not without it.
    A resume's `start` carries the list again (a resumed session takes its meeting from the `start` that resumes it)."""
    import soundfile as sf

    from clients.file import main as file_client
    from clients.stream import start_message

    wav = tmp_path / "clip.wav"
    sf.write(wav, speech("47rc0206_bus-low", "speech-dev-hard"), 16000)
    keyterms = ["oversee", "Joynes", "permutation", "pans", "peking", "drawstring"]
    texts = []
    for terms in ([], keyterms):
        assert file_client([str(wav), "--url", daemon.ws_url, "--speed", "0", "--quiet", *(a for t in terms for a in ("--keyterm", t))]) == 0
        texts.append(capsys.readouterr().out)
    assert "Joynes" not in texts[0] and "Joynes" in texts[1], texts
    assert json.loads(start_message(16000, 1, None, "s1", "secret", 3, keyterms))["keyterms"] == keyterms
