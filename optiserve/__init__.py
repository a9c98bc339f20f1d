"""optiserve's command line and the tools that run beside a server (the local launcher, load
generator, tuner and the rollout controller). What Ray replicas run is ``serving``; the
optimizer is ``optimizers``. Imports flow one way: ``optiserve`` → ``optimizers`` → ``serving``.
"""

__version__ = "0.1.0"
