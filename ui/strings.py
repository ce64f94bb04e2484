"""Every word the page shows, in English and Simplified Chinese: one table, one lookup (`t`).

The language follows the browser's preferred language (`detect_language`) until the page's switch
picks another one for the session. Keys are plain names; values are `str.format` templates with the
same placeholders in both languages (tests/test_ui_strings.py checks every key in both).
"""

from __future__ import annotations

import re
import string

from musicgen_runtime import prompt_language

LANGUAGES = ("en", "zh")
DEFAULT_LANGUAGE = "en"
LANGUAGE_NAMES = {"en": "English", "zh": "中文"}  # each language's own name, the switch's options

# key -> (English, Simplified Chinese)
STRINGS: dict[str, tuple[str, str]] = {
    # header, language switch
    "language": ("Language", "语言"),
    "caption": (
        "Describe the music you want, pick a length, and press Generate. Progress shows live.",
        "用文字描述想要的音乐，选择时长，然后点击“生成”。进度实时显示。",
    ),
    "random_weights_banner": (
        (
            "DEMO MODEL WITH RANDOM WEIGHTS — it makes noise, not music. The server is running the '{ckpt}' "
            "export, whose weights are random (made offline for tests). Export a real checkpoint "
            "(e.g. `make run CHECKPOINT=facebook/musicgen-small`) to get music."
        ),
        (
            "演示模型，权重是随机的——它只会产生噪声，不是音乐。服务器正在运行 '{ckpt}' 导出的模型，其权重为随机值"
            "（离线生成，仅供测试）。导出真实的模型权重（例如 `make run CHECKPOINT=facebook/musicgen-small`）才能得到音乐。"
        ),
    ),
    # server panel
    "server": ("Server", "服务器"),
    "server_ready": ("Ready · {url}", "就绪 · {url}"),
    "server_not_ready": ("Not ready · {url}\n\n{error}", "未就绪 · {url}\n\n{error}"),
    "models_line": ("**Models:** {models}", "**模型：** {models}"),
    "none_loaded": ("none loaded", "未加载任何模型"),
    "check_again": ("Check again", "重新检查"),
    "server_caption": (
        "Server address from ${env} (gRPC host:port). Checked at {checked}.",
        "服务器地址取自 ${env}（gRPC 主机:端口）。检查时间 {checked}。",
    ),
    "fact_checkpoint": ("Checkpoint", "模型权重"),
    "fact_model_type": ("Model type", "模型类型"),
    "fact_precision": ("Precision", "精度"),
    "fact_audio": ("Audio", "音频"),
    "fact_exported": ("Exported", "导出时间"),
    "audio_format": ("{khz:g} kHz, {channels}", "{khz:g} kHz，{channels}"),
    "mono": ("mono", "单声道"),
    "stereo": ("stereo", "立体声"),
    "unknown": ("unknown", "未知"),
    # the form
    "examples": ("Example prompts", "示例提示词"),
    "examples_placeholder": ("Pick an example to start from…", "选一个示例作为开始…"),
    "examples_help": (
        "Fills the prompt box with an English description (MusicGen understands English).",
        "把一段英文描述填入提示词框（MusicGen 只理解英文）。",
    ),
    "prompt": ("Prompt", "提示词"),
    "prompt_placeholder": (
        "e.g. lo-fi hip hop beat with mellow piano, 75 bpm",
        "请用英文描述，例如 'lo-fi hip hop beat with mellow piano, 75 bpm'",
    ),
    "prompt_help": (
        "Describe the music in English: genre, instruments, mood, tempo.",
        "请用英文描述音乐：风格、乐器、情绪、速度。",
    ),
    "prompt_language_warning": (
        prompt_language.WARNING[0].upper() + prompt_language.WARNING[1:] + " The English style tags below build one.",
        (
            "提示词里有中文（或日文、韩文）字符。MusicGen 的文本编码器（T5）是用英文音乐描述训练的，"
            "所以这样的提示词多半生成不出好的音乐。请用英文描述：风格、乐器、情绪、速度"
            "（例如 'calm lo-fi beat with warm piano, 80 bpm'）。提示词会按原样发送，不会被翻译。"
            "可以用下面的英文风格标签组成提示词。"
        ),
    ),
    "tags_title": ("Build an English prompt from style tags", "用英文风格标签组成提示词"),
    "tags_genre": ("Genre", "风格"),
    "tags_instruments": ("Instruments", "乐器"),
    "tags_mood": ("Mood", "情绪"),
    "tags_tempo": ("Tempo", "速度"),
    "tags_preview": ("Prompt from the tags: {prompt}", "标签组成的提示词：{prompt}"),
    "tags_none": ("Click tags above to build a prompt.", "点击上面的标签来组成提示词。"),
    "tags_use": ("Use as the prompt", "用作提示词"),
    "duration": ("Duration (seconds)", "时长（秒）"),
    "melody": ("Melody (optional)", "旋律（可选）"),
    "melody_unknown": (
        "Melody upload is off: the server's model is unknown (server not reachable).",
        "旋律上传已关闭：不知道服务器的模型（无法连接服务器）。",
    ),
    "melody_ok": (
        "The served model takes a melody: its tune guides the generated music.",
        "服务器的模型支持旋律：上传的曲调会引导生成的音乐。",
    ),
    "melody_off": (
        (
            "Melody upload is off: the served model ({ckpt}, type '{kind}') is text-only. "
            "A '{melody_type}' checkpoint is needed for melody conditioning."
        ),
        (
            "旋律上传已关闭：服务器的模型（{ckpt}，类型 '{kind}'）只接受文字。"
            "旋律引导需要 '{melody_type}' 类型的模型权重。"
        ),
    ),
    "audio_prompt": ("Continue a piece (optional audio prompt)", "续写一段音乐（可选的音频提示）"),
    "continue_unknown": (
        "Continuing a piece is off: the server's model is unknown (server not reachable).",
        "续写已关闭：不知道服务器的模型（无法连接服务器）。",
    ),
    "continue_ok": (
        "The clip starts with this audio and continues it; Duration is the new music after it.",
        "生成的片段以这段音频开头并接着续写；“时长”是其后新生成音乐的长度。",
    ),
    "continue_off": (
        "Continuing a piece is off: the served model ({ckpt}, type '{kind}') does not take an audio prompt.",
        "续写已关闭：服务器的模型（{ckpt}，类型 '{kind}'）不接受音频提示。",
    ),
    "continuation_window": (
        "the audio prompt ({prompt:.1f} s) must be shorter than the model's window ({window:g} s): upload a shorter piece",
        "音频提示（{prompt:.1f} 秒）必须短于模型的窗口（{window:g} 秒）：请上传更短的音频",
    ),
    "advanced": ("Advanced settings", "高级设置"),
    "model": ("Model", "模型"),
    "model_help": ("The generation models the server has loaded.", "服务器已加载的生成模型。"),
    "model_live": ("{model} (live progress)", "{model}（实时进度）"),
    "model_not_live": ("{model} (no live progress)", "{model}（无实时进度）"),
    "top_k_help": (
        "Sample among the k most likely tokens; 0 = off, 1 = greedy.",
        "只在概率最高的 k 个词元中采样；0 = 关闭，1 = 贪心。",
    ),
    "top_p_help": (
        "Nucleus sampling: keep the most likely tokens up to this probability mass; 0 = off.",
        "核采样：保留概率最高的词元，直到累计概率达到该值；0 = 关闭。",
    ),
    "temperature": ("Temperature", "温度"),
    "temperature_help": ("Higher = more varied, lower = more conservative.", "越高变化越多，越低越保守。"),
    "guidance": ("Guidance scale", "引导强度"),
    "guidance_help": (
        "Classifier-free guidance: how closely to follow the prompt (1 = none).",
        "无分类器引导：多大程度遵循提示词（1 = 不引导）。",
    ),
    "seed": ("Seed", "随机种子"),
    "seed_help": (
        "Every result shows the seed it used: fix it to reproduce that result.",
        "每个结果都会显示所用的种子：固定种子即可重现该结果。",
    ),
    "seed_random": ("Random", "随机"),
    "seed_fixed": ("Fixed", "固定"),
    "fixed_seed": ("Fixed seed", "固定种子"),
    "fixed_seed_placeholder": ("a whole number, e.g. 42", "整数，例如 42"),
    "fixed_seed_help": ("Used when Seed is Fixed: 0 to 2^63-1.", "随机种子选“固定”时使用：0 到 2^63-1。"),
    "normalize": ("Loudness of the audio", "音频响度"),
    "normalize_help": (
        (
            "How the player and every download are levelled, with the same code as the "
            "`musicgen` command line (its --normalize)."
        ),
        "播放器和所有下载文件的音量处理方式，与 `musicgen --normalize` 命令行使用同一段代码。",
    ),
    "norm_loudness": ("Loudness −14 LUFS (like the command line)", "响度 −14 LUFS（与命令行相同）"),
    "norm_peak": ("Peak at −1 dBFS", "峰值 −1 dBFS"),
    "norm_rms": ("RMS at −18 dBFS", "均方根 −18 dBFS"),
    "norm_clip": ("Clipped to full scale", "限制在满刻度内"),
    "norm_none": ("As generated (not levelled)", "原始输出（不调整）"),
    "generate": ("Generate", "生成"),
    # generation and progress
    "sending": ("Sending the request…", "正在发送请求…"),
    "cancel": ("Cancel", "取消"),
    "cancelled": ("Generation cancelled.", "已取消生成。"),
    "progress_starting": ("Starting… {elapsed} elapsed", "正在启动… 已用 {elapsed}"),
    "progress_elapsed": ("{elapsed} elapsed", "已用 {elapsed}"),
    "progress_estimating": ("estimating…", "正在估算剩余时间…"),
    "progress_left": ("about {eta} left", "约剩 {eta}"),
    "progress_decoding": ("decoding the audio…", "正在解码音频…"),
    "progress_frames": ("{done}/{total} frames", "{done}/{total} 帧"),
    "progress_audio": ("{seconds:.1f} s of audio ready", "已生成 {seconds:.1f} 秒音频"),
    "done_in": ("Done in {elapsed}", "完成，用时 {elapsed}"),
    "seconds": ("{value:.1f} s", "{value:.1f} 秒"),
    # errors
    "err_form": ("Check the form: {detail}", "请检查表单：{detail}"),
    "err_melody": ("Melody upload: {detail}", "旋律上传：{detail}"),
    "err_audio_prompt": ("Audio prompt: {detail}", "音频提示：{detail}"),
    "err_unexpected": ("Unexpected error: {detail}", "意外错误：{detail}"),
    "err_unavailable": ("Server unavailable: {detail}", "服务器不可用：{detail}"),
    "err_not_ready": ("Server not ready: {detail} Try again in a moment.", "服务器未就绪：{detail} 请稍后再试。"),
    "err_invalid": ("Invalid parameter: {detail}", "参数无效：{detail}"),
    "err_timeout": ("Timed out: {detail}", "超时：{detail}"),
    "err_failed": ("Generation failed: {detail}", "生成失败：{detail}"),
    "seed_empty": (
        "seed is empty: type a whole number (0 to 2^63-1) or choose a random seed",
        "种子为空：请输入整数（0 到 2^63-1），或选择随机种子",
    ),
    "seed_not_int": (
        "seed must be a whole number from 0 to 2^63-1, got {text!r}",
        "种子必须是 0 到 2^63-1 之间的整数，输入的是 {text!r}",
    ),
    "seed_range": ("seed must be in [0, 2^63), got {seed}", "种子必须在 [0, 2^63) 范围内，输入的是 {seed}"),
    "upload_type": (
        "'{name}' is not a supported audio file: use one of {kinds}",
        "'{name}' 不是支持的音频文件：请使用 {kinds} 之一",
    ),
    "upload_large": ("'{name}' is too large: {size}, at most {limit}", "'{name}' 太大：{size}，最多 {limit}"),
    "upload_empty": ("'{name}' is empty", "'{name}' 是空文件"),
    "upload_unreadable": (
        "'{name}' could not be read as audio ({error}). Is it a valid {ext} file?",
        "'{name}' 无法作为音频读取（{error}）。它是有效的 {ext} 文件吗？",
    ),
    "upload_silent": ("'{name}' holds no audio", "'{name}' 里没有音频"),
    "upload_quiet": (
        "'{name}' is silent (every sample is zero or not a number)",
        "'{name}' 是静音的（所有采样都是零或不是数字）",
    ),
    "upload_long": (
        "'{name}' is {seconds:.0f} s long: a melody may be at most {limit:g} s",
        "'{name}' 长 {seconds:.0f} 秒：旋律最多 {limit:g} 秒",
    ),
    # results
    "result": ("Result", "结果"),
    "empty_result": (
        "Your music will appear here: audio player, waveform, spectrogram and downloads.",
        "生成的音乐会显示在这里：播放器、波形、频谱图和下载。",
    ),
    "params_summary": (
        (
            "{duration:g} s · top-k {top_k} · top-p {top_p:g} · temperature {temperature:g}"
            " · guidance {guidance:g} · seed {seed} ({seed_kind}) · {model}"
        ),
        (
            "{duration:g} 秒 · top-k {top_k} · top-p {top_p:g} · 温度 {temperature:g}"
            " · 引导 {guidance:g} · 种子 {seed}（{seed_kind}）· {model}"
        ),
    ),
    "seed_kind_fixed": ("fixed", "固定"),
    "seed_kind_random": ("random", "随机"),
    "timing_summary": (
        "{audio:.1f} s of audio in {elapsed} ({rtf:.2f}× real time)",
        "{elapsed} 生成 {audio:.1f} 秒音频（{rtf:.2f} 倍实时速度）",
    ),
    "downloads_caption": ("Downloads: {norm}", "下载：{norm}"),
    "format_unavailable": (
        "{fmt} is not available on this host (no {fmt} encoder).",
        "此主机无法生成 {fmt}（缺少 {fmt} 编码器）。",
    ),
    "waveform": ("Waveform", "波形"),
    "spectrogram": ("Spectrogram", "频谱图"),
    "plots_stereo": ("L = left channel, R = right channel.", "L = 左声道，R = 右声道。"),
    "continuation_summary": (
        "Continued: the first {prompt:.2f} s are the uploaded piece, then {new:.2f} s of new music "
        "(the dashed line in the plots).",
        "续写：前 {prompt:.2f} 秒是上传的音频，之后是 {new:.2f} 秒新音乐（图中的虚线处）。",
    ),
    "reuse_latest": ("Reuse these settings (same seed)", "复用这些设置（相同种子）"),
    "reuse": ("Reuse these settings", "复用这些设置"),
    "earlier": ("Earlier results", "之前的结果"),
    "history_label": ("#{number} · {prompt} · seed {seed}", "#{number} · {prompt} · 种子 {seed}"),
    # messages of the shared validation, the server and the client library (`translate_detail`): the
    # English text is the message's own wording, each {field} standing for any text
    "detail_prompt_empty": ("prompt is empty: describe the music to generate", "提示词为空：请描述要生成的音乐"),
    "detail_prompt_chars": (
        "prompt is too long: {n} characters, at most {limit}",
        "提示词太长：{n} 个字符，最多 {limit} 个",
    ),
    "detail_prompt_tokens": (
        "prompt is too long: {n} tokens, at most {limit}",
        "提示词太长：{n} 个词元，最多 {limit} 个",
    ),
    "detail_duration": (
        "duration must be in (0, {limit}] seconds, got {value}",
        "时长必须在 (0, {limit}] 秒之内，输入的是 {value}",
    ),
    "detail_duration_prompt": (
        "duration too long for this prompt: at most {limit} s",
        "对这个提示词来说时长太长：最多 {limit} 秒",
    ),
    "detail_unreachable": (
        "cannot reach the MusicGen server at {url} ({reason}). Is it running (`make serve`) and is the URL right?",
        "无法连接位于 {url} 的 MusicGen 服务器（{reason}）。服务器在运行吗（`make serve`）？地址对吗？",
    ),
    "detail_unreachable_os": (
        "cannot reach the MusicGen server at {url}: {reason}. Is it running (`make serve`) and is the URL right?",
        "无法连接位于 {url} 的 MusicGen 服务器：{reason}。服务器在运行吗（`make serve`）？地址对吗？",
    ),
    "detail_no_answer": (
        "no answer from the server at {url} within {limit} s",
        "位于 {url} 的服务器在 {limit} 秒内没有回应",
    ),
    "detail_no_model": ("the server has no generation model loaded", "服务器没有加载任何生成模型"),
}
DETAIL_KEYS = tuple(k for k in STRINGS if k.startswith("detail_"))

# Example prompts: the English text goes into the prompt box (the model reads English); the page
# lists them by their description in the page's language.
EXAMPLES: tuple[tuple[str, str], ...] = (
    ("80s pop track with bassy drums and synth", "80 年代流行：厚重的鼓和合成器"),
    (
        "lo-fi hip hop beat with mellow piano and vinyl crackle, 75 bpm",
        "低保真嘻哈节拍：柔和钢琴和黑胶噪声，每分钟 75 拍",
    ),
    ("epic orchestral soundtrack with strings and big brass, building tension", "史诗管弦配乐：弦乐和铜管，张力渐强"),
    ("relaxing acoustic guitar by a campfire, warm and intimate", "篝火旁的放松木吉他，温暖亲切"),
    ("upbeat funk with slap bass, clavinet and tight horn stabs", "欢快放克：击勾贝斯、古钢琴和短促铜管"),
    ("ambient drone with evolving pads and distant bells", "氛围音乐：缓慢变化的铺底和远处的钟声"),
    ("90s rock song with loud guitars and heavy drums", "90 年代摇滚：响亮的吉他和沉重的鼓"),
    (
        "jazz trio in a smoky club: brushed drums, upright bass, piano",
        "烟雾缭绕的俱乐部里的爵士三重奏：刷鼓、立式贝斯、钢琴",
    ),
)

# English style tags (what the model understands), each with its Chinese name for the Chinese page.
STYLE_TAGS: dict[str, tuple[tuple[str, str], ...]] = {
    "genre": (
        ("lo-fi hip hop", "低保真嘻哈"),
        ("pop", "流行"),
        ("rock", "摇滚"),
        ("jazz", "爵士"),
        ("classical", "古典"),
        ("electronic dance", "电子舞曲"),
        ("ambient", "氛围"),
        ("funk", "放克"),
        ("cinematic orchestral", "电影管弦"),
        ("traditional Chinese folk", "中国传统民乐"),
    ),
    "instruments": (
        ("piano", "钢琴"),
        ("acoustic guitar", "木吉他"),
        ("electric guitar", "电吉他"),
        ("strings", "弦乐"),
        ("synthesizer", "合成器"),
        ("drums", "鼓"),
        ("bass", "贝斯"),
        ("guzheng", "古筝"),
        ("erhu", "二胡"),
        ("bamboo flute", "竹笛"),
    ),
    "mood": (
        ("calm", "平静"),
        ("happy", "欢快"),
        ("sad", "忧伤"),
        ("epic", "史诗"),
        ("romantic", "浪漫"),
        ("dark", "阴暗"),
        ("energetic", "充满活力"),
        ("dreamy", "梦幻"),
    ),
    "tempo": (
        ("slow, 70 bpm", "慢，每分钟 70 拍"),
        ("medium, 100 bpm", "中速，每分钟 100 拍"),
        ("fast, 130 bpm", "快，每分钟 130 拍"),
    ),
}
TAG_CATEGORIES = tuple(STYLE_TAGS)


def t(key: str, lang: str = DEFAULT_LANGUAGE, **kw) -> str:
    """The text of `key` in `lang` ('en' or 'zh'), formatted with `kw`."""
    en, zh = STRINGS[key]
    text = zh if lang == "zh" else en
    return text.format(**kw) if kw else text


def _template_regex(template: str) -> re.Pattern:
    parts = [
        re.escape(lit) + (f"(?P<{name}>.+?)" if name else "") for lit, name, _, _ in string.Formatter().parse(template)
    ]
    return re.compile("".join(parts), re.S)


_DETAILS = [(key, _template_regex(STRINGS[key][0])) for key in DETAIL_KEYS]


def translate_detail(message: str | None, lang: str) -> str:
    """A message from the validation, the server or the client library in `lang`, when it is one of the
    known ones (`detail_*` keys); otherwise as it came. Nothing else is translated (no guessing)."""
    text = str(message or "")
    if lang == DEFAULT_LANGUAGE:
        return text
    for key, pattern in _DETAILS:
        m = pattern.fullmatch(text.strip())
        if m:
            return t(key, lang, **m.groupdict())
    return text


def example_label(prompt: str, lang: str) -> str:
    """How an example prompt is listed: itself in English, its description in Chinese."""
    return next((zh for en, zh in EXAMPLES if en == prompt), prompt) if lang == "zh" else prompt


def tag_label(tag: str, lang: str) -> str:
    if lang != "zh":
        return tag
    zh = next((z for tags in STYLE_TAGS.values() for en, z in tags if en == tag), None)
    return f"{zh} · {tag}" if zh else tag


def prompt_from_tags(selected: dict[str, list[str]]) -> str:
    """An English prompt from the chosen tags: '<mood> <genre> with <instruments>, <tempo>'."""

    def pick(cat):
        return [x for x in selected.get(cat) or [] if x]

    mood, genre, inst, tempo = pick("mood"), pick("genre"), pick("instruments"), pick("tempo")
    head = " ".join([", ".join(mood), " / ".join(genre) or ("music" if mood or inst or tempo else "")]).strip()
    parts = [head] if head else []
    if inst:
        parts.append("with " + (", ".join(inst[:-1]) + " and " + inst[-1] if len(inst) > 1 else inst[0]))
    text = " ".join(parts)
    if tempo:
        text = f"{text}, {', '.join(tempo)}" if text else ", ".join(tempo)
    return text


_LANG_TAG = re.compile(r"^\s*([A-Za-z]{1,8})(?:[-_][A-Za-z0-9-]+)?\s*(?:;\s*q\s*=\s*([0-9.]+))?\s*$")


def detect_language(locale: str | None = None, accept_language: str | None = None) -> str:
    """'zh' or 'en' from the browser: its locale (navigator.language) first, then the Accept-Language
    header's most preferred language we have; English otherwise."""
    if locale:
        primary = re.split(r"[-_]", locale.strip(), maxsplit=1)[0].lower()
        if primary in LANGUAGES:
            return primary
    ranked = []
    for i, item in enumerate((accept_language or "").split(",")):
        m = _LANG_TAG.match(item)
        if not m:
            continue
        try:
            q = float(m.group(2)) if m.group(2) else 1.0
        except ValueError:
            continue
        ranked.append((-q, i, m.group(1).lower()))
    for _, _, primary in sorted(ranked):
        if primary in LANGUAGES:
            return primary
    return DEFAULT_LANGUAGE
