"""Chat completions kept with `store: true`: saved after generation, listed, read, updated and deleted (`stored.py`)."""
