"""Which tools a channel allows: built-in read-only tools on, everything else off,
until a channel manager's rules say otherwise (the last matching rule decides)."""

from botservice.core.tools import BUILTIN, ToolPolicy, ToolSpec


def spec(name: str, *, source: str = BUILTIN, read_only: bool = True) -> ToolSpec:
    return ToolSpec(
        name=name, description="", parameters={"type": "object"}, source=source, read_only=read_only
    )


def test_by_default_only_built_in_read_only_tools_are_allowed() -> None:
    policy = ToolPolicy()
    assert policy.allows(spec("search_history"))
    assert not policy.allows(spec("jira__search", source="jira"))
    assert not policy.allows(spec("write_note", read_only=False))


def test_the_last_matching_rule_decides() -> None:
    policy = (
        ToolPolicy()
        .with_rule("jira__*", enabled=True)
        .with_rule("jira__delete_issue", enabled=False)
        .with_rule("search_history", enabled=False)
    )
    assert policy.allows(spec("jira__create_issue", source="jira"))
    assert not policy.allows(spec("jira__delete_issue", source="jira"))
    assert not policy.allows(spec("search_history"))
    assert policy.with_rule("search_history", enabled=True).allows(spec("search_history"))


def test_rules_survive_storage_in_order() -> None:
    policy = ToolPolicy().with_rule("a__*", enabled=True).with_rule("a__x", enabled=False)
    stored = policy.serialize()
    assert stored == "+a__*,-a__x"
    assert ToolPolicy.parse(stored) == policy
    assert ToolPolicy.parse(None) == ToolPolicy()
    # Enabling a pattern again moves its rule last instead of keeping two.
    assert policy.with_rule("a__*", enabled=True).serialize() == "-a__x,+a__*"


def test_a_tool_is_listed_with_its_first_sentence_or_whole_words() -> None:
    from botservice.core.text import summary_line

    assert summary_line("The time now. Without a timezone, UTC.") == "The time now."
    long = (
        "Search the stored messages of this channel (all its conversations, the bot's answers too)"
    )
    shown = summary_line(long)
    assert shown == "Search the stored messages of this channel (all its conversations, the bot's…"
    assert len(shown) <= 80
    assert summary_line("") == ""
