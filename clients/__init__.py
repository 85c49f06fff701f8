"""Clients of the IOC shipped with the package: bluesky/ is `dmagic_ioc.bluesky`, the bluesky extra."""
