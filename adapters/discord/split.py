"""Discord's message limit; `botservice.message_split` does the splitting."""

DISCORD_LIMIT = 2000
