"""Security tests use the shared fixtures of ``tests/conftest.py``, which start both apps with
production's ``AppRunner`` options (access log off, REQUEST_HEADER_TIMEOUT as the keep-alive and
header timer), so "the secret never reaches the logs" or "a slow client is cut off" is proved
of the real setup."""
