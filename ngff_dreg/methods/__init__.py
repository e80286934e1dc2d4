"""Block-pair registration methods (itk-dreg ``BlockPairRegistrationMethod`` plug-ins).

Every method is a small picklable dataclass with plain parameters; all ITK
objects are built inside ``__call__``. Each returns a transform that acts on
fixed points *before* the initial transform, valid over the padded fixed block.
"""

from ngff_dreg.methods.bspline import ItkBSplineRegistration
from ngff_dreg.methods.elastix import ElastixBlockRegistration, ElastixNotAvailableError
from ngff_dreg.methods.itk_linear import ItkLinearRegistration
from ngff_dreg.methods.translation import PhaseCorrelationTranslation, phase_correlation_shift

__all__ = [
    "ElastixBlockRegistration",
    "ElastixNotAvailableError",
    "ItkBSplineRegistration",
    "ItkLinearRegistration",
    "PhaseCorrelationTranslation",
    "phase_correlation_shift",
]
