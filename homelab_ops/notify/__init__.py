"""Alerts to phones: Telegram (many approved chats) and one-way channels (ntfy, a JSON webhook), redacted
and recorded.

`alert` is the plain data, `telegram` the two-way channel, `channels/` one module per one-way channel, `chats` who may receive,
`redact` what must never leave, `dispatch` ties them together for the sensors.
"""
