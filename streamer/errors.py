"""Client-facing errors: a stable code, a readable message, and whether the session can go on."""

from __future__ import annotations

# Close codes (RFC 6455) for errors after which a session cannot continue.
CLOSE_NORMAL = 1000
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # RFC 6455 "Try Again Later": the server cannot serve this now, a retry may succeed

FATAL_CLOSE_CODES: dict[str, int] = {
    "bad_encoding": CLOSE_UNSUPPORTED,
    "bad_sample_rate": CLOSE_UNSUPPORTED,
    "bad_channels": CLOSE_UNSUPPORTED,
    "bad_mode": CLOSE_UNSUPPORTED,
    "bad_speakers": CLOSE_UNSUPPORTED,
    "busy": CLOSE_POLICY,
    "session_too_long": CLOSE_POLICY,
    "idle_timeout": CLOSE_POLICY,
    "start_timeout": CLOSE_POLICY,
    "rate_limited": CLOSE_POLICY,
    "unknown_session": CLOSE_POLICY,
    "bad_resume": CLOSE_POLICY,
    "slow_consumer": CLOSE_POLICY,
    "resume_conflict": CLOSE_POLICY,
    "storage_unavailable": CLOSE_TRY_AGAIN,
    "storage_failed": CLOSE_INTERNAL,
    "internal": CLOSE_INTERNAL,
}


class StreamError(Exception):
    """An error reported to the client as `{"type":"error","code":...,"message":...}`."""

    def __init__(self, code: str, message: str, fatal: bool | None = None):
        super().__init__(message)
        self.code = code
        self.message = message
        self.fatal = code in FATAL_CLOSE_CODES if fatal is None else fatal

    @property
    def close_code(self) -> int:
        return FATAL_CLOSE_CODES.get(self.code, CLOSE_POLICY)
