"""Client programs in other SDKs/languages that exercise a running modelhost.

See runner.py for how they are installed (cached outside the repo) and run.
"""
