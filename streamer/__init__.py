"""uadf-stream: streaming Whisper ASR daemon with uncertainty-aware LLM fusion."""

__version__ = "0.1.0"
