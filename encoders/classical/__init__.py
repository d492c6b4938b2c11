"""Classical unsupervised hashing baselines, fitted on feature vectors.

=======  =====================================================================
``lsh``   random Gaussian projections of centred features, sign
``pcah``  the top principal directions, sign
``itq``   PCA, then an orthogonal rotation minimising the quantisation error
``sh``    spectral hashing: PCA + analytic eigenfunctions on the bounding box
``sph``   spherical hashing: balanced hyperspheres (pivot, radius) per bit
``dsh``   density-sensitive hashing: planes between adjacent k-means groups
=======  =====================================================================

Each is registered (``create_encoder("itq", bits=32, seed=0)``), has ``fit(X)`` and
``encode(X)`` -> packed uint8 codes, and saves / loads with ``save_encoder`` /
``load_encoder``.
"""

from .dsh import DSH
from .itq import ITQ
from .lsh import LSH
from .pcah import PCAH
from .sh import SH
from .sph import SpH

CLASSICAL_METHODS = ("lsh", "pcah", "itq", "sh", "sph", "dsh")

__all__ = ["CLASSICAL_METHODS", "DSH", "ITQ", "LSH", "PCAH", "SH", "SpH"]
