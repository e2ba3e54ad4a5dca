"""The web viewer: ``mip360 view RUN`` and ``mip360 train --viewer`` (viser)."""
