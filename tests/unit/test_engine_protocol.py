"""Runner wire protocol: request/event encoding round trips and error mapping (no model)."""

from __future__ import annotations

import pytest

from corral.engine.base import GenerateParams
from corral.engine.llamacpp import protocol as proto
from corral.errors import BadRequestError, CorralError, RunnerStoppedError
from corral.schemas.options import SampleOptions


def test_generate_request_round_trip() -> None:
    params = GenerateParams(
        prompt="héllo",
        options=SampleOptions(seed=7, stop=("a", "b"), temperature=0.0),
        grammar='root ::= "x"',
        logprobs=True,
        top_logprobs=3,
        truncate=False,
        shift=False,
    )
    line = proto.encode(proto.generate_request(params))
    assert line.endswith(b"\n") and line.count(b"\n") == 1
    back = proto.parse_generate(proto.decode(line))
    assert back == params


def test_unknown_option_keys_are_dropped() -> None:
    back = proto.parse_generate({"op": "generate", "prompt": "p", "options": {"bogus": 1, "top_k": 3}})
    assert back.options.top_k == 3


def test_done_event_to_chunk() -> None:
    ev = {
        "text": "x",
        "done": True,
        "done_reason": "length",
        "metrics": {
            "prompt_eval_count": 3,
            "prompt_cache_count": 1,
            "prompt_eval_duration": 5,
            "eval_count": 2,
            "eval_duration": 7,
            "context": [1, 2],
        },
    }
    chunk = proto.chunk_from_event(proto.decode(proto.encode(ev)))
    assert chunk.done and chunk.done_reason == "length" and chunk.metrics is not None
    assert chunk.metrics.prompt_cache_count == 1 and chunk.metrics.context == [1, 2]


def test_logprobs_event_to_chunk() -> None:
    ev = {
        "text": "a",
        "logprobs": [
            {
                "token": "a",
                "logprob": -0.5,
                "bytes": [97],
                "top_logprobs": [{"token": "b", "logprob": -1.0, "bytes": [98]}],
            }
        ],
    }
    chunk = proto.chunk_from_event(ev)
    assert chunk.logprobs[0].top_logprobs[0].token == "b" and not chunk.done


def test_errors_map_to_classes() -> None:
    with pytest.raises(BadRequestError, match="too long"):
        proto.chunk_from_event(proto.error_event(BadRequestError("too long")))
    ev = proto.error_event(RunnerStoppedError())
    with pytest.raises(CorralError) as e:
        proto.raise_if_error(ev)
    assert e.value.status == 500
    assert proto.error_event(RuntimeError("boom"))["error"]["status"] == 500


def test_decode_rejects_garbage() -> None:
    with pytest.raises(CorralError):
        proto.decode(b"not json\n")
    with pytest.raises(CorralError):
        proto.decode(b"[1]\n")


def test_generate_request_round_trip_with_token_ids() -> None:
    params = GenerateParams(prompt="<|im_start|>user\nhi", context=[1, 0, 49151, 7], prompt_tokens=[1, 4093, 198])
    req = proto.generate_request(params)
    assert req["context"] == [1, 0, 49151, 7] and req["prompt_tokens"] == [1, 4093, 198]
    back = proto.parse_generate(proto.decode(proto.encode(req)))
    assert back == params


def test_text_only_request_carries_no_ids() -> None:
    req = proto.generate_request(GenerateParams(prompt="p"))
    assert "context" not in req and "prompt_tokens" not in req
    back = proto.parse_generate(req)
    assert back.context == [] and back.prompt_tokens is None


def test_empty_prompt_tokens_are_not_the_same_as_none() -> None:
    back = proto.parse_generate(proto.generate_request(GenerateParams(prompt="", prompt_tokens=[])))
    assert back.prompt_tokens == []


@pytest.mark.parametrize("key", ["context", "prompt_tokens"])
def test_ids_that_are_not_a_list_are_400(key: str) -> None:
    with pytest.raises(BadRequestError, match=f"{key} must be a list of token ids"):
        proto.parse_generate({"op": "generate", "prompt": "p", key: "1 2 3"})
