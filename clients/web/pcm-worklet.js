// AudioWorklet processor: mixes the microphone input down to mono, converts it to
// 16-bit little-endian PCM and posts it to the page in chunks of `chunkMs` milliseconds
// (at the AudioContext's own sample rate; the server resamples).
//
// Messages to the page:  {type: "audio", pcm: ArrayBuffer, level: 0..1}
// Messages from the page: {type: "flush"} posts whatever is buffered now.

class PcmWorklet extends AudioWorkletProcessor {
  constructor(options) {
    super();
    const opts = (options && options.processorOptions) || {};
    const chunkMs = Math.max(20, Math.min(1000, opts.chunkMs || 100));
    // `sampleRate` is a global of the AudioWorkletGlobalScope.
    this.chunk = Math.max(128, Math.round((sampleRate * chunkMs) / 1000));
    this.buf = new Int16Array(this.chunk);
    this.fill = 0;
    this.peak = 0;
    this.port.onmessage = (ev) => {
      if (ev.data && ev.data.type === "flush") this.flush();
    };
  }

  flush() {
    if (this.fill === 0) return;
    const out = this.buf.slice(0, this.fill);
    this.port.postMessage({ type: "audio", pcm: out.buffer, level: this.peak }, [out.buffer]);
    this.fill = 0;
    this.peak = 0;
  }

  process(inputs) {
    const input = inputs[0];
    if (!input || input.length === 0 || !input[0]) return true;
    const n = input[0].length;
    const chans = input.length;
    for (let i = 0; i < n; i++) {
      let v = 0;
      for (let c = 0; c < chans; c++) v += input[c][i];
      v /= chans;
      if (!(v === v)) v = 0; // NaN guard: the server rejects NaN frames
      if (v > 1) v = 1;
      else if (v < -1) v = -1;
      const a = v < 0 ? -v : v;
      if (a > this.peak) this.peak = a;
      this.buf[this.fill++] = v < 0 ? Math.round(v * 0x8000) : Math.round(v * 0x7fff);
      if (this.fill === this.chunk) this.flush();
    }
    return true;
  }
}

registerProcessor("pcm-worklet", PcmWorklet);
