"""Stage 5, FetchCategory's and FetchFives' work: polite, bounded downloads judged in sample order.

``category_job`` runs one category end to end; ``category_fetch`` decides which candidates
are kept; ``http_fetch`` makes one request; ``image_check`` judges the bytes; the policy
modules (``address_policy``, ``retry_policy``, ``dead_hosts``, ``request_slots``) say where,
how often and how many; ``results`` is what a category's round hands on, and ``gather``
checks across categories and writes the manifest.  Every outcome name is ``sampler.outcomes``'s.
"""
