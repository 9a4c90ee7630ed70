"""The search engine: Optuna study, Ray workers, run records, final training and packaging."""


class SearchError(ValueError):
    """A search that cannot start or continue; the message says what to do. Defined here, not in
    `nas.search`, so that catching it imports neither Optuna nor Ray (the measuring path needs neither)."""
