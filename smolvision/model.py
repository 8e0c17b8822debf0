"""Model: one loaded SmolVLM, owning its C engine handle."""
from __future__ import annotations

import functools
import os
import queue
import sys
import threading
import time
from dataclasses import replace
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np

from . import _cache, _states, errors, generation, pipeline, scheduler
from . import profile as _profile
from ._native import check, ffi, lib
from .config import Config
from .generation import Prompt, Result, SamplingParams, TokenCallback
from .pipeline import Inputs, PromptBuilder, TextAssembler
from .processing import PreprocessedImage
from . import batch as _batch
from . import sequence as _sequence
from .tokenizer import Tokenizer

PathLike = str | os.PathLike

# Model(precision=...) -> sv_precision
_PRECISIONS = {"fp32": 0, "bf16": 1}
# Model(quant=...) -> sv_quant
_QUANTS = {None: 0, "q8": 1, "q4": 2}


@ffi.def_extern()
def _sv_on_log(user, message):
    try:
        ffi.from_handle(user)(ffi.string(message).decode("utf-8", "replace"))
    except Exception:  # a failing logger must not break loading
        pass


def _print_to_stderr(message: str) -> None:
    print(f"smolvision: {message}", file=sys.stderr, flush=True)


class Model:
    """A SmolVLM model loaded from a Hugging Face model directory.

    Weights are memory-mapped and validated at load, not converted, so loading
    is fast.  Use as a context manager, or call close(), to release the
    mapping and the engine's threads promptly.

        with smolvision.load("SmolVLM-Instruct") as model:
            print(model.config.text.hidden_size)

    precision: "bf16" (default) rounds matmul inputs to BF16 and sums BF16 x
    BF16 products in fp32 (AVX512_BF16), for BF16 weights: about twice the
    matmul throughput, with errors against transformers' float32 run no larger
    than transformers' own bfloat16 run's (measured at a quarter to a half of
    it).  "fp32" multiplies fp32 activations by the weights widened to fp32 and
    matches transformers' float32 run to about 1e-6.  On CPUs without
    AVX512_BF16 (see smolvision.cpu_features()), and for F16/F32 weights,
    "bf16" computes as "fp32".

    quant: None (default) runs the checkpoint's weights; "q8" or "q4" quantizes the text decoder's
    linear weights (8.5 or 4.5 bits a weight, blocks of 32 with an fp16 scale) for faster decoding.
    The first load with a quant converts the checkpoint (seconds) and writes the result to the user
    cache (smolvision._cache: $SMOLVISION_CACHE, $XDG_CACHE_HOME/smolvision or ~/.cache/smolvision);
    later loads map that file.  on_log(message) is told when that happens (default: printed to stderr).

    cache_bytes: what the model keeps between calls, least recently used first out, within this many
    bytes (default 1 GiB; 0 = nothing): the sequences (KV caches) of finished calls, so that a prompt
    sharing a prefix with one of them (the next turn of a chat, a repeated system prompt or image)
    computes only the rest (Result.cached_tokens), and the features of encoded images, so that an image
    seen again is not encoded again (Result.cached_images).  A sequence takes sequence_bytes_per_token
    per token of its capacity (the 2.2B model: 192 KiB in BF16, 384 KiB in fp32).

    max_sequences: calls run on one engine thread, and up to this many (default 4) decode together,
    one pass over the weights advancing each by a token: calls from several threads, server requests
    and generate_many's requests; more wait their turn.  Each running call holds a sequence of its
    prompt's length plus max_tokens.
    """

    def __init__(self, model_dir: PathLike, threads: int | None = None, precision: str = "bf16",
                 profile: bool | None = None, quant: str | None = None,
                 on_log: Callable[[str], Any] | None = None, cache_bytes: int | None = None,
                 max_sequences: int = 4) -> None:
        path = os.fspath(model_dir)
        if not os.path.isdir(path):
            raise errors.ModelError(f"model directory not found: {path}")
        if threads is not None and (not isinstance(threads, int) or isinstance(threads, bool) or threads < 1):
            raise errors.InputError(f"threads must be a positive integer or None, not {threads!r}")
        if not isinstance(precision, str) or precision not in _PRECISIONS:
            raise errors.InputError(f"precision must be one of {', '.join(map(repr, _PRECISIONS))}, not {precision!r}")
        if not (quant is None or isinstance(quant, str)) or quant not in _QUANTS:
            raise errors.InputError(f"quant must be None, 'q8' or 'q4', not {quant!r}")
        if cache_bytes is None:
            cache_bytes = _states.DEFAULT_CACHE_BYTES
        if not isinstance(cache_bytes, int) or isinstance(cache_bytes, bool) or cache_bytes < 0:
            raise errors.InputError(f"cache_bytes must be an integer >= 0 (0 = no cache), not {cache_bytes!r}")
        self._states = _states.StateCache(cache_bytes)
        if not isinstance(max_sequences, int) or isinstance(max_sequences, bool) or \
                not 1 <= max_sequences <= lib.SV_PREFILL_CHUNK:
            raise errors.InputError(f"max_sequences must be an integer in [1, {lib.SV_PREFILL_CHUNK}], "
                                    f"not {max_sequences!r}")
        self._scheduler = scheduler.Scheduler(self, max_sequences)
        if on_log is not None and not callable(on_log):
            raise errors.InputError("on_log must be a callable taking a message string")
        self.model_dir = path
        # One engine handle is not reentrant: calls into it are serialised (generations run on the
        # scheduler's engine thread, which takes the lock for each step).
        self._lock = threading.RLock()
        # The tokenizer has its own: the engine never uses it, so a caller turning ids into text (or a new
        # prompt into ids) need not wait for the decode step that holds _lock; close() takes both.
        self._tokenizer_lock = threading.RLock()
        out = ffi.new("sv_model **")
        options = ffi.new("sv_load_options *", {"n_threads": threads or 0, "precision": _PRECISIONS[precision],
                                                "quant": _QUANTS[quant]})
        keep = []  # what the options point at, alive through the call
        if quant is not None:
            cache_file = _cache.quant_cache_path(path, quant)
            try:
                cache_file.parent.mkdir(parents=True, exist_ok=True)
            except OSError:
                pass  # the engine reports the cache it cannot write and quantizes in memory
            keep = [ffi.new("char[]", os.fsencode(cache_file)), ffi.new_handle(on_log or _print_to_stderr)]
            options.quant_cache_path, options.on_log, options.log_user = keep[0], lib._sv_on_log, keep[1]
        check(lib.sv_model_load_ex(path.encode(), options, out), errors.ModelError)
        del keep
        self._handle = out[0]
        # SMOLVISION_PROFILE=1 profiles every model and prints the table when it closes.
        self._print_profile_at_close = profile is None and _profile.enabled_by_env()
        if profile or self._print_profile_at_close:
            lib.sv_profile_enable(self._handle, 1)
        self.config = Config._from_c(lib.sv_model_config(self._handle))
        self._eos_token_ids: tuple[int, ...] | None = None
        self._prompt_builder: PromptBuilder | None = None

    @property
    def _ptr(self):
        if self._handle is None:
            raise errors.Error("this Model is closed")
        return self._handle

    @property
    def precision(self) -> str:
        """The matmul precision asked for at load: "fp32" or "bf16" (which may compute as fp32, see Model)."""
        code = lib.sv_model_precision(self._ptr)
        return next(name for name, value in _PRECISIONS.items() if value == code)

    def profile(self) -> _profile.Profile:
        """Seconds per phase (vision, prefill, decode) and op class since profiling was enabled or
        last reset; print it for a table.  Profiling is on with load(..., profile=True) or
        SMOLVISION_PROFILE=1; otherwise this raises InputError."""
        with self._lock:
            if not lib.sv_profile_enabled(self._ptr):
                raise errors.InputError("profiling is off: load with profile=True or set SMOLVISION_PROFILE=1")
            return _profile.Profile._read(self._ptr)

    def reset_profile(self) -> None:
        """Restarts the profile's counters at zero (profiling stays as it was)."""
        with self._lock:
            lib.sv_profile_enable(self._ptr, lib.sv_profile_enabled(self._ptr))

    @property
    def quant(self) -> str | None:
        """The weight quantization asked for at load: None, "q8" or "q4"."""
        code = lib.sv_model_quant(self._ptr)
        return next(name for name, value in _QUANTS.items() if value == code)

    @property
    def tokenizer(self) -> Tokenizer:
        """The model's tokenizer (from its tokenizer.json), borrowed: it keeps
        this Model alive and stops working once the Model is closed."""
        handle = lib.sv_model_tokenizer(self._ptr)
        if handle == ffi.NULL:
            raise errors.TokenizerError(f"{self.model_dir} has no tokenizer.json")
        return Tokenizer(handle, _owner=self)

    @property
    def closed(self) -> bool:
        return self._handle is None

    def close(self) -> None:
        """Releases the weights mapping and the engine's threads; idempotent.

        Safe from any thread: it waits for the calls running on other threads to
        finish.  From inside this model's own callback (on_token) it would wait
        for the running call, so it raises instead."""
        if hasattr(self, "_scheduler"):
            if self._scheduler.in_callback():
                raise errors.Error("cannot close a Model from inside its own generation callback; "
                                   "return True from on_token to stop, then close")
            self._scheduler.close()
        with self._lock, self._tokenizer_lock:
            if hasattr(self, "_states"):
                self._states.clear()
            handle, self._handle = getattr(self, "_handle", None), None
            if handle is not None:
                if getattr(self, "_print_profile_at_close", False):
                    print(f"smolvision profile of {self.model_dir}:\n{_profile.Profile._read(handle)}",
                          file=sys.stderr)
                lib.sv_model_free(handle)

    # ---- token-level decoding (see generation.py) ----

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """The ids that end generation by default, from generation_config.json."""
        if self._eos_token_ids is None:
            self._eos_token_ids = generation.read_eos_token_ids(self.model_dir)
        return self._eos_token_ids

    def logits(self, input_ids, images: Sequence = (), *, image_embeds=None, do_image_splitting=None,
               longest_edge=None) -> np.ndarray:
        """float32 [vocab] logits after the last of input_ids [n].

        Positions holding the image token id take, in order, the rows of the
        images' features (encode_image of each, in order) or of a precomputed
        image_embeds [n_image_tokens, text hidden_size]; the count must match
        exactly."""
        if images:
            if image_embeds is not None:
                raise errors.InputError("give images or image_embeds, not both")
            image_embeds = np.concatenate([self.encode_image(image, do_image_splitting=do_image_splitting,
                                                             longest_edge=longest_edge)
                                           for image in _as_list(images)])
        prompt = Prompt.build(self.config, input_ids).with_image_embeds(image_embeds)
        with self._lock:
            return generation.logits(self._ptr, self.config.text.vocab_size, prompt)

    def generate_ids(self, input_ids, image_embeds=None, *, params: SamplingParams | None = None,
                     on_token: TokenCallback | None = None, **sampling) -> Result:
        """Generates ids after input_ids (see logits() for image_embeds); the Result's text is None.

        Sampling options come from `params` and/or keywords (SamplingParams'
        fields: max_tokens, temperature, top_k, top_p, min_p,
        repetition_penalty, seed, eos_token_ids).  `on_token(id)` sees each id
        as it is chosen and may return True to stop; an exception it raises
        stops generation and propagates from here."""
        params = SamplingParams.build(params, sampling)
        prompt = Prompt.build(self.config, input_ids, params.max_tokens).with_image_embeds(image_embeds)
        return self._decode(prompt, params, on_token)

    def stream_ids(self, input_ids, image_embeds=None, *, params: SamplingParams | None = None,
                   **sampling) -> Iterator[int]:
        """Like generate_ids(), but yields each id as soon as it is chosen.

        Arguments are checked now; generation runs on a worker thread.
        Closing the iterator early stops the engine after at most one more id."""
        params = SamplingParams.build(params, sampling)
        prompt = Prompt.build(self.config, input_ids, params.max_tokens).with_image_embeds(image_embeds)
        return generation.stream(functools.partial(self._decode, prompt, params))

    def _decode(self, prompt: Prompt, params: SamplingParams, on_token: TokenCallback | None,
                cancel: threading.Event | None = None) -> Result:
        """The token loop on this model's engine thread (scheduler.py), decoding together with the other
        running calls: ids after `prompt`, each shown to on_token on this thread.

        With a cache budget, the prompt continues the cached sequence sharing its longest prefix (at
        least its last token is computed again, for its logits), and the sequence goes back to the
        cache afterwards, however the call ended."""
        eos = params.eos_token_ids if params.eos_token_ids is not None else self.eos_token_ids
        events: queue.SimpleQueue = queue.SimpleQueue()
        call = scheduler.Call(prompt, params, eos, events, cancel=cancel)
        with self._scheduler.caller():
            try:
                self._scheduler.submit(call)
                [(ids, ended, stopped, raised)] = self._scheduler.collect(events, [call], [on_token])
            except BaseException:  # Ctrl-C before collect() was under way: nobody would stop the call
                call.stop.set()
                raise
        if raised is not None:
            raise raised
        if ended.error is not None:
            raise ended.error
        return scheduler.result_of(prompt, ids, ended, stopped)

    def _take_sequence(self, prompt: Prompt) -> tuple[_sequence.Sequence, int, np.ndarray | None]:
        """(sequence, start, key) for a prompt (the caller holds the lock): the cached sequence sharing its
        longest prefix, cut back to it (at most all but the last token, whose logits are needed), or a
        new one; start = the tokens it holds; key = the prompt's cache key (None with the cache off)."""
        if self._states.budget <= 0:
            return _sequence.Sequence(self), 0, None
        key = _states.prompt_key(prompt)
        seq, shared = self._states.take_sequence(key)
        start = min(shared, len(key) - 1)
        if seq is None:
            seq = _sequence.Sequence(self)
        seq.truncate(start)
        return seq, start, key

    def _release_sequence(self, seq: _sequence.Sequence, key: np.ndarray | None) -> None:
        """Puts a sequence taken for a prompt of this key back in the cache, keyed by what it now holds
        (or frees it with the cache off)."""
        if key is None or self._states.budget <= 0:
            seq.close()
            return
        held = seq.tokens.astype(np.int64)
        known = min(len(held), len(key))
        held[:known] = key[:known]  # image positions: their rows' hashes
        self._states.put_sequence(held, seq)

    def generate_many(self, requests: Sequence[Mapping[str, Any]]) -> list[Result]:
        """Answers several requests together (each a dict of generate()'s keyword arguments) and returns
        their Results in order.

        Every running request advances one token per pass over the weights (sv_decode_batch), at most
        max_sequences at a time (load(..., max_sequences=N), shared with calls from other threads); each
        keeps its own sampling settings, stop
        strings, max_tokens and on_token (returning True cancels that request only).  A request that
        fails (bad arguments, an exception from its on_token) does not disturb the others: its Result
        has finish_reason 'error', the exception in `error`, and whatever it generated before.  In
        precision fp32 greedy answers equal generate()'s one by one."""
        return _batch.generate_many(self, requests)

    @property
    def max_sequences(self) -> int:
        """The most calls decoded together, from all threads (load(..., max_sequences=N)); more wait."""
        return self._scheduler.max_sequences

    def scheduler_stats(self) -> scheduler.Stats:
        """Calls running and waiting on the engine now, and the decode steps and rows so far (their ratio
        is the mean number of calls each pass over the weights advanced)."""
        return self._scheduler.stats()

    @property
    def cache_bytes(self) -> int:
        """The byte budget of the cached sequences and image features (load(..., cache_bytes=...))."""
        return self._states.budget

    def cached_bytes(self) -> int:
        """Bytes the cached sequences and image features hold now (at most cache_bytes)."""
        with self._lock:
            return self._states.nbytes

    def clear_cache(self) -> None:
        """Frees every cached sequence and image feature."""
        with self._lock:
            self._states.clear()

    # ---- sequences (see sequence.py) ----

    def sequence(self) -> _sequence.Sequence:
        """A new, empty Sequence of this model: a KV cache that prefill() extends, truncate() cuts back
        and sequence.decode_batch() advances together with others."""
        return _sequence.Sequence(self)

    @property
    def sequence_bytes_per_token(self) -> int:
        """Bytes one token of a Sequence takes: layers x 2 x kv_heads x head_dim values of the KV cache
        (2 bytes each where the matmuls run in BF16, else 4) plus its id."""
        return int(lib.sv_seq_bytes_per_token(self._ptr))

    # ---- text level: templates, images, prompts (see pipeline.py) ----

    @property
    def _prompts(self) -> PromptBuilder:
        if self._prompt_builder is None:
            self._prompt_builder = PromptBuilder(self.model_dir, self.tokenizer, self.config.image_seq_len)
        return self._prompt_builder

    def apply_chat_template(self, messages: Sequence[Mapping[str, Any]], add_generation_prompt: bool = True) -> str:
        """Renders messages ({"role": ..., "content": [{"type": "image"}, {"type": "text", "text": ...}]} or
        string content) with the model's own chat template, in a sandbox."""
        return self._prompts.apply_chat_template(messages, add_generation_prompt)

    def preprocess(self, image, do_image_splitting: bool | None = None,
                   longest_edge: int | None = None) -> PreprocessedImage:
        """One image (path, bytes, PIL image or HxWx3 uint8 array) as the model's tiles:
        `.pixel_values` float32 [n_tiles, 3, S, S], `.rows`, `.cols`, exactly as Idefics3ImageProcessor."""
        return self._prompts.preprocess(image, do_image_splitting, longest_edge)

    def encode_image(self, image, do_image_splitting: bool | None = None,
                     longest_edge: int | None = None) -> np.ndarray:
        """An image's features: float32 [n_tiles * image_seq_len, text hidden_size], equal to
        transformers' get_image_features on the processor's pixel_values."""
        return self.encode_pixel_values(self.preprocess(image, do_image_splitting, longest_edge).pixel_values)

    def build_inputs(self, messages: Sequence[Mapping[str, Any]] | None = None, images: Sequence = (), *,
                     prompt: str | None = None, add_generation_prompt: bool = True,
                     do_image_splitting: bool | None = None, longest_edge: int | None = None,
                     videos: Sequence = (), fps: float | None = None, max_frames: int | None = None) -> Inputs:
        """(input_ids, pixel_values, images, text, tile_groups) for a conversation, as Idefics3Processor gives them
        (SmolVLMProcessor's for `videos`: frame tiles in the order of the markers).

        `messages` go through the chat template; alternatively `prompt` is used verbatim (one `<image>`
        marker per image)."""
        if (messages is None) == (prompt is None):
            raise errors.InputError("give exactly one of messages (templated) or prompt (verbatim)")
        text = prompt if messages is None else self.apply_chat_template(messages, add_generation_prompt)
        self._check_video_support(_as_list(videos))
        return self._prompts.build(text, _as_list(images), do_image_splitting, longest_edge, _as_list(videos), fps,
                                   max_frames)

    def generate(self, prompt: str | None = None, images: Sequence = (), messages=None, max_tokens: int = 256,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
                 on_token: Callable[[str], Any] | None = None, raw: bool = False,
                 system_prompt: str | None = None, do_image_splitting: bool | None = None,
                 longest_edge: int | None = None,
                 on_progress: Callable[[int, int], Any] | None = None, videos: Sequence = (),
                 fps: float | None = None, max_frames: int | None = None,
                 cancel: threading.Event | None = None) -> Result:
        """Answers a prompt about images (or a whole conversation) and returns the text.

        `prompt` + `images` is one user turn through the chat template (after `system_prompt` if
        given); `messages` is a full conversation whose image blocks take `images` in order; `raw=True`
        feeds `prompt` verbatim (one `<image>` marker per image). temperature 0 is greedy. Generation
        ends at the model's EOS tokens, a `stop` string (cut from the text) or `max_tokens`.
        `on_token(piece)` sees the text as it is decoded and may return True to stop. Ctrl-C and
        exceptions from on_token cancel generation and propagate; the model stays usable.  Setting
        `cancel` (a threading.Event, from any thread) stops it too: before the prompt's next chunk or
        after the next token (finish_reason 'cancelled').  Calls from several threads run together:
        their decode steps share each pass over the weights (up to max_sequences of them).
        `on_progress(done, total)` follows the encoding of the images' tiles (those not already in the
        image cache).
        `videos` (SmolVLM2): files or their bytes (decoded with PyAV, `smolvision[video]`) or
        smolvision.video.VideoFrames, one `{"type": "video"}` block / `<video>` marker each; `fps` / `max_frames` override the model's sampling."""
        request = self._prepare(prompt, images, messages, max_tokens=max_tokens, temperature=temperature,
                                top_k=top_k, top_p=top_p, min_p=min_p, repetition_penalty=repetition_penalty,
                                seed=seed, stop=stop, raw=raw, system_prompt=system_prompt,
                                do_image_splitting=do_image_splitting, longest_edge=longest_edge,
                                on_progress=on_progress, videos=videos, fps=fps, max_frames=max_frames)
        return self._answer(request, on_token, cancel)

    def stream(self, prompt: str | None = None, images: Sequence = (), messages=None,
               **options) -> Iterator[str]:
        """Like generate(), but yields the answer's text pieces as they are decoded.

        The prompt is prepared now (arguments checked, images encoded); generation runs on a worker
        thread, and closing the iterator early stops it after at most one more token.  The generator's
        return value (StopIteration.value) is the Result."""
        if "on_token" in options or "cancel" in options:
            raise errors.InputError("stream() yields the text itself and stops when closed; on_token and cancel "
                                    "are for generate()")
        return generation.stream(functools.partial(self._answer, self._prepare(prompt, images, messages, **options)))

    def _prepare(self, prompt: str | None = None, images: Sequence = (), messages=None, *, max_tokens: int = 256,
                 temperature: float = 0.0, top_k: int = 0, top_p: float = 1.0, min_p: float = 0.0,
                 repetition_penalty: float = 1.0, seed: int | None = None, stop: Sequence[str] = (),
                 raw: bool = False, system_prompt: str | None = None, do_image_splitting: bool | None = None,
                 longest_edge: int | None = None, on_progress: Callable[[int, int], Any] | None = None,
                 videos: Sequence = (), fps: float | None = None, max_frames: int | None = None) -> _Request:
        """Step one of generate(): checked options, the prompt text through the template, its ids and the
        encoded images' rows.

        A prompt that cannot fit the context window with max_tokens more is refused before the images
        are decoded (each takes at least image_seq_len tokens) and, exactly, before they are encoded."""
        params = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                min_p=min_p, repetition_penalty=repetition_penalty, seed=seed)
        if isinstance(stop, str):
            stop = [stop]
        if not all(isinstance(s, str) for s in stop):
            raise errors.InputError("stop must be a string or a sequence of strings")
        images, videos = _as_list(images), _as_list(videos)
        self._check_video_support(videos)
        generation.check_context(len(images) * self._prompts.image_seq_len, max_tokens,
                                 self.config.text.max_position_embeddings, images=len(images))
        if messages is not None:
            if prompt is not None or raw or system_prompt is not None:
                raise errors.InputError("messages is a whole conversation: don't also pass prompt, raw or "
                                        "system_prompt")
            text = self.apply_chat_template(messages)
        elif raw:
            if prompt is None:
                raise errors.InputError("raw=True needs a prompt")
            if system_prompt is not None:
                raise errors.InputError("raw=True feeds the prompt verbatim; system_prompt does not apply")
            text = prompt
        else:
            if prompt is not None and not isinstance(prompt, str):
                raise errors.InputError(f"prompt must be a string, not {type(prompt).__name__}")
            if not prompt and not images and not videos:
                raise errors.InputError("nothing to answer: give a prompt, images, videos or messages")
            text = self.apply_chat_template(pipeline.chat_messages(prompt, len(images), system_prompt, len(videos)))
        start = time.perf_counter()
        inputs = self._prompts.build(text, images, do_image_splitting, longest_edge, videos, fps, max_frames)
        ids = Prompt.build(self.config, inputs.input_ids, max_tokens)
        embeds, cached_images = self._image_features(inputs.tile_groups, on_progress)
        # Preparing the images (preprocessing and encoding) took this long; nothing was encoded when
        # every image came from the cache.
        encode_s = time.perf_counter() - start if cached_images < len(inputs.tile_groups) else 0.0
        eos = pipeline.stop_token_ids(self.eos_token_ids, self.tokenizer)
        n_tiles = 0 if inputs.pixel_values is None else len(inputs.pixel_values)
        return _Request(ids.with_image_embeds(embeds), SamplingParams.build(params, {"eos_token_ids": eos}),
                        tuple(stop), n_tiles, encode_s, cached_images)

    def _check_video_support(self, videos: list) -> None:
        if videos and self.config.family != "smolvlm2":
            raise errors.InputError(f"this model ({self.config.family} family) has no video support: videos need a "
                                    "SmolVLM2 model")

    def _image_features(self, images: Sequence[PreprocessedImage], on_progress) -> tuple[np.ndarray | None, int]:
        """The features of the prompt's images, in order, and how many came from the image cache (keyed by
        a hash of the preprocessed pixels and the tile grid); the others are encoded in one batch of tiles
        and cached."""
        if not images:
            return None, 0
        keys = [_states.image_key(image) for image in images]
        with self._lock:
            found = [self._states.get_image(key) if self._states.budget > 0 else None for key in keys]
        missing = [i for i, features in enumerate(found) if features is None]
        if missing:
            encoded = self._encode_tiles(np.concatenate([images[i].pixel_values for i in missing]), on_progress)
            at = 0
            for i in missing:
                rows = images[i].n_tiles * self.config.image_seq_len
                found[i] = encoded[at:at + rows].copy() if len(missing) > 1 else encoded
                found[i].setflags(write=False)  # shared with the cache
                at += rows
            if self._states.budget > 0:
                with self._lock:
                    for i in missing:
                        self._states.put_image(keys[i], found[i])
        return np.concatenate(found), len(images) - len(missing)

    def _answer(self, request: _Request, on_token: Callable[[str], Any] | None,
                cancel: threading.Event | None = None) -> Result:
        """Steps two and three of generate(): the token loop, its ids assembled into text as they come."""
        with self._scheduler.caller():
            text = TextAssembler(self.tokenizer, request.stop, on_token)
            result = self._decode(request.prompt, request.params, text.on_id, cancel)
            result = replace(result, cached_images=request.cached_images)
            return text.finish(result, n_tiles=request.n_tiles, image_encode_s=request.encode_s)

    # Tiles per engine call: few, so that the generations running on other threads get a decode step
    # between calls and progress is reported often; each weight is still read once for two tiles.  A
    # tile's features do not depend on the tiles beside it in a call.
    _TILES_PER_CALL = 2

    def _encode_tiles(self, pixel_values: np.ndarray, on_progress) -> np.ndarray:
        total, rows = len(pixel_values), []
        if on_progress is not None:
            on_progress(0, total)
        for start in range(0, total, self._TILES_PER_CALL):
            rows.append(self.encode_pixel_values(pixel_values[start:start + self._TILES_PER_CALL]))
            if on_progress is not None:
                on_progress(min(start + self._TILES_PER_CALL, total), total)
        return rows[0] if len(rows) == 1 else np.concatenate(rows)

    def encode_pixel_values(self, pixel_values: np.ndarray) -> np.ndarray:
        """Image features of preprocessed tiles, as transformers' `get_image_features`.

        `pixel_values` is float32 [n_tiles, 3, image_size, image_size], already
        resized, split and normalized; every tile must be a real (full) tile,
        not all-zero batch padding.  Returns float32
        [n_tiles * image_seq_len, text_hidden]: each tile's tokens in order,
        ready to stand in for the prompt's <image> tokens.
        """
        if not isinstance(pixel_values, np.ndarray):
            raise errors.InputError(f"pixel_values must be a numpy array, not {type(pixel_values).__name__}")
        if pixel_values.dtype != np.float32:
            raise errors.InputError(f"pixel_values must be float32, not {pixel_values.dtype}")
        size = self.config.vision.image_size
        if pixel_values.ndim != 4 or pixel_values.shape[1:] != (3, size, size) or pixel_values.shape[0] < 1:
            raise errors.InputError(
                f"pixel_values must have shape [n_tiles >= 1, 3, {size}, {size}], not {list(pixel_values.shape)}")
        pixels = np.ascontiguousarray(pixel_values)
        n_tiles = pixels.shape[0]
        out = np.empty((n_tiles * self.config.image_seq_len, self.config.text.hidden_size), dtype=np.float32)
        with self._lock:
            check(lib.sv_encode_images(self._ptr, ffi.cast("const float *", ffi.from_buffer(pixels)), n_tiles,
                                       ffi.cast("float *", ffi.from_buffer(out, require_writable=True))))
        return out

    def __enter__(self) -> Model:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def __del__(self) -> None:
        handle = getattr(self, "_handle", None)
        if handle is not None:
            lib.sv_model_free(handle)
            self._handle = None

    def __repr__(self) -> str:
        state = "closed" if self.closed else f"{self.config.text.num_hidden_layers}-layer text, " \
            f"{self.config.vision.num_hidden_layers}-layer vision"
        return f"<smolvision.Model {self.model_dir!r} ({state})>"


class _Request(NamedTuple):
    """A prepared generate() call: what the token loop and the text assembly need."""

    prompt: Prompt
    params: SamplingParams
    stop: tuple[str, ...]
    n_tiles: int
    encode_s: float
    cached_images: int = 0


def _as_list(images) -> list:
    """images as a list: one image (path, bytes, PIL image, array) or a sequence of them."""
    if images is None:
        return []
    if isinstance(images, (str, bytes, os.PathLike, np.ndarray)) or not isinstance(images, (list, tuple)):
        return [images]
    return list(images)


def load(model_dir: PathLike, threads: int | None = None, precision: str = "bf16",
         profile: bool | None = None, quant: str | None = None,
         on_log: Callable[[str], Any] | None = None, cache_bytes: int | None = None,
         max_sequences: int = 4) -> Model:
    """Loads a SmolVLM model directory; `threads` defaults to one per core, `precision` is "fp32" or "bf16"
    (see Model), `profile=True` times each phase and op class (Model.profile(); None follows
    SMOLVISION_PROFILE), `quant` is None, "q8" or "q4" (see Model), `cache_bytes` bounds the cached
    sequences and image features (default 1 GiB; 0 turns the cache off; see Model), `max_sequences` how many
    calls decode together (generate_many's requests and calls from several threads; default 4; more wait)."""
    return Model(model_dir, threads=threads, precision=precision, profile=profile, quant=quant, on_log=on_log,
                 cache_bytes=cache_bytes, max_sequences=max_sequences)
