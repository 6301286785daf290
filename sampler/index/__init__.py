"""Stage 2, ExtractUrls' work: an index of ImageNet's URL list, by synset, built in one pass."""
