"""Stage 2, ExtractUrls' work: an index of ImageNet's URL list, by synset, built in one pass.

``stream`` builds it (``build_url_index``: reader, parser and writer threads), ``parse``
checks one block of lines at a time, ``read`` opens it (``UrlIndex``), and ``layout``
names its files and schemas.
"""
