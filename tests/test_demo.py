"""``make demo``'s chain, end to end: synthetic cohort → meanimage → model build → applied test →
correct tiles → estimate without a model, and the newcomer's report at the end."""

from __future__ import annotations

import pytest


@pytest.mark.usefixtures("prefect_server")
def test_demo_runs_the_whole_chain_and_reports_against_the_truth(tmp_path, capsys):
    from shadeflow.flows.demo import run_demo

    out = tmp_path / "demo"
    results = run_demo(str(out))
    report = " ".join(capsys.readouterr().out.split())

    assert "Results against the known (planted) shading" in report and "How to read this" in report
    assert len(results["mean_images"]) == 3 and all(e < 0.025 for e in results["mean_images"].values()), (
        results
    )
    assert results["model"] < 0.015
    assert results["applied_test_change_percent"] < -50
    assert results["tiles_before"] > 0.05 and results["tiles_after"] < results["tiles_before"] / 3
    assert results["estimate_flatfield"] < 0.02 and results["estimate_darkfield_counts"] < 15
    for folder in ("cohort", "models", "applied-test", "corrected-tiles", "estimate"):
        assert (out / folder).is_dir(), folder
    assert (out / "estimate" / "shadeflow.json").is_file() and (out / "models" / "flatfield").is_dir()
    # REPORT.md lists every output in reading order with full paths, and the command printed them whole
    listed = (out / "REPORT.md").read_text()
    pdfs = sorted(str(p) for p in out.rglob("*.pdf"))
    assert len(pdfs) == 3 * 3 + 2 and all(f"`{p}`" in listed for p in pdfs)  # 3 per slide, model, test
    order = [
        listed.index(f"`{out / name}`") for name in ("cohort", "models", "applied-test", "corrected-tiles")
    ]
    assert order == sorted(order)
    assert all(p in report for p in pdfs)  # whole, not cut at the terminal's width
