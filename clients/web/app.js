// uadf-stream live captions page. Plain JS, no build step, no external resources.
// Speaks protocol version 1 (docs/protocol.md) over ws(s)://HOST/v1/listen.
(function () {
  "use strict";

  const SCRIPT_URL = (document.currentScript && document.currentScript.src) || location.href;
  const WORKLET_URL = new URL("pcm-worklet.js", SCRIPT_URL).href;
  const CHUNK_MS = 100;               // audio frame length sent to the server
  const MAX_PENDING_SECONDS = 3;      // audio kept while (re)connecting; older audio is dropped
  const MAX_BUFFERED_BYTES = 4 << 20; // drop audio if the socket cannot keep up
  const BACKOFF_MIN_MS = 500;
  const BACKOFF_MAX_MS = 10000;
  const STOP_TIMEOUT_MS = 20000;      // wait this long for `end` after `stop`
  const CUE_MAX_CHARS = 84;           // subtitles: two lines of 42
  const CUE_LINE_CHARS = 42;
  const CUE_MAX_SECONDS = 6;
  const SPEAKER_COLOURS = 8;          // speaker k is drawn in colour k mod 8 (style.css .spk0 ... .spk7)

  const $ = (id) => document.getElementById(id);
  const ui = {
    start: $("start"), stop: $("stop"), mode: $("mode"), keyterms: $("keyterms"), speakers: $("speakers"), big: $("bigmode"),
    exitBig: $("exitbig"),
    showFused: $("showfused"), clear: $("clear"), dlTxt: $("dl-txt"), dlSrt: $("dl-srt"),
    dlVtt: $("dl-vtt"), state: $("state"), session: $("session"), info: $("info"), error: $("error"),
    bigState: $("bigstate"), detail: $("detail"), captions: $("captions"), placeholder: $("placeholder"), levelbar: $("levelbar"),
  };

  const S = {
    state: "idle",
    running: false,      // the user wants audio streamed
    stopping: false,     // `stop` sent, waiting for `end`
    switching: false,    // mode switch: `stop` sent, a new session follows
    ended: false,        // `end` received on the current socket
    ws: null,
    ready: false,
    sessionId: null,
    resumeToken: null,   // the session's resume secret (from `ready`): needed with its id to resume it
    freshNext: false,    // next connect starts a new session instead of resuming
    restartNow: false,   // we closed the socket to start a new session: reconnect at once
    mode: "asr",
    diarize: false,      // ask the server for speaker labels (`diarize` in start)
    model: "",
    sampleRate: 0,
    finals: [],          // all finals shown, in order: {text, start, end, endpoint, words, speaker, session}
    segOffset: 0,        // finals index of segment 0 of the current server session
    timeOffset: 0,       // seconds added to the current session's stream times
    maxEnd: 0,           // latest end time shown so far (on the page's time line)
    partial: null,       // {idx, text}
    pending: [],         // ArrayBuffers waiting for a ready socket
    pendingBytes: 0,
    dropped: 0,
    attempts: 0,
    reconnectTimer: null,
    stopTimer: null,
    audio: null,         // {ctx, stream, source, node, sink}
    lastError: "",
  };

  // ---------------------------------------------------------------- helpers
  function el(tag, cls, text) {
    const e = document.createElement(tag);
    if (cls) e.className = cls;
    if (text != null) e.textContent = text;
    return e;
  }
  const norm = (s) => String(s == null ? "" : s).replace(/\s+/g, " ").trim();
  const num = (v, d) => (typeof v === "number" && isFinite(v) ? v : d);

  const pageToken = () => new URLSearchParams(location.search).get("token");
  const withToken = (path) => (pageToken() ? path + "?token=" + encodeURIComponent(pageToken()) : path);

  function wsUrl() {
    const proto = location.protocol === "https:" ? "wss:" : "ws:";
    return proto + "//" + location.host + withToken("/v1/listen");
  }

  // A browser cannot see why a websocket handshake failed: ask /healthz (same token) whether the token is
  // the problem. Returns false, with the error shown, when it is: retrying cannot help.
  async function tokenAccepted() {
    try {
      const resp = await fetch(withToken("/healthz"), { cache: "no-store" });
      if (resp.status !== 401) return true;
    } catch (e) {
      return true; // the daemon is unreachable: a reason to retry, not a token problem
    }
    showError(pageToken()
      ? "unauthorized: the daemon refused this page's token (check ?token= in the address)"
      : "unauthorized: this daemon needs a token: open the page with ?token=TOKEN in its address");
    return false;
  }

  function setState(state, detail) {
    S.state = state;
    ui.state.dataset.state = state;
    ui.state.className = "state " + state;
    ui.state.textContent = state;
    ui.state.title = detail ? state + " " + detail : state;
    ui.detail.textContent = detail ? state + " " + detail : "";
    document.body.dataset.state = state;
    ui.bigState.className = ui.state.className;
    ui.bigState.textContent = ui.state.textContent;
    const busy = S.running || S.stopping;
    ui.start.disabled = busy || state === "starting";
    ui.stop.disabled = !busy;
  }

  function showError(msg) {
    S.lastError = msg || "";
    ui.error.textContent = S.lastError;
  }

  function updateSession() {
    ui.session.textContent = S.sessionId ? "session " + S.sessionId : "no session";
    ui.session.title = S.sessionId || "";
  }

  function updateInfo(extra) {
    const parts = [];
    if (S.model) parts.push("model " + S.model);
    if (S.mode) parts.push("mode " + S.mode);
    if (S.diarize) parts.push("speaker labels");
    if (S.sampleRate) parts.push(S.sampleRate + " Hz");
    parts.push(S.finals.length + " finals");
    if (S.dropped) parts.push(S.dropped + " audio frames dropped");
    if (extra) parts.push(extra);
    ui.info.textContent = parts.join(" · ");
  }

  function updateDownloads() {
    const has = S.finals.length > 0;
    ui.dlTxt.disabled = ui.dlSrt.disabled = ui.dlVtt.disabled = !has;
  }

  // --------------------------------------------------------------- rendering
  // `speaker`: who the last labelled line belongs to (a line gets a label where the speaker changes)
  const view = { line: null, newLine: true, speaker: null, partialEl: el("span", "partial") };
  view.partialEl.setAttribute("aria-hidden", "true"); // screen readers get the finals only

  function nearBottom() {
    const c = ui.captions;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 48;
  }
  function scrollDown() {
    ui.captions.scrollTop = ui.captions.scrollHeight;
  }
  function mutate(fn) {
    const stick = nearBottom();
    fn();
    if (stick) scrollDown();
  }

  function ensureLine() {
    if (!view.line || view.newLine) {
      if (ui.placeholder.parentNode) ui.placeholder.remove();
      view.line = el("p", "line");
      ui.captions.appendChild(view.line);
      view.newLine = false;
    }
    return view.line;
  }

  const hasFinal = (line) => !!line.querySelector(".final, .final-part");
  const speakerName = (k) => "Speaker " + (k + 1); // labels count from 0, names from 1 (as the exports)
  const isSpeaker = (k) => typeof k === "number" && k >= 0 && Number.isInteger(k);

  // A line for `speaker`'s words: a new one where the speaker changes; its colour, and its label where the
  // speaker differs from the previous labelled line's.
  function speakerLine(speaker) {
    let line = ensureLine();
    if (!isSpeaker(speaker)) return line;
    if (hasFinal(line) && line.dataset.speaker !== String(speaker)) {
      view.newLine = true;
      line = ensureLine();
    }
    if (line.dataset.speaker == null) {
      line.dataset.speaker = String(speaker);
      line.classList.add("spk" + (speaker % SPEAKER_COLOURS));
      if (speaker !== view.speaker) {
        const who = el("span", "who", speakerName(speaker));
        who.setAttribute("aria-label", speakerName(speaker) + ":");
        line.insertBefore(document.createTextNode(" "), line.firstChild); // copied text reads "Speaker 1 Good ..."
        line.insertBefore(who, line.firstChild);
      }
      view.speaker = speaker;
    }
    return line;
  }

  // Pair the words of a final with the tokens to display. Returns [{text, word|null}].
  function tokensOf(f) {
    const words = Array.isArray(f.words) ? f.words.filter((w) => w && norm(w.word)) : [];
    const text = norm(f.text);
    if (words.length) {
      const joined = words.map((w) => norm(w.word)).join(" ");
      if (joined === text || !text) return words.map((w) => ({ text: norm(w.word), word: w }));
      const toks = text.split(" ");
      if (toks.length === words.length) return toks.map((t, i) => ({ text: t, word: words[i] }));
    }
    return text ? [{ text: text, word: null }] : [];
  }

  function fmtClock(t) {
    t = Math.max(0, t);
    const m = Math.floor(t / 60);
    const s = t - m * 60;
    return m + ":" + (s < 10 ? "0" : "") + s.toFixed(1);
  }

  // A final's tokens in runs of one speaker: [{speaker, toks}] (one run where speakers are not labelled).
  function speakerRuns(f) {
    const runs = [];
    for (const tok of tokensOf(f)) {
      const k = tok.word && isSpeaker(tok.word.speaker) ? tok.word.speaker : f.speaker;
      const last = runs[runs.length - 1];
      if (last && last.speaker === k) last.toks.push(tok);
      else runs.push({ speaker: k, toks: [tok] });
    }
    return runs;
  }

  // One speaker's part of a final (`part` > 0: where the speaker changed inside it, on a line of its own).
  function renderFinal(f, idx, toks, part) {
    const span = el("span", part ? "final-part" : "final");
    span.dataset.seg = String(idx);
    if (isSpeaker(toks.speaker)) span.dataset.speaker = String(toks.speaker);
    const fusedWords = [];
    toks.forEach((tok, i) => {
      if (i) span.appendChild(document.createTextNode(" "));
      if (!tok.word) {
        span.appendChild(document.createTextNode(tok.text));
        return;
      }
      const w = tok.word;
      const ws = el("span", "w", tok.text);
      const bits = [];
      if (typeof w.start === "number") bits.push(fmtClock(w.start + f.offset));
      if (typeof w.probability === "number") bits.push("p=" + w.probability.toFixed(2));
      if (w.fused) {
        ws.classList.add("fused");
        ws.title = "Changed by fusion (" + (f.mode || "uadf") + ")" + (bits.length ? " · " + bits.join(" · ") : "");
        fusedWords.push(tok.text);
      } else if (bits.length) {
        ws.title = bits.join(" · ");
      }
      span.appendChild(ws);
    });
    // Words could not be matched to the text: keep the fusion information at segment level.
    if (!part && !fusedWords.length && Array.isArray(f.words) && toks.length === 1 && !toks[0].word) {
      const fw = f.words.filter((w) => w && w.fused).map((w) => norm(w.word));
      if (fw.length) {
        span.classList.add("fused");
        span.title = "Fusion changed: " + fw.join(", ");
      }
    }
    return span;
  }

  function appendFinalView(f, idx) {
    mutate(() => {
      const runs = speakerRuns(f);
      if (!runs.length) runs.push({ speaker: f.speaker, toks: [] }); // an endpoint without words: an empty span
      runs.forEach((run, part) => {
        const line = speakerLine(run.speaker);
        const toks = run.toks;
        toks.speaker = run.speaker;
        const span = renderFinal(f, idx, toks, part);
        const before = view.partialEl.parentNode === line ? view.partialEl : null;
        if (hasFinal(line)) line.insertBefore(document.createTextNode(" "), before);
        line.insertBefore(span, before);
      });
      if (f.endpoint) view.newLine = true;
      placePartial();
    });
  }

  function placePartial() {
    const p = view.partialEl;
    const text = S.partial ? norm(S.partial.text) : "";
    if (!text) {
      const line = p.parentNode;
      if (line) {
        p.remove();
        if (!hasFinal(line)) {
          line.remove();
          view.line = ui.captions.querySelector("p.line:last-of-type");
          view.newLine = true;
        }
      }
      return;
    }
    const line = ensureLine();
    p.textContent = (hasFinal(line) ? " " : "") + text;
    if (p.parentNode !== line || line.lastChild !== p) line.appendChild(p);
  }

  function renderPartial() {
    mutate(placePartial);
  }

  function rerenderAll() {
    ui.captions.textContent = "";
    view.line = null;
    view.newLine = true;
    view.speaker = null;
    if (!S.finals.length && !S.partial) ui.captions.appendChild(ui.placeholder);
    S.finals.forEach((f, i) => appendFinalView(f, i));
    renderPartial();
  }

  // ----------------------------------------------------------------- protocol
  function send(obj) {
    if (S.ws && S.ws.readyState === WebSocket.OPEN) {
      S.ws.send(JSON.stringify(obj));
      return true;
    }
    return false;
  }

  function connect() {
    clearTimeout(S.reconnectTimer);
    S.reconnectTimer = null;
    if (S.freshNext) {
      S.sessionId = null;
      S.resumeToken = null;
      S.freshNext = false;
    }
    const resuming = !!S.sessionId;
    setState(resuming ? "reconnecting" : "connecting", S.attempts ? "(attempt " + (S.attempts + 1) + ")" : "");
    let ws;
    try {
      ws = new WebSocket(wsUrl());
    } catch (e) {
      showError("WebSocket: " + e.message);
      scheduleReconnect();
      return;
    }
    ws.binaryType = "arraybuffer";
    S.ws = ws;
    S.ready = false;
    S.ended = false;
    ws.onopen = () => {
      if (ws !== S.ws) return;
      const msg = {
        type: "start", sample_rate: S.sampleRate, encoding: "pcm_s16le", channels: 1, mode: S.mode,
      };
      const terms = keytermList();
      if (terms.length) msg.keyterms = terms;
      if (S.diarize) msg.diarize = true;
      if (resuming) {
        msg.session_id = S.sessionId;
        msg.resume_token = S.resumeToken;
        msg.resume_from = Math.max(0, S.finals.length - S.segOffset);
      }
      ws.send(JSON.stringify(msg));
    };
    ws.onmessage = (ev) => {
      if (ws !== S.ws) return;
      if (typeof ev.data !== "string") return;
      let m;
      try {
        m = JSON.parse(ev.data);
      } catch (e) {
        console.warn("non-JSON message", ev.data);
        return;
      }
      if (m && typeof m === "object") onMessage(m, resuming);
    };
    ws.onerror = () => {}; // a close event always follows
    ws.onclose = (ev) => {
      if (ws !== S.ws) return;
      onClose(ev);
    };
  }

  function onMessage(m, resuming) {
    switch (m.type) {
      case "ready": {
        const resumed = resuming && m.resumed === true && m.session_id === S.sessionId;
        if (!resumed) {
          // A new server session: its segments and stream times start again at 0.
          S.segOffset = S.finals.length;
          S.timeOffset = S.maxEnd;
          S.partial = null;
          renderPartial();
        }
        S.sessionId = m.session_id || S.sessionId;
        if (m.resume_token) S.resumeToken = m.resume_token;
        S.ready = true;
        S.attempts = 0;
        if (m.mode) {
          S.mode = m.mode;
          if ([...ui.mode.options].some((o) => o.value === m.mode)) ui.mode.value = m.mode;
        }
        if (m.model) S.model = m.model;
        updateSession();
        updateInfo();
        if (resuming && !resumed) showError("could not resume the session: continued in a new one");
        else showError("");
        if (S.stopping || S.switching) {
          flushPending();
          send({ type: "stop" });
          setState("finishing");
        } else {
          setState("live");
          flushPending();
        }
        break;
      }
      case "partial": {
        const idx = S.segOffset + num(m.segment, 0);
        if (idx < S.finals.length) break; // stale: that final is already shown
        S.partial = { idx: idx, text: String(m.text || "") };
        renderPartial();
        break;
      }
      case "final": {
        const idx = S.segOffset + num(m.segment, S.finals.length - S.segOffset);
        if (idx < S.finals.length) break; // resent after a resume: already shown
        if (idx > S.finals.length) console.warn("missing finals", S.finals.length, "to", idx - 1);
        const f = {
          text: String(m.text || ""),
          start: num(m.start, 0),
          end: num(m.end, num(m.start, 0)),
          endpoint: !!m.endpoint,
          words: Array.isArray(m.words) ? m.words : [],
          speaker: isSpeaker(m.speaker) ? m.speaker : null,
          offset: S.timeOffset,
          mode: S.mode,
          session: S.sessionId,
        };
        S.finals.push(f);
        S.maxEnd = Math.max(S.maxEnd, f.end + f.offset);
        if (S.partial && S.partial.idx <= idx) S.partial = null;
        appendFinalView(f, S.finals.length - 1);
        updateDownloads();
        updateInfo();
        break;
      }
      case "end": {
        S.ended = true;
        updateInfo(num(m.audio_seconds, 0).toFixed(1) + " s audio");
        if (S.switching) {
          S.switching = false;
          S.freshNext = true;
          S.ws = null; // the server closes the old socket; its events are ignored from here
          connect();
        } else if (S.stopping || !S.running) {
          finishStop();
        } else {
          // Not asked for (the daemon is shutting down): the close follows, then we reconnect and
          // resume; the session's finals are on the daemon's disk.
          showError("the server ended the session; reconnecting");
        }
        break;
      }
      case "error": {
        const code = m.code || "error";
        showError(code + ": " + (m.message || ""));
        if (code === "unknown_session" || code === "session_too_long") {
          // The server cannot resume this session: go on in a new one, keeping the captions.
          S.freshNext = true;
          S.restartNow = true;
          if (S.ws) S.ws.close(4001, "new session");
        }
        break;
      }
      default:
        break;
    }
  }

  async function onClose(ev) {
    const wasReady = S.ready;
    S.ready = false;
    S.ws = null;
    if (S.stopping || !S.running) {
      finishStop();
      return;
    }
    if (S.switching) {
      // The old session closed before `end`: start the new one anyway.
      S.switching = false;
      S.freshNext = true;
      connect();
      return;
    }
    if (ev.code === 1003) {
      // The server rejected our `start` (encoding, rate, channels, mode): retrying cannot help.
      if (!S.lastError) showError("rejected by the server (" + (ev.reason || ev.code) + ")");
      S.running = false;
      stopAudio();
      setState("error");
      return;
    }
    if (!wasReady && !(await tokenAccepted())) {
      // refused before any `ready`: a wrong or missing token is an error to show, not a reason to retry
      S.running = false;
      stopAudio();
      setState("error");
      return;
    }
    if (!S.running) return; // stopped meanwhile
    const now = S.restartNow;
    S.restartNow = false;
    if (!now && !S.lastError) showError("connection lost (" + ev.code + (ev.reason ? " " + ev.reason : "") + ")");
    scheduleReconnect(now ? 0 : undefined);
  }

  function scheduleReconnect(delayMs) {
    clearTimeout(S.reconnectTimer);
    let delay = delayMs;
    if (delay == null) {
      delay = Math.min(BACKOFF_MAX_MS, BACKOFF_MIN_MS * Math.pow(2, S.attempts));
      delay = Math.round(delay * (0.8 + 0.4 * Math.random()));
    }
    S.attempts += 1;
    setState("reconnecting", "in " + (delay / 1000).toFixed(1) + " s (attempt " + S.attempts + ")");
    S.reconnectTimer = setTimeout(connect, delay);
  }

  function finishStop() {
    clearTimeout(S.stopTimer);
    clearTimeout(S.reconnectTimer);
    S.stopTimer = S.reconnectTimer = null;
    S.stopping = false;
    S.running = false;
    S.pending = [];
    S.pendingBytes = 0;
    if (S.ws) {
      const ws = S.ws;
      S.ws = null;
      try { ws.close(1000, "stop"); } catch (e) { /* ignore */ }
    }
    S.partial = null;
    renderPartial();
    setState("stopped");
  }

  // -------------------------------------------------------------------- audio
  function onAudio(buf, level) {
    setLevel(level);
    if (!S.running && !S.stopping) return;
    if (S.ws && S.ready && !S.stopping && !S.switching && S.ws.readyState === WebSocket.OPEN) {
      if (S.ws.bufferedAmount > MAX_BUFFERED_BYTES) {
        S.dropped += 1;
        return;
      }
      S.ws.send(buf);
      return;
    }
    if (S.stopping) return;
    S.pending.push(buf);
    S.pendingBytes += buf.byteLength;
    const cap = MAX_PENDING_SECONDS * (S.sampleRate || 48000) * 2;
    while (S.pendingBytes > cap && S.pending.length) {
      S.pendingBytes -= S.pending.shift().byteLength;
      S.dropped += 1;
    }
  }

  function flushPending() {
    const list = S.pending;
    S.pending = [];
    S.pendingBytes = 0;
    if (!S.ws || S.ws.readyState !== WebSocket.OPEN) return;
    for (const b of list) S.ws.send(b);
  }

  let levelShown = 0;
  function setLevel(level) {
    const v = S.audio ? Math.min(1, Math.sqrt(num(level, 0))) : 0;
    levelShown = Math.max(v, levelShown * 0.7);
    ui.levelbar.style.width = (levelShown * 100).toFixed(0) + "%";
  }

  async function startAudio() {
    if (!navigator.mediaDevices || !navigator.mediaDevices.getUserMedia) {
      throw new Error("no microphone access here (needs https or localhost)");
    }
    if (!window.AudioWorkletNode) throw new Error("this browser has no AudioWorklet");
    const stream = await navigator.mediaDevices.getUserMedia({
      audio: { channelCount: 1, echoCancellation: false, noiseSuppression: false, autoGainControl: false },
      video: false,
    });
    let ctx;
    try {
      ctx = new AudioContext();
      if (ctx.sampleRate > 48000 || ctx.sampleRate < 8000) {
        await ctx.close();
        ctx = new AudioContext({ sampleRate: 48000 });
      }
      await ctx.audioWorklet.addModule(WORKLET_URL);
      const source = ctx.createMediaStreamSource(stream);
      const node = new AudioWorkletNode(ctx, "pcm-worklet", {
        numberOfInputs: 1, numberOfOutputs: 1, outputChannelCount: [1],
        processorOptions: { chunkMs: CHUNK_MS },
      });
      node.port.onmessage = (ev) => {
        const d = ev.data;
        if (d && d.type === "audio") onAudio(d.pcm, d.level);
      };
      // Keep the node pulled by the graph without playing the microphone back.
      const sink = ctx.createGain();
      sink.gain.value = 0;
      source.connect(node);
      node.connect(sink);
      sink.connect(ctx.destination);
      if (ctx.state !== "running") await ctx.resume();
      S.audio = { ctx, stream, source, node, sink };
      S.sampleRate = ctx.sampleRate;
    } catch (e) {
      stream.getTracks().forEach((t) => t.stop());
      if (ctx) ctx.close().catch(() => {});
      throw e;
    }
    const track = stream.getAudioTracks()[0];
    if (track) {
      track.onended = () => {
        if (S.running) {
          showError("microphone disconnected");
          stop();
        }
      };
    }
  }

  async function flushAudio() {
    const a = S.audio;
    if (!a) return;
    a.node.port.postMessage({ type: "flush" });
    await new Promise((r) => setTimeout(r, 60));
  }

  function stopAudio() {
    const a = S.audio;
    S.audio = null;
    if (!a) return;
    try { a.source.disconnect(); a.node.disconnect(); a.sink.disconnect(); } catch (e) { /* ignore */ }
    a.node.port.onmessage = null;
    a.stream.getTracks().forEach((t) => t.stop());
    a.ctx.close().catch(() => {});
    setLevel(0);
    levelShown = 0;
    ui.levelbar.style.width = "0%";
  }

  // ---------------------------------------------------------------- controls
  async function start() {
    if (S.running || S.stopping) return;
    showError("");
    setState("starting");
    S.mode = ui.mode.value;
    try {
      await startAudio();
    } catch (e) {
      showError("microphone: " + (e && e.message ? e.message : e));
      setState("error");
      return;
    }
    if (!(await tokenAccepted())) {
      stopAudio();
      setState("error");
      return;
    }
    S.running = true;
    S.stopping = S.switching = false;
    S.attempts = 0;
    S.dropped = 0;
    S.pending = [];
    S.pendingBytes = 0;
    S.freshNext = true; // Start always opens a new session; the captions stay on screen
    connect();
  }

  async function stop() {
    if (!S.running && !S.stopping) return;
    const wasReady = S.ready && S.ws && S.ws.readyState === WebSocket.OPEN;
    await flushAudio();
    S.running = false;
    S.stopping = true;
    stopAudio();
    if (wasReady && S.ws && S.ws.readyState === WebSocket.OPEN) {
      flushPending();
      send({ type: "stop" });
      setState("finishing");
      clearTimeout(S.stopTimer);
      S.stopTimer = setTimeout(finishStop, STOP_TIMEOUT_MS);
    } else {
      finishStop();
    }
  }

  // The keyterm box: comma-separated words or phrases, sent in `start` and, when edited while live, in a
  // `context` message (docs/protocol.md); the server checks the limits and answers bad_keyterms.
  function keytermList() {
    return [...new Set(ui.keyterms.value.split(",").map((t) => t.trim().replace(/\s+/g, " ")).filter(Boolean))];
  }

  function sendKeyterms() {
    if (S.ws && S.ready && S.ws.readyState === WebSocket.OPEN) {
      S.ws.send(JSON.stringify({ type: "context", keyterms: keytermList() }));
    }
  }

  function switchMode() {
    const mode = ui.mode.value;
    savePref("mode", mode);
    if (!S.running) {
      S.mode = mode;
      updateInfo();
      return;
    }
    if (mode === S.mode) return;
    S.mode = mode;
    switchSession("to " + mode);
  }

  // Live switch: finish the current session (its finals are flushed), then start a new one with the new settings.
  function switchSession(detail) {
    if (S.ws && S.ready && S.ws.readyState === WebSocket.OPEN) {
      S.switching = true;
      send({ type: "stop" });
      setState("switching", detail);
    } else {
      S.freshNext = true;
    }
  }

  function setSpeakers(on, save) {
    S.diarize = on;
    ui.speakers.setAttribute("aria-pressed", String(on));
    if (save !== false) savePref("speakers", on ? "1" : "0");
    updateInfo();
  }

  function toggleSpeakers() {
    setSpeakers(!S.diarize);
    if (S.running) switchSession(S.diarize ? "to speaker labels" : "to no speaker labels");
  }

  function setBig(on) {
    document.body.classList.toggle("big", on);
    ui.big.setAttribute("aria-pressed", String(on));
    savePref("big", on ? "1" : "0");
    scrollDown();
  }

  function setShowFused(on) {
    document.body.classList.toggle("show-fused", on);
    ui.showFused.setAttribute("aria-pressed", String(on));
  }

  function clearTranscript() {
    S.segOffset -= S.finals.length; // keep segment numbering of the live session consistent
    S.finals = [];
    S.partial = null;
    rerenderAll();
    updateDownloads();
    updateInfo();
  }

  function savePref(k, v) {
    try { localStorage.setItem("uadf-captions." + k, v); } catch (e) { /* ignore */ }
  }
  function loadPref(k) {
    try { return localStorage.getItem("uadf-captions." + k); } catch (e) { return null; }
  }

  // Which modes does this daemon serve? Fusion modes need an LLM; unavailable ones are disabled.
  async function loadModes() {
    try {
      const resp = await fetch(withToken("/healthz"), { cache: "no-store" });
      if (resp.status === 401) {
        await tokenAccepted(); // shows why
        return;
      }
      if (!resp.ok) return;
      const h = await resp.json();
      if (!Array.isArray(h.modes)) return;
      for (const o of ui.mode.options) {
        const ok = h.modes.includes(o.value);
        o.disabled = !ok;
        o.title = ok ? "" : "not served: this daemon has no LLM for fusion (fusion.llm)";
      }
      const off = [...ui.mode.options].filter((o) => o.disabled).map((o) => o.value);
      if (off.length) ui.mode.title = "Modes this daemon does not serve (no LLM configured): " + off.join(", ");
      if (!h.modes.includes(ui.mode.value)) {
        ui.mode.value = h.modes.includes(h.default_mode) ? h.default_mode : h.modes[0];
        if (!S.running) {
          S.mode = ui.mode.value;
          updateInfo();
        }
      }
    } catch (e) {
      /* the daemon answers `bad_mode` if the mode is not served */
    }
  }

  // --------------------------------------------------------------- downloads
  function pad(n, w) {
    return String(n).padStart(w, "0");
  }
  function stamp(t, sep) {
    const ms = Math.max(0, Math.round(t * 1000));
    const h = Math.floor(ms / 3600000);
    const m = Math.floor((ms % 3600000) / 60000);
    const s = Math.floor((ms % 60000) / 1000);
    return pad(h, 2) + ":" + pad(m, 2) + ":" + pad(s, 2) + sep + pad(ms % 1000, 3);
  }

  // Plain text: a line per utterance, and per speaker's turn where speakers are labelled ("Speaker 1: ...").
  function transcriptText() {
    const lines = [];
    let cur = [];
    let who = null;
    const close = () => {
      if (cur.length) lines.push((isSpeaker(who) ? speakerName(who) + ": " : "") + cur.join(" "));
      cur = [];
    };
    for (const f of S.finals) {
      for (const run of speakerRuns(f)) {
        if (cur.length && run.speaker !== who) close();
        who = run.speaker;
        cur.push(run.toks.map((t) => t.text).join(" "));
      }
      if (f.endpoint) close();
    }
    close();
    return lines.join("\n") + (lines.length ? "\n" : "");
  }

  function wrapCue(text) {
    if (text.length <= CUE_LINE_CHARS) return text;
    // Two lines, broken at the space nearest the middle.
    const mid = text.length / 2;
    let best = -1;
    for (let i = 0; i < text.length; i++) {
      if (text[i] === " " && (best < 0 || Math.abs(i - mid) < Math.abs(best - mid))) best = i;
    }
    return best < 0 ? text : text.slice(0, best) + "\n" + text.slice(best + 1);
  }

  function buildCues() {
    const cues = [];
    let cur = null;
    const close = () => {
      if (cur && cur.toks.length) cues.push(cur);
      cur = null;
    };
    for (const f of S.finals) {
      const toks = [];
      for (const run of speakerRuns(f)) run.toks.forEach((tok) => toks.push({ text: tok.text, word: tok.word, speaker: run.speaker }));
      toks.forEach((tok, i) => {
        const w = tok.word;
        let t0 = f.start, t1 = f.end;
        if (w && typeof w.start === "number") t0 = w.start;
        if (w && typeof w.end === "number") t1 = w.end;
        t0 += f.offset;
        t1 += f.offset;
        if (cur) {
          const len = cur.toks.join(" ").length + 1 + tok.text.length;
          if (len > CUE_MAX_CHARS || t1 - cur.start > CUE_MAX_SECONDS || tok.speaker !== cur.speaker) close();
        }
        if (!cur) cur = { start: t0, end: t1, toks: [], speaker: tok.speaker };
        cur.toks.push(tok.text);
        cur.end = Math.max(cur.end, t1);
        const last = i === toks.length - 1;
        if (last && f.endpoint) close();
        else if (/[.?!]$/.test(tok.text) && cur.toks.join(" ").length > 30) close();
      });
    }
    close();
    // Times: monotonic, non-overlapping, at least 0.3 s long where possible.
    let prevEnd = 0;
    for (const c of cues) {
      c.start = Math.max(c.start, prevEnd);
      if (c.end < c.start + 0.3) c.end = c.start + 0.3;
      prevEnd = c.end;
      c.text = wrapCue(c.toks.join(" "));
    }
    return cues;
  }

  // SubRip has no speaker markup: a labelled cue starts with the speaker's name; WebVTT has voice spans.
  function toSrt() {
    const who = (c) => (isSpeaker(c.speaker) ? speakerName(c.speaker) + ": " : "");
    return buildCues()
      .map((c, i) => (i + 1) + "\n" + stamp(c.start, ",") + " --> " + stamp(c.end, ",") + "\n" + who(c) + c.text + "\n")
      .join("\n");
  }

  function toVtt() {
    const esc = (s) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");
    const voice = (c) => (isSpeaker(c.speaker) ? "<v " + speakerName(c.speaker) + ">" : "");
    const body = buildCues()
      .map((c, i) => (i + 1) + "\n" + stamp(c.start, ".") + " --> " + stamp(c.end, ".") + "\n" + voice(c) + esc(c.text) + "\n")
      .join("\n");
    return "WEBVTT\n\n" + body;
  }

  function download(ext, mime, text) {
    const base = "transcript-" + (S.sessionId || new Date().toISOString().replace(/[:.]/g, "-"));
    const blob = new Blob([text], { type: mime + ";charset=utf-8" });
    const url = URL.createObjectURL(blob);
    const a = el("a");
    a.href = url;
    a.download = base + "." + ext;
    document.body.appendChild(a);
    a.click();
    a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10000);
  }

  // -------------------------------------------------------------------- wiring
  ui.start.addEventListener("click", start);
  ui.stop.addEventListener("click", stop);
  ui.mode.addEventListener("change", switchMode);
  ui.keyterms.addEventListener("change", sendKeyterms);
  ui.speakers.addEventListener("click", toggleSpeakers);
  ui.big.addEventListener("click", () => setBig(!document.body.classList.contains("big")));
  ui.exitBig.addEventListener("click", () => setBig(false));
  ui.showFused.addEventListener("click", () => setShowFused(!document.body.classList.contains("show-fused")));
  ui.clear.addEventListener("click", clearTranscript);
  ui.dlTxt.addEventListener("click", () => download("txt", "text/plain", transcriptText()));
  ui.dlSrt.addEventListener("click", () => download("srt", "application/x-subrip", toSrt()));
  ui.dlVtt.addEventListener("click", () => download("vtt", "text/vtt", toVtt()));
  document.addEventListener("keydown", (ev) => {
    const tag = (ev.target && ev.target.tagName) || "";
    if (ev.ctrlKey || ev.metaKey || ev.altKey || /^(INPUT|SELECT|TEXTAREA)$/.test(tag)) return;
    if (ev.key === "c" || ev.key === "C") setBig(!document.body.classList.contains("big"));
    else if (ev.key === "Escape") setBig(false);
  });
  window.addEventListener("beforeunload", () => {
    if (S.ws) try { S.ws.close(1000, "page closed"); } catch (e) { /* ignore */ }
  });

  // Preferences: URL (?mode=uadf&caption=1) over saved ones.
  const params = new URLSearchParams(location.search);
  const modeWanted = params.get("mode") || loadPref("mode");
  if (modeWanted) {
    if (![...ui.mode.options].some((o) => o.value === modeWanted)) ui.mode.appendChild(el("option", null, modeWanted));
    ui.mode.value = modeWanted;
  }
  const bigWanted = params.get("caption") || loadPref("big");
  if (bigWanted === "1") setBig(true);
  if (params.get("fused") === "1") setShowFused(true);
  setSpeakers((params.get("speakers") || loadPref("speakers")) === "1", false);
  S.mode = ui.mode.value;
  setState("idle");
  updateInfo();
  updateDownloads();
  loadModes();

  // A small handle for tests and debugging in the console.
  window.captions = {
    get state() { return S.state; },
    get sessionId() { return S.sessionId; },
    get resumeToken() { return S.resumeToken; },
    get error() { return S.lastError; },
    get sampleRate() { return S.sampleRate; },
    get finals() {
      return S.finals.map((f) => ({
        text: f.text, start: f.start + f.offset, end: f.end + f.offset, endpoint: f.endpoint, speaker: f.speaker,
        speakers: f.words.map((w) => (w && isSpeaker(w.speaker) ? w.speaker : null)),
      }));
    },
    get partial() { return S.partial ? S.partial.text : ""; },
    text: () => S.finals.map((f) => norm(f.text)).filter(Boolean).join(" "),
    txt: transcriptText,
    srt: toSrt,
    vtt: toVtt,
    // Drop the websocket as a network failure would; the page reconnects and resumes.
    simulateDrop: () => { if (S.ws) S.ws.close(4000, "simulated drop"); },
    start: start,
    stop: stop,
  };
})();
