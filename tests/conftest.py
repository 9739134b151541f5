"""Shared fixtures. Fakes of remote services live in tests/fakes and listen on 127.0.0.1."""

pytest_plugins = [
    "tests.fakes.model_server",
    "tests.fakes.discord_server",
    "tests.fakes.slack_api",
    "tests.fakes.file_host",
    "tests.db",
]
