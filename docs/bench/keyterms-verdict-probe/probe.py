"""Probe: for every keyterm respelling candidate scored, Whisper's gain with the keyterm prompt (shipped verdict)
and without it (the plain decode's own preference, previous text only), labelled by whether the keyterm is one
of the utterance's rare words (true) or a distractor (false). Mirrors WhisperBackend._gains (first differing token)
with the keyterms left out of the prompt; run from the repository root with the project's venv:
`python docs/bench/keyterms-verdict-probe/probe.py speech-dev-noisy speech-dev-hard speech-dev`."""
import json, sys
import numpy as np, ctranslate2
from streamer.config import load_config
from streamer.engine import Engine
from streamer import whisper_backend as wb
from streamer.pipeline import transcribe_file
from core.types import MeetingContext, Mode
from tools.evaluate import load_manifest

cfg = load_config(overrides=["fusion.llm="])
eng = Engine(cfg)
B = wb.WhisperBackend
cur = {}
records = []
orig_respell, orig_gains = B._respell, B._gains
def respell(self, request, *a):
    cur['prompt'] = request.prompt
    return orig_respell(self, request, *a)
def gains(self, keyterms, words, candidates, encoder_output, frames):
    g = orig_gains(self, keyterms, words, candidates, encoder_output, frames)
    flat = [t for w in words for t in w["tokens"]]
    bounds = np.cumsum([0] + [len(w["tokens"]) for w in words])
    encoded = ctranslate2.StorageView.from_array(np.ascontiguousarray(encoder_output))
    start = self.prompt_tokens(cur.get('prompt', ''), ())[:-1]
    prob = lambda tokens: self.whisper_model.model.align(encoded, start, [tokens], [frames])[0].text_token_probs
    for j, c in enumerate(candidates):
        at = int(bounds[c.start])
        new = self.text_tokens(c.text) + flat[bounds[c.stop]: bounds[c.stop] + 1]
        k = next((k for k, (a, b) in enumerate(zip(new, flat[at:])) if a != b), None)
        if k is None:
            gnp = 0.0
        else:
            p_plain = max(prob(flat[: at + k + 1])[at + k], 1e-12)
            p_cand = max(prob(flat[:at] + new[: k + 1])[at + k], 1e-12)
            gnp = float(np.log(p_cand) - np.log(p_plain))
        span = "".join(w["word"] for w in words[c.start:c.stop]).strip()
        e = cur['entry']
        term = c.text.strip(" ,.?!;:\"'").lower()
        true = any(term == r.lower() for r in e.get('rare_words', []))
        records.append(dict(set=cur['set'], id=e['id'], span=span, text=c.text, gain=g[j], gain_np=gnp, true=true, sim=c.similarity))
    return g
B._respell, B._gains = respell, gains
for s in sys.argv[1:]:
    for e in load_manifest(f"eval/biasing/{s}/n100.jsonl", 45, None):
        cur['entry'], cur['set'] = e, s
        transcribe_file(e["path"], eng, Mode.ASR, meeting=MeetingContext(tuple(e["keyterms"])))
    json.dump(records, open('docs/bench/keyterms-verdict-probe/verdicts.json', 'w'))
    print(s, len(records), flush=True)
