"""Text in: `<image>` prompt expansion against Idefics3Processor, and chat templates (locations, rendering,
the sandbox) against transformers' apply_chat_template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import Idefics3ImageProcessorPil, Idefics3Processor, PreTrainedTokenizerFast

from helpers import INSTRUCT_CONFIG, SMOLVLM_TEMPLATE, smooth_rgb, write_json
from smolvision.chat_template import load_chat_template, normalize_messages, render_chat_template
from smolvision.errors import InputError, ModelError
from smolvision.processing import (FAKE_IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN, IMAGE_TOKEN, ImageProcessor,
                                   expand_image_tokens, image_prompt)

PHOTO = Image.fromarray(smooth_rgb(120, 90))


# ---------------------------------------------------------------------------------------------------------------
# Prompt expansion against Idefics3Processor
# ---------------------------------------------------------------------------------------------------------------

IMAGE_SEQ_LEN = 5  # small, so failures print readable strings; the formula does not depend on it


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level tokenizer with SmolVLM's special tokens: it decodes any text back exactly."""
    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={ch: i for i, ch in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    backend.add_special_tokens(
        ["<|im_start|>", "<end_of_utterance>", FAKE_IMAGE_TOKEN, IMAGE_TOKEN, GLOBAL_IMAGE_TOKEN]
        + [f"<row_{r}_col_{c}>" for r in range(1, 7) for c in range(1, 7)]
    )
    return PreTrainedTokenizerFast(tokenizer_object=backend, eos_token="<end_of_utterance>")


@pytest.fixture(scope="module")
def reference(tokenizer: PreTrainedTokenizerFast) -> Idefics3Processor:
    return Idefics3Processor(
        image_processor=Idefics3ImageProcessorPil(**INSTRUCT_CONFIG), tokenizer=tokenizer,
        image_seq_len=IMAGE_SEQ_LEN, chat_template=SMOLVLM_TEMPLATE,
    )


def reference_text(reference: Idefics3Processor, **kwargs: Any) -> str:
    """The text the reference feeds the model, recovered by decoding its input_ids."""
    ids = reference(**kwargs)["input_ids"][0]
    return reference.tokenizer.decode(ids, skip_special_tokens=False)


WIDE = Image.fromarray(smooth_rgb(800, 300))  # 1 row x 2 columns at 384/768
TALL = Image.fromarray(smooth_rgb(200, 700))  # 2 rows x 1 column


def expand(text: str, images: list[Image.Image], split: bool = True) -> str:
    processor = ImageProcessor.from_dict(INSTRUCT_CONFIG)
    return expand_image_tokens(
        text, [processor.preprocess(image, do_image_splitting=split) for image in images], IMAGE_SEQ_LEN
    )


@pytest.mark.parametrize("split", [True, False], ids=["split", "unsplit"])
def test_one_image_prompt_matches_reference(reference: Idefics3Processor, split: bool) -> None:
    text = "User:<image>What is in this image?<end_of_utterance>\nAssistant:"
    expected = reference_text(reference, text=text, images=[WIDE], do_image_splitting=split)
    assert expand(text, [WIDE], split) == expected


@pytest.mark.parametrize("split", [True, False], ids=["split", "unsplit"])
def test_two_image_prompt_matches_reference(reference: Idefics3Processor, split: bool) -> None:
    text = "User: compare <image> with\n<image>, please.<end_of_utterance>\nAssistant:"
    expected = reference_text(reference, text=text, images=[WIDE, TALL], do_image_splitting=split)
    assert expand(text, [WIDE, TALL], split) == expected


def test_prompt_without_images_is_unchanged(reference: Idefics3Processor) -> None:
    text = "User: hello there<end_of_utterance>\nAssistant:"
    assert reference_text(reference, text=text) == text
    assert expand_image_tokens(text, [], IMAGE_SEQ_LEN) == text


def test_chat_with_system_prompt_matches_reference(reference: Idefics3Processor) -> None:
    messages = [
        {"role": "system", "content": [{"type": "text", "text": "Answer briefly."}]},
        {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is this?"}]},
        {"role": "assistant", "content": [{"type": "text", "text": "A gradient."}]},
        {"role": "user", "content": [{"type": "text", "text": "And this?"}, {"type": "image"}]},
    ]
    with_images = [
        {**m, "content": [{**block, "image": image} for block, image in zip(m["content"], images, strict=True)]}
        for m, images in zip(messages, [[None], [WIDE, None], [None], [None, TALL]], strict=True)
    ]
    out = reference.apply_chat_template(with_images, add_generation_prompt=True, tokenize=True, return_dict=True)
    expected = reference.tokenizer.decode(out["input_ids"][0], skip_special_tokens=False)
    prompt = render_chat_template(SMOLVLM_TEMPLATE, messages, add_generation_prompt=True)
    assert expand(prompt, [WIDE, TALL]) == expected


def test_image_prompt_strings() -> None:
    n = 2
    tokens = IMAGE_TOKEN * n
    assert image_prompt(0, 0, n) == f"{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{tokens}{FAKE_IMAGE_TOKEN}"
    assert image_prompt(1, 2, n) == (
        f"{FAKE_IMAGE_TOKEN}<row_1_col_1>{tokens}{FAKE_IMAGE_TOKEN}<row_1_col_2>{tokens}\n"
        f"\n{FAKE_IMAGE_TOKEN}{GLOBAL_IMAGE_TOKEN}{tokens}{FAKE_IMAGE_TOKEN}"
    )
    # (rows, cols) pairs are accepted in place of preprocessed images.
    assert expand_image_tokens("a<image>b", [(1, 2)], n) == f"a{image_prompt(1, 2, n)}b"


@pytest.mark.parametrize(("text", "n_images"), [("<image> and <image>", 1), ("<image>", 2), ("no marker", 1)])
def test_marker_count_mismatch_raises_input_error(text: str, n_images: int) -> None:
    with pytest.raises(InputError, match="markers"):
        expand_image_tokens(text, [(0, 0)] * n_images, IMAGE_SEQ_LEN)


# ---------------------------------------------------------------------------------------------------------------
# Chat templates
# ---------------------------------------------------------------------------------------------------------------

CONVERSATION = [
    {"role": "system", "content": [{"type": "text", "text": "You are terse."}]},
    {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "Describe <this> & that."}]},
    {"role": "assistant", "content": [{"type": "text", "text": "A cat."}]},
    {"role": "user", "content": [{"type": "text", "text": "Its colour?"}]},
]

# A multi-line template: without trim_blocks/lstrip_blocks its output would carry stray newlines and indents.
BLOCKY_TEMPLATE = """{% for message in messages %}
    {% if message['role'] == 'system' %}
<<SYS>>{{ message['content'][0]['text'] }}<</SYS>>
    {% else %}
{{ message['role'] }}: {{ message['content'] | tojson }}
    {% endif %}
{% endfor %}
{% if add_generation_prompt %}
assistant:{% endif %}"""


@pytest.mark.parametrize("add_generation_prompt", [True, False])
@pytest.mark.parametrize("template", [SMOLVLM_TEMPLATE, BLOCKY_TEMPLATE], ids=["smolvlm", "blocky"])
def test_chat_template_matches_reference(
    reference: Idefics3Processor, template: str, add_generation_prompt: bool
) -> None:
    expected = reference.apply_chat_template(
        CONVERSATION, chat_template=template, add_generation_prompt=add_generation_prompt
    )
    assert render_chat_template(template, CONVERSATION, add_generation_prompt=add_generation_prompt) == expected


def test_string_content_renders_as_a_text_block(reference: Idefics3Processor) -> None:
    as_strings = [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi!"}]
    as_blocks = [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in as_strings]
    expected = reference.apply_chat_template(as_blocks, add_generation_prompt=True)
    assert render_chat_template(SMOLVLM_TEMPLATE, as_strings) == expected
    assert expected == "<|im_start|>System: Be kind.<end_of_utterance>\nUser: Hi!<end_of_utterance>\nAssistant:"


def test_template_variables_match_reference(reference: Idefics3Processor) -> None:
    # transformers passes tools=None and documents=None, which templates test with `is none`.
    template = "{{ tools is none }} {{ documents is none }} {{ add_generation_prompt }}"
    expected = reference.apply_chat_template(CONVERSATION, chat_template=template, add_generation_prompt=True)
    assert expected == "True True True"
    assert render_chat_template(template, CONVERSATION) == expected
    assert render_chat_template("{{ bos_token }}{{ messages | length }}", [], bos_token="<s>") == "<s>0"


def test_raise_exception_becomes_input_error() -> None:
    template = "{% if messages[0]['role'] != 'user' %}{{ raise_exception('first must be user') }}{% endif %}ok"
    assert render_chat_template(template, [{"role": "user", "content": "x"}]) == "ok"
    with pytest.raises(InputError, match="first must be user"):
        render_chat_template(template, [{"role": "system", "content": "x"}])


def test_template_failing_at_render_time_raises_input_error() -> None:
    with pytest.raises(InputError):
        render_chat_template("{{ messages[0]['content'] + '!' }}", [{"role": "user", "content": "hi"}])  # list + str


def test_broken_template_raises_model_error() -> None:
    with pytest.raises(ModelError):
        render_chat_template("{% for message in messages %}", [])


def test_bad_messages_raise_input_error() -> None:
    for messages in ("hello", [{"content": "no role"}], ["not a dict"]):
        with pytest.raises(InputError):
            render_chat_template(SMOLVLM_TEMPLATE, messages)  # type: ignore[arg-type]


def test_template_cannot_touch_objects_in_messages(tmp_path: Path) -> None:
    target = tmp_path / "written.png"
    messages = [{"role": "user", "content": [{"type": "image", "image": PHOTO}]}]
    assert normalize_messages(messages)[0]["content"][0]["image"] == "<Image>"
    with pytest.raises(InputError):
        render_chat_template("{{ messages[0]['content'][0]['image'].save('" + str(target) + "') }}", messages)
    assert not target.exists()


def test_template_sandbox_blocks_python_internals() -> None:
    with pytest.raises(InputError):
        render_chat_template("{{ messages.__class__.__mro__ }}{{ ''.__class__.__subclasses__() }}", [])
    with pytest.raises(InputError):
        render_chat_template("{% set ns = namespace() %}{% set ns._hidden = 1 %}", [])


def test_load_chat_template_locations(tmp_path: Path) -> None:
    def model_dir(name: str, files: dict[str, Any]) -> Path:
        d = tmp_path / name
        d.mkdir()
        for filename, content in files.items():
            if filename.endswith(".json"):
                write_json(d / filename, content)
            else:
                (d / filename).write_text(content, encoding="utf-8")
        return d

    assert load_chat_template(model_dir("json", {"chat_template.json": {"chat_template": "A"}})) == "A"
    assert load_chat_template(model_dir("jinja", {"chat_template.jinja": "B"})) == "B"
    assert load_chat_template(model_dir("tok", {"tokenizer_config.json": {"chat_template": "C"}})) == "C"
    named = [{"name": "tool_use", "template": "X"}, {"name": "default", "template": "D"}]
    assert load_chat_template(model_dir("named", {"tokenizer_config.json": {"chat_template": named}})) == "D"
    everything = {
        "chat_template.json": {"chat_template": "json"}, "chat_template.jinja": "jinja",
        "tokenizer_config.json": {"chat_template": "tokenizer"},
    }
    assert load_chat_template(model_dir("precedence", everything)) == "json"
    with pytest.raises(ModelError):
        load_chat_template(model_dir("none", {"tokenizer_config.json": {"model_max_length": 10}}))
    with pytest.raises(ModelError):
        load_chat_template(model_dir("nodefault", {"tokenizer_config.json": {"chat_template": named[:1]}}))
