"""The page in English and Simplified Chinese: every key of the string table in both languages, the
browser-language detection, the English style tags, and the whole page rendered in each language
(AppTest against a real tritonserver) with no word of the other language left on it.
"""

from __future__ import annotations

import re
import string
from pathlib import Path

import pytest

pytest.importorskip("streamlit")
from streamlit.testing.v1 import AppTest

from musicgen_runtime import prompt_language
from ui import logic, strings

ROOT = Path(__file__).resolve().parent.parent
APP = str(ROOT / "ui" / "app.py")
CJK = re.compile(r"[\u3000-\u303f\u3400-\u4dbf\u4e00-\u9fff\uff00-\uffef]")


def _fields(template: str) -> set[str]:
    return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}


@pytest.mark.parametrize("key", sorted(strings.STRINGS))
def test_every_key_in_both_languages(key):
    en, zh = strings.STRINGS[key]
    assert en.strip() and zh.strip(), key
    assert en != zh, f"{key}: the Chinese text is a copy of the English one"
    assert _fields(en) == _fields(zh), f"{key}: the languages take different placeholders"
    assert not CJK.search(en), f"{key}: Chinese characters in the English text"
    assert CJK.search(zh), f"{key}: no Chinese in the Chinese text"
    sample = {name: 1.0 for name in _fields(en)}
    for lang in strings.LANGUAGES:  # formats without error in both
        assert strings.t(key, lang, **sample) if sample else strings.t(key, lang)


def test_examples_and_tags_in_both_languages():
    assert len(strings.EXAMPLES) >= 4
    for en, zh in strings.EXAMPLES:
        assert not prompt_language.has_cjk(en) and CJK.search(zh)
        assert strings.example_label(en, "zh") == zh and strings.example_label(en, "en") == en
    assert set(strings.TAG_CATEGORIES) == {"genre", "instruments", "mood", "tempo"}
    for tags in strings.STYLE_TAGS.values():
        for en, zh in tags:
            assert not prompt_language.has_cjk(en) and CJK.search(zh)
            assert strings.tag_label(en, "zh") == f"{zh} · {en}" and strings.tag_label(en, "en") == en


def test_prompt_from_tags_is_english():
    built = strings.prompt_from_tags(
        {
            "genre": ["jazz"],
            "instruments": ["piano", "upright bass", "drums"],
            "mood": ["calm"],
            "tempo": ["slow, 70 bpm"],
        }
    )
    assert built == "calm jazz with piano, upright bass and drums, slow, 70 bpm"
    assert strings.prompt_from_tags({"instruments": ["guzheng"]}) == "music with guzheng"
    assert strings.prompt_from_tags({}) == ""
    assert not prompt_language.has_cjk(built)
    logic.build_request(built, 5, 250, 0, 1, 3, logic.SEED_RANDOM, "")  # a valid prompt


@pytest.mark.parametrize(
    ("locale", "header", "lang"),
    [
        ("zh-CN", None, "zh"),
        ("zh-TW", "", "zh"),
        ("en-US", "zh-CN,zh;q=0.9", "en"),
        (None, "zh-CN,zh;q=0.9,en;q=0.8", "zh"),
        (None, "en-GB,en;q=0.9,zh-CN;q=0.8", "en"),
        (None, "fr-FR,fr;q=0.9,zh;q=0.8,en;q=0.5", "zh"),
        (None, "de-DE", "en"),
        (None, None, "en"),
        ("fr", "ja;q=0.9, en;q=0.4, zh;q=0.6", "zh"),
        (None, "garbage;;,", "en"),
        (None, "zh;q=abc", "en"),
    ],
)
def test_detect_language(locale, header, lang):
    assert strings.detect_language(locale, header) == lang


def test_prompt_language_detection():
    assert prompt_language.has_cjk("轻松的钢琴曲") and prompt_language.has_cjk("lo-fi ビート")
    assert prompt_language.has_cjk("피아노") and prompt_language.has_cjk("piano，calm")  # fullwidth comma
    assert not prompt_language.has_cjk("lo-fi beat, 80 bpm — café") and not prompt_language.has_cjk("")
    assert prompt_language.warning_for("钢琴") == prompt_language.WARNING
    assert prompt_language.warning_for("piano") is None


# ---- the page in each language -----------------------------------------------------------------------

TEXT_FIELDS = {"label", "help", "body", "text", "options", "placeholder", "content", "caption"}
# Words that stay as they are on the Chinese page: names, units, formats, parameter names.
PROPER = re.compile(
    r"MusicGen|Top-[kp]|top-[kp]|WAV|FLAC|MP3|OGG|LUFS|dBFS|RMS|kHz|gRPC|T5|English|"
    r"tiny-random|musicgen\w*|fp32|fp16|MUSICGEN_TRITON_URL"
)


def page_texts(at: AppTest) -> list[str]:
    """Every string a user can read on the page: labels, help, bodies, options, placeholders, progress."""
    out = []

    def walk(msg):
        for fd, value in msg.ListFields():
            if fd.type == fd.TYPE_MESSAGE:
                for m in value if fd.is_repeated else [value]:
                    walk(m)
            elif fd.type == fd.TYPE_STRING and fd.name in TEXT_FIELDS:
                out.extend(value if fd.is_repeated else [value])

    for node in at._tree:
        if getattr(node, "proto", None) is not None:
            walk(node.proto)
    hidden = re.compile(r"<\w+ [^>]*\bhidden\b")  # elements the browser does not show (a test's record)
    return [t for t in out if t.strip() and not hidden.match(t)]


def leftover_english(text: str, prompt: str) -> list[str]:
    if prompt.strip():
        text = text.replace(prompt, " ")
    for tags in strings.STYLE_TAGS.values():  # the English tags are the point: they build the prompt
        for en, _ in tags:
            text = text.replace(en, " ")
    text = re.sub(r"`[^`]*`|'[^']*'|:material/[a-z_]+:|[a-z]+://\S+", " ", text)  # code, quoted examples, URLs
    text = PROPER.sub(" ", text)
    return re.findall(r"[A-Za-z]{2,}", text)


def open_page(monkeypatch, url: str, lang: str) -> AppTest:
    monkeypatch.setenv("MUSICGEN_TRITON_URL", url)
    at = AppTest.from_file(APP, default_timeout=120)
    at.query_params["lang"] = lang
    at.run()
    assert not at.exception, at.exception
    return at


def generate(at: AppTest, prompt: str) -> None:
    at.text_area(key="prompt").input(prompt)
    at.slider(key="duration").set_value(1.0)
    at.button(key="generate").click().run()
    assert not at.exception, at.exception
    at.button(key="generate").click().run()  # a second result: the history list shows too
    assert not at.exception, at.exception


def test_page_in_chinese_has_no_english_left(monkeypatch, triton):
    at = open_page(monkeypatch, triton.grpc_endpoint, "zh")
    prompt = "轻松的钢琴曲"
    generate(at, prompt)
    history = at.session_state["history"]
    assert len(history) == 2 and history[0].prompt == prompt  # sent as typed: no silent translation
    warn = " ".join(str(w.value) for w in at.warning)
    assert "T5" in warn and "英文" in warn  # said plainly, in Chinese, next to the box
    tags = next(e for e in at.expander if e.label == strings.t("tags_title", "zh"))
    assert tags.proto.expanded  # the English style tags are offered, open
    texts = page_texts(at)
    joined = "\n".join(texts)
    for needle in (
        "服务器",
        "提示词",
        "高级设置",
        "生成",
        "完成，用时",
        "种子",
        "结果",
        "之前的结果",
        "演示模型",
        "下载",
    ):
        assert needle in joined, needle
    left = {t: leftover_english(t, prompt) for t in texts}
    left = {t: w for t, w in left.items() if w}
    assert not left, f"English left on the Chinese page: {left}"
    # an example is listed by its Chinese description and fills the box with its English prompt
    example = at.selectbox(key="example")
    assert example.options == [zh for _, zh in strings.EXAMPLES]
    example.select(strings.EXAMPLES[2][0]).run()
    assert at.text_area(key="prompt").value == strings.EXAMPLES[2][0]
    assert not at.warning  # an English prompt: no warning any more


def test_page_in_english_has_no_chinese_and_the_switch_sticks(monkeypatch, triton):
    at = open_page(monkeypatch, triton.grpc_endpoint, "en")
    generate(at, "calm piano")
    assert not at.warning  # an English prompt gets no language warning
    texts = page_texts(at)
    chinese = [t for t in texts if CJK.search(t) and t != strings.LANGUAGE_NAMES["zh"]]
    assert not chinese, f"Chinese on the English page: {chinese}"
    # the switch: Chinese for the rest of the session, form values kept
    at.radio(key="lang").set_value("zh").run()
    assert not at.exception
    assert at.text_area(key="prompt").label == "提示词" and at.text_area(key="prompt").value == "calm piano"
    at.query_params.clear()
    at.run()
    assert at.text_area(key="prompt").label == "提示词" and at.session_state["lang"] == "zh"


def test_messages_from_validation_server_and_client_in_chinese():
    """The messages the page passes on (shared validation, the server, the client library) are known
    to the table in the words their sources really use."""
    import errno

    from client import errors
    from musicgen_runtime import validation

    def raised(fn, *args, **kw):
        with pytest.raises(Exception) as info:
            fn(*args, **kw)
        return str(info.value)

    real = [
        raised(validation.validate_prompt, "  "),
        raised(validation.validate_prompt, "x" * 2001),
        raised(validation.validate_params, 45.0, max_duration=30.0),
        errors.classify(
            ConnectionRefusedError(errno.ECONNREFUSED, "Connection refused"), url="grpc://127.0.0.1:1"
        ).message,
        errors.classify(TimeoutError(), url="grpc://127.0.0.1:1", timeout=5).message,
    ]
    for message in real:
        zh = strings.translate_detail(message, "zh")
        assert CJK.search(zh) and zh != message, message
        assert strings.translate_detail(message, "en") == message
    assert strings.translate_detail("something new from the server", "zh") == "something new from the server"
    for key in strings.DETAIL_KEYS:  # every template translates its own English wording
        en, zh = strings.STRINGS[key]
        sample = {name: f"<{name}>" for name in _fields(en)}
        assert strings.translate_detail(en.format(**sample), "zh") == zh.format(**sample), key


def test_page_in_chinese_with_the_server_down(monkeypatch):
    from server.triton import find_free_port

    at = open_page(monkeypatch, f"127.0.0.1:{find_free_port()}", "zh")
    side = " ".join(str(e.value) for e in at.sidebar.error)
    assert "未就绪" in side and "无法连接" in side
    generate(at, "   ")
    errs = [str(e.value) for e in at.error]
    assert any(e.startswith("请检查表单：提示词为空") for e in errs), errs
    left = {t: w for t in page_texts(at) if (w := leftover_english(t, ""))}
    # what may stay: the operating system's own reason in brackets (e.g. Connection refused)
    assert all(set(w) <= {"Connection", "refused"} for w in left.values()), left
