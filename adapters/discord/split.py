"""Discord's message limit; `botservice.core.message_split` does the splitting."""

DISCORD_LIMIT = 2000
