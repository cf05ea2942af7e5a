"""Plain ``nn.Module``s: the UNet with depth-wise attention, the volumes, VAE, CLIP and the whole model."""
from .syncdreamer import Condition, SyncDreamer, UNetWrapper
from .unet import MultiviewUNet, UNetConfig
from .volume import SpatialVolumeNet, VolumeConfig

__all__ = ["Condition", "SyncDreamer", "UNetWrapper", "MultiviewUNet", "UNetConfig", "SpatialVolumeNet",
           "VolumeConfig"]
