"""The interactive `corral run` loop (spec §3 "Interactive REPL"), on prompt_toolkit.

Keeps the conversation and session settings (system, parameters, format, think, verbose) and
sends each turn to `/api/chat` through the client. Ctrl+C aborts the current answer (closing the
stream, which cancels the sequence on the server); Ctrl+D or /bye exits.
"""

from __future__ import annotations

import shlex
import sys
from collections.abc import Iterator
from typing import Any

from prompt_toolkit import PromptSession
from prompt_toolkit.history import FileHistory, InMemoryHistory

from corral.cli.answer import history_path, print_summary, stream_answer
from corral.cli.format import render_show, table
from corral.cli.images import user_message
from corral.client import Client
from corral.config import Settings
from corral.errors import BadRequestError, CorralError
from corral.schemas.native import ChatResponse, CreateRequest
from corral.schemas.options import ALL_KEYS, parse_parameter

HELP = """Available Commands:
  /set            Set session variables
  /show           Show model information
  /load <model>   Load a session or model
  /save <model>   Save your current session
  /clear          Clear session context
  /bye            Exit
  /?, /help       Help for a command
  /? shortcuts    Help for keyboard shortcuts

Use \"\"\" to begin a multi-line message.
"""


class Repl:
    def __init__(self, c: Client, cfg: Settings, body: dict[str, Any], *, verbose: bool = False,
                 hide_thinking: bool = False) -> None:
        self.c = c
        self.cfg = cfg
        self.body = body
        self.verbose = verbose
        self.hide_thinking = hide_thinking
        self.messages: list[dict[str, Any]] = []
        self.system: str | None = None
        path = history_path(cfg)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
        self.session: PromptSession[str] = PromptSession(
            history=FileHistory(str(path)) if path is not None else InMemoryHistory()
        )

    def say(self, text: str) -> None:
        sys.stdout.write(text + "\n")
        sys.stdout.flush()

    def read(self) -> str | None:
        """One user input; handles \"\"\" multi-line blocks. None on Ctrl+D."""
        try:
            line = self.session.prompt(">>> ", placeholder="Send a message (/? for help)")
        except EOFError:
            return None
        except KeyboardInterrupt:
            return ""
        if not line.startswith('"""'):
            return line
        parts = [line[3:]]
        while not parts[-1].rstrip().endswith('"""') or (len(parts) == 1 and parts[0].strip() == ""):
            try:
                parts.append(self.session.prompt("... "))
            except (EOFError, KeyboardInterrupt):
                return ""
        text = "\n".join(parts).rstrip()
        return text[:-3] if text.endswith('"""') else text

    def loop(self) -> None:
        while True:
            line = self.read()
            if line is None or line.strip() in ("/bye", "/exit"):
                return
            if not line.strip():
                continue
            if line.startswith("/"):
                try:
                    self.command(line.strip())
                except CorralError as exc:
                    self.say(f"Error: {exc.message}")
                continue
            self.turn(line)

    def turn(self, text: str) -> None:
        try:
            self.messages.append(user_message(self.c, str(self.body["model"]), text))
        except CorralError as exc:
            self.say(f"Error: {exc.message}")
            return
        msgs = ([{"role": "system", "content": self.system}] if self.system else []) + self.messages
        body = {k: v for k, v in self.body.items() if k != "prompt"} | {"messages": msgs}
        stream = self.c.chat(body)
        reply: list[str] = []
        try:
            final = stream_answer(_tee(stream, reply), hide_thinking=self.hide_thinking)
        except KeyboardInterrupt:
            close = getattr(stream, "close", None)
            if close:
                close()
            self.say("")
            self.messages.pop()
            return
        except CorralError as exc:
            self.say(f"\nError: {exc.message}")
            self.messages.pop()
            return
        self.say("\n")
        self.messages.append({"role": "assistant", "content": "".join(reply)})
        if self.verbose and final is not None:
            print_summary(final)

    def command(self, line: str) -> None:
        words = line.split(maxsplit=2)
        cmd = words[0]
        if cmd in ("/?", "/help"):
            self.say(HELP)
        elif cmd == "/set":
            self.set(words[1:])
        elif cmd == "/show":
            self.show(words[1] if len(words) > 1 else "")
        elif cmd == "/clear":
            self.messages.clear()
            self.say("Cleared session context")
        elif cmd == "/load" and len(words) > 1:
            self.c.show(words[1])
            self.body["model"] = words[1]
            self.messages.clear()
            self.say(f"Loading model '{words[1]}'")
        elif cmd == "/save" and len(words) > 1:
            self.save(words[1])
        elif cmd == "/list":
            rows = [[m.name, m.digest[:12]] for m in self.c.list().models]
            self.say(table(["NAME", "ID"], rows))
        else:
            self.say(f"Unknown command '{cmd}'. Type /? for help")

    def set(self, args: list[str]) -> None:
        if not args:
            self.say("Usage: /set parameter|system|history|nohistory|format|noformat|verbose|quiet|think|nothink")
            return
        what, rest = args[0], (args[1] if len(args) > 1 else "")
        options: dict[str, Any] = self.body.setdefault("options", {})
        if what == "parameter":
            name, _, value = rest.partition(" ")
            if name not in ALL_KEYS:
                raise BadRequestError(f"unknown parameter '{name}'")
            parsed = parse_parameter(name, value) if name != "stop" else shlex.split(value)
            options[name] = parsed
            self.say(f"Set parameter '{name}' to '{value}'")
        elif what == "system":
            self.system = rest.strip().strip('"')
            self.say("Set system message.")
        elif what == "format":
            self.body["format"] = rest or "json"
            self.say(f"Set format to '{self.body['format']}' mode.")
        elif what == "noformat":
            self.body.pop("format", None)
            self.say("Disabled format.")
        elif what in ("verbose", "quiet"):
            self.verbose = what == "verbose"
            self.say("Set 'verbose' mode." if self.verbose else "Set 'quiet' mode.")
        elif what == "think":
            self.body["think"] = rest or True
            self.say("Set 'think' mode.")
        elif what == "nothink":
            self.body["think"] = False
            self.say("Set 'nothink' mode.")
        elif what in ("history", "nohistory", "wordwrap", "nowordwrap"):
            self.say(f"Set '{what}' mode.")
        else:
            self.say(f"Unknown command '/set {what}'. Type /? for help")

    def show(self, what: str) -> None:
        info = self.c.show(self.body["model"])
        values = {"license": info.license, "modelfile": info.modelfile, "parameters": info.parameters,
                  "system": self.system or info.system, "template": info.template}
        if what == "info":
            self.say(render_show(info))
        elif what in values:
            self.say(values[what] or f"No {what} was specified for this model.")
        else:
            self.say("Usage: /show info|license|modelfile|parameters|system|template")

    def save(self, name: str) -> None:
        request = CreateRequest.model_validate({
            "model": name, "from": self.body["model"], "system": self.system,
            "parameters": self.body.get("options") or None, "messages": self.messages or None,
        })
        for _ in self.c.create(request):
            pass
        self.say(f"Created new model '{name}'")


def _tee(stream: Iterator[ChatResponse], sink: list[str]) -> Iterator[ChatResponse]:
    for chunk in stream:
        sink.append(chunk.message.content)
        yield chunk
