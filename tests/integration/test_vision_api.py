"""Vision end to end on a real server: a model created through the CLI from SmolLM2's GGUF plus a
synthetic projector (`FROM model.gguf` + `FROM mmproj.gguf`), images through /api/generate,
/api/chat, /v1/chat/completions and /v1/messages; a model without a projector refuses them."""

from __future__ import annotations

import base64
from typing import Any

import httpx
import pytest

from tests.mmproj import png, write_mmproj
from tests.support import ServerProcess, smollm2_path

pytestmark = pytest.mark.integration
MODEL = "vision-test"
IMAGE_TOKENS = 16
PROMPT = "Describe the picture."
OPTIONS = {"temperature": 0, "num_predict": 10, "seed": 1}
RED = base64.b64encode(png(64, 64, seed=1)).decode()
NOISE = base64.b64encode(png(64, 64, seed=2)).decode()


@pytest.fixture(scope="module")
def vision(server: ServerProcess, tmp_path_factory: pytest.TempPathFactory) -> str:
    d = tmp_path_factory.mktemp("vision-model")
    write_mmproj(d / "mmproj.gguf")
    (d / "Modelfile").write_text(f"FROM {smollm2_path()}\nFROM ./mmproj.gguf\n")
    res = server.cli("create", MODEL, "-f", str(d / "Modelfile"), timeout=300)
    assert res.returncode == 0, res.stderr
    return MODEL


def generate(http: httpx.Client, model: str, images: list[str] | None) -> dict[str, Any]:
    body = {"model": model, "prompt": PROMPT, "stream": False, "options": OPTIONS}
    r = http.post("/api/generate", json={**body, **({"images": images} if images else {})})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def chat(http: httpx.Client, images: list[str]) -> dict[str, Any]:
    msg = {"role": "user", "content": PROMPT, "images": images}
    r = http.post("/api/chat", json={"model": MODEL, "messages": [msg], "stream": False, "options": OPTIONS})
    assert r.status_code == 200, r.text
    out: dict[str, Any] = r.json()
    return out


def test_the_projector_layer_makes_a_vision_model(server: ServerProcess, http: httpx.Client, vision: str) -> None:
    shown = http.post("/api/show", json={"model": vision}).json()
    assert "vision" in shown["capabilities"]
    assert shown["projector_info"]["clip.projector_type"] == "mlp"
    assert shown["modelfile"].count("\nFROM ") == 2  # the model, then its projector
    out = server.cli("show", vision).stdout
    assert "  Projector\n    architecture        clip\n" in out and "dimensions          576" in out
    assert "vision" not in http.post("/api/show", json={"model": "smollm2:135m"}).json()["capabilities"]


def test_generate_images_change_output_and_prompt_eval_count(http: httpx.Client, vision: str) -> None:
    text, red, noise = generate(http, vision, None), generate(http, vision, [RED]), generate(http, vision, [NOISE])
    assert red["prompt_eval_count"] == text["prompt_eval_count"] + IMAGE_TOKENS
    assert noise["prompt_eval_count"] == red["prompt_eval_count"]
    assert len({text["response"], red["response"], noise["response"]}) == 3
    two = generate(http, vision, [RED, NOISE])
    assert two["prompt_eval_count"] == text["prompt_eval_count"] + 2 * IMAGE_TOKENS


def test_every_api_passes_the_image_through(http: httpx.Client, vision: str) -> None:
    native = chat(http, [RED])
    assert native["prompt_eval_count"] == chat(http, [])["prompt_eval_count"] + IMAGE_TOKENS
    want = native["message"]["content"]

    url = f"data:image/png;base64,{RED}"
    parts = [{"type": "text", "text": PROMPT}, {"type": "image_url", "image_url": {"url": url}}]
    r = http.post("/v1/chat/completions", json={"model": vision, "messages": [{"role": "user", "content": parts}],
                                                "temperature": 0, "max_tokens": 10, "seed": 1})
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == want
    assert r.json()["usage"]["prompt_tokens"] == native["prompt_eval_count"]

    blocks = [{"type": "image", "source": {"type": "base64", "media_type": "image/png", "data": RED}},
              {"type": "text", "text": PROMPT}]
    r = http.post("/v1/messages", json={"model": vision, "max_tokens": 10, "temperature": 0,
                                        "messages": [{"role": "user", "content": blocks}]})
    assert r.status_code == 200, r.text
    assert r.json()["content"][0]["text"] == want
    assert r.json()["usage"]["input_tokens"] == native["prompt_eval_count"]


def test_remote_image_urls_are_a_400(http: httpx.Client, vision: str) -> None:
    parts = [{"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}}]
    r = http.post("/v1/chat/completions", json={"model": vision, "messages": [{"role": "user", "content": parts}]})
    assert r.status_code == 400 and "base64" in r.json()["error"]["message"]


def test_a_model_without_projector_refuses_images(http: httpx.Client) -> None:
    r = http.post("/api/generate", json={"model": "smollm2:135m", "prompt": "hi", "images": [RED], "stream": False})
    assert r.status_code == 400
    assert r.json()["error"] == '"smollm2:135m" does not support images (the model has no vision projector)'
    msg = {"role": "user", "content": "hi", "images": [RED]}
    r = http.post("/api/chat", json={"model": "smollm2:135m", "messages": [msg], "stream": False})
    assert r.status_code == 400 and "does not support images" in r.json()["error"]


def test_undecodable_image_is_a_400(http: httpx.Client, vision: str) -> None:
    junk = base64.b64encode(b"GIF89a not really").decode()
    r = http.post("/api/generate", json={"model": vision, "prompt": PROMPT, "images": [junk], "stream": False})
    assert r.status_code == 400 and "image 0" in r.json()["error"]


def test_raw_prompt_places_its_image(http: httpx.Client, vision: str) -> None:
    raw = "<|im_start|>user\n[img-0]Describe the picture.<|im_end|>\n<|im_start|>assistant\n"
    body = {"model": vision, "prompt": raw, "raw": True, "images": [RED], "stream": False, "options": OPTIONS}
    r = http.post("/api/generate", json=body)
    assert r.status_code == 200, r.text
    untagged = http.post("/api/generate", json={**body, "prompt": raw.replace("[img-0]", "")})
    assert untagged.status_code == 200  # a raw prompt without tags gets its images first
    assert untagged.json()["prompt_eval_count"] == r.json()["prompt_eval_count"]


def test_cli_run_attaches_the_images_a_prompt_names(server: ServerProcess, http: httpx.Client, vision: str,
                                                     tmp_path_factory: pytest.TempPathFactory) -> None:
    image = tmp_path_factory.mktemp("pictures") / "red.png"
    image.write_bytes(base64.b64decode(RED))
    params = [arg for k, v in OPTIONS.items() for arg in ("--parameter", f"{k}={v}")]
    res = server.cli("run", vision, f"{PROMPT} {image}", *params, timeout=120)
    assert res.returncode == 0, res.stderr
    assert f"Added image '{image}'" in res.stderr
    assert res.stdout.strip() == str(generate(http, vision, [RED])["response"]).strip()
