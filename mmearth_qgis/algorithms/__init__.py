"""One module per algorithm; ``all_algorithms`` is what the provider registers."""


def all_algorithms():
    from .inspect_raster import InspectRasterAlgorithm

    return [InspectRasterAlgorithm()]
