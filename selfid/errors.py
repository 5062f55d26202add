"""Errors a user can cause and fix. The CLI prints them on one line and exits non-zero."""


class SelfidError(Exception):
    """Something the user can fix; the message says what was wrong and what to do."""
