"""Sequence mixers, one family per file; each module registers its mixers on import, and
`registry` finds them by name."""
