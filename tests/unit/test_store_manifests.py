"""Manifest/config documents and Go-identical JSON bytes (Go's json.NewEncoder rules)."""

from __future__ import annotations

import pytest

from corral.store import gojson, media
from corral.store.manifests import ConfigV2, Layer, Manifest, ManifestError

D1 = "sha256:" + "1" * 64
D2 = "sha256:" + "2" * 64
DC = "sha256:" + "c" * 64


@pytest.mark.parametrize(
    ("value", "want"),
    [
        ({"b": 1, "a": [True, None]}, '{"b":1,"a":[true,null]}'),
        ("<|im_end|> & \u2028", '"\\u003c|im_end|\\u003e \\u0026 \\u2028"'),
        ('héllo\n\t"', '"héllo\\n\\t\\""'),
        ("\x01\x7f", '"\\u0001\x7f"'),
        (1.0, "1"),
        (0.7, "0.7"),
        (-0.0, "-0"),
        (1e-5, "0.00001"),
        (1e-7, "1e-7"),
        (1.5e-7, "1.5e-7"),
        (1e20, "100000000000000000000"),
        (1e21, "1e+21"),
        (123456789012345680.0, "123456789012345680"),
    ],
)
def test_go_encoding(value: object, want: str) -> None:
    assert gojson.encode(value) == (want + "\n").encode()


def test_go_encoding_sorts_map_keys_when_asked() -> None:
    assert gojson.encode({"b": {"z": 1, "y": 2}, "a": 0}, sort_keys=True) == b'{"a":0,"b":{"y":2,"z":1}}\n'


def test_go_encoding_rejects_nan() -> None:
    with pytest.raises(ValueError):
        gojson.encode(float("nan"))


def test_manifest_bytes_match_go_struct_order() -> None:
    m = Manifest(
        config=Layer(media.CONFIG, DC, 10),
        layers=[Layer(media.MODEL, D1, 100, from_="base:latest"), Layer(media.TENSOR, D2, 5, name="t.w")],
    )
    want = (
        '{"schemaVersion":2,"mediaType":"application/vnd.docker.distribution.manifest.v2+json",'
        f'"config":{{"mediaType":"application/vnd.docker.container.image.v1+json","digest":"{DC}","size":10}},'
        f'"layers":[{{"mediaType":"application/vnd.ollama.image.model","digest":"{D1}","size":100,'
        f'"from":"base:latest"}},{{"mediaType":"application/vnd.ollama.image.tensor","digest":"{D2}",'
        '"size":5,"name":"t.w"}]}\n'
    )
    assert m.to_bytes() == want.encode()
    again = Manifest.from_bytes(m.to_bytes())
    assert again == m
    assert again.size() == 115
    assert again.digests() == {D1, D2, DC}


def test_manifest_from_bytes_is_tolerant() -> None:
    data = (
        b'{"schemaVersion":2,"mediaType":"x","extra":{"a":1},"config":{"mediaType":"c","digest":"'
        + DC.encode()
        + b'","size":3,"urls":[]},"layers":[{"mediaType":"m","digest":"'
        + D1.encode()
        + b'","size":7,"annotations":{}}]}'
    )
    m = Manifest.from_bytes(data)
    assert [x.digest for x in m.layers] == [D1]
    assert m.config.size == 3
    assert m.size() == 10


@pytest.mark.parametrize("bad", [b"", b"not json", b"[]", b'{"layers":{}}', b'{"layers":[1]}'])
def test_manifest_from_bytes_rejects_garbage(bad: bytes) -> None:
    with pytest.raises(ManifestError):
        Manifest.from_bytes(bad)


def test_manifest_bad_digest_is_an_error() -> None:
    m = Manifest(config=Layer(media.CONFIG, DC, 1), layers=[Layer(media.MODEL, "sha256:../../x", 1)])
    with pytest.raises(ManifestError):
        m.digests()


def test_config_bytes_match_go_field_order_and_omitempty() -> None:
    c = ConfigV2(
        model_format="gguf",
        model_family="llama",
        model_families=["llama"],
        model_type="134.52M",
        file_type="Q4_1",
        context_length=8192,
        diff_ids=[D1],
    )
    want = (
        '{"model_format":"gguf","model_family":"llama","model_families":["llama"],"model_type":"134.52M",'
        '"file_type":"Q4_1","context_length":8192,"architecture":"amd64","os":"linux",'
        f'"rootfs":{{"type":"layers","diff_ids":["{D1}"]}}}}\n'
    )
    assert c.to_bytes() == want.encode()
    assert ConfigV2.from_bytes(c.to_bytes()) == c


def test_config_empty_like_go_zero_value() -> None:
    c = ConfigV2(architecture="", os="", rootfs_type="", diff_ids=None)
    want = (
        b'{"model_format":"","model_family":"","model_families":null,"model_type":"","file_type":"",'
        b'"architecture":"","os":"","rootfs":{"type":"","diff_ids":null}}\n'
    )
    assert c.to_bytes() == want
    parsed = ConfigV2.from_bytes(want)
    assert parsed.model_families is None and parsed.diff_ids is None


def test_config_reads_unknown_and_optional_fields() -> None:
    data = (
        b'{"model_format":"gguf","model_family":"qwen2","model_families":null,"renderer":"r","parser":"p",'
        b'"capabilities":["completion","tools"],"embedding_length":896,"base_name":"Qwen",'
        b'"draft":{"model_format":"gguf"},"generation_defaults":{"temperature":0.6},"rootfs":{}}'
    )
    c = ConfigV2.from_bytes(data)
    assert (c.renderer, c.parser, c.capabilities) == ("r", "p", ["completion", "tools"])
    assert (c.embedding_length, c.base_name, c.draft) == (896, "Qwen", {"model_format": "gguf"})
    assert c.extra == {"generation_defaults": {"temperature": 0.6}}
    out = c.to_bytes().decode()
    assert out.index('"parser"') < out.index('"capabilities"') < out.index('"draft"') < out.index('"os"')
