"""What the user typed: a chat message or one of the slash commands."""

from __future__ import annotations

from dataclasses import dataclass

HELP_LINES = (
    "Type a message and press Enter to send it; a pasted block is sent one line per message.",
    "/me ACTION   send an action, shown as '* you ACTION'",
    "/who         list who is online (✓ verified by a personal token, ~ papayaChat client)",
    "/help        show this help",
    "/quit        leave (also /exit, or Ctrl-D on an empty line)",
    "//text       send text that starts with a slash",
    "Keys: PageUp/PageDown scroll (PageUp at the top loads older messages),",
    "      Up/Down recall sent lines, Home/End, Ctrl-A/E move,",
    "      Ctrl-U/K delete before/after the cursor, Ctrl-W delete a word.",
)


@dataclass(frozen=True, slots=True)
class Say:
    """Send `text` to the room; `action`: a /me action, `text` without the name."""

    text: str
    action: bool = False


@dataclass(frozen=True, slots=True)
class ShowWho:
    """List who is online."""


@dataclass(frozen=True, slots=True)
class ShowHelp:
    """Show the help lines."""


@dataclass(frozen=True, slots=True)
class Quit:
    """Leave the client."""


@dataclass(frozen=True, slots=True)
class Mistake:
    """The input is not a valid command; `reason` says why."""

    reason: str


Command = Say | ShowHelp | ShowWho | Quit | Mistake


def parse_input(line: str) -> Command | None:
    """Interpret one line of input; None when there is nothing to do (a blank line)."""
    if not line.strip():
        return None
    if not line.startswith("/"):
        return Say(line)
    if line.startswith("//"):
        return Say(line[1:])
    name, _, rest = line[1:].partition(" ")
    name = name.lower()
    if name in ("quit", "exit"):
        return Quit()
    if name == "help":
        return ShowHelp()
    if name == "who":
        return ShowWho()
    if name == "me":
        if not rest.strip():
            return Mistake("/me needs an action, e.g. /me waves")
        return Say(rest.strip(), action=True)
    return Mistake(f"unknown command /{name}; /help lists the commands")
