"""Platform adapters: each turns one platform's events into the core's values and back."""

if __name__ != "botservice.adapters":
    # The folder is installed as `botservice.adapters` (see pyproject.toml); imported
    # under its bare name it would be a second copy of every module.
    raise ImportError("import botservice.adapters, not adapters")
