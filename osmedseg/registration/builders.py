"""Building a registration network from the plans' ``registration`` configuration."""
from __future__ import annotations

from torch import nn

from osmedseg.planning.plans import RegistrationConfiguration
from osmedseg.registration.appearance import AppearanceNet
from osmedseg.registration.networks import ContrastiveRegistrationNet, VoxelMorphNet

REGISTRATION_NETWORKS = ("contrastive", "voxelmorph")
LEVEL_WIDTHS = (16, 32, 64, 64, 64)
BOTTLENECK_WIDTH = 128  # per stream; the shared decoder sees both (256)


def build_registration_network(configuration: RegistrationConfiguration, in_channels: int,
                               kind: str = "contrastive", diffeomorphic: bool = True) -> nn.Module:
    """The OS-MedSeg contrastive net (default) or the VoxelMorph baseline, as deep as the plans' ``levels``."""
    levels = configuration.levels
    if kind == "contrastive":
        return ContrastiveRegistrationNet(in_channels, widths=LEVEL_WIDTHS[:levels], bottleneck=(BOTTLENECK_WIDTH,),
                                          diffeomorphic=diffeomorphic)
    if kind == "voxelmorph":
        encoder = (16,) + (32,) * (levels - 1)
        decoder = (32,) * (levels + 1) + (16, 16)
        return VoxelMorphNet(in_channels, encoder=encoder, decoder=decoder, diffeomorphic=diffeomorphic)
    raise ValueError(f"registration network must be one of {REGISTRATION_NETWORKS}, got {kind!r}")


def build_registration_modules(configuration: RegistrationConfiguration, in_channels: int, options: dict
                               ) -> dict[str, nn.Module]:
    """``registration`` (and ``appearance`` if ``options['appearance']``) as the registration stage trains them."""
    modules = {"registration": build_registration_network(configuration, in_channels, options["network"],
                                                          options["diffeomorphic"])}
    if options.get("appearance"):
        levels = configuration.levels
        modules["appearance"] = AppearanceNet(in_channels, encoder=(16,) + (32,) * (levels - 1),
                                              decoder=(64, 64) + (32,) * (levels - 1) + (16, 16))
    return modules
