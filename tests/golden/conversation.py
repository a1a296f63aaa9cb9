"""The fixed conversation the golden template tests render (Ollama's template/testdata cases): system,
two user turns and an answer, a weather tool, a call to it and its result."""

from __future__ import annotations

from corral.schemas.native import Message, Tool, ToolCall, ToolCallFunction, ToolFunction

SYSTEM = Message(role="system", content="You are a helpful assistant.")
USER_1 = Message(role="user", content="Hello, how are you?")
ASSISTANT = Message(role="assistant", content="I'm doing great. How can I help you today?")
USER_2 = Message(role="user", content="I'd like to show off how chat templating works!")

WEATHER = Tool(
    function=ToolFunction(
        name="get_weather",
        description="Get current weather information for a location",
        parameters={
            "type": "object",
            "required": ["location"],
            "properties": {
                "location": {"type": "string", "description": "The city and state, e.g. San Francisco, CA"},
                "unit": {
                    "type": "string",
                    "enum": ["celsius", "fahrenheit"],
                    "description": "The unit of temperature to use",
                },
            },
        },
    )
)
CALL = Message(
    role="assistant",
    content="",
    tool_calls=[
        ToolCall(function=ToolCallFunction(name="get_weather", arguments={"location": "San Francisco, CA"}))
    ],
)
RESULT = Message(
    role="tool",
    content='{"temperature": 22, "condition": "Sunny", "humidity": 45, "wind_speed": 10}',
    tool_name="get_weather",
)
