"""Plain, Luigi-free building blocks of the ImageNet sampler.

Every stage's real work lives here so it can be called and tested without a
scheduler; the Luigi tasks in ``tasks/`` only wire parameters to these functions.
"""

from pathlib import Path

USER_AGENT = "imagenet-sampler/0.1 (Luigi batch sampler of ImageNet URLs; a few images per category)"

# Shipped configuration: the category sets and known placeholder hashes.  In a checkout
# sampler/config is a symlink to the top-level config/; a wheel holds a copy.
CONFIG_DIR = Path(__file__).resolve().parent / "config"
