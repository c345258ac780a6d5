"""modelhost: the OpenAI API platform, self-hosted."""

__version__ = "0.1.0"
