"""Wire adapters: the APIs that existing clients speak (Deepgram live, OpenAI transcriptions and Realtime),
as pure translation to and from the daemon's own sessions and protocol v1 events."""
