"""Keyterm candidates: the prefix tree over Whisper spellings, and the decoder forcing a keyterm whole
(a scripted Whisper over real tokens and a scripted LLM: pure decoding logic, no model weights)."""

import numpy as np

from core.types import FusionOptions, MeetingContext
from fusion.calibration import Calibration
from fusion.candidates import WordPieces
from fusion.decoder import Comparison, FusionDecoder
from fusion.keyterms import KeytermTrie, propose, spellings
from fusion.llm_scorer import LLMState
from fusion.uncertainty import log_softmax
from test_fusion_gate import PROMPT, TOK, VOCAB, Result, ScriptedLLM

PIECES = WordPieces(TOK)
PATH = TOK.encode(" I met Whit more and Peter Schulfer at the bank today")
SPOKEN = TOK.encode(" I met Whittemore and Peter Schoeffer at the bank today")


def uniform_step(*tokens: int) -> np.ndarray:
    lp = np.full(VOCAB, -30.0)
    for k, t in enumerate(tokens):
        lp[t] = np.log(0.5 / 2**k)
    return lp


def test_spellings_cover_the_casings_a_transcript_writes():
    assert spellings("new jersey") == ["new jersey", "New jersey", "New Jersey"]
    assert spellings("Schoeffer") == ["Schoeffer", "schoeffer"]


def test_trie_proposes_keyterms_that_start_a_word_or_continue_it():
    trie = KeytermTrie(("Whittemore", "Schoeffer", "staple"), TOK)
    whit = PATH.index(TOK.encode(" Whit")[0])
    # A new word: " Wh" (Whittemore) against the ASR's " Whit", if the ASR gives " Wh" enough probability.
    step = uniform_step(PATH[whit], TOK.encode(" Wh")[0])
    (cand,) = propose(trie, PIECES, PATH, whit, PATH[whit], step, 0.1, 3)
    assert cand.term == "Whittemore" and cand.tokens == tuple(TOK.encode(" Whittemore")) and cand.first_prob == 0.25
    assert propose(trie, PIECES, PATH, whit, PATH[whit], step, 0.3, 3) == []  # below min_prob
    # Mid-word: the ASR wrote " Sch" and goes on with "ul"; the keyterm goes on with "oe" "ffer".
    ul = PATH.index(TOK.encode("ul")[0], whit)
    step = uniform_step(PATH[ul], TOK.encode(" Schoeffer")[1])
    (cand,) = propose(trie, PIECES, PATH, ul, PATH[ul], step, 0.1, 3)
    assert cand.tokens == tuple(TOK.encode(" Schoeffer")[1:])
    assert propose(trie, PIECES, PATH, ul, PATH[ul], step, 0.1, 3, floor=ul) == []  # a final word is not reopened


def test_trie_skips_a_keyterm_the_path_already_spells():
    path = TOK.encode(" at the Whittemore bank")
    at = path.index(TOK.encode(" Wh")[0])
    capital = TOK.encode(" WH")[0]
    trie = KeytermTrie(("WHITTEMORE",), TOK)  # its lower-case spelling is the path's, whatever the case
    step = uniform_step(path[at], capital)
    assert [c.tokens for c in propose(trie, PIECES, path, at, path[at], step, 0.01, 3)] == []


def test_trie_bounds_candidates_per_step():
    trie = KeytermTrie(("Whittemore", "Whitby", "Whitney", "Whitehall"), TOK)
    whit = PATH.index(TOK.encode(" Whit")[0])
    step = log_softmax(np.zeros(VOCAB))  # every token as likely
    assert len(propose(trie, PIECES, PATH, whit, PATH[whit], step, 0.0, 2)) == 2


SEGMENTS = [(" I met",) * 2, (" Whit more", " Whittemore"), (" and Peter",) * 2, (" Schulfer", " Schoeffer"), (" at the bank today",) * 2]


class BranchWhisper:
    """Greedy over scripted segments: in each, the ASR's spelling scores 10, the spoken one 10 - margin
    (teacher-forced prompts follow either); after the last segment, the end."""

    def __init__(self, margin: float):
        self.margin = margin

    def _offers(self, prefix: list[int], seg: int, pos: int, z: np.ndarray) -> None:
        if seg == len(SEGMENTS):
            if pos == len(prefix):
                z[TOK.eot] = 10.0
            return
        for text, score in zip(dict.fromkeys(SEGMENTS[seg]), (10.0, 10.0 - self.margin)):
            seq = TOK.encode(text)
            rest = prefix[pos:]
            if rest[: len(seq)] == seq:
                self._offers(prefix, seg + 1, pos + len(seq), z)
            elif seq[: len(rest)] == rest:
                z[seq[len(rest)]] = max(z[seq[len(rest)]], score)

    def step(self, prefix: list[int]) -> np.ndarray:
        z = np.full(VOCAB, -1e4, dtype=np.float32)
        self._offers(prefix, 0, 0, z)
        return z

    def generate(self, encoder, prompts, max_length=448, **kw):
        out = []
        for prompt in prompts:
            ids = list(prompt[len(PROMPT):])
            while len(ids) < 40 and int(np.argmax(self.step(ids))) != TOK.eot:
                ids.append(int(np.argmax(self.step(ids))))
            out.append(Result(ids, [self.step(ids[:k]) for k in range(len(ids) + 1)]))
        return out


def decode(margin: float, keyterms: tuple[str, ...], boost: float, gate: float = 50.0, likes: str = "\0"):
    llm = ScriptedLLM(likes)
    options = FusionOptions(mode="uadf", llm="scripted", gate=gate, min_context_words=0)
    dec = FusionDecoder(BranchWhisper(margin), TOK, options, llm, Calibration(gate=gate, keyterm_boost=boost, keyterm_min_prob=0.01))
    ctx = dec.new_context(MeetingContext(keyterms))
    ctx.state = LLMState()
    return dec.decode(np.zeros((1, 8, 4), np.float32), PROMPT, ctx, "uadf", 448), llm


def test_keyterm_spellings_are_forced_whole_when_they_win():
    res, llm = decode(margin=1.0, keyterms=("Whittemore", "Schoeffer"), boost=3.0)
    assert res.tokens == SPOKEN  # both names, though the ASR spelled neither and its gate never opened
    assert llm.calls == res.llm_calls == 2
    start = SPOKEN.index(TOK.encode(" Wh")[0])
    assert res.fused[start : start + 4] == [True] * 4 and sum(res.fused) == 4 + 2  # " Wh itt em ore", "oe ffer"


def test_a_keyterm_the_asr_rules_out_never_reaches_the_llm():
    res, llm = decode(margin=4.0, keyterms=("Whittemore", "Schoeffer"), boost=0.0, likes="Whittemore")
    assert res.tokens == PATH and llm.calls == 0 and not any(res.fused)


def test_near_a_tie_the_llm_with_the_meeting_prefix_decides():
    # ASR odds -1 for each name, boost 0.8: only an LLM sure of the name tips it (the UADF rule).
    res, llm = decode(margin=1.0, keyterms=("Whittemore", "Schoeffer"), boost=0.8, likes="Whittemore")
    text = TOK.decode(res.tokens)
    assert "Whittemore" in text and "Schulfer" in text and llm.calls == 2


def test_no_keyterms_no_extra_work():
    res, llm = decode(margin=1.0, keyterms=(), boost=3.0)
    assert res.tokens == PATH and llm.calls == 0


def test_keyterm_steps_are_bounded_per_decode():
    llm = ScriptedLLM()
    options = FusionOptions(mode="uadf", llm="scripted", gate=50.0, min_context_words=0)
    dec = FusionDecoder(BranchWhisper(1.0), TOK, options, llm, Calibration(gate=50.0, keyterm_boost=3.0, keyterm_min_prob=0.01))
    dec.keyterm_steps = 1
    ctx = dec.new_context(MeetingContext(("Whittemore", "Schoeffer")))
    res = dec.decode(np.zeros((1, 8, 4), np.float32), PROMPT, ctx, "uadf", 448)
    assert llm.calls == 1 and "Schulfer" in TOK.decode(res.tokens)


def test_boost_and_subsets_of_a_comparison():
    cmp = Comparison(0.5, [(1,), (2,), (3, 4)], [("a", "b"), ("a", "c")], np.array([0.0, -0.5, -2.0]), np.array([0.0, 0.0, 5.0]),
                     from_asr=[True, True, False], from_keyterm=[False, False, True], first_prob=[0.9, 0.3, 0.05], bias=[0, 0, 1])
    assert cmp.uadf_choice(1.0, 1.0) == 0
    assert cmp.uadf_choice(1.0, 1.0, keyterm_boost=3.0) == 2
    sub = cmp.subset(cmp.first_prob >= 0.1)
    assert sub.cands == [(1,), (2,)] and sub.pairs == [("a", "b")] and not sub.from_keyterm.any() and not sub.bias.any()
    assert Comparison(0.5, [(1,)], [], np.zeros(1), np.zeros(1)).from_asr.all()  # defaults: the ASR's own candidates


def test_keyterm_occurrences_counted_in_spans():
    trie = KeytermTrie(("thou", "New Jersey"), TOK)
    assert trie.count(" art thou the") == 1 and trie.count(" art now the") == 0
    assert trie.count(" in new jersey, thou") == 2 and trie.count(" new") == 0
