"""Models (torch): the ConvNeXt V2 encoder with the MMEarth stem and the MP-MAE around it."""

from mpmae_core.models.convnextv2 import CONVENTIONS, ENCODER_SIZES, ConvNeXtV2Encoder, build_encoder
from mpmae_core.models.mpmae import MPMAE, MPMAEOutput, build_mpmae, random_mask

__all__ = ["CONVENTIONS", "ENCODER_SIZES", "ConvNeXtV2Encoder", "build_encoder", "MPMAE", "MPMAEOutput",
           "build_mpmae", "random_mask"]
