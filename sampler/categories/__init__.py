"""Stage 3, ParseSynsets' work: WordNet labels (``words``) and category sets by name (``sets``)."""
