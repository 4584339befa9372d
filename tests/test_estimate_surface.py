"""The surface method's building blocks: penalised least squares on the grid, coarse grids, and the fit."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import scipy.sparse.linalg as sla

from shadeflow.core.estimate.estimator import EstimateSettings, estimate_shading
from shadeflow.core.estimate.grid import GridLayout, coarsen, full_resolution, grid_layout, relative_rms
from shadeflow.core.estimate.surfaces import SurfaceGrid
from shadeflow.core.synth.stacks import StackConfig, generate_stack


@pytest.fixture(scope="module")
def grid():
    return SurfaceGrid(24, 31)


def test_penalty_leaves_planes_alone_and_charges_curvature(grid):
    y, x = np.mgrid[: grid.ny, : grid.nx]
    plane = (3 + 0.2 * y - 0.1 * x).ravel().astype(float)
    bowl = ((y - 12.0) ** 2 + (x - 15.0) ** 2).ravel()
    assert np.abs(grid.roughness(plane)).max() < 1e-9
    assert bowl @ grid.roughness(bowl) > 1.0


def test_one_field_solve_matches_a_direct_sparse_solve(grid):
    rng = np.random.default_rng(1)
    a = rng.uniform(0.5, 2.0, grid.size)
    a[rng.random(grid.size) < 0.15] = 0.0  # holes: blocks without data
    r = rng.normal(size=grid.size)
    for lam in (0.1, 10.0, 1000.0):
        x, _ = grid.solve_one(a, r, lam, tolerance=1e-10, max_iterations=5000)
        direct = sla.spsolve((sp.diags(a) + lam * grid.penalty).tocsc(), r)
        assert np.abs(x - direct).max() <= 1e-6 * np.abs(direct).max()


def test_two_field_solve_matches_a_direct_sparse_solve(grid):
    rng = np.random.default_rng(2)
    a11 = rng.uniform(1, 3, grid.size)
    a22 = rng.uniform(1, 3, grid.size)
    a12 = 0.8 * np.sqrt(a11 * a22) * rng.uniform(-1, 1, grid.size)  # positive definite per block
    r1, r2 = rng.normal(size=grid.size), rng.normal(size=grid.size)
    u, v, _ = grid.solve_two(a11, a12, a22, r1, r2, 5.0, 50.0, tolerance=1e-10, max_iterations=5000)
    P = grid.penalty
    A = sp.bmat([[sp.diags(a11) + 5.0 * P, sp.diags(a12)], [sp.diags(a12), sp.diags(a22) + 50.0 * P]]).tocsc()
    direct = sla.spsolve(A, np.concatenate([r1, r2]))
    assert np.abs(np.concatenate([u, v]) - direct).max() <= 1e-6 * np.abs(direct).max()


def test_coarsening_averages_blocks_and_voids_partly_saturated_ones():
    layout = GridLayout((40, 60), 2, 20, 30, 0, 0)
    rng = np.random.default_rng(3)
    Y = rng.uniform(0, 10, (2, layout.size))
    V = np.ones_like(Y)
    V[1, 0] = 0.0  # one saturated block
    Yc, Vc, coarse = coarsen(Y, V, layout)
    assert (coarse.ny, coarse.nx, coarse.block) == (10, 15, 4)
    quad = Y[0].reshape(20, 30)[:2, :2]
    assert Yc[0, 0] == pytest.approx(quad.mean())
    assert Vc[1, 0] == 0.0 and Vc[0, 0] == 1.0


def test_full_resolution_reproduces_a_plane_exactly():
    layout = grid_layout((100, 130), 16)
    cy = layout.y0 + (np.arange(layout.ny) + 0.5) * layout.block
    cx = layout.x0 + (np.arange(layout.nx) + 0.5) * layout.block
    field = (2 + 0.01 * cy[:, None] - 0.02 * cx[None, :]).ravel()
    full = full_resolution(field, layout)
    y, x = np.mgrid[:100, :130] + 0.5
    assert np.allclose(full, 2 + 0.01 * y - 0.02 * x)


def test_surface_method_recovers_the_recipe_shading_and_reports_its_smoothness():
    images, truth = generate_stack(StackConfig(kind="sparse", size=96, n=40, seed=4, darkfield=False))
    result = estimate_shading(images, settings=EstimateSettings(method="surface"))
    assert relative_rms(result.flatfield.astype(np.float64), truth["flatfield"]) <= 0.01
    assert result.diagnostics["method"].startswith("shadeflow surface regression")
    assert result.diagnostics["smoothness_px"] > 0 and np.all(result.flatfield > 0)
