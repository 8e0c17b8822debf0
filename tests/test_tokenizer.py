"""The C tokenizer against Hugging Face `tokenizers`, run side by side on the
same tokenizer.json: the real SmolLM2 vocabulary (plain ByteLevel), the
SmolVLM variants (Digits + ByteLevel, added tokens) and edited copies that
exercise the other pre-tokenizers and added-token options."""
from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest
import tokenizers
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import modelgen
import smolvision
from smolvision import Tokenizer

# ---- the corpus ----

PROSE = (
    "The quick brown fox jumps over the lazy dog. It's a dog's life, isn't it? We'll see; they'd've "
    "known. I'M SHOUTING and I'm not. Don't, won't, can't, shan't, y'all, rock'n'roll, 'quoted' \"double\"."
)
CODE = '''def fib(n: int) -> int:
    """Return the n-th Fibonacci number."""
    if n < 2:
        return n
\treturn fib(n - 1) + fib(n - 2)  # tabs\tand  spaces   

for (int i = 0; i < 10; ++i) { printf("%d\\n", i * 0x1F); }  // C++
x = {"a": [1, 2.5e-3, -7], 'b': None}; y = x["a"][0] ** 2 >= 3 != 4
'''
BASE = [
    PROSE, CODE, "", " ", "  ", "\n", "\t", "\r\n", "a", "Hello world", "Hello  world", "Hello   world ",
    "trailing spaces   ", "   leading spaces", "tabs\t\tand\ttabs", "line\nbreaks\n\nand\r\nwindows\r\n\r\n",
    "mixed \t\n \r\n\t whitespace \n ", "1", "12", "123", "1234", "12345678901234567890", "3.14159 2,718 1_000_000",
    "phone: +1 (555) 010-9999, year 2024, v1.2.3", "x1y22z333", "١٢٣ ٤٥٦ ۷۸۹ १२३ ๑๒๓ ①②③ ½ ¾ Ⅻ",
    "日本語のテキストを分割します。中文字符串测试。한국어 문장입니다.",
    "العربية نص تجريبي مع أرقام ١٢٣", "हिन्दी पाठ का उदाहरण है।", "ภาษาไทยไม่มีช่องว่างระหว่างคำ",
    "Ελληνικά και русский текст и ещё", "עברית טקסט", "emoji 😀😃😄 and family 👨‍👩‍👧‍👦 and 👍🏽👍🏿 flags 🇫🇷🇯🇵",
    "combining: e\u0301 a\u0308 n\u0303 Z\u0351\u0352\u0353 \u0915\u094d\u0937", "zero\u200bwidth\u200djoiner\u200cnon",
    "nbsp\u00a0here thin\u2009space ideographic\u3000space en\u2002em\u2003", "\u00a0\u00a0x \u3000\u3000y",
    "ogham\u1680space narrow\u202fnbsp medium\u205fmath line\u2028sep para\u2029sep nel\u0085",
    "info sep \x1c\x1d\x1e\x1f and vt\x0b ff\x0c", "nul\x00byte and bell\x07 and del\x7f",
    "<|im_start|>user\nWhat is in this image?<image><end_of_utterance>\nAssistant:",
    "<|im_start|><|im_end|><|endoftext|>", "<image><image> <image>  <image>\n<image>", "<ima", "<image", "image>",
    "<<image>>", "<|im_start", "im_start|>", "<fake_token_around_image><row_1_col_1><image><global-img>",
    "<row_6_col_6><row_7_col_7><row_1_col_", "text<image>text", "<image>ed", "a <end_of_utterance> b",
    "surrogate-free 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 𝟙𝟚𝟛 ﬁ ﬀ Å K ſ", "ꓘ ǅ ǈ ǋ Dž", "'s 's 'S 'T 'RE 'Ve 'LL 'd 'ſ ''s '", "it's IT'S It'Ll",
    "\u0300\u0301 starts with marks", "Ⅷ ⅷ ↉ ⓵ ⑽ 𝍠 𐄇", "\U0001F9D1\u200D\U0001F4BB\U0001F3FB", "a" * 300,
    " " * 50 + "x", "\n" * 20, "😀" * 40, "-" * 80, "ab" * 100, "The year 1999 and 2000s. 10,000 people!",
    "Kawi \U00011F50\U00011F51 Garay \U00010D40\U00010D41 letters \U00010D4A\U00010D4B outlined \U0001CCF0",
    "a  <mask>  b", "x [L] y [R] z", "<tool><tool_call>zzq <toolzzq", "   [L]", "[R]   ", "<mask><mask>\t<mask>\n",
    "\u3000[L]\u00a0[R]\u2009", "zzqzzq", "[R] [L]", "zz<mask> zz<maskzz",
    "CJK ext H \U00031350\U00031351 ext I \U0002EBF0 ext J \U000323B0", "unassigned \U000E0080 \U0010FFFF private \uE000",
]


def corpus() -> list[str]:
    """BASE plus shuffled combinations of its strings (fixed seed)."""
    rng = random.Random(1234)
    out = list(BASE)
    for _ in range(150):
        parts = rng.sample(BASE, rng.randint(2, 4))
        seps = ["", " ", "\n", "  ", "\t", "<image>", "<|im_end|>\n"]
        out.append(parts[0] + "".join(rng.choice(seps) + p for p in parts[1:]))
    out.append("\n\n".join(BASE))
    return out


CORPUS = corpus()

# ---- tokenizer files ----


def smollm2_json() -> Path:
    return modelgen.smollm2_tokenizer_dir() / "tokenizer.json"


def edited(tmp_path: Path, name: str, edit) -> Path:
    """A copy of SmolLM2's tokenizer.json changed by edit(dict)."""
    data = json.loads(smollm2_json().read_text())
    edit(data)
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(data, ensure_ascii=False))
    return path


LLAMA3_RE = ("(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\\r\\n\\p{L}\\p{N}]?\\p{L}+|\\p{N}{1,3}| ?[^\\s\\p{L}\\p{N}]+[\\r\\n]*|"
             "\\s*[\\r\\n]+|\\s+(?!\\S)|\\s+")
QWEN2_RE = LLAMA3_RE.replace("\\p{N}{1,3}", "\\p{N}")
GPT2_RE = "'s|'t|'re|'ve|'m|'ll|'d| ?\\p{L}+| ?\\p{N}+| ?[^\\s\\p{L}\\p{N}]+|\\s+(?!\\S)|\\s+"


def split_then_bytes(regex: str):
    def edit(d):
        d["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": regex}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}]}
    return edit


def set_pre(pre):
    def edit(d):
        d["pre_tokenizer"] = pre
    return edit


def with_added_options(d):
    """Non-special and normalized added tokens, lstrip/rstrip, overlapping contents."""
    n = max(d["model"]["vocab"].values()) + 1
    extra = [("<mask>", True, True, False, False), ("<tool>", False, False, True, False),
             ("<tool_call>", False, False, False, True), ("[L]", True, False, False, True),
             ("[R]", False, True, True, False), ("zzq", False, False, True, False),
             ("zz<mask", False, False, True, False)]  # normalized: matched only after <mask> is cut out
    for i, (content, lstrip, rstrip, normalized, special) in enumerate(extra):
        d["added_tokens"].append({"id": n + i, "content": content, "single_word": False, "lstrip": lstrip,
                                  "rstrip": rstrip, "normalized": normalized, "special": special})


def with_bos_eos(d):
    d["post_processor"] = {"type": "TemplateProcessing",
                           "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                                      {"Sequence": {"id": "A", "type_id": 0}},
                                      {"SpecialToken": {"id": "<|im_end|>", "type_id": 0}}],
                           "pair": [{"Sequence": {"id": "A", "type_id": 0}}, {"Sequence": {"id": "B", "type_id": 1}}],
                           "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1], "tokens": ["<|im_start|>"]},
                                              "<|im_end|>": {"id": "<|im_end|>", "ids": [2], "tokens": ["<|im_end|>"]}}}


def batch_padding(d):
    """Padding to the longest text of a batch leaves a single text alone."""
    d["padding"] = {"strategy": "BatchLongest", "direction": "Right", "pad_to_multiple_of": None, "pad_id": 2,
                    "pad_type_id": 0, "pad_token": "<|im_end|>"}


def pair_merges(d):
    d["model"]["merges"] = [m.split(" ") if isinstance(m, str) else m for m in d["model"]["merges"]]


def string_merges(d):
    d["model"]["merges"] = [" ".join(m) if isinstance(m, list) else m for m in d["model"]["merges"]]


VARIANTS = {
    "llama3": split_then_bytes(LLAMA3_RE),
    "qwen2": split_then_bytes(QWEN2_RE),
    "gpt2split": split_then_bytes(GPT2_RE),
    "prefix_space": set_pre({"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}),
    "no_regex": set_pre({"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": False}),
    "digits_prefix": set_pre({"type": "Sequence", "pretokenizers": [
        {"type": "Digits", "individual_digits": False},
        {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True, "use_regex": True}]}),
    "added_options": with_added_options,
    "bos_eos": with_bos_eos,
    "string_merges": string_merges,
    "pair_merges": pair_merges,
    "batch_padding": batch_padding,
}


@pytest.fixture(scope="module")
def variant_files(tmp_path_factory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tokenizer-variants")
    files = {name: edited(folder, name, edit) for name, edit in VARIANTS.items()}
    files["smollm2"] = smollm2_json()
    return files


def load_pair(request, variant_files, name: str):
    if name.startswith("smolvlm-"):
        path = request.getfixturevalue(f"{name.split('-')[1]}_dir") / "tokenizer.json"
    else:
        path = variant_files[name]
    return Tokenizer.from_file(path), tokenizers.Tokenizer.from_file(str(path))


@pytest.fixture(scope="module", params=["smollm2", "smolvlm-mha", "smolvlm-gqa", *VARIANTS])
def pair(request, variant_files):
    """(ours, reference) loaded from the same tokenizer.json."""
    ours, ref = load_pair(request, variant_files, request.param)
    with ours:
        yield ours, ref


def mismatches(ours: Tokenizer, ref, texts, add_special=False) -> list:
    bad = []
    for text in texts:
        a = ours.encode(text, add_special_tokens=add_special)
        b = ref.encode(text, add_special_tokens=add_special).ids
        if a != b:
            bad.append((text, a, b))
    return bad


# ---- encoding parity ----

def test_corpus_matches_tokenizers(pair):
    ours, ref = pair
    bad = mismatches(ours, ref, CORPUS)
    assert not bad, f"{len(bad)} of {len(CORPUS)} corpus strings differ; first: {bad[0]!r}"


def test_add_special_tokens_matches_tokenizers(pair):
    ours, ref = pair
    assert not mismatches(ours, ref, CORPUS[:40], add_special=True)


def test_bos_eos_template_is_applied(variant_files):
    with Tokenizer.from_file(variant_files["bos_eos"]) as tok:
        plain = tok.encode("hi there")
        assert tok.encode("hi there", add_special_tokens=True) == [1, *plain, 2]


def test_smollm2_adds_no_special_tokens():
    with Tokenizer.from_file(smollm2_json()) as tok:
        assert tok.encode("hi", add_special_tokens=True) == tok.encode("hi")


def test_vocab_queries_match_tokenizers(pair):
    ours, ref = pair
    vocab = ref.get_vocab()
    assert len(ours) == len(vocab)
    for token, tid in vocab.items():
        assert ours.token_to_id(token) == ref.token_to_id(token) == tid
    top = max(vocab.values())
    for tid in list(range(0, top + 1, 97)) + list(range(top - 60, top + 3)):
        assert ours.id_to_token(tid) == ref.id_to_token(tid)
    assert ours.token_to_id("certainly not a token") is None
    assert ours.id_to_token(-1) is None


UNICODE_TEXT = st.text(st.characters(codec="utf-8"), max_size=40)
MIXED_TEXT = st.lists(st.one_of(UNICODE_TEXT, st.sampled_from(["<image>", "<|im_start|>", " ", "\n", "'s", "12345",
                                                              "<ima", "\u00a0", "<mask>", " [R] ", "<tool_call>"])),
                      max_size=8).map("".join)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.one_of(UNICODE_TEXT, MIXED_TEXT))
def test_random_unicode_matches_tokenizers(pair, text):
    ours, ref = pair
    assert ours.encode(text) == ref.encode(text, add_special_tokens=False).ids


def code_point_mismatches(ours: Tokenizer, ref, blocks, offset_by_block: bool = False) -> list[str]:
    """Code points of 256-point blocks (every step-th, starting at block % step
    when offset_by_block) in letter, digit, punctuation and space contexts;
    returns the blocks tokenized differently."""
    bad = []
    for block, step in blocks:
        first = (block << 8) + (block % step if offset_by_block else 0)
        chars = [chr(cp) for cp in range(first, (block + 1) << 8, step) if not 0xD800 <= cp < 0xE000]
        text = " ".join(f"a{c}1{c}{c} {c}x.{c}\n{c}" for c in chars)
        if chars and ours.encode(text) != ref.encode(text, add_special_tokens=False).ids:
            bad.append(f"U+{block << 8:04X}..U+{(block << 8) + 255:04X}")
    return bad


def test_code_points_are_classified_like_tokenizers(request, variant_files):
    """Every 11th code point (all residues mod 256 get visited) through the SmolVLM
    pre-tokenizer (Digits + ByteLevel): the generated Unicode tables must agree
    with Oniguruma's \\p{L}, \\p{N}, \\s and Rust's char::is_numeric."""
    ours, ref = load_pair(request, variant_files, "smolvlm-gqa")
    with ours:
        bad = code_point_mismatches(ours, ref, [(b, 11) for b in range(0x1100)], offset_by_block=True)
    assert not bad, f"blocks tokenized differently: {bad[:20]}"


@pytest.mark.slow
@pytest.mark.parametrize("name", ["smolvlm-gqa", "llama3"])
def test_every_code_point_is_classified_like_tokenizers(request, variant_files, name):
    """All 1.1M code points, through Digits + ByteLevel and through the Llama-3 split."""
    ours, ref = load_pair(request, variant_files, name)
    with ours:
        bad = code_point_mismatches(ours, ref, [(b, 1) for b in range(0x1100)])
    assert not bad, f"blocks tokenized differently: {bad[:20]}"


def test_invalid_utf8_bytes_are_replaced_like_python(pair):
    ours, ref = pair
    samples = [b"abc\xff", b"\xf0\x9f\x98", b"\xed\xa0\x80x", b"\xc3(", b"a\x80\x80b", b"\xe2\x82", b"\xf4\x90\x80\x80",
               b"ok \xc0\xaf \xf8\x88\x80\x80\x80 <image>\xfe", b"\x00\xff\x00", bytes(range(256))]
    for raw in samples:
        assert ours.encode(raw) == ref.encode(raw.decode("utf-8", "replace"), add_special_tokens=False).ids, raw


def test_lone_surrogate_is_refused():
    with Tokenizer.from_file(smollm2_json()) as tok, pytest.raises(smolvision.TokenizerError):
        tok.encode("a\ud800b")


# ---- decoding ----

def test_decode_matches_tokenizers(pair):
    ours, ref = pair
    for text in CORPUS:
        ids = ours.encode(text)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip)


@pytest.mark.parametrize("name", ["smollm2", "smolvlm-mha", "smolvlm-gqa", "llama3"])
def test_decode_of_encode_is_identity(request, variant_files, name):
    ours, ref = load_pair(request, variant_files, name)
    byte_tokens = byte_alphabet()
    with ours:
        for text in CORPUS:
            # bytes whose token the vocab lacks are dropped by the encoder, as tokenizers does
            # (SmolLM2 lacks U+0004, U+0006, U+0013, U+0014, U+0016 and U+001D)
            if all(ref.token_to_id(byte_tokens[b]) is not None for b in text.encode()):
                assert ours.decode(ours.encode(text)) == text


class IdSampler:
    """Random id sequences biased towards single-byte tokens and special tokens,
    so multi-byte characters get cut, mangled and interleaved."""

    def __init__(self, ref) -> None:
        self.top = max(ref.get_vocab().values())
        alphabet = byte_alphabet()
        self.byte_ids = [i for i in (ref.token_to_id(alphabet[b]) for b in range(256)) if i is not None]
        self.specials = [i for i in (ref.token_to_id(t) for t in ("<image>", "<|im_start|>", "<mask>")) if i is not None]

    def __call__(self, rng: random.Random) -> list[int]:
        out = []
        for _ in range(rng.randint(0, 12)):
            r = rng.random()
            if r < 0.6:
                out.append(rng.choice(self.byte_ids))
            elif r < 0.7:
                out.append(rng.choice(self.specials))
            else:
                out.append(rng.randint(0, self.top + 5))  # a few ids name no token
        return out


def test_decode_of_random_ids_matches_tokenizers(pair):
    ours, ref = pair
    rng, sample = random.Random(7), IdSampler(ref)
    for _ in range(300):
        ids = sample(rng)
        for skip in (False, True):
            assert ours.decode(ids, skip_special_tokens=skip) == ref.decode(ids, skip_special_tokens=skip), ids


def stream(tok: Tokenizer, ids, skip=False) -> list[str]:
    with tok.incremental_decoder(skip_special_tokens=skip) as dec:
        return [dec.push(i) for i in ids] + [dec.flush()]


def test_incremental_decoding_concatenates_to_decode(pair):
    ours, ref = pair
    for text in CORPUS:
        ids = ours.encode(text)
        pieces = stream(ours, ids)
        assert "".join(pieces) == ours.decode(ids)
        # a piece never ends inside a character, so no replacement character sneaks in
        assert all("\ufffd" not in p for p in pieces) or "\ufffd" in text
    rng, sample = random.Random(11), IdSampler(ref)
    for _ in range(300):
        ids = sample(rng)
        for skip in (False, True):
            assert "".join(stream(ours, ids, skip)) == ref.decode(ids, skip_special_tokens=skip), ids


def test_incremental_decoder_holds_split_characters():
    with Tokenizer.from_file(smollm2_json()) as tok:
        alphabet = byte_alphabet()
        ids = [tok.token_to_id(alphabet[b]) for b in "😀".encode()]  # four bytes, one token each
        with tok.incremental_decoder() as dec:
            assert [dec.push(i) for i in ids] == ["", "", "", "😀"]
            assert dec.push(ids[0]) == "" and dec.flush() == "\ufffd" and dec.flush() == ""
        assert tok.decode(ids[:3]) == "\ufffd"


def byte_alphabet() -> dict[int, str]:
    """GPT-2's byte -> character table (printable bytes are themselves)."""
    printable = list(range(33, 127)) + list(range(161, 173)) + list(range(174, 256))
    table, shifted = {}, 0
    for b in range(256):
        if b in printable:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + shifted)
            shifted += 1
    return table


def test_bad_ids_are_input_errors():
    with Tokenizer.from_file(smollm2_json()) as tok:
        for bad in ([1, -5], [2**31], ["7"], [1.5]):
            with pytest.raises(smolvision.InputError):
                tok.decode(bad)
        for bad in (-1, 2**40, "7", None):
            with pytest.raises(smolvision.InputError):
                tok.incremental_decoder().push(bad)


def test_numpy_ids_are_accepted():
    import numpy as np
    with Tokenizer.from_file(smollm2_json()) as tok:
        ids = np.array(tok.encode("numpy ids"), dtype=np.int64)
        assert tok.decode(ids) == "numpy ids"
        assert "".join(tok.incremental_decoder().push(i) for i in ids) == "numpy ids"
        assert tok.id_to_token(ids[0]) == tok.id_to_token(int(ids[0]))


# ---- malformed files ----

def broken(tmp_path: Path, edit) -> Path:
    data = json.loads(smollm2_json().read_text())
    edit(data)
    path = tmp_path / "tokenizer.json"
    path.write_text(json.dumps(data))
    return path


def _set(path: tuple, value):
    def edit(d):
        target = d
        for key in path[:-1]:
            target = target[key]
        target[path[-1]] = value
    return edit


MALFORMED = {
    "vocab_is_list": (_set(("model", "vocab"), ["a", "b"]), "model.vocab must be an object"),
    "vocab_id_is_string": (lambda d: d["model"]["vocab"].update({"Ġthe": "7"}), "non-negative integer id"),
    "merges_is_object": (_set(("model", "merges"), {"a": "b"}), "model.merges must be an array"),
    "merge_is_number": (lambda d: d["model"]["merges"].insert(3, 17), "merge 3 must be"),
    "merge_unknown_token": (lambda d: d["model"]["merges"].insert(0, ["Ġthe", "qqqqzzzz"]), "not in the vocab"),
    "merge_unknown_result": (lambda d: d["model"]["merges"].insert(0, ["z", "q"]), "makes a token not in the vocab"),
    "merge_three_parts": (lambda d: d["model"]["merges"].insert(0, "a b c"), "two tokens"),
    "model_type": (_set(("model", "type"), "WordPiece"), "model type 'WordPiece' is not supported"),
    "pre_tokenizer_type": (_set(("pre_tokenizer",), {"type": "Whitespace"}), "pre_tokenizer type 'Whitespace'"),
    "pre_tokenizer_null": (_set(("pre_tokenizer",), None), "no pre_tokenizer"),
    "split_regex": (split_then_bytes("\\w+|\\s+"), "regex"),
    "bytelevel_not_last": (set_pre({"type": "Sequence", "pretokenizers": [
        {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True},
        {"type": "Digits", "individual_digits": True}]}),
        "must be the last step"),
    "normalizer": (_set(("normalizer",), {"type": "NFC"}), "normalizer 'NFC' is not supported"),
    "decoder": (_set(("decoder",), {"type": "WordPiece"}), "decoder 'WordPiece' is not supported"),
    "single_word": (lambda d: d["added_tokens"][0].update(single_word=True), "single_word"),
    "added_id_string": (lambda d: d["added_tokens"][0].update(id="0"), "added_tokens[0] needs"),
    "added_flag_type": (lambda d: d["added_tokens"][1].update(lstrip="yes"), "added_tokens[1].lstrip"),
    "byte_fallback": (_set(("model", "byte_fallback"), True), "byte_fallback"),
    "dropout": (_set(("model", "dropout"), 0.1), "dropout"),
    "truncation": (_set(("truncation",), {"max_length": 5}), "truncation"),
    "fixed_padding": (_set(("padding",), {"strategy": {"Fixed": 64}, "pad_id": 0}), "padding"),
    "post_processor": (_set(("post_processor",), {"type": "BertProcessing"}), "post_processor 'BertProcessing'"),
    "root_is_list": (lambda d: (d.clear(), d.update({"model": []})), "\"model\" must be an object"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_tokenizer_json_is_refused(tmp_path, case):
    edit, message = MALFORMED[case]
    path = broken(tmp_path, edit)
    with pytest.raises(smolvision.TokenizerError, match=__import__("re").escape(message)):
        Tokenizer.from_file(path)


@pytest.mark.parametrize("cut", [0, 1, 100, 5000, -2])
def test_truncated_tokenizer_json_is_refused(tmp_path, cut):
    text = smollm2_json().read_bytes()
    path = tmp_path / "tokenizer.json"
    path.write_bytes(text[:cut] if cut >= 0 else text[:cut])
    with pytest.raises(smolvision.TokenizerError, match="tokenizer.json"):
        Tokenizer.from_file(path)


def test_missing_file_is_refused(tmp_path):
    with pytest.raises(smolvision.TokenizerError, match="nope.json"):
        Tokenizer.from_file(tmp_path / "nope.json")


# ---- the model's tokenizer ----

def test_model_tokenizer_is_a_borrowed_view(any_model_dir):
    ref = tokenizers.Tokenizer.from_file(str(any_model_dir / "tokenizer.json"))
    model = smolvision.load(any_model_dir)
    tok = model.tokenizer
    del model  # the view keeps its model alive
    text = CORPUS[40]
    assert tok.encode(text) == ref.encode(text, add_special_tokens=False).ids
    with tok.incremental_decoder() as dec:  # holds the view, so the model too
        assert dec.push(ref.token_to_id("<image>")) == "<image>"
        tok.close()  # detaches the view; the model's tokenizer is not freed
        with pytest.raises(smolvision.TokenizerError, match="closed"):
            dec.push(5)
    model = smolvision.load(any_model_dir)
    view = model.tokenizer
    model.close()
    with pytest.raises(smolvision.TokenizerError, match="closed"):
        view.encode("hi")


def test_model_without_tokenizer_json_loads(tmp_path, mha_dir):
    for f in mha_dir.iterdir():
        if f.name != "tokenizer.json" and f.is_file():
            os.symlink(f, tmp_path / f.name)
    with smolvision.load(tmp_path) as model:
        with pytest.raises(smolvision.TokenizerError, match="no tokenizer.json"):
            model.tokenizer
    (tmp_path / "tokenizer.json").write_text('{"model": ')
    with pytest.raises(smolvision.Error, match="tokenizer.json"):
        smolvision.load(tmp_path)


def test_closed_tokenizer_raises():
    tok = Tokenizer.from_file(smollm2_json())
    tok.close()
    tok.close()
    with pytest.raises(smolvision.TokenizerError, match="closed"):
        tok.encode("x")


def test_is_special_flags_match_added_tokens(pair):
    from smolvision._native import lib
    ours, ref = pair
    special = {tid for tid, tok in ref.get_added_tokens_decoder().items() if tok.special}
    top = max(ref.get_vocab().values())
    flagged = {i for i in range(top + 2) if lib.sv_tokenizer_is_special(ours._ptr, i)}
    assert special and flagged == special
