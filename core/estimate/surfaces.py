"""Smooth surfaces on the estimator's grid: penalised weighted least squares with a thin-plate penalty.

The flatfield and darkfield are not restricted to a fixed family of functions (a polynomial of some
degree cannot follow a sharp aperture edge without ringing). Each is a free value per grid block, kept
smooth by a *thin-plate* roughness penalty — the sum of squared second differences
(∂²/∂y², 2·∂²/∂y∂x, ∂²/∂x²) over the grid — whose weight λ sets the smoothing length
ℓ = (λ / mean data weight)^(1/4) in blocks (Whittaker 1923; Eilers & Marx 1996, for P-splines; the
discrete thin plate has planes as its null space, so a tilt is never penalised). One estimator step
solves

    minimise   Σ_g x_gᵀ A_g x_g − 2 r_gᵀ x_g + λ_S uᵀ P u + λ_D vᵀ P v

for one field u or two coupled fields (u, v), where A_g is the data's 1×1 or 2×2 curvature at block g.
The system is sparse and symmetric positive definite; it is solved by scipy's conjugate gradients
preconditioned by the sum of a Jacobi and a DCT solve: a per-block solve handles blocks with little
or no data weight (masked or rejected regions), and the DCT-II solve of the uniform-weight problem,
in which the penalty is diagonal, handles the smooth large-scale part (the approach of Garcia 2010,
Comput. Stat. Data Anal. 54, 1167, for gridded data with missing values).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import scipy.sparse as sp
import scipy.sparse.linalg as sla
from scipy import fft


def _second_difference(n: int) -> sp.csr_matrix:
    return sp.diags(
        [np.ones(n - 2), -2.0 * np.ones(n - 2), np.ones(n - 2)], [0, 1, 2], shape=(n - 2, n), format="csr"
    )


def _first_difference(n: int) -> sp.csr_matrix:
    return sp.diags([-np.ones(n - 1), np.ones(n - 1)], [0, 1], shape=(n - 1, n), format="csr")


class SurfaceGrid:
    """The thin-plate penalty of an ``ny`` × ``nx`` grid (y-major vectors) and the solvers that use it."""

    def __init__(self, ny: int, nx: int):
        self.ny, self.nx = ny, nx
        iy, ix = sp.identity(ny, format="csr"), sp.identity(nx, format="csr")
        parts = [np.sqrt(2.0) * sp.kron(_first_difference(ny), _first_difference(nx))]
        if ny >= 3:
            parts.append(sp.kron(_second_difference(ny), ix))
        if nx >= 3:
            parts.append(sp.kron(iy, _second_difference(nx)))
        rough = sp.vstack(parts).tocsr()
        self.penalty = (rough.T @ rough).tocsr()
        self.penalty_diagonal = self.penalty.diagonal()
        # eigenvalues of the squared Laplacian with reflecting borders: the penalty in DCT-II space
        my = 2 - 2 * np.cos(np.pi * np.arange(ny) / ny)
        mx = 2 - 2 * np.cos(np.pi * np.arange(nx) / nx)
        self.dct_eigenvalues = (my[:, None] + mx[None, :]) ** 2

    @property
    def size(self) -> int:
        return self.ny * self.nx

    def roughness(self, field: np.ndarray) -> np.ndarray:
        """P·field (the penalty's gradient, up to a factor 2)."""
        return self.penalty @ field

    def _dct(self, v: np.ndarray) -> np.ndarray:
        return fft.dctn(v.reshape(self.ny, self.nx), norm="ortho")

    def _idct(self, c: np.ndarray) -> np.ndarray:
        return fft.idctn(c, norm="ortho").ravel()

    def solve_one(
        self, a: np.ndarray, r: np.ndarray, lam: float, tolerance: float = 1e-4, max_iterations: int = 400
    ) -> tuple[np.ndarray, int]:
        """argmin Σ a_g u_g² − 2 r·u + λ uᵀPu, and the number of CG iterations."""
        P = self.penalty

        def apply(u):
            return a * u + lam * (P @ u)

        inverse = 1.0 / (max(float(a.mean()), 1e-300) + lam * self.dct_eigenvalues)
        diagonal = a + lam * self.penalty_diagonal
        diagonal = np.where(diagonal > 0, diagonal, 1.0)

        def dct_solve(v):
            return self._idct(self._dct(v) * inverse)

        def jacobi(v):
            return v / diagonal

        return conjugate_gradients(apply, _two_level(jacobi, dct_solve), r, tolerance, max_iterations)

    def solve_two(
        self,
        a11: np.ndarray,
        a12: np.ndarray,
        a22: np.ndarray,
        r1: np.ndarray,
        r2: np.ndarray,
        lam1: float,
        lam2: float,
        tolerance: float = 1e-4,
        max_iterations: int = 400,
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """The coupled two-field problem (per block a 2×2 curvature [[a11, a12], [a12, a22]])."""
        P = self.penalty

        def apply(x):
            u, v = x
            return np.stack([a11 * u + a12 * v + lam1 * (P @ u), a12 * u + a22 * v + lam2 * (P @ v)])

        m11, m12, m22 = (float(c.mean()) for c in (a11, a12, a22))
        p11 = max(m11, 1e-300) + lam1 * self.dct_eigenvalues
        p22 = max(m22, 1e-300) + lam2 * self.dct_eigenvalues
        det = p11 * p22 - m12 * m12

        def dct_solve(x):
            c1, c2 = self._dct(x[0]), self._dct(x[1])
            return np.stack(
                [self._idct((p22 * c1 - m12 * c2) / det), self._idct((p11 * c2 - m12 * c1) / det)]
            )

        j11 = a11 + lam1 * self.penalty_diagonal
        j22 = a22 + lam2 * self.penalty_diagonal
        jdet = j11 * j22 - a12 * a12
        jdet = np.where(jdet > 0, jdet, 1.0)

        def jacobi(x):
            return np.stack([(j22 * x[0] - a12 * x[1]) / jdet, (j11 * x[1] - a12 * x[0]) / jdet])

        x, iterations = conjugate_gradients(
            apply, _two_level(jacobi, dct_solve), np.stack([r1, r2]), tolerance, max_iterations
        )
        return x[0], x[1], iterations


def _two_level(jacobi: Callable, dct_solve: Callable) -> Callable:
    """Additive two-level preconditioner, Jacobi + DCT: a sum of two positive definite operators, so
    positive definite itself whatever the weights (a multiplicative sweep is not, with Jacobi)."""

    def precondition(r):
        return jacobi(r) + dct_solve(r)

    return precondition


def conjugate_gradients(
    apply: Callable, precondition: Callable, b: np.ndarray, tolerance: float, max_iterations: int
) -> tuple[np.ndarray, int]:
    """scipy's preconditioned conjugate gradients on fields of b's shape (one or two stacked fields),
    from zero, to ‖r‖ ≤ tolerance·‖b‖; returns x and the number of iterations."""
    shape, n = b.shape, b.size
    count = [0]

    def counted(_):
        count[0] += 1

    operator = sla.LinearOperator((n, n), matvec=lambda v: apply(v.reshape(shape)).ravel(), dtype=np.float64)
    preconditioner = sla.LinearOperator(
        (n, n), matvec=lambda v: precondition(v.reshape(shape)).ravel(), dtype=np.float64
    )
    x, _ = sla.cg(
        operator,
        b.ravel(),
        rtol=tolerance,
        atol=0.0,
        maxiter=max_iterations,
        M=preconditioner,
        callback=counted,
    )
    return x.reshape(shape), count[0]
