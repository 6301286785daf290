"""The offline demo world: not part of the installed product.

``demo.world`` builds a small, deterministic ImageNet-like world (a URL tarball, words.txt,
images and dead links); ``demo.server`` serves it on loopback as a web proxy.  The
quickstart, the tests and the benchmarks use it; ``pip install`` does not ship it.
"""
