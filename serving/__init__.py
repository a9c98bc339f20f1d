"""optiserve serving: the model repository, runtimes and the Ray Serve application."""
