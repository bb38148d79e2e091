"""Clients of the uadf-stream daemon: microphone, file, and the browser captions page (web/)."""
