"""Stage 5, FetchCategory's and FetchFives' work: polite, bounded downloads judged in sample order.

``category_round`` runs one category's round (its files, the store, the replay of what
earlier attempts learned); ``sample_order`` is the engine that fetches ahead concurrently
and decides, in sample order, which candidates are kept; ``http_fetch`` makes one request;
``image_check`` judges the bytes; the policy modules (``address_policy``, ``retry_policy``,
``dead_hosts``, ``request_slots``) say where, how often and how many; ``results`` is the one
vocabulary of a round (attempts, kept images, the result), and ``gather`` checks across
categories and writes the manifest.  Every outcome name is ``sampler.outcomes``'s.
"""
