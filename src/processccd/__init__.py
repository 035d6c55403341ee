"""processccd: the LSST 2013 processCcdSdss pipeline for SDSS imaging, without the LSST stack."""

from processccd.kernel_cache import configure_kernel_cache

__version__ = "0.1.0"

# before any kernel module imports numba, in every process that imports the pipeline (read-only installs)
configure_kernel_cache()
