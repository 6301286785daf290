"""The offline demo world: not part of the installed product.

``demo.world`` builds a small, deterministic ImageNet-like world (a URL tarball, words.txt,
images and dead links); ``demo.server`` serves it on loopback as a web proxy;
``demo.config`` writes the luigi configuration that points the pipeline at it.  The
quickstart, the tests and the benchmarks use it from the checkout; ``pip install`` does
not ship it.
"""
