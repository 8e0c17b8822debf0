"""Captioning on Ray (smolvision.ray): a two-node cluster simulated with ray.cluster_utils.Cluster on this
machine, started once for the module, runs every test.  The references are the local `smolvision caption`
and Model.generate on the same images in the same test process.

Ray is kept small: logical CPUs (3 a node: one actor with 2 CPUs and room for a read task), 80 MiB object
stores, no dashboard, no usage stats, its own temp dir, and token authentication off (Ray 2.60 would
otherwise write ~/.ray/auth_token for a new local cluster).  The nodes listen on this machine's address.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("ray.data", reason="Ray Data is in the test extra: pip install -e \".[test]\"")

import smolvision  # noqa: E402
from smolvision import cli  # noqa: E402
from smolvision import ray as sv_ray  # noqa: E402

PACKAGE_PARENT = str(Path(smolvision.__file__).resolve().parent.parent)
PROMPT, MAX_TOKENS = "Caption it.", 6
OBJECT_STORE = 80 * 1024 * 1024


def write_image(path: Path, seed: int) -> Path:
    rng = np.random.default_rng(seed)
    size = (int(rng.integers(24, 70)), int(rng.integers(24, 70)))
    Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)).save(path)
    return path


def image_folder(folder: Path, count: int, broken: bool = False) -> list[Path]:
    folder.mkdir()
    images = [write_image(folder / f"{i:02d}.png", seed=i) for i in range(count)]
    if broken:
        images.append(folder / "zz-broken.png")
        images[-1].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return images


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A head and a worker node, 3 CPUs each, on this machine; the test process is connected to it."""
    import ray
    from ray.cluster_utils import Cluster
    saved = dict(os.environ)
    # Raylets and workers inherit this environment: workers must import this smolvision.
    os.environ.update(RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                      PYTHONPATH=os.pathsep.join(p for p in [PACKAGE_PARENT, os.environ.get("PYTHONPATH")] if p))
    # A private temp dir keeps this cluster out of /tmp/ray/ray_current_cluster, where a plain ray.init()
    # by anyone else on the machine would find and join it (short: Ray's socket paths have a length limit).
    temp_dir = tempfile.mkdtemp(prefix="svray-", dir="/tmp")
    # Ray 2.60's Cluster still writes the head's address into its default temp dir (ray_current_cluster),
    # ignoring temp_dir, and fails where that folder does not exist yet (a fresh machine).
    from ray._private.utils import get_ray_address_file
    os.makedirs(os.path.dirname(get_ray_address_file(None)), exist_ok=True)
    node_args = dict(num_cpus=3, object_store_memory=OBJECT_STORE, temp_dir=temp_dir)
    simulated = Cluster(initialize_head=True, head_node_args=dict(node_args, include_dashboard=False))
    simulated.add_node(**node_args)
    simulated.wait_for_nodes()
    # Ray puts the driver's working directory first on its workers' sys.path: started from a source
    # checkout, the workers would import its smolvision/ (no C engine when the package is installed,
    # as in CI) instead of this one.  So the driver connects from an empty directory.
    cwd = os.getcwd()
    os.chdir(temp_dir)
    try:
        ray.init(address=simulated.address)
    finally:
        os.chdir(cwd)
    ray.data.DataContext.get_current().enable_progress_bars = False
    try:
        yield simulated
    finally:
        ray.shutdown()
        simulated.shutdown()
        os.environ.clear()
        os.environ.update(saved)
        shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def expected(mha_dir) -> Expected:
    return Expected(mha_dir)


class Expected:
    """Model.generate's caption of each image, computed once."""

    def __init__(self, model_dir) -> None:
        self.model = smolvision.load(model_dir)
        self.texts: dict[str, tuple] = {}

    def __call__(self, path: str) -> tuple:
        if path not in self.texts:
            result = self.model.generate(prompt=PROMPT, images=[path], max_tokens=MAX_TOKENS)
            self.texts[path] = (result.text, result.finish_reason)
        return self.texts[path]


def assert_each_image_once(records: list[dict], images: list[Path], expected: Expected) -> None:
    counts = Counter(r["image"] for r in records)
    assert [k for k, n in counts.items() if n > 1] == []
    assert set(counts) == {str(p) for p in images}
    for record in records:
        assert "error" not in record, record
        assert (record["text"], record["finish_reason"]) == expected(record["image"])


def caption(images, model, output, **options) -> sv_ray.CaptionSummary:
    options.setdefault("max_tokens", MAX_TOKENS)
    return sv_ray.caption_dataset([str(p) for p in images], str(model), str(output), PROMPT,
                                  on_status=lambda message: None, **options)


def test_cli_on_ray_writes_what_the_local_caption_writes(cluster, mha_dir, tmp_path, expected, capsys):
    folder = tmp_path / "imgs"
    image_folder(folder, 5, broken=True)
    missing = tmp_path / "imgs" / "missing.png"
    common = [str(folder), str(missing), "-d", str(mha_dir), "-p", PROMPT, "--max-tokens", str(MAX_TOKENS), "--silent"]
    local_out, ray_out = tmp_path / "local.jsonl", tmp_path / "ray.jsonl"
    assert cli.main(["caption", *common, "-o", str(local_out)]) == 1  # the broken and missing images fail
    env = dict(os.environ, PYTHONPATH=PACKAGE_PARENT)
    proc = subprocess.run([sys.executable, "-m", "smolvision", "caption", *common, "-o", str(ray_out),
                           "--ray", cluster.address, "--actors", "2", "--cpus-per-actor", "1"],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 1, proc.stderr
    assert "2 of 7 images failed" in proc.stderr

    def by_image(path: Path) -> dict[str, dict]:
        records = sv_ray.read_output(str(path))
        assert len(records) == len({r["image"] for r in records}) == 7
        # Pillow's message ends with the file object's repr: a file read here, bytes read by Ray there.
        return {r["image"]: {k: v.split(" <")[0] if k == "error" else v for k, v in r.items() if k != "seconds"}
                for r in records}

    local, on_ray = by_image(local_out), by_image(ray_out)
    assert on_ray == local
    assert sum("error" in r for r in on_ray.values()) == 2
    assert "cannot decode image" in on_ray[str(folder / "zz-broken.png")]["error"]
    assert "No such file" in on_ray[str(missing)]["error"]
    for image, record in on_ray.items():
        if "error" not in record:
            assert (record["text"], record["finish_reason"]) == expected(image)

    # A rerun (in this process, on its connection) has nothing left but the two failures, retries them,
    # and duplicates nothing.
    assert cli.main(proc.args[3:]) == 1
    assert "2 of 2 images failed" in capsys.readouterr().err
    assert by_image(ray_out) == local


def test_work_lands_on_both_nodes(cluster, mha_dir, tmp_path, expected):
    import ray
    images = image_folder(tmp_path / "imgs", 8)
    context = ray.data.DataContext.get_current()
    saved, context.wait_for_min_actors_s = context.wait_for_min_actors_s, 120  # both actors up before work starts
    try:
        # 2 CPUs an actor on 3-CPU nodes: one actor per node.
        summary = caption(images, mha_dir, tmp_path / "out.jsonl", actors=2, cpus_per_actor=2, batch_size=1)
    finally:
        context.wait_for_min_actors_s = saved
    nodes = {node["NodeID"] for node in ray.nodes() if node["Alive"]}
    assert len(nodes) == 2 and set(summary.per_node) == nodes
    assert len(summary.per_actor) == 2 and sum(summary.per_actor.values()) == 8
    assert (summary.captioned, summary.failed, summary.interrupted) == (8, 0, False)
    assert_each_image_once(sv_ray.read_output(str(tmp_path / "out.jsonl")), images, expected)


def test_a_crashed_actor_is_restarted_and_its_batch_retried(cluster, mha_dir, tmp_path, expected):
    images = image_folder(tmp_path / "imgs", 6)
    marker = tmp_path / "crashed"
    summary = caption(images, mha_dir, tmp_path / "out.jsonl", actors=1, cpus_per_actor=1, batch_size=2,
                      ray_remote_args={"runtime_env": {"env_vars": {sv_ray.CRASH_HOOK_ENV: f"3:{marker}"}}})
    assert marker.exists()  # the actor did die on its third image
    assert (summary.captioned, summary.failed, summary.interrupted) == (6, 0, False)
    assert_each_image_once(sv_ray.read_output(str(tmp_path / "out.jsonl")), images, expected)


def test_a_stopped_parquet_job_resumes_without_redoing_images(cluster, mha_dir, tmp_path, expected):
    images = image_folder(tmp_path / "imgs", 7)
    out = tmp_path / "captions.parquet"
    seen: list[str] = []

    def stop_after_three(record: dict) -> None:
        seen.append(record["image"])
        if len(seen) == 3:
            raise KeyboardInterrupt  # what Ctrl-C does to the driver

    first = caption(images, mha_dir, out, actors=1, cpus_per_actor=1, batch_size=1, on_record=stop_after_three)
    assert first.interrupted and first.images == 3
    done = sv_ray.read_output(str(out))
    assert [r["image"] for r in done] == seen

    second = caption(images, mha_dir, out, actors=2, cpus_per_actor=1, batch_size=2,
                     on_record=lambda record: seen.append(record["image"]))
    assert (second.skipped, second.captioned, second.interrupted) == (3, 4, False)
    assert Counter(seen) == Counter(str(p) for p in images)  # nothing captioned twice across the runs
    records = sv_ray.read_output(str(out))
    assert records[:3] == done
    assert_each_image_once(records, images, expected)


def test_parquet_runs_started_in_the_same_second_keep_each_others_parts(tmp_path, monkeypatch):
    """A script captioning twice within one second: the second run's part neither replaces nor precedes the
    first's (names once went down to the second only, and a rerun overwrote the first run's captions)."""
    monkeypatch.setattr(sv_ray.time, "strftime", lambda *args: "20261201T120000")  # both runs in one second
    out = str(tmp_path / "captions.parquet")
    for image in ("first.png", "second.png"):
        output = sv_ray.ParquetOutput(out)
        output.prepare([])
        output.write({"image": image, "text": "a caption", "finish_reason": "stop", "seconds": 0.1})
        output.close()
    assert [record["image"] for record in sv_ray.read_output(out)] == ["first.png", "second.png"]


def test_a_model_no_actor_can_load_fails_the_job_with_one_clear_error(cluster, tmp_path):
    images = image_folder(tmp_path / "imgs", 2)
    out = tmp_path / "out.jsonl"
    with pytest.raises(smolvision.Error, match="the Ray job failed: .*model directory not found on this node") as info:
        caption(images, tmp_path / "no-model", out, actors=1, cpus_per_actor=1)
    assert "\n" not in str(info.value)
    assert sv_ray.read_output(str(out)) == []


def test_missing_ray_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)
    with pytest.raises(smolvision.Error, match=r'pip install "smolvision\[ray\]"'):
        sv_ray._ray()


def test_ray_address_must_look_like_one():
    assert cli.parse_args(["caption", "a.png", "-o", "o.jsonl", "--ray"]).ray == ""
    assert cli.parse_args(["caption", "a.png", "-o", "o.jsonl", "--ray", "10.0.0.1:6379"]).ray == "10.0.0.1:6379"
    with pytest.raises(SystemExit):
        cli.parse_args(["caption", "--ray", "photos/", "-o", "o.jsonl"])
