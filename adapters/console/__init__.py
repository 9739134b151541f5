"""Console adapter: chat with the bot in a terminal, no platform needed."""

from botservice.adapters.console.adapter import ConsoleAdapter, ConsoleSink

__all__ = ["ConsoleAdapter", "ConsoleSink"]
