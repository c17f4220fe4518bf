"""One module per algorithm; ``all_algorithms`` is what the provider registers."""


def all_algorithms():
    from .accuracy import AssessAlgorithm, SampleDesignAlgorithm
    from .change import ChangeAlgorithm
    from .compare import CompareFeaturesAlgorithm
    from .embed import EmbedAlgorithm
    from .fetch_model import FetchModelAlgorithm
    from .inspect_raster import InspectRasterAlgorithm
    from .segment import SegmentAlgorithm
    from .similarity import SimilarityAlgorithm
    from .stack import StackAlgorithm
    from .tessera import TesseraTileAlgorithm
    from .train_head import TrainHeadAlgorithm

    return [InspectRasterAlgorithm(), EmbedAlgorithm(), TrainHeadAlgorithm(), SegmentAlgorithm(), SimilarityAlgorithm(),
            FetchModelAlgorithm(), StackAlgorithm(), SampleDesignAlgorithm(), AssessAlgorithm(), ChangeAlgorithm(),
            TesseraTileAlgorithm(), CompareFeaturesAlgorithm()]
