"""Staged outputs: invisible until committed, a manifest written last, failures leave nothing behind."""

from __future__ import annotations

import json
import os

import pytest
from conftest import tree

from shadeflow.core.io import storage
from shadeflow.core.io.output_folders import (
    MANIFEST,
    StagedOutput,
    is_complete,
    read_manifest,
    shadeflow_version,
)


def test_files_are_staged_in_a_hidden_folder_until_commit(tmp_path):
    final = tmp_path / "meanimage"
    with StagedOutput(str(final)) as out:
        storage.write_text(out.url("a.csv"), "x,y\n1,2\n")
        storage.write_bytes(out.url("sub", "b.bin"), b"\0" * 24)
        staging = out.staging
        assert os.path.dirname(staging) == str(tmp_path)
        assert os.path.basename(staging).startswith(".")
        assert os.path.isfile(os.path.join(staging, "a.csv"))
        assert not final.exists()
        assert not is_complete(str(final))
        manifest = out.commit("meanimage", {"binning": 4}, ["/data/S1"], slide="S1")
    assert final.is_dir()
    assert not os.path.exists(staging)
    assert (final / "a.csv").read_text() == "x,y\n1,2\n"
    assert (final / "sub" / "b.bin").read_bytes() == b"\0" * 24
    assert is_complete(str(final))
    # nothing else left beside the output
    assert sorted(os.listdir(tmp_path)) == ["meanimage"]

    on_disk = json.loads((final / MANIFEST).read_text())
    assert on_disk == read_manifest(str(final)) == json.loads(json.dumps(manifest))
    assert on_disk["kind"] == "meanimage"
    assert on_disk["parameters"] == {"binning": 4}
    assert on_disk["inputs"] == ["/data/S1"]
    assert on_disk["slide"] == "S1"
    assert on_disk["shadeflow_version"] == shadeflow_version()
    assert on_disk["files"] == {"a.csv": 8, os.path.join("sub", "b.bin"): 24}
    assert on_disk["created"]


def test_exception_removes_staging_and_keeps_previous_output(tmp_path):
    final = tmp_path / "out"
    with StagedOutput(str(final)) as out:
        storage.write_text(out.url("result.txt"), "first")
        out.commit("test", {}, [])
    before = tree(final)

    with pytest.raises(RuntimeError, match="boom"):
        with StagedOutput(str(final)) as out:
            storage.write_text(out.url("result.txt"), "second, half written")
            staging = out.staging
            raise RuntimeError("boom")
    assert not os.path.exists(staging)
    assert tree(final) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert is_complete(str(final))


def test_commit_replaces_a_previous_output(tmp_path):
    final = tmp_path / "out"
    with StagedOutput(str(final)) as out:
        storage.write_text(out.url("old.txt"), "old")
        out.commit("test", {"run": 1}, [])
    with StagedOutput(str(final)) as out:
        storage.write_text(out.url("new.txt"), "new")
        out.commit("test", {"run": 2}, [])
    assert sorted(os.listdir(final)) == sorted(["new.txt", MANIFEST])
    assert read_manifest(str(final))["parameters"] == {"run": 2}
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_leaving_without_commit_removes_staging(tmp_path):
    final = tmp_path / "out"
    with StagedOutput(str(final)) as out:
        storage.write_text(out.url("x.txt"), "x")
        staging = out.staging
    assert not os.path.exists(staging)
    assert not final.exists()


def test_folder_without_manifest_is_incomplete(tmp_path):
    folder = tmp_path / "partial"
    folder.mkdir()
    (folder / "mean_image.bin").write_bytes(b"123")
    assert not is_complete(str(folder))
    assert not is_complete(str(tmp_path / "absent"))
    with pytest.raises(FileNotFoundError, match=MANIFEST):
        read_manifest(str(folder))
