"""Segmentation and reconstruction U-Nets built from the plans' architecture description."""
from osmedseg.networks.arch import UNetArch
from osmedseg.networks.blocks import LayerSpec
from osmedseg.networks.unet import StudentUNet, TeacherUNet, UNet, VAEDecoder, build_network

__all__ = ["LayerSpec", "StudentUNet", "TeacherUNet", "UNet", "UNetArch", "VAEDecoder", "build_network"]
