"""Alerts to phones: Telegram (many approved chats) and a JSON webhook, redacted and recorded.

`alert` is the plain data, `telegram`/`webhook` the channels, `chats` who may receive,
`redact` what must never leave, `dispatch` ties them together for the sensors.
"""
