"""botservice: a language model in Slack and Discord."""

__version__ = "0.1.0"
