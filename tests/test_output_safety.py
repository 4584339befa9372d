"""Outputs are safe from their own runs, from other runs and from crashes, and never cost a person's files.

* A staging folder belongs to one run: recomputing the planning step (what Dask does after losing a
  worker) or another run's start never removes it, and an output is marked complete only when every
  file it lists is there with its size.
* ``meanimage`` and ``model build`` refuse, without ``--overwrite``, a destination holding files
  shadeflow did not write; with it they replace only their own files.
* A model build that fails while publishing never leaves AstroPath's ``flatfield_<V>.bin`` without
  its folder and manifest, removes its own staging folder, and is redone by a rerun; staging folders
  of builds that crashed are removed when provably abandoned.
* A field file that links outside the slide folder is refused.

Real files, the real flows on a one-worker Dask cluster and the Prefect test server; expectations come
from the inputs (fields.csv, the files planted here), never from the code under test.
"""

from __future__ import annotations

import csv
import json
import os
import re
import shutil

import pytest
from conftest import tree, write_mean_images
from test_cli_errors import expect_error

from shadeflow.core.errors import InputError
from shadeflow.core.errors import RunFailed as SlidesFailed
from shadeflow.core.io import output_folders as outputs
from shadeflow.core.io import storage
from shadeflow.core.io.output_folders import (
    MANIFEST,
    IncompleteOutput,
    StagedOutput,
    is_complete,
    read_manifest,
)
from shadeflow.core.io.slide import load_slide
from shadeflow.core.io.staging_lease import StagingLease, staging_url
from shadeflow.core.meanimage import outputs as meanimage_outputs
from shadeflow.core.model import store as model_store
from shadeflow.core.synth.slides import SynthConfig, write_cohort
from shadeflow.flows import preflight
from shadeflow.flows.meanimage import MeanImageParameters, meanimage
from shadeflow.flows.model import ModelBuildParameters, model_build
from shadeflow.infra.cluster import task_runner
from shadeflow.tasks import meanimage as meanimage_tasks

pytestmark = pytest.mark.usefixtures("prefect_server")

ASTROPATH_FILES = ("mean_image.bin", "std_err_of_mean_image.bin", "sum_images_squared.bin", "mask_stack.bin")


# ----------------------------------------------------------------------------------------------
# helpers (independent of the code under test)


def run_meanimage(slides: list[str], **options):
    flow = meanimage.with_options(task_runner=task_runner(memory="4GiB", workers=1))
    return flow(params=MeanImageParameters(slides=slides, **options))


def build(**params):
    return model_build.with_options(task_runner=task_runner(memory="4GiB", workers=1))(
        params=ModelBuildParameters(**params)
    )


def text(path) -> str:
    with open(path) as handle:
        return handle.read()


def partials(folder, name: str) -> list[str]:
    return sorted(n for n in os.listdir(folder) if n.startswith(f".{name}.partial-"))


def complete_means_whole(folder) -> bool:
    """The invariant: an output marked complete holds every file its manifest lists, with that size.
    Returns whether it is marked complete."""
    if not is_complete(str(folder)):
        return False
    manifest = json.loads(text(os.path.join(folder, MANIFEST)))
    wrong = [
        n
        for n, size in manifest["files"].items()
        if not os.path.isfile(os.path.join(folder, n)) or os.path.getsize(os.path.join(folder, n)) != size
    ]
    assert not wrong, f"{folder} is marked complete but lacks {wrong[:5]}"
    return True


def meanimage_files_from_inputs(slide_dir) -> set[str]:
    """Files every mean-image output of the slide holds: the AstroPath images and a tissue mask per field of
    fields.csv."""
    sid = os.path.basename(slide_dir)
    with open(os.path.join(slide_dir, "fields.csv"), newline="") as handle:
        keys = [row["field"] for row in csv.DictReader(handle)]
    return (
        {f"{sid}-{name}" for name in ASTROPATH_FILES}
        | {"fields_used.csv"}
        | {f"image_masking/{k}_tissue_mask.bin" for k in keys}
    )


def assert_whole_meanimage(slide_dir) -> dict:
    out = os.path.join(slide_dir, "meanimage")
    assert complete_means_whole(out)
    manifest = read_manifest(out)
    missing = meanimage_files_from_inputs(slide_dir) - set(manifest["files"])
    assert not missing, f"the manifest lacks {sorted(missing)[:5]}"
    return manifest


class OtherRun:
    """A staging folder of another run that is still alive: it holds its lease and has written a file."""

    def __init__(self, final: str, token: str):
        self.staging = staging_url(final, token)
        self.lease = StagingLease(self.staging).acquire()
        storage.write_text(os.path.join(self.staging, "being-written.bin"), "data of a run in progress")

    def crash(self) -> None:
        """The run dies: the OS drops its lock; its files stay."""
        self.lease._handle.close()
        self.lease._handle = None


@pytest.fixture(scope="module")
def pristine_slide(tmp_path_factory):
    (url,) = write_cohort(
        str(tmp_path_factory.mktemp("pristine")),
        SynthConfig(slides=1, fields=12, shape=(128, 168, 10), seed=31),
    )
    return url


@pytest.fixture
def slide(pristine_slide, tmp_path):
    target = tmp_path / "cohort" / os.path.basename(pristine_slide)
    shutil.copytree(pristine_slide, target)
    return str(target)


# ----------------------------------------------------------------------------------------------
# 1. staging folders belong to one run; complete means whole


def test_commit_publishes_nothing_when_staged_files_went_missing(tmp_path):
    final = tmp_path / "out"
    with StagedOutput(str(final)) as out:
        storage.write_bytes(out.url("a.bin"), b"a" * 10)
        storage.write_bytes(out.url("masks", "f1.bin"), b"m" * 3)
        shutil.rmtree(out.url("masks"))  # e.g. removed by another run
        with pytest.raises(IncompleteOutput, match=r"masks/f1\.bin.*nothing was published"):
            out.commit("test", {}, [], expected=["a.bin", "masks/f1.bin"])
    assert not final.exists()
    assert os.listdir(tmp_path) == []


def test_commit_leaves_out_the_temporary_of_a_writer_killed_before_its_rename(tmp_path):
    """A worker lost mid-write leaves ``<name>.tmp-<hex>`` in staging; the recomputed step writes the file
    again. Seen in tests/faults/test_fault_meanimage.py: the temporary was published and listed."""
    final = tmp_path / "out"
    with StagedOutput(str(final)) as out:
        storage.write_bytes(out.url("masks", "f1.bin"), b"m" * 3)
        with open(out.url("masks", "f1.bin.tmp-3a822134"), "wb") as handle:
            handle.write(b"m")  # the killed writer's half
        manifest = out.commit("test", {}, [], expected=["masks/f1.bin"])
    assert set(manifest["files"]) == {"masks/f1.bin"}
    assert os.listdir(final / "masks") == ["f1.bin"]
    assert complete_means_whole(final)
    assert partials(tmp_path, "out") == []


def test_commit_marks_nothing_complete_when_a_file_is_lost_while_publishing(tmp_path, monkeypatch):
    final = tmp_path / "out"
    place = outputs._place

    def lossy(staging, target, names):
        place(staging, target, names)
        os.remove(os.path.join(target, "b.bin"))  # lost on the way (another writer, a flaky disk)

    monkeypatch.setattr(outputs, "_place", lossy)
    with pytest.raises(IncompleteOutput, match=r"b\.bin"):
        with StagedOutput(str(final)) as out:
            storage.write_bytes(out.url("a.bin"), b"a" * 10)
            storage.write_bytes(out.url("b.bin"), b"b" * 20)
            out.commit("test", {}, [])
    assert not complete_means_whole(final)
    assert not (final / MANIFEST).exists()
    assert partials(tmp_path, "out") == []


def test_recomputed_planning_step_keeps_this_runs_staging_folder(slide):
    """Dask recomputes ``plan_slide`` after losing a worker while the run is writing its staging folder."""
    out = os.path.join(slide, "meanimage")
    writing = OtherRun(out, "this0run0123")
    recorded = MeanImageParameters(slides=[slide]).recorded()
    meanimage_tasks.plan_slide.fn(slide, recorded)
    assert os.path.isfile(os.path.join(writing.staging, "being-written.bin"))
    writing.lease.release(remove=True)


def test_replanning_while_writing_still_leaves_a_whole_output(slide, monkeypatch):
    """The reported failure: planning runs again while the mean image is being written."""
    recorded = MeanImageParameters(slides=[slide]).recorded()
    write_stack = meanimage_outputs.write_stack

    def replan_then_write(*args, **kwargs):
        meanimage_tasks.plan_slide.fn(slide, recorded)  # what Dask does when a worker holding the plan dies
        return write_stack(*args, **kwargs)

    monkeypatch.setattr(meanimage_outputs, "write_stack", replan_then_write)
    (report,) = run_meanimage([slide])
    assert report["status"] == "written"
    assert_whole_meanimage(slide)
    assert partials(slide, "meanimage") == []


def test_an_output_losing_files_while_being_written_is_not_marked_complete(slide, monkeypatch):
    write_stack = meanimage_outputs.write_stack

    def lose_masks_then_write(url, *args, **kwargs):
        # a staging folder emptied under the run
        shutil.rmtree(os.path.join(os.path.dirname(url), "image_masking"))
        return write_stack(url, *args, **kwargs)

    monkeypatch.setattr(meanimage_outputs, "write_stack", lose_masks_then_write)
    with pytest.raises(SlidesFailed, match=r"image_masking/.*nothing was published"):
        run_meanimage([slide])
    assert not complete_means_whole(os.path.join(slide, "meanimage"))
    assert partials(slide, "meanimage") == []


def test_meanimage_leaves_other_runs_staging_folders_and_removes_abandoned_ones(slide):
    out = os.path.join(slide, "meanimage")
    alive = OtherRun(out, "alive0000001")
    crashed = OtherRun(out, "crashed00001")
    crashed.crash()
    legacy = staging_url(out, "legacy")  # left by a shadeflow that held no lease: nothing proves it abandoned
    storage.write_text(os.path.join(legacy, "x.bin"), "x")
    alive_before = tree(alive.staging)

    (report,) = run_meanimage([slide])
    assert report["status"] == "written"
    assert_whole_meanimage(slide)
    assert tree(alive.staging) == alive_before
    assert not os.path.exists(crashed.staging)
    assert os.path.isfile(os.path.join(legacy, "x.bin"))
    assert partials(slide, "meanimage") == sorted(os.path.basename(p) for p in (alive.staging, legacy))
    alive.lease.release(remove=True)


def test_a_staging_folder_whose_maker_was_killed_before_its_lease_was_in_place_is_removed(tmp_path):
    """Killed inside ``StagingLease.acquire`` (seen in a fault test under load): the folder empty, or holding
    only the private lease not yet renamed. Removed when that proves its maker dead; kept otherwise."""
    import fcntl

    from shadeflow.core.io.staging_lease import LEASE, remove_stale_partials

    out = str(tmp_path / "meanimage")
    empty, private, live, legacy = (staging_url(out, t) for t in ("empty", "private", "live", "legacy"))
    for folder in (empty, private, live, legacy):
        os.makedirs(folder)
    open(os.path.join(private, f"{LEASE}.1a2b3c4d"), "w").close()  # its locker died: unlocked
    held = open(os.path.join(live, f"{LEASE}.5e6f7a8b"), "w")  # its maker is alive, about to rename it
    fcntl.flock(held, fcntl.LOCK_EX | fcntl.LOCK_NB)
    storage.write_text(os.path.join(legacy, "x.bin"), "x")  # files and no lease: nothing proves it abandoned
    try:
        left = remove_stale_partials(out)
        assert not os.path.exists(empty) and not os.path.exists(private)
        assert sorted(left) == sorted([live, legacy]) and os.path.isfile(os.path.join(legacy, "x.bin"))
    finally:
        held.close()


# ----------------------------------------------------------------------------------------------
# 2. files shadeflow did not write: refused without --overwrite, kept with it


def test_meanimage_refuses_a_meanimage_folder_it_did_not_write(slide, tmp_path):
    notes = os.path.join(slide, "meanimage", "notes.txt")
    os.makedirs(os.path.dirname(notes))
    with open(notes, "w") as handle:
        handle.write("scanner serviced on Tuesday")
    line = expect_error(
        tmp_path, ["meanimage", slide], notes, "not written by shadeflow", "--overwrite", untouched=[slide]
    )
    assert line.startswith(f"error: slide {os.path.basename(slide)}: ")
    before = tree(slide)
    with pytest.raises(SlidesFailed, match=r"notes\.txt.*--overwrite"):  # the flow checks again (UI runs)
        run_meanimage([slide])
    assert tree(slide) == before

    (written,) = run_meanimage([slide], overwrite=True)
    assert written["status"] == "written"
    manifest = assert_whole_meanimage(slide)
    assert "notes.txt" not in manifest["files"]
    assert text(notes) == "scanner serviced on Tuesday"

    # a finished slide is still skipped on a rerun with the same parameters, notes and all
    preflight.meanimage([slide])
    before = tree(slide)
    (again,) = run_meanimage([slide])
    assert again["status"] == "skipped"
    assert tree(slide) == before

    # overwriting with other parameters replaces shadeflow's files only
    (third,) = run_meanimage([slide], seed=3, overwrite=True)
    assert (
        third["status"] == "written"
        and read_manifest(os.path.join(slide, "meanimage"))["parameters"]["seed"] == 3
    )
    assert text(notes) == "scanner serviced on Tuesday"
    assert_whole_meanimage(slide)


def test_an_interrupted_output_is_recognised_as_shadeflows_and_replaced_without_touching_others(tmp_path):
    final = tmp_path / "out"
    with StagedOutput(str(final)) as out:
        storage.write_bytes(out.url("a.bin"), b"a")
        out.commit("test", {}, [])
    # a crash mid-publishing
    (final / outputs.WRITING).write_text(json.dumps({"kind": "test", "files": ["a.bin", "b.bin"]}))
    (final / "b.bin").write_bytes(b"b")
    assert not is_complete(str(final))
    assert outputs.foreign_files(str(final)) == []
    outputs.refuse_foreign(str(final), "test", overwrite=False)
    (final / "mine.txt").write_text("a person's")
    with pytest.raises(InputError, match=r"mine\.txt: was not written by shadeflow"):
        outputs.refuse_foreign(str(final), "test", overwrite=False)

    # replacing (what --overwrite allows) removes every file shadeflow wrote there, and nothing else
    with StagedOutput(str(final)) as out:
        storage.write_bytes(out.url("c.bin"), b"c")
        out.commit("test", {}, [])
    assert sorted(os.listdir(final)) == ["c.bin", "mine.txt", MANIFEST]
    assert complete_means_whole(final)


# model build


def write_models_csv(path, version: str, slide_ids: list[str]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "version,Project,Cohort,BatchID,SlideID\n"
        + "".join(f"{version},1,1,{i + 1},{sid}\n" for i, sid in enumerate(slide_ids))
    )
    return str(path)


@pytest.fixture(scope="module")
def cohort(tmp_path_factory):
    """Two small slides with mean images (read only)."""
    root = tmp_path_factory.mktemp("model-cohort")
    urls = write_cohort(str(root), SynthConfig(slides=2, fields=12, shape=(128, 168, 10), seed=5))
    write_mean_images(urls)
    return {"root": str(root), "ids": [os.path.basename(u) for u in urls], "shape": (128, 168, 10)}


@pytest.fixture
def store(cohort, tmp_path):
    folder = tmp_path / "store"
    return {
        "store": str(folder),
        "csv": write_models_csv(folder / "models.csv", "v1", cohort["ids"]),
        "root": cohort["root"],
    }


def astropath_model(store: str) -> dict[str, str]:
    """An AstroPath-made version v1: its .bin and folder, no shadeflow manifest."""
    folder = os.path.join(store, "flatfield", "flatfield_v1")
    os.makedirs(folder)
    paths = {
        "bin": os.path.join(store, "flatfield", "flatfield_v1.bin"),
        "notes": os.path.join(folder, "notes.txt"),
    }
    with open(paths["bin"], "wb") as handle:
        handle.write(b"\x00" * 64)
    with open(paths["notes"], "w") as handle:
        handle.write("made with AstroPath")
    return paths


def assert_whole_version(store: str, version: str, shape) -> None:
    folder = model_store.version_folder(store, version)
    assert complete_means_whole(folder)
    h, w, n = shape
    assert os.path.getsize(model_store.version_bin(store, version)) == h * w * n * 8
    assert read_manifest(folder)["files"][f"../flatfield_{version}.bin"] == h * w * n * 8


def test_model_build_refuses_an_astropath_model_it_did_not_write(store, tmp_path):
    made = astropath_model(store["store"])
    args = ["model", "build", "--version", "v1", "--models-csv", store["csv"], "--root", store["root"]]
    expect_error(
        tmp_path, args, "'v1'", "not written by shadeflow", "--overwrite", untouched=[store["store"]]
    )
    before = tree(store["store"])
    with pytest.raises(InputError, match=r"flatfield_v1.*not written by shadeflow"):
        build(version="v1", models_csv=store["csv"], roots=[store["root"]])
    assert tree(store["store"]) == before

    build(version="v1", models_csv=store["csv"], roots=[store["root"]], overwrite=True)
    assert_whole_version(store["store"], "v1", (128, 168, 10))
    assert text(made["notes"]) == "made with AstroPath"  # not ours: kept


@pytest.mark.parametrize("step", ["folder", "manifest", "bin"])
def test_a_build_failing_while_publishing_leaves_no_bin_without_its_folder(store, monkeypatch, step):
    """Fail while the files are moved into place: AstroPath's tools must never find a .bin whose
    folder or manifest is missing; the build's staging folder goes; a rerun (no --overwrite) succeeds."""
    flatfield = os.path.join(store["store"], "flatfield")
    if step == "folder":
        target, name = outputs, "_place"
    elif step == "manifest":
        target, name = outputs.storage, "write_text"
    else:
        target, name = outputs, "_place_file"
    original = getattr(target, name)

    def failing(*args, **kwargs):
        if step != "manifest" or str(args[0]).endswith(MANIFEST):
            raise OSError(28, f"No space left on device (simulated, {step})")
        return original(*args, **kwargs)

    monkeypatch.setattr(target, name, failing)
    with pytest.raises(OSError, match="simulated"):
        build(version="v1", models_csv=store["csv"], roots=[store["root"]])
    monkeypatch.undo()
    bin_path = os.path.join(flatfield, "flatfield_v1.bin")
    assert not os.path.exists(bin_path)
    assert not complete_means_whole(os.path.join(flatfield, "flatfield_v1"))
    assert partials(flatfield, "flatfield_v1") == []
    assert model_store.list_versions(store["store"]) == []

    build(version="v1", models_csv=store["csv"], roots=[store["root"]])
    assert_whole_version(store["store"], "v1", (128, 168, 10))
    assert sorted(os.listdir(flatfield)) == ["flatfield_v1", "flatfield_v1.bin"]


def test_a_build_removes_staging_folders_of_crashed_builds_only(store):
    folder = model_store.version_folder(store["store"], "v1")
    crashed = OtherRun(folder, "crashed00001")
    crashed.crash()
    alive = OtherRun(folder, "alive0000001")
    build(version="v1", models_csv=store["csv"], roots=[store["root"]])
    assert_whole_version(store["store"], "v1", (128, 168, 10))
    assert not os.path.exists(crashed.staging)
    assert os.path.isfile(os.path.join(alive.staging, "being-written.bin"))
    alive.lease.release(remove=True)
    assert partials(os.path.dirname(folder), "flatfield_v1") == []


# ----------------------------------------------------------------------------------------------
# 4. field files that link outside the slide folder


def test_field_linking_outside_the_slide_folder_is_refused(slide, tmp_path):
    with open(os.path.join(slide, "fields.csv"), newline="") as handle:
        row = next(csv.DictReader(handle))
    field_path = os.path.join(slide, *row["file"].split("/"))
    elsewhere = tmp_path / "elsewhere.dat"
    shutil.move(field_path, elsewhere)
    os.symlink(elsewhere, field_path)
    sid = os.path.basename(slide)

    with pytest.raises(
        InputError,
        match=rf"slide {sid}: field {re.escape(row['field'])} \(fields.csv row 1\): .*outside the slide "
        r"folder",
    ):
        load_slide(slide)
    line = expect_error(
        tmp_path,
        ["meanimage", slide],
        f"slide {sid}",
        row["field"],
        str(elsewhere),
        absent=[os.path.join(slide, "meanimage")],
    )
    assert "outside the slide folder" in line
    with pytest.raises(SlidesFailed, match=rf"field {re.escape(row['field'])}.*outside the slide folder"):
        run_meanimage([slide])
    assert not os.path.exists(os.path.join(slide, "meanimage"))

    # a link that stays inside the slide folder is the slide's own file
    inside = os.path.join(slide, "moved.dat")
    shutil.move(elsewhere, inside)
    os.remove(field_path)
    os.symlink(inside, field_path)
    load_slide(slide)
