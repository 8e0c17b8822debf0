"""Captioning on a Ray cluster with Ray Data: `smolvision caption --ray`, or caption_dataset() from Python.

    pip install "smolvision[ray]"

    from smolvision.ray import caption_dataset
    summary = caption_dataset("s3://bucket/photos/", "/shared/SmolVLM-Instruct", "captions.jsonl",
                              actors=8, cpus_per_actor=4, max_tokens=64)

Ray does the distributed work: `ray.data.read_binary_files` reads the images on the cluster, and
`Dataset.map_batches(Captioner, compute=ActorPoolStrategy(...))` runs one Model per actor, with as
many engine threads as CPUs the actor was given.  Ray restarts an actor that dies and retries its
batch.  The driver keeps the bookkeeping of the local `smolvision caption` (smolvision.captioning): it
skips images already captioned in the output, retries failed ones, writes each result as it
arrives, and never writes an image twice, so a stopped or failed job is resumed by running it again.
"""
from __future__ import annotations

import contextlib
import glob
import math
import os
import re
import sys
import time
from dataclasses import dataclass, field
from typing import Any
from collections.abc import Callable, Iterable, Iterator, Sequence

from . import errors, hub
from ._term import format_duration
from .captioning import (DEFAULT_PROMPT, IMAGE_EXTENSIONS, ResumeState, append_record, caption_record, decode_image_bytes,
                         expand_inputs, image_key, prepare_output)

# Test hook: "N:MARKER" makes the actor process that captions its Nth image while the file MARKER does
# not exist yet create MARKER and die on the spot (os._exit), the way a crashed or OOM-killed actor dies.
CRASH_HOOK_ENV = "SMOLVISION_RAY_TEST_CRASH"

# Columns of the rows Captioner returns (one per image).
RESULT_COLUMNS = ("path", "text", "finish_reason", "seconds", "error", "node_id", "actor_id")


def _ray():
    """The ray module with Ray Data, or an Error naming the extra to install."""
    try:
        import ray
        import ray.data  # noqa: F401  (a subpackage with its own dependencies: pyarrow, ...)
    except ImportError as err:
        raise errors.Error(f"captioning with Ray needs Ray Data: pip install \"smolvision[ray]\" ({err})") from None
    return ray


def is_uri(path: str) -> bool:
    """True for a URI that Ray's readers open through a pyarrow filesystem (s3://, gs://, abfs://, ...)."""
    scheme, sep, _ = path.partition("://")
    return bool(sep) and scheme.isidentifier() and scheme.lower() not in ("file", "local")


def _read_path(path: str) -> str:
    """The path as Ray's reader is given it and reports it back in the `path` column.

    Local paths go absolute (workers do not share the driver's working directory); a URI's
    reported path drops the scheme and any user@ ("s3://anon@bucket/a.png" -> "bucket/a.png")."""
    if not is_uri(path):
        return os.path.abspath(path)
    return path


def _reported_path(path: str) -> str:
    if not is_uri(path):
        return os.path.abspath(path)
    rest = path.partition("://")[2]
    bucket, slash, key = rest.partition("/")
    return bucket.rpartition("@")[2] + slash + key


def expand_image_inputs(inputs: Iterable[str]) -> tuple[list[str], list[str]]:
    """(image paths, inputs that matched nothing): local inputs as `smolvision caption` expands them
    (files, directories, globs), URIs through their pyarrow filesystem: a file itself, a directory
    (prefix) its image files, by extension and not recursing."""
    paths: list[str] = []
    unmatched: list[str] = []
    local: list[str] = []
    for item in inputs:
        if not is_uri(item):
            local.append(item)
            continue
        found = _list_uri(item)
        if found:
            paths.extend(found)
        else:
            unmatched.append(item)
    local_paths, local_unmatched = expand_inputs(local)
    seen = set()
    result = []
    for path in local_paths + paths:
        if image_key(path) not in seen:
            seen.add(image_key(path))
            result.append(path)
    return result, local_unmatched + unmatched


def _list_uri(uri: str) -> list[str]:
    import pyarrow.fs as pafs
    try:
        filesystem, path = pafs.FileSystem.from_uri(uri)
        info = filesystem.get_file_info(path)
        if info.type == pafs.FileType.File:
            return [uri]
        if info.type != pafs.FileType.Directory:
            return []
        listing = filesystem.get_file_info(pafs.FileSelector(path, recursive=False))
    except (OSError, ValueError) as err:
        raise errors.InputError(f"cannot list {uri}: {err}") from None
    prefix = uri.rstrip("/")
    return sorted(f"{prefix}/{entry.base_name}" for entry in listing
                  if entry.type == pafs.FileType.File and os.path.splitext(entry.base_name)[1].lower() in IMAGE_EXTENSIONS)


# ---------------------------------------------------------------------------------------------
# The actor: one Model, captions batches of {"path", "bytes"} rows

def resolve_model(model: str) -> str:
    """A model directory from a directory path or a Hugging Face repo id (the node's cache, downloading once)."""
    if os.path.isdir(model):
        return model
    if "/" in model and not os.path.isabs(model) and not model.startswith("."):
        cached = hub.find_cached_model(model)
        return cached if cached is not None else hub.resolve_model(model, allow_download=True)
    raise errors.ModelError(f"model directory not found on this node: {model} (every node needs the model at "
                            "this path, e.g. on a shared filesystem, or pass a Hugging Face repo id)")


class Captioner:
    """The callable class for `Dataset.map_batches`: one Model per actor, captioning a batch of images.

    Takes batches with a "path" and a "bytes" column (what `read_binary_files(..., include_paths=True)`
    gives) and returns one row per image with RESULT_COLUMNS: path, text, finish_reason, seconds and
    error (an image that cannot be decoded or captioned gets its error there, not an exception), plus
    the node and actor that captioned it.  threads=None runs as many engine threads as CPUs Ray gave
    the actor (map_batches(num_cpus=...)).
    """

    def __init__(self, model: str, prompt: str = DEFAULT_PROMPT, *, threads: int | None = None,
                 precision: str = "bf16", quant: str | None = None,
                 generation_options: dict[str, Any] | None = None) -> None:
        import smolvision
        context = _ray().get_runtime_context()
        self.node_id = context.get_node_id()
        self.actor_id = context.get_actor_id() or ""
        if threads is None:
            threads = max(1, int(context.get_assigned_resources().get("CPU", 1)))
        self.model = smolvision.load(resolve_model(model), threads=threads, precision=precision, quant=quant)
        self.prompt = prompt
        self.options = dict(generation_options or {})
        self._crash_at, self._crash_marker = _crash_hook()
        self._images_seen = 0

    def __call__(self, batch: dict[str, Any]) -> dict[str, list]:
        rows: dict[str, list] = {name: [] for name in RESULT_COLUMNS}
        for path, data in zip(batch["path"], batch["bytes"]):
            path = str(path)
            self._images_seen += 1
            if self._images_seen == self._crash_at:
                _crash_once(self._crash_marker)
            record = caption_record(path, lambda image_bytes: self._caption(image_bytes, path), data)
            rows["path"].append(path)
            for name in ("text", "finish_reason", "seconds", "error"):
                rows[name].append(record.get(name))
            rows["node_id"].append(self.node_id)
            rows["actor_id"].append(self.actor_id)
        return rows

    def _caption(self, data: Any, path: str):
        image = decode_image_bytes(bytes(data), path)
        return self.model.generate(prompt=self.prompt, images=[image], **self.options)


def _crash_hook() -> tuple[int, str]:
    spec = os.environ.get(CRASH_HOOK_ENV, "")
    if not spec:
        return 0, ""
    count, _, marker = spec.partition(":")
    return int(count), marker


def _crash_once(marker: str) -> None:
    try:
        os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
    except FileExistsError:
        return
    os._exit(1)


# ---------------------------------------------------------------------------------------------
# Outputs: JSON lines (the local caption's file) or a Parquet directory

class JsonLinesOutput:
    """The local `smolvision caption` output: one flushed JSON line per image (smolvision.captioning)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._file = None

    def prepare(self, retry: Iterable[str]) -> ResumeState:
        state = prepare_output(self.path, retry=retry)
        self._file = open(self.path, "a", encoding="utf-8")  # an unwritable output fails now
        return state

    def write(self, record: dict) -> None:
        append_record(self._file, record)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()


class ParquetOutput:
    """OUTPUT.parquet as a directory of part files, one table to pyarrow, pandas and Ray (read_parquet).

    Records are buffered and written as a part every `rows_per_part` records or `seconds_per_part`
    seconds, and at close (also after Ctrl-C); a part appears whole (temp file + rename).  A driver
    killed outright loses the unwritten buffer's captions, which a rerun redoes.  Columns: image,
    text, finish_reason, seconds, error (null where not applicable).
    """

    def __init__(self, path: str, rows_per_part: int = 256, seconds_per_part: float = 60.0) -> None:
        self.path, self.rows_per_part, self.seconds_per_part = path, rows_per_part, seconds_per_part
        self._buffer: list[dict] = []
        self._last_write = time.monotonic()
        # Part names sort in the order they were written, across runs: a rerun started within the same
        # second by the same process (a script captioning twice) must neither reuse nor precede the
        # earlier run's names, so the stamp goes down to the microsecond.
        now = time.time()
        self._run = f"{time.strftime('%Y%m%dT%H%M%S', time.localtime(now))}.{int(now % 1 * 1e6):06d}-{os.getpid()}"
        self._parts = 0

    @staticmethod
    def _schema():
        import pyarrow as pa
        return pa.schema([("image", pa.string()), ("text", pa.string()), ("finish_reason", pa.string()),
                          ("seconds", pa.float64()), ("error", pa.string())])

    def prepare(self, retry: Iterable[str]) -> ResumeState:
        import pyarrow.parquet as pq
        os.makedirs(self.path, exist_ok=True)
        for leftover in glob.glob(os.path.join(glob.escape(self.path), ".part-*.tmp")):
            os.remove(leftover)
        retry_keys = {image_key(p) for p in retry}
        done, kept, dropped = set(), 0, 0
        for part in sorted(glob.glob(os.path.join(glob.escape(self.path), "part-*.parquet"))):
            try:
                rows = pq.read_table(part).to_pylist()
            except Exception as err:  # noqa: BLE001  pyarrow raises several types for a bad file
                raise errors.InputError(f"{part} is not a readable Parquet file ({err}); move it out of "
                                        f"{self.path} to resume") from None
            keep = [row for row in rows if row.get("text") is not None or image_key(row["image"]) not in retry_keys]
            done.update(image_key(row["image"]) for row in rows if row.get("text") is not None)
            kept += len(keep)
            if len(keep) != len(rows):
                dropped += len(rows) - len(keep)
                if keep:
                    self._write_table(keep, part)
                else:
                    os.remove(part)
        return ResumeState(done, kept, dropped)

    def write(self, record: dict) -> None:
        self._buffer.append(record)
        if (len(self._buffer) >= self.rows_per_part
                or time.monotonic() - self._last_write >= self.seconds_per_part):
            self.flush()

    def flush(self) -> None:
        if self._buffer:
            self._parts += 1
            self._write_table(self._buffer, os.path.join(self.path, f"part-{self._run}-{self._parts:05d}.parquet"))
            self._buffer = []
        self._last_write = time.monotonic()

    def _write_table(self, records: list[dict], final: str) -> None:
        import pyarrow as pa
        import pyarrow.parquet as pq
        schema = self._schema()
        table = pa.Table.from_pylist([{name: r.get(name) for name in schema.names} for r in records], schema=schema)
        tmp = os.path.join(self.path, f".{os.path.basename(final)}.tmp")
        pq.write_table(table, tmp)
        os.replace(tmp, final)  # prepare() rewriting a part it read; flush() names a new one

    def close(self) -> None:
        self.flush()


def open_output(path: str):
    """ParquetOutput for a path ending in .parquet, JsonLinesOutput otherwise."""
    return ParquetOutput(path) if path.lower().endswith(".parquet") else JsonLinesOutput(path)


def read_output(path: str) -> list[dict]:
    """The records of a caption output (JSON lines or Parquet directory), in file order; for tests and tools."""
    import json
    if path.lower().endswith(".parquet"):
        import pyarrow.parquet as pq
        rows = []
        for part in sorted(glob.glob(os.path.join(glob.escape(path), "part-*.parquet"))):
            rows.extend({k: v for k, v in row.items() if v is not None} for row in pq.read_table(part).to_pylist())
        return rows
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------------------------------------
# The driver

@dataclass
class CaptionSummary:
    """What a caption_dataset run did."""
    total: int                      # images asked for
    skipped: int                    # already captioned in the output
    captioned: int = 0
    failed: int = 0
    seconds: float = 0.0
    per_actor: dict[str, int] = field(default_factory=dict)  # actor id -> images it captioned or failed
    per_node: dict[str, int] = field(default_factory=dict)   # node id -> images
    unmatched: list[str] = field(default_factory=list)       # inputs that matched no image
    interrupted: bool = False

    @property
    def images(self) -> int:
        return self.captioned + self.failed

    def line(self) -> str:
        """The summary line: images, errors, images/s, per-actor rate."""
        rate = self.images / self.seconds if self.seconds > 0 else 0.0
        actors = len(self.per_actor)
        text = (f"{self.images} images ({self.failed} error{'s' if self.failed != 1 else ''}) in "
                f"{format_duration(self.seconds)}: {rate:.2f} img/s")
        if actors:
            rates = sorted(count / self.seconds for count in self.per_actor.values()) if self.seconds > 0 else [0.0]
            spread = f"{rates[0]:.2f}-{rates[-1]:.2f}" if len(rates) > 1 else f"{rates[0]:.2f}"
            text += (f", {rate / actors:.2f} img/s per actor ({spread} across {actors} actor{'s' if actors != 1 else ''}"
                     f" on {len(self.per_node)} node{'s' if len(self.per_node) != 1 else ''})")
        return text


@contextlib.contextmanager
def ray_session(address: str | None = None, **init_args) -> Iterator[Any]:
    """The ray module, connected: an existing connection as it is, else ray.init(address, **init_args),
    shut down at the end.  address None joins RAY_ADDRESS or the local `ray start` cluster, or starts
    a local instance."""
    ray = _ray()
    if ray.is_initialized():
        yield ray
        return
    ray.init(address=address, **init_args)
    try:
        yield ray
    finally:
        ray.shutdown()


def caption_dataset(paths_or_dataset: str | Sequence[str] | Any, model: str, output: str,
                    prompt: str = DEFAULT_PROMPT, *, actors: int = 1, cpus_per_actor: float | None = None,
                    threads: int | None = None, precision: str = "bf16", quant: str | None = None,
                    batch_size: int = 4, address: str | None = None,
                    on_record: Callable[[dict], None] | None = None,
                    on_status: Callable[[str], None] | None = None,
                    ray_remote_args: dict[str, Any] | None = None,
                    ray_init_args: dict[str, Any] | None = None,
                    **generation_options) -> CaptionSummary:
    """Captions images on a Ray cluster into `output` (JSON lines, or a Parquet directory for *.parquet).

    paths_or_dataset: image paths, directories, globs or URIs (s3://, gs://, ...; anything Ray's
    readers open), or a Ray Dataset with "path" and "bytes" columns.  model: a model directory that
    exists on every node, or a Hugging Face repo id (each node resolves it in its own cache).
    actors: the size of the actor pool; cpus_per_actor: Ray CPUs per actor, its engine threads
    unless `threads` is given (default: the cluster's CPUs less one for reading, shared by the
    actors).  batch_size: images per actor task, the unit Ray retries and the driver receives.  generation_options: Model.generate's (max_tokens, temperature, stop, ...).
    ray_remote_args: extra map_batches arguments for the actors (memory=, resources=, runtime_env=...).
    on_record(record) is told each record written; on_status(message) gets status lines (default: stderr).

    Resumable like `smolvision caption`: images already captioned in `output` are skipped, failed
    ones retried; each result is written as it arrives, and no image is written twice.  Connects with
    ray_session(address) unless Ray is already initialized.  Ctrl-C stops the run with what was
    captioned written (summary.interrupted), so the same call resumes it.
    """
    status = on_status or (lambda message: print(f"smolvision: {message}", file=sys.stderr, flush=True))
    if actors < 1 or (cpus_per_actor is not None and cpus_per_actor <= 0) or batch_size < 1:
        raise errors.InputError("actors and batch_size must be at least 1, cpus_per_actor more than 0")
    ray = _ray()
    dataset = paths_or_dataset if isinstance(paths_or_dataset, ray.data.Dataset) else None
    unmatched: list[str] = []
    paths: list[str] = []
    if dataset is None:
        inputs = [paths_or_dataset] if isinstance(paths_or_dataset, (str, os.PathLike)) else paths_or_dataset
        paths, unmatched = expand_image_inputs([os.fspath(p) for p in inputs])
    sink = open_output(output)
    state = sink.prepare(retry=paths)
    if state.dropped_lines:
        status(f"{output}: dropped {state.dropped_lines} incomplete or to-be-retried record(s)")
    todo = [p for p in paths if image_key(p) not in state.done]
    summary = CaptionSummary(total=len(paths), skipped=len(paths) - len(todo), unmatched=unmatched)
    for item in unmatched:
        status(f"warning: no images match {item}")
    written = set()

    def write(record: dict, node_id: str = "", actor_id: str = "") -> None:
        key = image_key(record["image"])
        if key in written:  # a retried batch delivered again
            return
        written.add(key)
        sink.write(record)
        if "error" in record:
            summary.failed += 1
        else:
            summary.captioned += 1
        if actor_id:
            summary.per_actor[actor_id] = summary.per_actor.get(actor_id, 0) + 1
            summary.per_node[node_id] = summary.per_node.get(node_id, 0) + 1
        if on_record is not None:
            on_record(record)

    start = time.perf_counter()
    try:
        if dataset is None:
            status(f"{len(paths)} images: {summary.skipped} already in {output}, {len(todo)} to caption")
            readable = []
            for path in todo:
                record = None if is_uri(path) else _unopenable_record(path)
                if record is None:
                    readable.append(path)
                else:
                    write(record)
            by_reported = {_reported_path(p): p for p in readable}
            if not readable:
                return summary
        with ray_session(address, **(ray_init_args or {})) as ray:
            cpus = ray.cluster_resources().get("CPU", 0)
            if cpus_per_actor is None:
                cpus_per_actor = max(1, int(cpus - 1) // actors)
            nodes = sum(1 for node in ray.nodes() if node["Alive"])
            status(f"Ray cluster: {cpus:g} CPUs on {nodes} node{'s' if nodes != 1 else ''}; "
                   f"{actors} actor{'s' if actors != 1 else ''} x {cpus_per_actor:g} CPUs")
            _warn_if_starved(actors, cpus_per_actor, cpus, status)
            if dataset is None:
                # Small jobs in smaller batches, so that every actor gets some; one block a batch, so each
                # task is one batch and its results reach the driver (and the output) when it ends.
                batch_size = max(1, min(batch_size, len(readable) // actors))
                dataset = ray.data.read_binary_files([_read_path(p) for p in readable], include_paths=True,
                                                     ignore_missing_paths=True,
                                                     override_num_blocks=math.ceil(len(readable) / batch_size))
            else:
                by_reported = {}
                if state.done:
                    done = state.done
                    dataset = dataset.filter(lambda row: image_key(row["path"]) not in done)
            captions = dataset.map_batches(
                Captioner, batch_size=batch_size, batch_format="numpy",
                compute=ray.data.ActorPoolStrategy(size=actors), num_cpus=cpus_per_actor,
                fn_constructor_kwargs=dict(model=model, prompt=prompt, threads=threads, precision=precision,
                                           quant=quant, generation_options=generation_options),
                **(ray_remote_args or {}))
            try:
                for batch in captions.iter_batches(batch_size=None, batch_format="pyarrow"):
                    for row in batch.to_pylist():
                        image = by_reported.get(row["path"], row["path"])
                        if row["error"] is not None:
                            record = {"image": image, "error": row["error"]}
                        else:
                            record = {"image": image, "text": row["text"], "finish_reason": row["finish_reason"],
                                      "seconds": row["seconds"]}
                        write(record, row["node_id"], row["actor_id"])
            except ray.exceptions.RayError as err:  # e.g. no actor could load the model
                raise errors.Error(f"the Ray job failed: {_root_cause(err)} (what was captioned is in {output}; "
                                   "rerun to resume)") from err
        for path in readable if paths else ():
            if image_key(path) not in written:  # ignore_missing_paths dropped it: gone after listing
                write({"image": path, "error": f"ImageError: cannot open image file {path!r}: "
                                               "it disappeared before Ray read it"})
    except KeyboardInterrupt:
        summary.interrupted = True
    finally:
        summary.seconds = time.perf_counter() - start
        sink.close()
    return summary


def _unopenable_record(path: str) -> dict | None:
    """The error record a local run writes for a file it cannot open, or None when it opens.

    Ray's reader fails the whole job on such a file, so the driver catches it first."""
    try:
        with open(path, "rb"):
            return None
    except OSError as err:
        return {"image": path, "error": f"ImageError: cannot open image file {path!r}: {err.strerror or err}"}


def _root_cause(err: BaseException) -> str:
    """The failing user code's error as one line ("ModelError: ..."), out of Ray's wrapping.

    Ray reports an actor that died in __init__ as ActorDiedError whose message carries the remote
    traceback as text, ending in "smolvision.errors.ModelError: ..."; that last error line is taken."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    for line in reversed(lines):
        match = re.match(r"^(?:[A-Za-z_][\w]*\.)*([A-Za-z_]\w*(?:Error|Exception)): (.+)$", line)
        if match:
            return f"{match.group(1)}: {match.group(2)}"
    return f"{type(err).__name__}: {lines[0] if lines else ''}"


def _warn_if_starved(actors: int, cpus_per_actor: float, total: float, status: Callable[[str], None]) -> None:
    """Actors holding every CPU leave none for the read tasks, and the job waits forever (ray#44687)."""
    needed = actors * cpus_per_actor
    if needed > total:
        status(f"warning: {actors} actors x {cpus_per_actor:g} CPUs need {needed:g} CPUs; the cluster has {total:g} "
               "now (the job waits for more nodes, or forever)")
    elif needed + 1 > total:
        status(f"warning: {actors} actors x {cpus_per_actor:g} CPUs take all {total:g} CPUs of the cluster; "
               "leave at least one for Ray's read tasks, or reading stalls")


# ---------------------------------------------------------------------------------------------
# smolvision caption --ray

def run_caption_command(args, reporter) -> int:
    """`smolvision caption --ray [ADDRESS] --actors N --cpus-per-actor C ...` (called by smolvision.cli.caption)."""
    from .cli import common
    if args.profile:
        args.parser.error("--profile is not supported with --ray")
    if args.silent:
        _ray().data.DataContext.get_current().enable_progress_bars = False
    kwargs = common.generation_kwargs(args)
    prompt = args.prompt if args.prompt is not None else DEFAULT_PROMPT
    model = args.model_dir or args.model or hub.DEFAULT_REPO
    if os.path.isdir(model):
        model = os.path.abspath(model)
    elif args.model_dir:
        raise errors.ModelError(f"model directory not found: {model}")
    init_args = {"logging_level": "ERROR", "log_to_driver": False} if args.silent else {}

    def on_record(record: dict) -> None:
        if not reporter.interactive:
            outcome = f"error: {record['error']}" if "error" in record else f"{record['seconds']:.2f} s"
            reporter.status(f"{record['image']}: {outcome}")

    summary = caption_dataset(args.inputs, model, args.output, prompt, actors=args.actors,
                              cpus_per_actor=args.cpus_per_actor, threads=args.threads, precision=args.precision,
                              quant=args.quant, address=args.ray or None, on_record=on_record,
                              on_status=reporter.status, ray_init_args=init_args, **kwargs)
    if summary.interrupted:
        reporter.status(f"interrupted after {summary.images} of {summary.total - summary.skipped}; "
                        "rerun the same command to resume")
        return common.EXIT_INTERRUPTED
    if summary.images:
        reporter.status(f"captioned {summary.line()} into {args.output}")
    if summary.failed:
        reporter.error(f"{summary.failed} of {summary.images} images failed; their errors are in {args.output} "
                       "(rerun to retry them)")
        return common.EXIT_ERROR
    return common.EXIT_OK
