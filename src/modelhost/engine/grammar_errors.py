"""The one error of the structured-output path: a schema or grammar that cannot be enforced."""


class GrammarError(ValueError):
    """The schema cannot be enforced; the message names the feature or limit."""
