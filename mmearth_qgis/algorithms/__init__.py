"""One module per algorithm; ``all_algorithms`` is what the provider registers."""


def all_algorithms():
    from .embed import EmbedAlgorithm
    from .inspect_raster import InspectRasterAlgorithm
    from .segment import SegmentAlgorithm

    return [InspectRasterAlgorithm(), EmbedAlgorithm(), SegmentAlgorithm()]
