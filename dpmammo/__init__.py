"""dpmammo: differentially private breast-mass malignancy classification on mammography patches."""

__version__ = "0.1.0"
