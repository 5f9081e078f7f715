"""What the four orderflow services share: wire contracts, subjects and messaging plumbing.

Nothing in here knows the business rules of one service; those live in ``services/<name>/``.
"""
