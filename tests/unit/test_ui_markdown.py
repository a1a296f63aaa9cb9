"""The web page's Markdown renderer (corral/server/ui/static/markdown.js), run under Node: source
HTML never reaches the output unescaped, only http(s)/mailto links survive, code is highlighted.
Skipped when `node` is not installed (the browser tests cover the page itself)."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

import corral.server.ui

MARKDOWN_JS = Path(corral.server.ui.__file__).parent / "static" / "markdown.js"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")

CASES = {
    "script": "Hi <script>alert(1)</script> **b** *i* ~~s~~",
    "img": "<img src=x onerror=alert(1)>",
    "attr": '[a"b](https://x.y/"onmouseover="z)',
    "js_link": "[x](javascript:alert(1)) [ok](https://a.b/c?d=1&e=2) <https://q>",
    "code": '```python\ndef f(x):\n    return "<b>" # note\n```',
    "open_fence": "```js\nlet a = 1; // streaming, no closing fence",
    "inline_code": "use `<tag>` and `a*b*c`",
    "lists": "- a\n- b\n  - c\n\n1. one\n2. two",
    "table": "| a | b |\n|---|---|\n| 1 | <i>2</i> |",
    "blocks": "# Title\n> quote\n\n---\nline one\nline two",
    "snake": "snake_case_name and 2 * 3 * 4",
}


def render_all() -> dict[str, str]:
    script = (f"import {{ renderMarkdown }} from {json.dumps(MARKDOWN_JS.as_uri())};\n"
              f"const cases = {json.dumps(CASES)};\n"
              "const out = {}; for (const [k, v] of Object.entries(cases)) out[k] = renderMarkdown(v);\n"
              "console.log(JSON.stringify(out));\n")
    assert NODE is not None
    done = subprocess.run([NODE, "--input-type=module", "-e", script], capture_output=True, text=True,
                          timeout=60, check=True)
    result: dict[str, str] = json.loads(done.stdout)
    return result


@pytest.fixture(scope="module")
def html() -> dict[str, str]:
    return render_all()


def test_source_html_is_always_escaped(html: dict[str, str]) -> None:
    assert "<script>" not in html["script"] and "&lt;script&gt;alert(1)&lt;/script&gt;" in html["script"]
    assert "<strong>b</strong>" in html["script"] and "<em>i</em>" in html["script"]
    assert "<del>s</del>" in html["script"]
    assert html["img"] == "<p>&lt;img src=x onerror=alert(1)&gt;</p>"
    assert "<i>" not in html["table"] and "&lt;i&gt;2&lt;/i&gt;" in html["table"]
    assert 'onmouseover="' not in html["attr"]


def test_only_safe_links(html: dict[str, str]) -> None:
    assert "href=\"javascript" not in html["js_link"]
    assert '<a href="https://a.b/c?d=1&amp;e=2" target="_blank" rel="noopener noreferrer">ok</a>' in html["js_link"]


def test_code_blocks_are_highlighted_and_escaped(html: dict[str, str]) -> None:
    code = html["code"]
    assert code.startswith("<pre>") and 'class="lang-python"' in code
    assert '<span class="tok-kw">def</span>' in code and '<span class="tok-kw">return</span>' in code
    assert '<span class="tok-str">&quot;&lt;b&gt;&quot;</span>' in code
    assert '<span class="tok-com"># note</span>' in code
    assert '<span class="tok-com">// streaming, no closing fence</span>' in html["open_fence"]
    assert html["inline_code"] == "<p>use <code>&lt;tag&gt;</code> and <code>a*b*c</code></p>"


def test_block_structure(html: dict[str, str]) -> None:
    assert html["lists"] == "<ul><li>a</li><li>b<ul><li>c</li></ul></li></ul><ol><li>one</li><li>two</li></ol>"
    assert html["table"].startswith("<table><thead><tr><th>a</th><th>b</th></tr></thead>")
    assert html["blocks"] == "<h1>Title</h1><blockquote><p>quote</p></blockquote><hr><p>line one<br>line two</p>"
    assert html["snake"] == "<p>snake_case_name and 2 * 3 * 4</p>"
