"""tfnas: search, train and explain cell-based neural architectures in TF2/Keras."""

__version__ = "0.1.0"

from tfnas.genotypes import Cell, Genotype, GenotypeError, parse_genotype, zoo_names  # noqa: F401
from tfnas.resolve import get_genotype, resolve_genotype  # noqa: F401
