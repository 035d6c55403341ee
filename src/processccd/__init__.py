"""processccd: the LSST 2013 processCcdSdss pipeline for SDSS imaging, without the LSST stack."""

__version__ = "0.1.0"
