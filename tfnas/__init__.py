"""tfnas: search, train and explain cell-based neural architectures in TF2/Keras."""

__version__ = "0.1.0"

from tfnas.genotypes import (  # noqa: F401
    Cell, Genotype, GenotypeError, get_genotype, parse_genotype, resolve_genotype, zoo_names,
)
