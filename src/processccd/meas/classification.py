"""classification.extendedness (measurement-spec.md §3): star/galaxy separation from psf and model fluxes."""

from __future__ import annotations

import numpy as np

EXTENDEDNESS_FAC1 = 0.925


def extendedness(psf_flux: np.ndarray | float, combo_flux: np.ndarray | float,
                 fac1: float = EXTENDEDNESS_FAC1) -> np.ndarray:
    """0.0 where fac1 * combo_flux < psf_flux (point source), else 1.0; a NaN combo flux gives 1.0.

    Applied after the aperture correction, to the corrected flux.psf and multishapelet.combo.flux.
    """
    psf = np.asarray(psf_flux, dtype=np.float64)
    combo = np.asarray(combo_flux, dtype=np.float64)
    return np.where(fac1 * combo < psf, 0.0, 1.0)
